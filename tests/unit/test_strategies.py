"""Cascade, speculative and fallback through OpenAIServing, on in-process fake engines."""

from __future__ import annotations

import asyncio
from typing import Any

from deployments.openai.protocol import ChatCompletionRequest
from routing.planner import Wishes
from tests.unit.test_serving import chat, events, serving

CONFIDENT = {"logprobs": [-0.1]}
UNSURE = {"logprobs": [-2.0]}


def body(routed: Any) -> dict[str, Any]:
    return routed.body.model_dump()  # type: ignore[no-any-return]


async def test_cascade_accepts_a_confident_small_answer() -> None:
    svc, pools = serving(small=CONFIDENT)
    routed = await svc.chat(chat(), Wishes(strategy="cascade"))
    info = body(routed)["switchyard"]
    assert (info["pool"], info["strategy"], info["escalated"]) == ("small", "cascade", False)
    assert info["confidence"] == -0.1
    assert (info["confidence_method"], info["threshold"]) == ("mean_logprob", -0.6)
    assert [p for p, _ in pools.calls] == ["small"]


async def test_cascade_escalates_exactly_below_threshold() -> None:
    for logprob, escalates in [(-0.59, False), (-0.6, False), (-0.61, True)]:
        svc, pools = serving(small={"logprobs": [logprob]})
        info = body(await svc.chat(chat(), Wishes(strategy="cascade")))["switchyard"]
        assert info["escalated"] is escalates, logprob
        assert info["pool"] == ("large" if escalates else "small")
    assert info["pools_tried"] == ["small", "large"]
    assert info["discarded_tokens"] == 4  # the rejected small answer
    assert (
        body(await svc.chat(chat(), Wishes(strategy="cascade")))["choices"][0]["message"]["content"]
        == "large answer from big-chat"
    )


async def test_cascade_escalates_code_to_the_code_pool() -> None:
    svc, _ = serving(small=UNSURE)
    info = body(await svc.chat(chat(text="fix this python bug"), Wishes(strategy="cascade")))
    assert info["switchyard"]["pool"] == "code"


async def test_cascade_source_failure_goes_to_target() -> None:
    svc, _ = serving(small={"fail_requests": True})
    info = body(await svc.chat(chat(), Wishes(strategy="cascade")))["switchyard"]
    assert (info["pool"], info["pools_tried"]) == ("large", ["small", "large"])


async def test_speculative_small_wins_and_large_is_aborted() -> None:
    svc, pools = serving(small=CONFIDENT, large={"token_latency_s": 0.05})
    info = body(await svc.chat(chat(), Wishes(strategy="speculative")))["switchyard"]
    assert (info["pool"], info["speculative_winner"], info["escalated"]) == (
        "small",
        "source",
        False,
    )
    assert info["discarded_engine_s"] > 0
    await asyncio.sleep(0)  # let the cancelled stream run its finally
    assert len(pools.engines["large"].aborted) == 1  # type: ignore[attr-defined]
    assert pools.engines["large"].stats().running == 0


async def test_speculative_unsure_small_waits_for_large() -> None:
    svc, pools = serving(small=UNSURE, large={"token_latency_s": 0.01})
    routed = await svc.chat(chat(), Wishes(strategy="speculative"))
    info = body(routed)["switchyard"]
    assert (info["pool"], info["speculative_winner"], info["escalated"]) == (
        "large",
        "target",
        True,
    )
    assert info["confidence"] == -2.0
    assert info["discarded_tokens"] == 4
    assert pools.engines["large"].aborted == []  # type: ignore[attr-defined]


async def test_speculative_large_first_aborts_small() -> None:
    svc, pools = serving(small={"first_token_latency_s": 0.5})
    info = body(await svc.chat(chat(), Wishes(strategy="speculative")))["switchyard"]
    assert (info["pool"], info["speculative_winner"]) == ("large", "target")
    await asyncio.sleep(0)
    assert len(pools.engines["small"].aborted) == 1  # type: ignore[attr-defined]


async def test_speculative_strong_failure_keeps_the_weak_answer() -> None:
    svc, _ = serving(small=UNSURE, large={"fail_requests": True})
    info = body(await svc.chat(chat(), Wishes(strategy="speculative")))["switchyard"]
    assert (info["pool"], info["speculative_winner"]) == ("small", "source")


async def test_fallback_opens_the_breaker_then_skips_the_pool() -> None:
    svc, pools = serving(small={"fail_requests": True})
    for _ in range(3):
        info = body(await svc.chat(chat()))["switchyard"]
        assert (info["pool"], info["pools_tried"], info["fallback"]) == (
            "large",
            ["small", "large"],
            True,
        )
    assert svc.monitor.circuit("small") == "open"
    info = body(await svc.chat(chat()))["switchyard"]
    # the open circuit is seen by the planner: small is not eligible any more
    assert info["pools_tried"] == ["large"]
    assert sum(1 for p, _ in pools.calls if p == "small") == 3


async def test_cascade_stream_shows_only_the_accepted_answer() -> None:
    svc, _ = serving(small=UNSURE)
    req = ChatCompletionRequest.model_validate(
        {
            "model": "auto",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    chunks = await events(await svc.chat(req, Wishes(strategy="cascade")))
    assert chunks[0]["switchyard"]["escalated"] is True
    text = "".join(c["choices"][0]["delta"]["content"] for c in chunks[1:-1])
    assert text == "large answer from big-chat"
    assert chunks[-1]["usage"]["completion_tokens"] == 4


async def test_dry_run_returns_the_plan_without_generating() -> None:
    svc, pools = serving()
    req = ChatCompletionRequest.model_validate(
        {"model": "auto", "messages": [{"role": "user", "content": "write python code"}]}
    )
    decided = await svc.dry_run(req, "write python code", Wishes(strategy="speculative"), chat=True)
    assert (decided.strategy, decided.pool, decided.target) == ("speculative", "small", "code")
    assert pools.calls == []
