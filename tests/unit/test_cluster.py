"""cluster/: the manifests parse, carry the GPU serve config, and fit the pools they serve.

Pure checks (no Ray runtime, no Kubernetes, no network) of mistakes a real cluster would
only show late: a RayService whose embedded Serve config drifted from
cluster/serve_config.gpu.yaml, a pool whose replica fits on no node type, node limits the
autoscaler cannot reach max_replicas with, a launcher YAML `ray up` rejects, an image
that misses part of the package, a Ray dashboard reachable from outside the cluster, a
node whose Serve proxy starts without the proxy edge. The Grafana dashboard has its own
file, test_dashboard.py.
"""

from __future__ import annotations

import copy
import importlib
import json
import math
import re
import shlex
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml
from starlette.middleware import Middleware

from cluster.render_rayservice import KEY, render
from deployments.config import AppConfig, DeploymentOptions, load_app_config

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
RAY_MINOR = ".".join(ray.__version__.split(".")[:2])
METRICS_PORT = 8080
RAY_SD_FILE = "/tmp/ray/prom_metrics_service_discovery.json"  # on the Ray head node
# Serve's proxy calls this at start, read from its node's environment (deployments/proxy.py).
PROXY_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
PROXY_CALLBACK = "deployments.proxy:middlewares"


def load_yaml(name: str) -> Any:
    return yaml.safe_load((CLUSTER / name).read_text())


def rayservice() -> dict[str, Any]:
    doc: dict[str, Any] = load_yaml("rayservice.yaml")
    return doc


def launcher() -> dict[str, Any]:
    doc: dict[str, Any] = load_yaml("cluster_launcher.yaml")
    return doc


def gpu_config() -> AppConfig:
    (app,) = load_yaml("serve_config.gpu.yaml")["applications"]
    return load_app_config(app["args"])


# --- resources: what a replica needs, what a node type has ----------------------------


@dataclass(frozen=True)
class Demand:
    cpus: float
    gpus: float


@dataclass(frozen=True)
class NodeType:
    name: str
    cpus: float
    gpus: float
    max_nodes: int
    custom: dict[str, float] = field(default_factory=dict)  # custom Ray resources


def replica_demand(pool: DeploymentOptions) -> Demand:
    """What one replica reserves on a single node.

    The rule of deployments.config._check_gpus: with placement group bundles a replica is
    the sum of its bundles (its actor sits inside the first), otherwise its actor options.
    Only STRICT_PACK keeps the bundles on one node; tensor parallelism across nodes is not
    something we deploy, so any other strategy is refused here rather than half-checked.
    """
    bundles = pool.placement_group_bundles
    if bundles:
        strategy = pool.placement_group_strategy or "STRICT_PACK"  # serve_options' default
        if strategy != "STRICT_PACK":
            raise ValueError(f"only STRICT_PACK bundles are checked, not {strategy}")
        return Demand(sum(b.get("CPU", 0) for b in bundles), sum(b.get("GPU", 0) for b in bundles))
    actor = pool.ray_actor_options
    return Demand(actor.num_cpus, actor.num_gpus)


def max_replicas(pool: DeploymentOptions) -> int:
    scaling = pool.autoscaling_config
    return scaling.max_replicas if scaling is not None else pool.num_replicas


def per_node(demand: Demand, node: NodeType) -> int:
    """Replicas of `demand` one node of `node` holds (0: not even one fits)."""
    limits = [
        int(have // need)
        for have, need in ((node.cpus, demand.cpus), (node.gpus, demand.gpus))
        if need
    ]
    return min(limits) if limits else sys.maxsize


def capacity_problems(config: AppConfig, nodes: list[NodeType]) -> list[str]:
    """Why the node types cannot hold every pool at max_replicas (empty: they can)."""
    problems: list[str] = []
    only_there: dict[str, int] = {}  # node type -> nodes needed by pools fitting nowhere else
    gpus_needed = 0.0
    for name, pool in config.pools.items():
        demand = replica_demand(pool)
        homes = [node for node in nodes if per_node(demand, node) > 0]
        if not homes:
            problems.append(
                f"pool {name!r}: a replica needs {demand.cpus:g} CPUs and {demand.gpus:g} GPUs "
                "on one node, and no node type has them"
            )
            continue
        gpus_needed += demand.gpus * max_replicas(pool)
        if len(homes) == 1:
            (home,) = homes
            nodes_needed = math.ceil(max_replicas(pool) / per_node(demand, home))
            only_there[home.name] = only_there.get(home.name, 0) + nodes_needed
    for node in nodes:
        if only_there.get(node.name, 0) > node.max_nodes:
            problems.append(
                f"node type {node.name!r}: pools that fit only there need "
                f"{only_there[node.name]} nodes at max_replicas, the autoscaler starts at most "
                f"{node.max_nodes}"
            )
    gpus_there = sum(node.gpus * node.max_nodes for node in nodes)
    if gpus_needed > gpus_there:
        problems.append(
            f"pools need {gpus_needed:g} GPUs at max_replicas, nodes have {gpus_there:g}"
        )
    return problems


def k8s_cpus(quantity: str | int | float) -> float:
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def ray_container(group: dict[str, Any]) -> dict[str, Any]:
    """KubeRay runs Ray in the first container of a group's pod template."""
    container: dict[str, Any] = group["template"]["spec"]["containers"][0]
    return container


def group_node(name: str, group: dict[str, Any], max_nodes: int) -> NodeType:
    """What KubeRay tells Ray a pod of `group` has: rayStartParams, else the Ray
    container's limits."""
    params = group["rayStartParams"]
    limits = ray_container(group)["resources"]["limits"]
    cpus = float(params.get("num-cpus", k8s_cpus(limits["cpu"])))
    gpus = float(params.get("num-gpus", limits.get("nvidia.com/gpu", 0)))
    # KubeRay wants custom resources as a quoted JSON string: '"{\"name\": 8}"'.
    custom = json.loads(json.loads(params["resources"])) if "resources" in params else {}
    return NodeType(name, cpus, gpus, max_nodes, custom)


def rayservice_nodes() -> list[NodeType]:
    cluster = rayservice()["spec"]["rayClusterConfig"]
    nodes = [group_node("head", cluster["headGroupSpec"], max_nodes=1)]
    for group in cluster["workerGroupSpecs"]:
        nodes.append(group_node(group["groupName"], group, group["maxReplicas"]))
    return nodes


def launcher_nodes() -> list[NodeType]:
    config = launcher()
    nodes = []
    for name, node in config["available_node_types"].items():
        resources = dict(node["resources"])
        cpus, gpus = resources.pop("CPU", 0), resources.pop("GPU", 0)
        max_nodes = 1 if name == config["head_node_type"] else node["max_workers"]
        nodes.append(NodeType(name, cpus, gpus, max_nodes, resources))
    return nodes


# --- every file parses -------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    sorted(p for p in CLUSTER.rglob("*") if p.suffix in {".yaml", ".yml", ".json"}),
    ids=lambda p: str(p.relative_to(CLUSTER)),
)
def test_every_manifest_parses(path: Path) -> None:
    text = path.read_text()
    docs = [json.loads(text)] if path.suffix == ".json" else list(yaml.safe_load_all(text))
    assert docs and all(isinstance(doc, dict) for doc in docs)


# --- RayService ------------------------------------------------------------------------


def test_rayservice_is_rendered_from_the_gpu_serve_config() -> None:
    manifest = (CLUSTER / "rayservice.yaml").read_text()
    gpu = (CLUSTER / "serve_config.gpu.yaml").read_text()
    assert render(manifest, gpu) == manifest, "run: python cluster/render_rayservice.py"


def test_render_rewrites_a_drifted_serve_config() -> None:
    manifest = (CLUSTER / "rayservice.yaml").read_text()
    drifted = manifest.replace(KEY, KEY + "    hand_edit: true\n", 1)
    assert drifted != manifest
    assert render(drifted, (CLUSTER / "serve_config.gpu.yaml").read_text()) == manifest


def test_rayservice_serves_the_gpu_serve_config() -> None:
    from ray.serve.schema import ServeDeploySchema

    embedded = yaml.safe_load(rayservice()["spec"]["serveConfigV2"])
    assert embedded == load_yaml("serve_config.gpu.yaml")
    ServeDeploySchema.model_validate(embedded)  # what Serve's REST API checks on deploy
    for app in embedded["applications"]:
        load_app_config(app["args"])


def test_rayservice_cluster_shape() -> None:
    doc = rayservice()
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayService")
    cluster = doc["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["rayVersion"].startswith(f"{RAY_MINOR}.")
    head = cluster["headGroupSpec"]
    groups = [head, *cluster["workerGroupSpecs"]]
    assert head["rayStartParams"]["num-gpus"] == "0"
    head_ports = {p["name"]: p["containerPort"] for p in ray_container(head)["ports"]}
    assert head_ports == {
        "gcs-server": 6379, "dashboard": 8265, "client": 10001, "serve": 8000,
        "metrics": METRICS_PORT,
    }  # fmt: skip
    images = {ray_container(group)["image"] for group in groups}
    assert len(images) == 1, f"one image for every pod, got {images}"
    for group in groups:
        # KubeRay's rayStartParams is map[string]string: a bare YAML number is rejected.
        params = group["rayStartParams"]
        assert all(isinstance(v, str) for v in params.values()), params
        assert params["metrics-export-port"] == str(METRICS_PORT)
    for group in cluster["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        resources = ray_container(group)["resources"]
        assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"]


# --- capacity: pools against node types ------------------------------------------------


@pytest.mark.parametrize(
    "nodes", [rayservice_nodes, launcher_nodes], ids=["rayservice", "launcher"]
)
def test_node_types_hold_every_pool_at_max_replicas(nodes: Any) -> None:
    assert capacity_problems(gpu_config(), nodes()) == []


@pytest.mark.parametrize(
    "nodes", [rayservice_nodes, launcher_nodes], ids=["rayservice", "launcher"]
)
def test_ingress_runs_only_on_the_cpu_head(nodes: Any) -> None:
    (head,) = [node for node in nodes() if node.name == "head"]
    ingress = gpu_config().ingress
    wanted = ingress.ray_actor_options.resources
    assert head.gpus == 0, "pool replicas must never land on the head"
    assert replica_demand(ingress).gpus == 0
    assert replica_demand(ingress).cpus * max_replicas(ingress) <= head.cpus
    # A custom resource only the head has keeps the ingress off GPU nodes, which would
    # otherwise never go idle and never scale down.
    assert wanted, "the ingress must ask for a resource only the head offers"
    for resource, amount in wanted.items():
        assert head.custom.get(resource, 0) >= amount * max_replicas(ingress)
        assert all(resource not in node.custom for node in nodes() if node.name != "head")


def gpu_args_with(pool: str, max_replicas: int) -> dict[str, Any]:
    (app,) = load_yaml("serve_config.gpu.yaml")["applications"]
    args: dict[str, Any] = copy.deepcopy(app["args"])
    args["pools"][pool]["autoscaling_config"]["max_replicas"] = max_replicas
    return args


def test_capacity_check_rejects_a_pool_no_node_type_fits() -> None:
    one_gpu_nodes = [node for node in rayservice_nodes() if node.gpus <= 1]
    problems = capacity_problems(gpu_config(), one_gpu_nodes)
    assert (
        "pool 'large': a replica needs 2 CPUs and 2 GPUs on one node, and no node type has them"
        in problems
    )


def test_capacity_check_rejects_max_replicas_its_only_node_type_cannot_reach() -> None:
    (gpu_2x,) = [node for node in rayservice_nodes() if node.name == "gpu-2x"]
    config = load_app_config(gpu_args_with("large", gpu_2x.max_nodes + 2))
    problems = capacity_problems(config, rayservice_nodes())
    expected = f"node type 'gpu-2x': pools that fit only there need {gpu_2x.max_nodes + 2} nodes"
    assert any(p.startswith(expected) for p in problems), problems


def test_capacity_check_rejects_more_gpus_than_all_nodes_have() -> None:
    # `small` fits on both GPU node types, so only the cluster-wide GPU total limits it.
    config = load_app_config(gpu_args_with("small", 100))
    problems = capacity_problems(config, rayservice_nodes())
    assert len(problems) == 1 and problems[0].startswith("pools need"), problems


# --- cluster launcher ------------------------------------------------------------------


def test_launcher_passes_ray_validation() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    # What `ray up` runs before it touches the cloud: defaults filled in, then Ray's
    # JSON schema (ray/autoscaler/ray-schema.json) and its cross-field checks.
    validate_config(prepare_config(copy.deepcopy(launcher())))


def test_launcher_mirrors_the_rayservice_groups() -> None:
    config = launcher()
    assert config["provider"]["type"] in {"aws", "gcp", "azure"}
    k8s = {node.name: node for node in rayservice_nodes()}
    vms = {node.name: node for node in launcher_nodes()}
    assert set(vms) == set(k8s)
    for name, vm in vms.items():
        pod = k8s[name]
        assert (vm.gpus, vm.max_nodes, vm.custom) == (pod.gpus, pod.max_nodes, pod.custom), name
    cluster = rayservice()["spec"]["rayClusterConfig"]
    idle_s = cluster["autoscalerOptions"]["idleTimeoutSeconds"]
    assert config["idle_timeout_minutes"] * 60 == idle_s
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    for name, group in groups.items():
        assert config["available_node_types"][name]["min_workers"] == group["minReplicas"]
    assert config["max_workers"] >= sum(vm.max_nodes for vm in vms.values() if vm.name != "head")
    start = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    assert sum(f"--metrics-export-port={METRICS_PORT}" in cmd for cmd in start) == 2
    assert any("switchyard[gpu]" in cmd for cmd in config["setup_commands"])


def test_image_and_launcher_install_what_the_package_needs() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    roots = {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    needed = {"pyproject.toml", project["project"]["readme"], *roots}
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    copied = {
        source
        for line in dockerfile.splitlines()
        if line.startswith("COPY --chown=")
        for source in line.split()[2:-1]
    }
    assert copied == needed
    assert set(launcher()["file_mounts"].values()) == needed
    # The RayService runs the image built from the Dockerfile: same Ray on both sides.
    (ray_image,) = re.findall(r"^FROM rayproject/ray:(\d+\.\d+\.\d+)-py311-gpu$", dockerfile, re.M)
    assert ray_image == rayservice()["spec"]["rayClusterConfig"]["rayVersion"]
    assert launcher()["docker"]["image"] == f"rayproject/ray:{ray_image}-py311-gpu"


# --- proxy edge: every Serve proxy loads deployments.proxy ------------------------------


def ray_start_envs(command: str) -> list[dict[str, str]]:
    """For each `ray start` in a shell command line, the variables it runs with: set by
    `NAME=value` in front of it or by an `export NAME=value` earlier in the line. A bare
    `NAME=value;` sets a shell variable that `ray start` does not see, so it counts not."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    exported: dict[str, str] = {}
    starts: list[dict[str, str]] = []
    segment: list[str] = []
    for token in [*lexer, ";"]:
        if token.strip(";&|"):
            segment.append(token)
            continue
        assigned: dict[str, str] = {}
        while segment and re.fullmatch(r"[A-Za-z_]\w*=.*", segment[0]):
            name, _, value = segment.pop(0).partition("=")
            assigned[name] = value
        if segment[:1] == ["export"]:
            for arg in segment[1:]:
                name, equals, value = arg.partition("=")
                if equals:
                    exported[name] = value
        if segment[:2] == ["ray", "start"]:
            starts.append({**exported, **assigned})
        segment = []
    return starts


def test_ray_start_env_parser() -> None:
    var = f"{PROXY_ENV}={PROXY_CALLBACK}"
    assert ray_start_envs(f"ulimit -n 65536; {var} ray start --head") == [
        {PROXY_ENV: PROXY_CALLBACK}
    ]
    assert ray_start_envs(f"export {var} && ray start --head") == [{PROXY_ENV: PROXY_CALLBACK}]
    assert ray_start_envs(f"{var}; ray start --head") == [{}]  # not exported
    assert ray_start_envs(f"{var} ray stop; ray start --head") == [{}]
    assert ray_start_envs("ray stop") == []


def test_every_rayservice_ray_container_loads_the_proxy_edge() -> None:
    cluster = rayservice()["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    assert len(groups) == 3
    for group in groups:
        env = [var for var in ray_container(group).get("env", []) if var["name"] == PROXY_ENV]
        name = group.get("groupName", "head")
        assert env == [{"name": PROXY_ENV, "value": PROXY_CALLBACK}], name


def test_every_rayservice_ray_container_reads_the_state_database_from_a_secret() -> None:
    """Ingress replicas run on any node; all must share one database (no per-node SQLite),
    and its password must not sit in the manifest."""
    cluster = rayservice()["spec"]["rayClusterConfig"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        env = {var["name"]: var for var in ray_container(group).get("env", [])}
        secret = env["SWITCHYARD_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
        assert secret == {"name": "switchyard-db", "key": "url"}, group.get("groupName", "head")
    app = yaml.safe_load((CLUSTER / "serve_config.gpu.yaml").read_text())["applications"][0]
    assert app["args"]["auth"]["mode"] == "keys"
    assert "database" not in app["args"] or "url" not in app["args"]["database"]


def test_launcher_starts_every_ray_node_with_the_proxy_edge() -> None:
    config = launcher()
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [env for command in config[key] for env in ray_start_envs(command)]
        assert len(starts) == 1, (key, starts)
        assert starts[0].get(PROXY_ENV) == PROXY_CALLBACK, key


def test_proxy_callback_resolves_to_middlewares_serve_accepts() -> None:
    from ray.serve._private.http_util import validate_http_proxy_callback_return

    module, _, attribute = PROXY_CALLBACK.partition(":")
    # The image and the launcher install the package roots pyproject.toml lists (checked
    # above), so the proxy finds the module there too.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    roots = {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert module.split(".")[0] in roots
    callback = getattr(importlib.import_module(module), attribute)
    assert callable(callback)
    middlewares = callback()
    assert isinstance(middlewares, list) and middlewares
    assert all(isinstance(m, Middleware) for m in middlewares)
    assert validate_http_proxy_callback_return(middlewares) == middlewares  # Serve's own check


# --- exposure: what outsiders can reach ------------------------------------------------

DASHBOARD_PORT = 8265  # Ray's dashboard: jobs and Serve deploys, without authentication
SERVE_PORT = 8000
OPERATOR_LABEL = "kuberay-operator"  # app.kubernetes.io/name of the operator's pods
# What KubeRay adds to the labels of a RayCluster's head pod template.
KUBERAY_HEAD_LABELS = {"ray.io/is-ray-node": "yes", "ray.io/node-type": "head"}
PORT_KEYS = ("port", "targetPort", "nodePort")


def manifests() -> list[dict[str, Any]]:
    return [
        doc
        for path in sorted(CLUSTER.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if isinstance(doc, dict) and "kind" in doc
    ]


def published_dashboards(docs: list[dict[str, Any]]) -> list[str]:
    """Services and Ingresses that carry the dashboard port out of the cluster.

    KubeRay's head service carries every port of the head container, dashboard included,
    with the group's `serviceType` (ClusterIP unless set); a RayService's serveService and
    a headService override are Services of their own.
    """
    problems: list[str] = []

    def check(name: str, kind: str, ports: set[int | str]) -> None:
        if kind in {"LoadBalancer", "NodePort"} and ports & {DASHBOARD_PORT, "dashboard"}:
            problems.append(f"{name}: a {kind} service publishes the dashboard")

    def check_service(name: str, spec: dict[str, Any]) -> None:
        ports = {p[key] for p in spec.get("ports", []) for key in PORT_KEYS if key in p}
        check(name, spec.get("type", "ClusterIP"), ports)

    for doc in docs:
        name, spec = f"{doc['kind']} {doc['metadata']['name']}", doc.get("spec", {})
        if doc["kind"] == "Service":
            check_service(name, spec)
        if doc["kind"] in {"RayService", "RayCluster"}:
            head = spec.get("rayClusterConfig", spec)["headGroupSpec"]
            head_ports = {p["containerPort"] for p in ray_container(head).get("ports", [])}
            check(f"{name} head", head.get("serviceType", "ClusterIP"), head_ports)
            for override in (head.get("headService"), spec.get("serveService")):
                if override:
                    check_service(name, override["spec"])
        if doc["kind"] == "Ingress":
            for rule in spec.get("rules", []):
                for path in rule.get("http", {}).get("paths", []):
                    port = path["backend"]["service"]["port"]
                    if {port.get("number"), port.get("name")} & {DASHBOARD_PORT, "dashboard"}:
                        problems.append(f"{name}: routes to the dashboard")
    return problems


def network_policy() -> dict[str, Any]:
    (policy,) = [doc for doc in manifests() if doc["kind"] == "NetworkPolicy"]
    return policy


def peers_reaching(policy: dict[str, Any], port: int) -> list[dict[str, Any]] | None:
    """The `from` peers an Ingress NetworkPolicy admits on `port`; None: anyone."""
    head = rayservice()["spec"]["rayClusterConfig"]["headGroupSpec"]
    named = {p["name"]: p["containerPort"] for p in ray_container(head)["ports"]}
    peers: list[dict[str, Any]] = []
    for rule in policy["spec"].get("ingress", []):
        for entry in rule.get("ports") or [{}]:  # no ports: every port
            first = named.get(entry.get("port"), entry.get("port", port))  # a name or a number
            if first <= port <= entry.get("endPort", first):
                if not rule.get("from"):
                    return None
                peers.extend(rule["from"])
                break
    return peers


def peer_kind(peer: dict[str, Any]) -> str:
    """`ray`: this RayService's own pods; `operator`: KubeRay's pods in one namespace."""
    pods = peer.get("podSelector", {})
    namespaces = peer.get("namespaceSelector")
    if set(peer) == {"podSelector"} and set(pods) == {"matchLabels"}:
        labels = pods["matchLabels"]
        ray_pod = rayservice()["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]
        ours = {**ray_pod["metadata"]["labels"], "ray.io/is-ray-node": "yes"}
        if "app.kubernetes.io/name" in labels and labels.items() <= ours.items():
            return "ray"
    if (
        set(peer) == {"namespaceSelector", "podSelector"}
        and set(namespaces) == {"matchLabels"}
        and set(namespaces["matchLabels"]) == {"kubernetes.io/metadata.name"}
        and pods.get("matchLabels", {}).get("app.kubernetes.io/name") == OPERATOR_LABEL
    ):
        return "operator"
    return "other"


def test_launcher_keeps_the_dashboard_on_the_head_loopback() -> None:
    config = launcher()
    start = " ".join(config["head_start_ray_commands"] + config["worker_start_ray_commands"])
    hosts = re.findall(r"--dashboard-host[= ](\S+)", start)
    # `ray dashboard` forwards it over SSH; 0.0.0.0 would serve it to the whole network.
    assert hosts and set(hosts) <= {"127.0.0.1", "localhost"}, hosts
    options = " ".join(config["docker"].get("run_options", []))
    assert not re.search(r"(^|\s)(-p|--publish)[\s=]", options), options


def test_no_service_publishes_the_dashboard_outside_the_cluster() -> None:
    head = rayservice()["spec"]["rayClusterConfig"]["headGroupSpec"]
    assert head["serviceType"] == "ClusterIP"
    assert published_dashboards(manifests()) == []


def test_dashboard_check_rejects_a_public_head_service_and_an_ingress() -> None:
    doc = copy.deepcopy(rayservice())
    doc["spec"]["rayClusterConfig"]["headGroupSpec"]["serviceType"] = "LoadBalancer"
    ingress = {
        "kind": "Ingress",
        "metadata": {"name": "ray"},
        "spec": {"rules": [{"http": {"paths": [{"backend": {"service": {
            "name": "switchyard-head-svc", "port": {"number": DASHBOARD_PORT}}}}]}}]},
    }  # fmt: skip
    assert published_dashboards([doc, ingress]) == [
        "RayService switchyard head: a LoadBalancer service publishes the dashboard",
        "Ingress ray: routes to the dashboard",
    ]


def test_networkpolicy_selects_the_ray_head() -> None:
    policy = network_policy()
    assert (policy["apiVersion"], policy["kind"]) == ("networking.k8s.io/v1", "NetworkPolicy")
    assert "Ingress" in policy["spec"]["policyTypes"]
    selector = policy["spec"]["podSelector"]
    assert set(selector) == {"matchLabels"}, "matchExpressions are not checked here"
    head = rayservice()["spec"]["rayClusterConfig"]["headGroupSpec"]
    head_labels = {**head["template"]["metadata"]["labels"], **KUBERAY_HEAD_LABELS}
    assert selector["matchLabels"].items() <= head_labels.items()


def test_networkpolicy_lets_only_the_operator_and_ray_pods_reach_the_dashboard() -> None:
    policy = network_policy()
    dashboard = peers_reaching(policy, DASHBOARD_PORT)
    assert dashboard is not None, "the dashboard is open to anyone"
    # The operator deploys serveConfigV2 through the dashboard: without it, no app.
    assert sorted({peer_kind(peer) for peer in dashboard}) == ["operator", "ray"], dashboard
    for name, port in (("gcs-server", 6379), ("client", 10001)):
        peers = peers_reaching(policy, port)
        assert peers is not None and {peer_kind(peer) for peer in peers} == {"ray"}, name


def test_networkpolicy_keeps_the_api_open_and_the_cluster_whole() -> None:
    policy = network_policy()
    assert peers_reaching(policy, SERVE_PORT) is None, "clients must reach the API"
    metrics = peers_reaching(policy, METRICS_PORT)
    assert metrics is None or {"namespaceSelector": {}} in metrics, "Prometheus must scrape"
    # Ray's own traffic (GCS, raylets, object transfers) uses many, partly random ports.
    for port in (6379, 8076, 10001, 52365, 61234):
        peers = peers_reaching(policy, port)
        assert peers is None or "ray" in {peer_kind(peer) for peer in peers}, port


def test_gpu_profile_serves_no_operator_endpoints() -> None:
    api = gpu_config().api
    assert (api.docs, api.metrics_summary) == (False, False)


# --- Prometheus ------------------------------------------------------------------------


def test_prometheus_scrapes_ray_metrics_endpoints() -> None:
    jobs = load_yaml("prometheus.yml")["scrape_configs"]
    files = [f for job in jobs for sd in job.get("file_sd_configs", []) for f in sd["files"]]
    targets = [t for job in jobs for sc in job.get("static_configs", []) for t in sc["targets"]]
    assert RAY_SD_FILE in files or any(t.endswith(f":{METRICS_PORT}") for t in targets)


def test_podmonitor_selects_every_rayservice_pod_on_its_metrics_port() -> None:
    monitor = load_yaml("podmonitor.yaml")
    assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", "PodMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    # KubeRay adds the ray.io/* labels itself; the rest must be on our pod templates.
    ours = {k: v for k, v in selector.items() if not k.startswith("ray.io/")}
    assert ours and selector.get("ray.io/is-ray-node") in (None, "yes")
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    cluster = rayservice()["spec"]["rayClusterConfig"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        assert ours.items() <= group["template"]["metadata"]["labels"].items()
        ports = {p["name"]: p["containerPort"] for p in ray_container(group)["ports"]}
        assert ports[endpoint["port"]] == METRICS_PORT
