"""The app builder named by `serve_config.yaml` (`import_path: deployments.builder:build_app`).

It validates the typed config first, so a bad config fails before any replica starts,
then binds one `PoolServer` per pool and the ingress in front of them.
"""

from __future__ import annotations

from typing import Any, cast

from ray.serve import Application, Deployment

from deployments.config import AppConfig, load_app_config
from deployments.ingress import Ingress
from deployments.pool import PoolServer


def build_app(args: dict[str, Any]) -> Application:
    config = args if isinstance(args, AppConfig) else load_app_config(args)
    # NOTE: `@serve.deployment` turns the classes into Deployments, which mypy cannot see.
    pool_server, ingress = cast(Deployment, PoolServer), cast(Deployment, Ingress)
    pools = {
        name: pool_server.options(name=f"pool-{name}", **pool.serve_options()).bind(
            name, config.model(pool.model), config.engine, pool.fake, pool.stream_interval_ms
        )
        for name, pool in config.pools.items()
    }
    return ingress.options(**config.ingress.serve_options()).bind(config, pools)
