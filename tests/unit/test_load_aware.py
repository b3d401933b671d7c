"""Load-aware execution: pools at zero replicas, saturated targets, the escalation forecast,
and what the metrics summary counts. In-process fake engines, no Ray."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from core.errors import ColdStartError, PromptError
from deployments.openai.errors import to_api_error
from execution.monitor import EngineStats, EscalationForecast
from routing.planner import Wishes
from tests.conftest import fake_app_args
from tests.unit.test_serving import body, chat, events, serving

UNSURE = {"logprobs": [-2.0]}
CODE = "fix this python bug: def f(: pass"


def no_fallback_for_code() -> dict[str, Any]:
    args = fake_app_args()
    args["routing"] = {"fallback": {"chains": {"small": ["large"], "large": ["small"]}}}
    return args


def info(routed: Any) -> dict[str, Any]:
    return body(routed)["switchyard"]  # type: ignore[no-any-return]


async def test_a_pool_at_zero_is_woken_and_the_request_falls_back_at_once() -> None:
    svc, pools = serving()
    svc.monitor.record_replicas("code", 0)
    routed = await svc.generate(chat(text=CODE))
    assert (info(routed)["pool"], info(routed)["fallback"]) == ("large", True)
    assert pools.woken == ["code"]
    assert [p for p, _ in pools.calls] == ["large"]


async def test_without_a_fallback_a_cold_pool_is_awaited_until_a_replica_runs() -> None:
    svc, pools = serving(no_fallback_for_code())
    svc.monitor.record_replicas("code", 0)
    woken = []

    def wake(pool: str) -> None:  # as Serve does: the wake-up call starts a replica, later
        woken.append(pool)
        asyncio.get_running_loop().call_soon(svc.monitor.record_replicas, pool, 1)

    generate = pools.generate
    cold_when_called = []

    async def called(pool: str, method: str, request: Any) -> Any:
        cold_when_called.append(svc.monitor.scaled_to_zero(pool))
        return await generate(pool, method, request)

    pools.wake = wake  # type: ignore[method-assign]
    pools.generate = called  # type: ignore[method-assign]
    routed = await svc.generate(chat(text=CODE))
    assert info(routed)["pool"] == "code"
    assert body(routed)["choices"][0]["message"]["content"] == "def answer(): return 42"
    assert woken == ["code"]
    assert cold_when_called == [False]  # called once, after the replica came up


async def test_a_cold_pool_that_does_not_start_in_time_is_a_clean_503() -> None:
    args = no_fallback_for_code()
    args["pools"]["code"]["cold_start_timeout_s"] = 0.2
    svc, pools = serving(args)
    svc.monitor.record_replicas("code", 0)
    with pytest.raises(ColdStartError) as err:
        await svc.generate(chat(text=CODE))
    api = to_api_error(err.value)
    assert (api.status, api.code) == (503, "cold_start")
    assert api.headers is not None and "retry-after" in api.headers
    assert pools.calls == []
    assert svc.metrics.summary()["outcomes"] == {"unavailable": 1}


async def test_cascade_keeps_an_unsure_answer_when_the_target_is_saturated() -> None:
    svc, pools = serving(small=UNSURE)
    svc.monitor.record_stats("large", EngineStats(running=32, waiting=3))
    result = info(await svc.generate(chat(), Wishes(strategy="cascade")))
    assert (result["pool"], result["escalated"]) == ("small", False)
    assert "escalation skipped: pool 'large' is saturated" in result["notes"]
    assert [p for p, _ in pools.calls] == ["small"]


async def test_speculation_downgrades_to_cascade_when_the_target_is_saturated() -> None:
    svc, _ = serving(small={"logprobs": [-0.1]})
    svc.monitor.record_stats("large", EngineStats(running=32, waiting=0))
    result = info(await svc.generate(chat(), Wishes(strategy="speculative")))
    assert (result["strategy"], result["pool"]) == ("cascade", "small")
    assert any("downgraded to cascade" in n for n in result["notes"])


def test_forecast_is_running_cascades_times_recent_escalation_share() -> None:
    forecast = EscalationForecast(prior_share=0.5, weight=0.5)
    for _ in range(4):
        forecast.started("large")
    assert forecast.expected() == {"large": 2.0}  # 4 running x prior 0.5
    forecast.finished("large", escalated=True)  # share 0.5 -> 0.75
    assert forecast.expected() == {"large": 2.25}  # 3 x 0.75
    forecast.finished("large", escalated=None)  # a failed source teaches nothing
    assert forecast.expected() == {"large": 1.5}


async def test_running_cascades_feed_the_forecast() -> None:
    svc, pools = serving(small=UNSURE)
    gate = pools.gates["small"] = asyncio.Event()  # the cheap call is held mid-cascade
    task = asyncio.create_task(svc.generate(chat(), Wishes(strategy="cascade")))
    for _ in range(100):  # until the cascade called its source
        if pools.calls:
            break
        await asyncio.sleep(0)
    assert [p for p, _ in pools.calls] == ["small"]
    assert svc.monitor.forecast.expected() == {"large": 0.5}  # 1 running x prior 0.5
    gate.set()
    await task
    assert svc.monitor.forecast.expected() == {"large": 0.0}
    assert svc.monitor.forecast.share["large"] > 0.5  # it escalated


async def test_metrics_summary_counts_outcomes_models_and_savings() -> None:
    args = fake_app_args()
    for model in args["models"]:  # the large model costs 10x the small one
        price = 10.0 if model["id"] == "big-chat" else 1.0
        model["cost"] = {"output_per_million": price}
    svc, _ = serving(args)
    await svc.generate(chat())
    await svc.generate(chat(model="large"))
    with pytest.raises(PromptError):
        await svc.generate(chat(max_tokens=100_000))
    summary = svc.metrics.summary()
    assert summary["requests"] == 3
    assert summary["outcomes"] == {"ok": 2, "client_error": 1}
    assert summary["success_rate"] == pytest.approx(2 / 3, abs=1e-4)
    assert summary["model_distribution"] == {"tiny-chat": 0.5, "big-chat": 0.5}
    # small answer: 4 tokens at $1/M instead of $10/M; the large answer saves nothing
    assert summary["cost_saved_usd"] == pytest.approx(4 * 9 / 1e6)
    assert summary["cost_saved_ratio"] == pytest.approx(36 / 80)


async def test_a_stream_the_client_leaves_counts_as_cancelled() -> None:
    svc, pools = serving(small={"token_latency_s": 0.01})
    routed = await svc.generate(chat(stream=True))
    assert routed.stream is not None
    await anext(routed.stream)
    await routed.stream.aclose()  # type: ignore[attr-defined]
    assert svc.metrics.summary()["outcomes"] == {"cancelled": 1}
    assert len(pools.engines["small"].aborted) == 1  # and the pool stopped generating
    whole = await svc.generate(chat(stream=True))
    assert (await events(whole))[-1]["choices"][0]["finish_reason"] == "stop"
    assert svc.metrics.summary()["outcomes"] == {"cancelled": 1, "ok": 1}
    assert len(pools.engines["small"].finished) == 1
