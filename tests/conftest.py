"""Shared test helpers: a fake-engine app config, and a local Ray Serve for the Serve tiers.

Ray is imported inside the fixtures only, so unit tests never start or import it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Any

import openai
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


PROXY_CALLBACK = "deployments.proxy:middlewares"
METRICS_PORT = free_port()  # Ray's Prometheus export port in the test cluster


@pytest.fixture(scope="session")
def serve_port() -> Iterator[int]:
    """One local Ray instance and Serve HTTP proxy for all integration and e2e tests."""
    import ray
    from ray import serve

    # The proxy edge (deployments/proxy.py), as `make serve` runs it: Ray's processes
    # inherit this environment.
    os.environ["RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"] = PROXY_CALLBACK
    port = free_port()
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        _metrics_export_port=METRICS_PORT,
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield port
    serve.shutdown()
    ray.shutdown()


def run_app(args: dict[str, Any], name: str) -> None:
    """Deploy the real app builder under `/<name>` and wait until it is running."""
    from ray import serve

    from deployments.builder import build_app

    serve.run(build_app(args), name=name, route_prefix=f"/{name}")


def delete_app(name: str) -> None:
    from ray import serve

    serve.delete(name)


def client(port: int, name: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"http://127.0.0.1:{port}/{name}/v1", api_key="unused", max_retries=0
    )


def fake_app_args(**pool_fakes: dict[str, Any]) -> dict[str, Any]:
    """Three pools on the fake engine; `pool_fakes` sets a pool's FakeEngineOptions."""
    pools: dict[str, Any] = {
        "small": {"model": "tiny-chat", "fake": {"reply": "small answer from {model}"}},
        "large": {"model": "big-chat", "fake": {"reply": "large answer from {model}"}},
        "code": {"model": "coder", "fake": {"reply": "def answer(): return 42"}},
    }
    for pool, fake in pool_fakes.items():
        pools[pool]["fake"] = {**pools[pool]["fake"], **fake}
    return {
        "engine": "fake",
        "models": [
            {
                "id": "tiny-chat",
                "source": "path://tiny",
                "max_tokens": 64,
                "engine": {"max_model_len": 128},
            },
            {"id": "big-chat", "source": "path://big", "max_tokens": 256},
            {"id": "coder", "source": "path://coder", "max_tokens": 256},
            {"id": "base-lm", "source": "path://base", "chat": False, "max_tokens": 32},
        ],
        "pools": pools,
    }
