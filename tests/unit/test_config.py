from __future__ import annotations

import copy
import importlib
from pathlib import Path
from typing import Any

import pytest
import yaml

from deployments.config import (
    POOL_AUTOSCALING_POLICY,
    AppConfig,
    ConfigError,
    load_app_config,
)
from tests.conftest import fake_app_args

ROOT = Path(__file__).resolve().parents[2]


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
    opts = AppConfig.model_validate(args).pools["small"].serve_options()
    assert "policy" not in opts["autoscaling_config"]
    assert opts["autoscaling_config"]["max_replicas"] == 3


def test_fixed_replicas_map_to_num_replicas() -> None:
    config = AppConfig.model_validate(fake_app_args())
    opts = config.pools["small"].serve_options()
    assert opts["num_replicas"] == 1
    assert "autoscaling_config" not in opts


def test_access_log_off_for_pools_on_for_the_ingress() -> None:
    config = AppConfig.model_validate(fake_app_args())
    assert config.pools["small"].serve_options()["logging_config"] == {"enable_access_log": False}
    assert config.ingress.serve_options()["logging_config"] == {"enable_access_log": True}
    args = fake_app_args()
    args["pools"]["small"]["access_log"] = True
    opts = AppConfig.model_validate(args).pools["small"].serve_options()
    assert opts["logging_config"] == {"enable_access_log": True}


def broken(mutate: Any) -> dict[str, Any]:
    args = copy.deepcopy(fake_app_args())
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
            "default_pool 'medium'",
        ),
        (
            lambda a: a.update(routing={"fallback": {"chains": {"small": ["huge"]}}}),
            "routing names pools that are not configured: ['huge']",
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
