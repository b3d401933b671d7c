"""Shared test helpers: a small fake-engine app config used by unit and integration tests."""

from __future__ import annotations

from typing import Any


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
            {"id": "tiny-chat", "source": "path://tiny", "max_tokens": 64,
             "engine": {"max_model_len": 128}},
            {"id": "big-chat", "source": "path://big", "max_tokens": 256},
            {"id": "coder", "source": "path://coder", "max_tokens": 256},
            {"id": "base-lm", "source": "path://base", "chat": False, "max_tokens": 32},
        ],
        "pools": pools,
    }
