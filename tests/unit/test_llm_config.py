"""A pool's `LLMConfig`: the catalog's model and the pool's replicas in Ray Serve LLM's terms.

Building one starts nothing: the builder makes them for every pool before Serve runs.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from deployments.config import PoolConfig, load_app_config, load_fake_app_config
from deployments.llm_config import GIB, engine_kwargs, placement, pool_llm_config
from models.catalog import ModelSpec
from tests.conftest import fake_app_args

ROOT = Path(__file__).resolve().parents[2]


def spec(**fields: Any) -> ModelSpec:
    return ModelSpec.model_validate({"id": "tiny-chat", "source": "path://tiny", **fields})


def pool(**fields: Any) -> PoolConfig:
    return PoolConfig.model_validate({"model": "tiny-chat", **fields})


# --- engine arguments ---------------------------------------------------------------------


def test_a_plain_model_gets_only_the_engine_arguments_it_sets() -> None:
    assert engine_kwargs(spec()) == {
        "dtype": "auto",
        "max_model_len": 2048,
        "enforce_eager": True,
        "tensor_parallel_size": 1,
    }


def test_every_engine_option_of_the_catalog_reaches_vllm() -> None:
    engine = {
        "dtype": "float32", "max_model_len": 4096, "kv_cache_gib": 1.5,
        "gpu_memory_utilization": 0.8, "tensor_parallel_size": 2, "enforce_eager": False,
        "max_num_seqs": 32,
    }  # fmt: skip
    got = engine_kwargs(spec(engine=engine, chat_template="{{ messages }}"))
    assert got == {
        "dtype": "float32",
        "max_model_len": 4096,
        "enforce_eager": False,
        "tensor_parallel_size": 2,
        "kv_cache_memory_bytes": int(1.5 * GIB),
        "gpu_memory_utilization": 0.8,
        "max_num_seqs": 32,
        "chat_template": "{{ messages }}",
    }
    assert GIB == 1024**3
    assert isinstance(got["kv_cache_memory_bytes"], int)


def test_a_tool_call_parser_turns_on_vllms_automatic_tool_choice() -> None:
    got = engine_kwargs(spec(tool_call_parser="hermes"))
    assert (got["enable_auto_tool_choice"], got["tool_call_parser"]) == (True, "hermes")
    assert "enable_auto_tool_choice" not in engine_kwargs(spec())
    assert "tool_call_parser" not in engine_kwargs(spec())


def test_passed_through_engine_kwargs_come_last_and_win() -> None:
    engine = {"dtype": "float32", "engine_kwargs": {"dtype": "bfloat16", "seed": 7}}
    got = engine_kwargs(spec(engine=engine))
    assert (got["dtype"], got["seed"]) == ("bfloat16", 7)


# --- placement ------------------------------------------------------------------------------


def test_a_cpu_replica_reserves_its_cpus_in_the_engines_bundle() -> None:
    got = placement(pool(ray_actor_options={"num_cpus": 0.5}))
    assert got == {"bundles": [{"CPU": 0.5}], "strategy": "STRICT_PACK"}


def test_a_replica_reserving_nothing_still_gets_a_tiny_bundle() -> None:
    """Ray refuses an empty bundle: a replica that reserves nothing asks for 1% of a CPU."""
    assert placement(pool()) == {"bundles": [{"CPU": 0.01}], "strategy": "STRICT_PACK"}


def test_gpus_and_custom_resources_go_into_the_bundle() -> None:
    options = {"num_cpus": 1, "num_gpus": 1, "resources": {"node-a": 0.5}}
    assert placement(pool(ray_actor_options=options))["bundles"] == [
        {"CPU": 1.0, "GPU": 1.0, "node-a": 0.5}
    ]


def test_given_bundles_and_strategy_are_used_as_given() -> None:
    bundles = [{"CPU": 1, "GPU": 1}, {"GPU": 1}]
    got = placement(
        pool(
            placement_group_bundles=bundles,
            placement_group_strategy="SPREAD",
            ray_actor_options={"num_cpus": 4},  # not added: the bundles say it all
        )
    )
    assert got == {"bundles": [{"CPU": 1.0, "GPU": 1.0}, {"GPU": 1.0}], "strategy": "SPREAD"}


# --- the whole LLMConfig ----------------------------------------------------------------------


def test_importing_the_pool_layer_and_building_a_config_start_no_ray() -> None:
    # In a fresh interpreter: the Serve tiers of the same pytest run have started Ray here.
    check = (
        "import ray\n"
        "import deployments.fake_engine, deployments.pool\n"
        "from deployments.llm_config import pool_llm_config\n"
        "from deployments.config import PoolConfig\n"
        "from models.catalog import ModelSpec\n"
        "config = pool_llm_config('small', PoolConfig(model='tiny-chat'),"
        " ModelSpec(id='tiny-chat', source='path://tiny'), 'tiny')\n"
        "assert config.model_id == 'tiny-chat'\n"
        "assert not ray.is_initialized()\n"
    )
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_llm_config_of_a_cpu_pool() -> None:
    from ray.serve.llm import LLMConfig

    config = pool_llm_config(
        "small",
        pool(ray_actor_options={"num_cpus": 0.5, "memory": 2**30}, stream_interval_ms=20),
        spec(tool_call_parser="hermes"),
        "/models/tiny",
    )
    assert isinstance(config, LLMConfig)
    assert (config.model_id, config.model_loading_config.model_source) == (
        "tiny-chat",
        "/models/tiny",
    )
    assert config.accelerator_config.kind == "cpu"
    assert config.engine_kwargs == engine_kwargs(spec(tool_call_parser="hermes"))
    dumped = config.model_dump()
    assert dumped["placement_group_config"] == {
        "bundles": [{"CPU": 0.5}],
        "strategy": "STRICT_PACK",
    }
    # The bundle holds the replica's CPUs; the actor reserves nothing on top.
    assert config.deployment_config["ray_actor_options"] == {
        "num_cpus": 0,
        "num_gpus": 0,
        "memory": 2**30,
    }
    assert config.experimental_configs == {"stream_batching_interval_ms": 20.0}
    assert config.runtime_env is None
    assert config.log_engine_metrics is True


def test_the_fake_engine_logs_no_engine_metrics() -> None:
    assert pool_llm_config("small", pool(), spec(), "tiny", fake=True).log_engine_metrics is False


def test_a_pool_with_gpu_bundles_is_a_gpu_pool_with_its_environment() -> None:
    config = pool_llm_config(
        "large",
        pool(placement_group_bundles=[{"GPU": 1}, {"GPU": 1}], env_vars={"VLLM_X": "1"}),
        spec(engine={"tensor_parallel_size": 2}),
        "org/model",
    )
    assert config.accelerator_config.kind == "gpu"
    assert config.runtime_env == {"env_vars": {"VLLM_X": "1"}}
    assert config.engine_kwargs["tensor_parallel_size"] == 2
    assert config.deployment_config["ray_actor_options"] == {"num_cpus": 0, "num_gpus": 0}


def app_args(path: str) -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / path).read_text())
    args: dict[str, Any] = copy.deepcopy(doc["applications"][0]["args"])
    return args


@pytest.mark.parametrize("path", ["serve_config.yaml", "cluster/serve_config.gpu.yaml"])
def test_every_pool_of_the_shipped_profiles_has_a_valid_llm_config(path: str) -> None:
    config = load_app_config(app_args(path))
    gpu = path.startswith("cluster/")
    for name, each in config.pools.items():
        model = config.model(each.model)
        built = pool_llm_config(name, each, model, model.source_name)
        assert built.model_id == model.id
        assert built.accelerator_config.kind == ("gpu" if gpu else "cpu")
        assert built.engine_kwargs["max_model_len"] == model.engine.max_model_len
        bundles = built.model_dump()["placement_group_config"]["bundles"]
        if gpu:  # one GPU per tensor-parallel shard
            assert sum(b.get("GPU", 0) for b in bundles) == model.engine.tensor_parallel_size
        else:
            assert bundles == [{"CPU": each.ray_actor_options.num_cpus}]
        capable = "tools" in model.capabilities()
        assert ("tool_call_parser" in built.engine_kwargs) == capable


def test_the_fake_apps_pools_build_as_the_in_process_client_builds_them() -> None:
    config, _ = load_fake_app_config(fake_app_args())
    for name, each in config.pools.items():
        model = config.model(each.model)
        built = pool_llm_config(name, each, model, model.source_name, fake=True)
        assert built.model_loading_config.model_source == model.source_name
        assert built.engine_kwargs["max_model_len"] == model.engine.max_model_len
