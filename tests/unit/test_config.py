from __future__ import annotations

import copy
import importlib
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from core.config import StrictConfig
from deployments.config import (
    POOL_AUTOSCALING_POLICY,
    AppConfig,
    ConfigError,
    PoolConfig,
    load_app_config,
    load_fake_app_config,
)
from deployments.fake_options import FakeEngineOptions
from models.catalog import ModelSpec
from routing.config import CascadeConfig, ConfidenceRule, RoutingConfig
from routing.rules import RulesConfig
from tests.conftest import fake_app_args

ROOT = Path(__file__).resolve().parents[2]


def fake_config(args: dict[str, Any]) -> AppConfig:
    return load_fake_app_config(args)[0]


def app_args(path: str) -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / path).read_text())
    (app,) = doc["applications"]
    assert app["import_path"] == "deployments.builder:build_app"
    args: dict[str, Any] = app["args"]
    return args


def test_embedded_profile_validates_with_three_real_pools() -> None:
    config = load_app_config(app_args("serve_config.yaml"))
    assert config.engine == "vllm"
    assert set(config.pools) == {"small", "large", "code"}
    for pool in config.pools.values():
        spec = config.model(pool.model)
        assert spec.source_scheme == "embedded"
        assert spec.engine.dtype == "float32"  # fastest on AVX2-only CPUs
        assert spec.engine.kv_cache_gib is not None
        assert pool.ray_actor_options.num_gpus == 0
    total_cpus = sum(p.ray_actor_options.num_cpus for p in config.pools.values())
    assert total_cpus + config.ingress.ray_actor_options.num_cpus <= 2


def test_gpu_profile_validates() -> None:
    config = load_app_config(app_args("cluster/serve_config.gpu.yaml"))
    assert all(m.source_scheme == "hf" for m in config.models)
    large = config.pools["large"]
    assert config.model(large.model).engine.tensor_parallel_size == 2
    assert sum(b.get("GPU", 0) for b in large.placement_group_bundles or []) == 2
    for name in ("small", "code"):
        assert config.pools[name].ray_actor_options.num_gpus == 1
    for pool in config.pools.values():
        assert pool.autoscaling_config is not None
        assert pool.autoscaling_config.max_replicas > pool.autoscaling_config.min_replicas
        opts = pool.serve_options()
        assert opts["autoscaling_config"]["policy"] == {"policy_function": POOL_AUTOSCALING_POLICY}
        assert "num_replicas" not in opts
    scaling = config.pools["code"].autoscaling_config
    assert scaling is not None and scaling.min_replicas == 0, "the code pool scales to zero"


def test_switchyard_policy_names_an_importable_function() -> None:
    module, _, name = POOL_AUTOSCALING_POLICY.partition(":")
    assert callable(getattr(importlib.import_module(module), name))


def test_serve_policy_keeps_serves_default() -> None:
    args = fake_app_args()
    args["pools"]["small"]["autoscaling_config"] = {"max_replicas": 3, "policy": "serve"}
    opts = fake_config(args).pools["small"].serve_options()
    assert "policy" not in opts["autoscaling_config"]
    assert opts["autoscaling_config"]["max_replicas"] == 3


def test_fixed_replicas_map_to_num_replicas() -> None:
    config = fake_config(fake_app_args())
    opts = config.pools["small"].serve_options()
    assert opts["num_replicas"] == 1
    assert "autoscaling_config" not in opts


def test_access_log_off_for_pools_on_for_the_ingress() -> None:
    config = fake_config(fake_app_args())
    assert config.pools["small"].serve_options()["logging_config"] == {"enable_access_log": False}
    assert config.ingress.serve_options()["logging_config"] == {"enable_access_log": True}
    args = fake_app_args()
    args["pools"]["small"]["access_log"] = True
    opts = fake_config(args).pools["small"].serve_options()
    assert opts["logging_config"] == {"enable_access_log": True}


def broken(mutate: Any) -> dict[str, Any]:
    args = copy.deepcopy(fake_app_args())
    del args["fake"]  # production args: what build_app validates
    mutate(args)
    return args


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda a: a.update(engnie="vllm"), "engnie: Extra inputs are not permitted"),
        (lambda a: a["pools"]["small"].update(model="nope"), "serves model 'nope'"),
        (lambda a: a["models"].append(dict(a["models"][0])), "duplicate model ids: tiny-chat"),
        (
            lambda a: a["models"].append({"id": "large", "source": "path://z"}),
            "must differ from pool names",
        ),
        (lambda a: a["models"][0].update(source="embedded://gpt-5"), "unknown embedded model"),
        (lambda a: a["models"][0].update(source="s3://bucket"), "source must start with"),
        (lambda a: a["models"][0].update(max_tokens=128), "smaller than engine.max_model_len"),
        (
            lambda a: a.update(routing={"rules": {"default_pool": "medium"}}),
            "not configured: 'medium' (routing.rules.default_pool)",
        ),
        (
            lambda a: a.update(routing={"fallback": {"chains": {"small": ["huge"]}}}),
            "not configured: 'huge' (routing.fallback.chains.small)",
        ),
        (
            lambda a: a.update(routing={"cascade": {"source_pool": "smal"}}),
            "not configured: 'smal' (routing.cascade.source_pool)",
        ),
        (
            lambda a: a.update(
                routing={"cascade": {"rules": [{"source": "small", "target": "lrage"}]}}
            ),
            "not configured: 'lrage' (routing.cascade.rules[0].target)",
        ),
        (
            lambda a: a.update(
                routing={"cascade": {"rules": [{"source": "smll", "target": "large"}]}}
            ),
            "not configured: 'smll' (routing.cascade.rules[0].source)",
        ),
        (
            lambda a: a.update(routing={"learned": {"path": "r.json", "strong_pool": "lrage"}}),
            "not configured: 'lrage' (routing.learned.strong_pool)",
        ),
        (
            lambda a: a.update(routing={"semantic": {"examples": {"cdoe": ["def f():"]}}}),
            "not configured: 'cdoe' (routing.semantic.examples)",
        ),
        (
            lambda a: a.update(routing={"tiers": {"free": {"pools": ["tiny"]}}}),
            "not configured: 'tiny' (routing.tiers.free.pools)",
        ),
        (
            lambda a: a.update(routing={"verifier": {"judge_pool": "jugde"}}),
            "not configured: 'jugde' (routing.verifier.judge_pool)",
        ),
        (
            lambda a: a.update(routing={"ensemble": {"members": ["small", "lrage"]}}),
            "not configured: 'lrage' (routing.ensemble.members[1])",
        ),
        (
            lambda a: a.update(routing={"ensemble": {"members": ["small"]}}),
            "routing.ensemble.members: List should have at least 2 items",
        ),
        (
            lambda a: a.update(routing={"verifier": {"prompt": "Is {answer} right?"}}),
            "verifier.prompt must contain {question}",
        ),
        (
            lambda a: (
                a["pools"].update(base={"model": "base-lm"}),
                a.update(routing={"verifier": {"judge_pool": "base"}}),
            ),
            "judge_pool 'base' serves a completion-only model",
        ),
        (
            lambda a: (
                a["pools"].update(base={"model": "base-lm"}),
                a.update(routing={"ensemble": {"members": ["base", "small"], "pick": "judge"}}),
            ),
            "ensemble.pick judge grades with its first member 'base'",
        ),
        (
            lambda a: a.update(routing={"ensemble": {"pick": "vote"}}),
            "routing.ensemble.pick: Input should be 'majority', 'logprob' or 'judge'",
        ),
        (
            lambda a: a.update(routing={"cascade": {"stream_decide_tokens": -1}}),
            "stream_decide_tokens: Input should be greater than or equal to 0",
        ),
        (lambda a: a.update(request_timeout_s="300"), "request_timeout_s: Input should be"),
        (lambda a: a["models"][0].update(id=7), "models.0.id: Input should be a valid string"),
        (lambda a: a.update(api={"docs": "true"}), "api.docs: Input should be a valid boolean"),
        (
            lambda a: a["models"][0].update(max_tokens="64"),
            "models.0.max_tokens: Input should be a valid integer",
        ),
        (
            lambda a: a["pools"]["small"].update(ray_actor_options={"num_cpus": "1"}),
            "pools.small.ray_actor_options.num_cpus: Input should be",
        ),
        (
            lambda a: a.update(routing={"rules": {"long_prompt_tokens": 1.5}}),
            "routing.rules.long_prompt_tokens: Input should be a valid integer",
        ),
        (
            lambda a: a["pools"]["small"].update(fake={"reply": "hi"}),
            "pools.small.fake: Extra inputs are not permitted",
        ),
        (
            lambda a: a.update(routing={"switchyard": 1}),
            "routing.switchyard: Extra inputs are not permitted",
        ),
        (lambda a: a["pools"]["small"].update(max_ongoing_requests=0), "greater than or equal"),
        (lambda a: a["pools"].update({"Bad Name": a["pools"]["small"]}), "must match"),
        (
            lambda a: a["pools"]["small"].update(
                autoscaling_config={"min_replicas": 3, "max_replicas": 2}
            ),
            "min_replicas must not exceed max_replicas",
        ),
        (
            lambda a: a["pools"]["small"].update(
                autoscaling_config={"max_replicas": 2, "initial_replicas": 5}
            ),
            "initial_replicas must lie within",
        ),
        (
            lambda a: a.update(
                ingress={"max_ongoing_requests": 1024, "autoscaling_config": {"min_replicas": 0}}
            ),
            "the ingress cannot scale to zero",
        ),
        (
            lambda a: a["models"][1].update(engine={"tensor_parallel_size": 2}),
            "tensor_parallel_size=2 but a replica reserves 0 GPUs",
        ),
    ],
)
def test_bad_config_fails_fast_with_a_readable_message(mutate: Any, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_app_config(broken(mutate))
    text = str(err.value)
    assert text.startswith("invalid Switchyard config:")
    assert message in text
    assert "Traceback" not in text


def test_builder_rejects_bad_config_before_binding_anything() -> None:
    from deployments.builder import build_app

    with pytest.raises(ConfigError, match="serves model 'nope'"):
        build_app(broken(lambda a: a["pools"]["small"].update(model="nope")))


def yaml_apps() -> list[tuple[str, int]]:
    """Every application of every Serve config in the repository that runs Switchyard."""
    found = []
    for path in sorted(ROOT.glob("**/*.yaml")):
        if ".venv" in path.parts or path.name == "rayservice.yaml":
            continue  # rayservice.yaml embeds cluster/serve_config.gpu.yaml (test_cluster)
        doc = yaml.safe_load(path.read_text())
        if not isinstance(doc, dict):
            continue
        for i, app in enumerate(doc.get("applications") or []):
            if str(app.get("import_path", "")).startswith("deployments.builder:"):
                found.append((str(path.relative_to(ROOT)), i))
    return found


@pytest.mark.parametrize(("path", "index"), yaml_apps())
def test_every_serve_config_in_the_repository_validates(path: str, index: int) -> None:
    app = yaml.safe_load((ROOT / path).read_text())["applications"][index]
    if app["import_path"] == "deployments.builder:build_fake_app":
        load_fake_app_config(app["args"])
    else:
        assert app["import_path"] == "deployments.builder:build_app"
        load_app_config(app["args"])


def test_the_repository_has_serve_configs_for_both_builders() -> None:
    paths = {path for path, _ in yaml_apps()}
    assert {"serve_config.yaml", "cluster/serve_config.gpu.yaml"} <= paths
    assert "bench/serve_fake.yaml" in paths


def test_every_config_class_shares_the_strict_base() -> None:
    for cls in (AppConfig, PoolConfig, RoutingConfig, RulesConfig, ModelSpec, FakeEngineOptions):
        assert issubclass(cls, StrictConfig)
    assert StrictConfig.model_config == {"extra": "forbid", "frozen": True, "strict": True}


def test_yaml_ints_are_fine_for_float_fields() -> None:
    args = broken(lambda a: a.update(request_timeout_s=300))
    args["pools"]["small"]["ray_actor_options"] = {"num_cpus": 1, "resources": {"head": 1}}
    config = load_app_config(args)
    assert config.request_timeout_s == 300.0
    assert config.pools["small"].ray_actor_options.num_cpus == 1.0


def test_an_app_without_small_or_code_pools_is_valid_when_routing_never_names_them() -> None:
    """The defaults name `small` (cascade.source_pool, rules.default_pool) and `code`
    (rules.code_pool), but only pools the config writes down must exist."""
    args = broken(lambda a: None)
    args["pools"] = {"big": {"model": "big-chat"}}
    args["routing"] = {"rules": {"default_pool": "big"}, "fallback": {"chains": {}}}
    config = load_app_config(args)
    assert config.routing.cascade.source_pool == "small"
    assert config.routing.rules.code_pool == "code"
    assert set(config.routing.pools_named()) == {"big"}


def test_pools_named_lists_every_pool_the_routing_config_must_have() -> None:
    routing = RoutingConfig.model_validate(
        {
            "rules": {"default_pool": "a", "code_pool": "not-checked", "large_pool": "nor-this"},
            "cascade": {"source_pool": "b", "rules": [{"source": "c", "target": "d"}]},
            "fallback": {"chains": {"e": ["f"]}},
            "semantic": {"examples": {"g": ["hello"]}},
            "tiers": {"t": {"pools": ["h"]}},
            "learned": {"path": "router.json"},
        }
    )
    named = routing.pools_named()
    assert set(named) == {"a", "b", "c", "d", "e", "f", "g", "h", "large"}
    assert named["large"] == ["learned.strong_pool"]  # the default, checked once configured


def test_a_learned_router_needs_its_default_strong_pool() -> None:
    args = broken(lambda a: None)
    args["pools"] = {"small": {"model": "tiny-chat"}}
    args["routing"] = {"fallback": {"chains": {}}, "learned": {"path": "router.json"}}
    with pytest.raises(ConfigError, match=r"'large' \(routing.learned.strong_pool\)"):
        load_app_config(args)


def test_cascade_pairs_without_a_rule_get_the_default_rule() -> None:
    cascade = CascadeConfig()
    assert cascade.rules == []
    for target in ("large", "code"):
        rule = cascade.rule("small", target)
        assert rule == ConfidenceRule(source="small", target=target)
        assert (rule.method, rule.threshold) == ("mean_logprob", -0.6)


def test_fake_options_are_not_part_of_the_production_pool_config() -> None:
    with pytest.raises(ValidationError, match="fake"):
        PoolConfig.model_validate({"model": "tiny-chat", "fake": {"reply": "hi"}})
    with pytest.raises(ConfigError, match="fake: Extra inputs are not permitted"):
        load_app_config(fake_app_args())


def test_fake_app_args_split_into_the_config_and_per_pool_options() -> None:
    config, fakes = load_fake_app_config(fake_app_args(small={"token_latency_s": 0.5}))
    assert config.engine == "fake"
    assert set(fakes) == {"small", "large", "code"}
    assert fakes["small"].token_latency_s == 0.5
    assert fakes["small"].reply == "small answer from {model}"
    args = fake_app_args()
    del args["fake"], args["engine"]
    config, fakes = load_fake_app_config(args)
    assert (config.engine, fakes) == ("fake", {})


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda a: a["fake"].update(huge={"reply": "x"}), "fake: options for pools that are not"),
        (lambda a: a["fake"]["small"].update(rpely="x"), "fake.small.rpely: Extra inputs"),
        (lambda a: a["fake"]["small"].update(token_latency_s="1"), "fake.small.token_latency_s"),
        (lambda a: a.update(engine="vllm"), "the fake app runs only the fake engine"),
        (lambda a: a["pools"]["small"].update(model="nope"), "serves model 'nope'"),
    ],
)
def test_bad_fake_app_args_fail_before_binding(mutate: Any, message: str) -> None:
    from deployments.builder import build_fake_app

    args = copy.deepcopy(fake_app_args())
    mutate(args)
    with pytest.raises(ConfigError) as err:
        build_fake_app(args)
    assert str(err.value).startswith("invalid Switchyard config:")
    assert message in str(err.value)


def test_tier_quotas_must_name_configured_tiers() -> None:
    args = fake_app_args()
    args["tier_quotas"] = {"gold": {"limits": {"requests_per_minute": 5}}}
    with pytest.raises(ConfigError, match="tier_quotas name tiers that routing.tiers lacks"):
        load_fake_app_config(args)
    args["routing"] = {"tiers": {"gold": {}}}
    assert load_fake_app_config(args)[0].quotas().accounts("t", "gold", None)[0][0] == "tenant:t"


def test_the_embedded_profile_fits_the_two_cpus_it_runs_on() -> None:
    """Every deployment's reserved CPUs, the quota keeper's included, fit a 2-core node:
    one that does not fit is never scheduled and the app never becomes ready."""
    from deployments.quota import QuotaKeeper

    app = yaml.safe_load((ROOT / "serve_config.yaml").read_text())["applications"][0]
    config = load_app_config(app["args"])
    deployments = [*config.pools.values(), config.ingress]
    reserved = sum(d.ray_actor_options.num_cpus * d.num_replicas for d in deployments)
    keeper = QuotaKeeper.ray_actor_options or {}  # type: ignore[attr-defined]
    reserved += keeper.get("num_cpus", 1)  # Serve's default is one CPU
    assert reserved <= 2


# --- capabilities in the catalog --------------------------------------------------------------


def tool_call_parsers() -> list[tuple[str, str, str]]:
    """(config, model id, parser) of every model given a tool-call parser in the repo."""
    found = []
    for path, index in yaml_apps():
        app = yaml.safe_load((ROOT / path).read_text())["applications"][index]
        for model in app["args"].get("models", []):
            if model.get("tool_call_parser") is not None:
                found.append((path, model["id"], model["tool_call_parser"]))
    return found


def test_every_tool_call_parser_in_the_repository_is_one_vllm_has() -> None:
    """A misspelt parser passes the config and fails only when a replica starts."""
    from vllm.tool_parsers import ToolParserManager

    known = {*ToolParserManager.tool_parsers, *ToolParserManager.lazy_parsers}
    found = tool_call_parsers()
    assert ("serve_config.yaml", "qwen2.5-coder-0.5b-instruct", "hermes") in found
    assert {parser for _, _, parser in found} <= known
    assert "hremes" not in known  # the check can fail


def test_the_embedded_profile_offers_tools_on_the_qwen_pools_only() -> None:
    config = load_app_config(app_args("serve_config.yaml"))
    capable = {
        name
        for name, pool in config.pools.items()
        if "tools" in config.model(pool.model).capabilities()
    }
    assert capable == {
        name for name, pool in config.pools.items() if pool.model.startswith("qwen2.5")
    }
    assert capable and capable != set(config.pools)
    for model in config.models:
        assert {"chat", "completion", "structured_output"} <= model.capabilities()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"tool_call_parser": "x" * 65}, "tool_call_parser"),
        ({"tool_call_parser": 1}, "tool_call_parser: Input should be a valid string"),
        ({"structured_output": "yes"}, "structured_output: Input should be a valid boolean"),
    ],
)
def test_capability_fields_are_checked_like_the_rest(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_app_config(broken(lambda a: a["models"][0].update(fields)))
    assert message in str(err.value)


def test_a_model_is_offered_tools_only_with_a_parser_and_chat() -> None:
    args = broken(lambda a: a["models"][1].update(tool_call_parser="hermes"))
    config = load_app_config(args)
    assert "tools" in config.model("big-chat").capabilities()
    assert "tools" not in config.model("tiny-chat").capabilities()
    assert config.model("base-lm").capabilities() == frozenset({"completion", "structured_output"})
