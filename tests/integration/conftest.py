"""Ray Serve with the fake engine: one local Ray instance for the whole module."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import openai
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def serve_port() -> Iterator[int]:
    ray = pytest.importorskip("ray")
    from ray import serve

    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield port
    serve.shutdown()
    ray.shutdown()


def run_app(args: dict[str, Any], name: str) -> None:
    from ray import serve

    from deployments.builder import build_app

    serve.run(build_app(args), name=name, route_prefix=f"/{name}")


def client(port: int, name: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"http://127.0.0.1:{port}/{name}/v1", api_key="unused", max_retries=0
    )
