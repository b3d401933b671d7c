"""Shared test helpers: a fake-engine app config, and a local Ray Serve for the Serve tiers.

Ray is imported inside the fixtures only, so unit tests never start or import it.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import httpx
import openai
import pytest

if TYPE_CHECKING:
    from deployments.config import AppConfig
    from deployments.fake_options import FakeEngineOptions


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


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """One real PostgreSQL server for the session (tests/support/postgres.py): the SQLAlchemy
    URL of its fresh database. Stopped and deleted at the end of the session.

    Without PostgreSQL installed the tests using it skip, or fail when
    SWITCHYARD_REQUIRE_POSTGRES=1 (CI sets it).
    """
    from tests.support.postgres import PostgresNotInstalled, PostgresServer, skip_or_fail

    try:
        server = PostgresServer()
    except PostgresNotInstalled as missing:
        skip_or_fail(missing)
    with server as url:
        yield url


def run_app(args: dict[str, Any], name: str) -> None:
    """Deploy the app under `/<name>` and wait until it is running.

    Args with a `fake` key (see `fake_app_args`) go to the test builder `build_fake_app`,
    others to the production builder `build_app`.
    """
    from ray import serve

    from deployments.builder import build_app, build_fake_app

    builder = build_fake_app if "fake" in args else build_app
    serve.run(builder(args), name=name, route_prefix=f"/{name}")


def wait_healthy(base: str) -> dict[str, Any]:
    """/health's body once it is 200 (bounded: 60 s).

    `serve.run` returns once every deployment runs, but the ingress reads replica counts
    and stats by polling (every 2 s and 1 s): for a moment after start, or when a stats
    call missed its deadline on a loaded machine, a pool is not `ok` there, and /health
    a 503 until the next round."""
    deadline = time.monotonic() + 60
    while (health := httpx.get(f"{base}/health", timeout=30)).status_code != 200:
        assert time.monotonic() < deadline, health.text
        time.sleep(0.2)
    return dict(health.json())


def wait_for(
    check: Callable[[], bool], timeout_s: float, step_s: float = 0.5, what: str = "condition"
) -> float:
    """Seconds until `check()` held, asked every `step_s`; fails the test, naming `what`,
    after `timeout_s`."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout_s:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(step_s)
    return time.monotonic() - started


def minute_left(needed_s: float) -> None:
    """Wait, if need be, for the next clock minute so `needed_s` of it are left.

    Per-minute limits count by clock minute: requests a test counts together must fall
    in one. Call it once the app is up (its start time would eat the window)."""
    left = 60 - time.time() % 60
    if left < needed_s:
        time.sleep(left + 0.5)


def fresh_health(base: str, *pools: str, timeout_s: float = 30) -> dict[str, Any]:
    """/health's body once the stats poller (every 1 s) has sampled each of `pools` since
    this call: their counters (`running`, `aborted`) are current, not a sample taken
    before the last request ended."""
    asked = time.monotonic()
    body: dict[str, Any] = {}

    def sampled_since() -> bool:
        nonlocal body
        sent = time.monotonic()
        body = httpx.get(f"{base}/health", timeout=30).json()
        # NOTE: /health answered after `sent`, so a sample then `age` old was taken after
        # `asked` when age < sent - asked (Ray's processes share this machine's clock)
        ages = [body["pools"][pool].get("stats_age_s") for pool in pools]
        return all(age is not None and age < sent - asked for age in ages)

    wait_for(sampled_since, timeout_s, step_s=0.2, what=f"a fresh stats sample of {pools}")
    return body


def delete_app(name: str) -> None:
    from ray import serve

    serve.delete(name)


def client(port: int, name: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"http://127.0.0.1:{port}/{name}/v1", api_key="unused", max_retries=0
    )


_STATE_DIR: list[str] = []


def state_database_url() -> str:
    """A fresh SQLite file for each app a test builds, outside the user's cache dir."""
    if not _STATE_DIR:
        _STATE_DIR.append(tempfile.mkdtemp(prefix="switchyard-state-"))
        atexit.register(shutil.rmtree, _STATE_DIR[0], True)
    fd, path = tempfile.mkstemp(suffix=".db", dir=_STATE_DIR[0])
    os.close(fd)
    return f"sqlite:///{path}"


def fake_app_args(**pool_fakes: dict[str, Any]) -> dict[str, Any]:
    """Args of `build_fake_app`: three pools on the fake engine.

    `fake` maps a pool to its FakeEngineOptions; `pool_fakes` adds to a pool's options.
    """
    fake: dict[str, dict[str, Any]] = {
        "small": {"reply": "small answer from {model}"},
        "large": {"reply": "large answer from {model}"},
        "code": {"reply": "def answer(): return 42"},
    }
    for pool, options in pool_fakes.items():
        fake[pool] = {**fake.get(pool, {}), **options}
    return {
        "fake": fake,
        "engine": "fake",
        "auth": {"mode": "off"},
        "database": {"url": state_database_url()},
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
        "pools": {
            "small": {"model": "tiny-chat"},
            "large": {"model": "big-chat"},
            "code": {"model": "coder"},
        },
    }


def fake_app(
    args: dict[str, Any] | None = None, **pool_fakes: dict[str, Any]
) -> tuple[AppConfig, dict[str, FakeEngineOptions]]:
    """The validated config and per-pool fake options of `args` (default `fake_app_args`),
    for tests that run the app's parts in-process."""
    from deployments.config import load_fake_app_config

    return load_fake_app_config(fake_app_args(**pool_fakes) if args is None else args)
