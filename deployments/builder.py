"""The app builders. `build_app` is the one `serve_config.yaml` names
(`import_path: deployments.builder:build_app`); `build_fake_app` is its test-only twin.

Both validate the typed config first, so a bad config fails before any replica starts,
bring the state database's schema up to date (once, here, so replicas never race to
migrate), then bind one Ray Serve LLM server (`PoolServer`) per pool, with the
`LLMConfig` the catalog and pool config make (`deployments/llm_config.py`), and the
ingress in front of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from ray.serve import Application, Deployment

from deployments.config import AppConfig, PoolConfig, load_app_config, load_fake_app_config
from deployments.fake_options import FakeEngineOptions
from deployments.ingress import Ingress
from deployments.llm_config import pool_llm_config
from deployments.quota import QuotaKeeper
from models.prepare import model_location
from tenancy.db import connect, database_url, migrate


def build_app(args: dict[str, Any]) -> Application:
    config = args if isinstance(args, AppConfig) else load_app_config(args)
    return _bind(config, {})


def build_fake_app(args: dict[str, Any]) -> Application:
    """The app on fake engines, for tests and benchmarks of everything above the engine.

    `import_path: deployments.builder:build_fake_app`; `args` are `build_app`'s plus
    `fake: {pool: FakeEngineOptions}` (reply, latencies, logprobs, failures per pool),
    kept out of the production config. `engine` is forced to `fake`.
    """
    config, fakes = load_fake_app_config(args)
    return _bind(config, fakes)


def _bind(config: AppConfig, fakes: Mapping[str, FakeEngineOptions]) -> Application:
    engine = connect(database_url(config.database.url))
    try:
        migrate(engine)
    finally:
        engine.dispose()
    # NOTE: `@serve.deployment` turns the classes into Deployments, which mypy cannot see.
    ingress = cast(Deployment, Ingress)
    pools = {
        name: _pool(name, pool, config, fakes.get(name)) for name, pool in config.pools.items()
    }
    # NOTE: the keeper resolves the database URL itself, from its own environment: a URL
    # with a password never travels as a constructor argument.
    quota = cast(Deployment, QuotaKeeper).bind(config.database.url)
    return ingress.options(**config.ingress.serve_options()).bind(config, pools, quota)


def _pool(
    name: str, pool: PoolConfig, config: AppConfig, fake: FakeEngineOptions | None
) -> Application:
    """Pool `name` as a Ray Serve LLM deployment named `pool-<name>`."""
    from ray.serve.llm import build_llm_deployment

    from deployments.pool import PoolServer

    spec = config.model(pool.model)
    fake_engine = config.engine == "fake"
    source = spec.source_name if fake_engine else model_location(spec)
    options = pool.serve_options()
    # NOTE: placement and the replica's resources are the LLMConfig's (llm_config.py).
    for key in ("ray_actor_options", "placement_group_bundles", "placement_group_strategy"):
        options.pop(key, None)
    options["name"] = f"pool-{name}"
    return build_llm_deployment(
        pool_llm_config(name, pool, spec, source, fake=fake_engine),
        name_prefix="",
        override_serve_options=options,
        deployment_cls=PoolServer,
        bind_kwargs={"pool": name, "fake": (fake or FakeEngineOptions()) if fake_engine else None},
    )
