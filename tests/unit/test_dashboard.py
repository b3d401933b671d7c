"""cluster/grafana/switchyard.json: a valid dashboard over metrics that exist.

A panel querying a misspelled or renamed metric shows "No data" instead of failing, so
every PromQL expression is checked against the names Prometheus sees: those
deployments/metrics.py creates (Ray adds `ray_`, counters get `_total`, histograms
`_bucket`/`_sum`/`_count`) and a few Ray Serve built-ins, which must exist in the
installed Ray.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import ray

DASHBOARD = Path(__file__).resolve().parents[2] / "cluster" / "grafana" / "switchyard.json"

# Ray Serve's built-in metrics the dashboard may use: Prometheus name -> how the installed
# Ray Serve source spells the metric (Ray adds the `ray_` prefix, counters get `_total`).
SERVE_METRICS = {
    "ray_serve_num_http_requests_total": "serve_num_{protocol_name}_requests",
    "ray_serve_deployment_replica_healthy": "serve_deployment_replica_healthy",
    "ray_serve_autoscaling_target_replicas": "serve_autoscaling_target_replicas",
    "ray_serve_deployment_queued_queries": "serve_deployment_queued_queries",
}


PROMQL_WORDS = {"and", "or", "unless", "bool", "offset"}
GROUPING = r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: what is left once label matchers, ranges,
    strings and grouping clauses are gone, minus functions (followed by `(`) and keywords."""
    expr = re.sub(r'\{[^}]*\}|\[[^\]]*\]|"[^"]*"', " ", expr)
    expr = re.sub(GROUPING, " ", expr)
    names = set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", expr))
    return names - PROMQL_WORDS


@pytest.fixture
def switchyard_metrics(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """The names Prometheus sees for the metrics deployments/metrics.py creates."""
    from ray.serve import metrics as serve_metrics

    from deployments import metrics

    created: list[tuple[str, str]] = []
    for kind in ("Counter", "Gauge", "Histogram"):
        monkeypatch.setattr(
            serve_metrics, kind, lambda name, *_, _kind=kind, **__: created.append((_kind, name))
        )
    metrics._ray_metrics()
    names: set[str] = set()
    for kind, name in created:
        full = f"ray_{name}"
        if kind == "Counter":
            names.add(full if full.endswith("_total") else f"{full}_total")
        elif kind == "Histogram":
            names |= {f"{full}_bucket", f"{full}_sum", f"{full}_count"}
        else:
            names.add(full)
    assert names, "deployments/metrics.py created no metrics"
    return names


def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def dashboard_queries(doc: dict[str, Any]) -> list[str]:
    """PromQL of every panel, and the series selector of every `label_values(...)` variable."""
    exprs = [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]
    for variable in doc["templating"]["list"]:
        if variable["type"] == "query":
            query = re.fullmatch(r"label_values\((.+),\s*\w+\)", variable["query"]["query"])
            assert query, variable["query"]["query"]
            exprs.append(query[1])
    return exprs


def test_dashboard_structure() -> None:
    doc = dashboard()
    assert doc["schemaVersion"] >= 36
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == (
        "datasource",
        "prometheus",
    )
    assert variables["pool"]["includeAll"] and variables["pool"]["multi"]
    for panel in doc["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        for source in [panel["datasource"], *(t["datasource"] for t in panel["targets"])]:
            assert source == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]


def test_dashboard_queries_only_metrics_that_exist(switchyard_metrics: set[str]) -> None:
    allowed = switchyard_metrics | set(SERVE_METRICS)
    for expr in dashboard_queries(dashboard()):
        names = promql_metric_names(expr)
        assert names, f"no metric in {expr!r}"
        assert names <= allowed, f"unknown metrics {sorted(names - allowed)} in {expr!r}"


def family(name: str) -> str:
    return re.sub(r"_(bucket|sum|count)$", "", name)


def test_dashboard_covers_every_switchyard_metric(switchyard_metrics: set[str]) -> None:
    used = set().union(*map(promql_metric_names, dashboard_queries(dashboard())))
    unused = {family(n) for n in switchyard_metrics} - {family(n) for n in used}
    assert not unused, f"metrics without a panel: {sorted(unused)}"


def test_promql_metric_names_catches_a_misspelled_metric(switchyard_metrics: set[str]) -> None:
    expr = 'sum by (pool) (rate(ray_switchyard_request_total{pool=~"$pool"}[$__rate_interval]))'
    assert promql_metric_names(expr) == {"ray_switchyard_request_total"}
    assert not promql_metric_names(expr) <= switchyard_metrics


def test_serve_metrics_on_the_dashboard_exist_in_the_installed_ray() -> None:
    serve_dir = Path(ray.__file__).parent / "serve"
    source = "".join(p.read_text() for p in serve_dir.rglob("*.py") if "tests" not in p.parts)
    for prometheus_name, spelling in SERVE_METRICS.items():
        assert f'"{spelling}"' in source, (
            f"{prometheus_name}: Ray {ray.__version__} has no {spelling}"
        )
