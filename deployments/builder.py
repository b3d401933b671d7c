"""The app builders. `build_app` is the one `serve_config.yaml` names
(`import_path: deployments.builder:build_app`); `build_fake_app` is its test-only twin.

Both validate the typed config first, so a bad config fails before any replica starts,
bring the state database's schema up to date (once, here, so replicas never race to
migrate), then bind one `PoolServer` per pool and the ingress in front of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from ray.serve import Application, Deployment

from deployments.config import AppConfig, load_app_config, load_fake_app_config
from deployments.ingress import Ingress
from deployments.pool import PoolServer
from deployments.quota import QuotaKeeper
from models.engines.fake import FakeEngineOptions
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
    pool_server, ingress = cast(Deployment, PoolServer), cast(Deployment, Ingress)
    pools = {
        name: pool_server.options(name=f"pool-{name}", **pool.serve_options()).bind(
            name, config.model(pool.model), config.engine, pool.stream_interval_ms, fakes.get(name)
        )
        for name, pool in config.pools.items()
    }
    # NOTE: the keeper resolves the database URL itself, from its own environment: a URL
    # with a password never travels as a constructor argument.
    quota = cast(Deployment, QuotaKeeper).bind(config.database.url)
    return ingress.options(**config.ingress.serve_options()).bind(config, pools, quota)
