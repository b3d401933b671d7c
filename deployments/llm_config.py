"""A pool's `LLMConfig`: the catalog's model and engine options in Ray Serve LLM's terms.

Each pool is a Ray Serve LLM server (`deployments.pool.PoolServer`, an `LLMServer`), so
what the catalog says about a model (weights, dtype, context, KV cache, tool parser) and
what the pool config says about its replicas (CPUs, GPUs, placement, environment) become
one `LLMConfig` here. Serve options that are Switchyard's (replica counts, queue bounds,
autoscaling policy) are applied on top by the builder.

Placement: Ray Serve LLM reserves a placement group per replica and adds the replica
actor's own resources to its first bundle. On a CPU machine its default bundle is one
whole CPU per engine, which on the embedded 2-core profile leaves no room for the other
pools; so the replica's `num_cpus` becomes the engine's bundle and the actor itself
reserves nothing on top. On GPUs the pool's `placement_group_bundles` are used as given
(tensor parallelism: one GPU per bundle).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from models.catalog import ModelSpec

if TYPE_CHECKING:
    from ray.serve.llm import LLMConfig

    from deployments.config import PoolConfig

GIB = 1 << 30


def engine_kwargs(spec: ModelSpec) -> dict[str, Any]:
    """vLLM engine arguments (`AsyncEngineArgs` and its OpenAI front-end's) of a model."""
    opts = spec.engine
    args: dict[str, Any] = {
        "dtype": opts.dtype,
        "max_model_len": opts.max_model_len,
        "enforce_eager": opts.enforce_eager,
        "tensor_parallel_size": opts.tensor_parallel_size,
    }
    if opts.kv_cache_gib is not None:
        args["kv_cache_memory_bytes"] = int(opts.kv_cache_gib * GIB)
    if opts.gpu_memory_utilization is not None:
        args["gpu_memory_utilization"] = opts.gpu_memory_utilization
    if opts.max_num_seqs is not None:
        args["max_num_seqs"] = opts.max_num_seqs
    if spec.tool_call_parser is not None:
        args["enable_auto_tool_choice"] = True
        args["tool_call_parser"] = spec.tool_call_parser
    if spec.chat_template is not None:
        args["chat_template"] = spec.chat_template
    args.update(opts.engine_kwargs)
    return args


def placement(pool: PoolConfig) -> dict[str, Any]:
    """The engine's placement group (see the module docstring)."""
    if pool.placement_group_bundles is not None:
        bundles = [dict(b) for b in pool.placement_group_bundles]
    else:
        actor = pool.ray_actor_options
        bundle = {"CPU": actor.num_cpus, "GPU": actor.num_gpus, **actor.resources}
        bundles = [{k: v for k, v in bundle.items() if v} or {"CPU": 0.01}]
    return {"bundles": bundles, "strategy": pool.placement_group_strategy or "STRICT_PACK"}


def pool_llm_config(
    name: str, pool: PoolConfig, spec: ModelSpec, model_source: str, fake: bool = False
) -> LLMConfig:
    """`LLMConfig` of pool `name`; `model_source` is where vLLM loads the weights from."""
    from ray.serve.llm import LLMConfig

    gpus = any(b.get("GPU", 0) for b in placement(pool)["bundles"])
    env = dict(pool.env_vars)
    actor: dict[str, Any] = {"num_cpus": 0, "num_gpus": 0}
    if pool.ray_actor_options.memory is not None:
        actor["memory"] = pool.ray_actor_options.memory
    config: dict[str, Any] = {
        "model_loading_config": {"model_id": spec.id, "model_source": model_source},
        "accelerator_config": {"kind": "gpu" if gpus else "cpu"},
        "engine_kwargs": engine_kwargs(spec),
        "placement_group_config": placement(pool),
        "runtime_env": {"env_vars": env} if env else None,
        "deployment_config": {"ray_actor_options": actor},
        # PoolServer coalesces streams itself at this interval (the first event never waits).
        "experimental_configs": {"stream_batching_interval_ms": pool.stream_interval_ms},
        # The fake engine has no vLLM engine whose metrics could be logged.
        "log_engine_metrics": not fake,
    }
    return LLMConfig.model_validate(config)
