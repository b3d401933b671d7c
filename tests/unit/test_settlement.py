"""Every token any pool produced is charged (issue 20, finding 7): cancelled, timed-out,
failed-then-fallback and raced requests settle their reservation with what their pools
did, and what could not be counted is charged as its worst case."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from core.errors import PoolTimeoutError, QuotaExceededError
from models.engines.base import GenerationRequest, GenerationResult
from routing.planner import Wishes
from tenancy.gate import QuotaGate
from tests.conftest import fake_app_args
from tests.support.keeper import Clock, RemoteKeeper
from tests.unit.test_ledger import Sink
from tests.unit.test_serving import chat, serving

BUDGET = {"acme": {"budget": {"usd_per_day": 10.0, "tokens_per_day": 1_000_000}}}


def limited(**fakes: dict[str, Any]) -> tuple[Any, Any, QuotaGate, Sink]:
    args = fake_app_args(**fakes)
    args["tenants"] = BUDGET
    for model in args["models"]:
        model["cost"] = {"input_per_million": 1000.0, "output_per_million": 2000.0}
    svc, pools = serving(args)
    clock = Clock()
    gate = svc.gate = QuotaGate(svc.config.quotas(), RemoteKeeper(clock), clock=clock)
    sink = svc.ledger = Sink()
    return svc, pools, gate, sink


def charged(gate: QuotaGate) -> tuple[float, float]:
    """(tokens, usd) settled so far, not yet reported."""
    items = [i for i in gate._unreported if i.tokens or i.usd]
    return sum(i.tokens for i in items), sum(i.usd for i in items)


async def test_a_served_request_is_charged_what_it_used() -> None:
    svc, _, gate, sink = limited()
    routed = await svc.chat(chat(model="small", max_tokens=8), Wishes(tenant="acme"))
    usage = routed.body.usage  # type: ignore[union-attr]
    tokens, usd = charged(gate)
    assert tokens == usage.prompt_tokens + usage.completion_tokens
    assert usd == pytest.approx(sink.entries[0].cost_usd)


async def test_a_client_that_leaves_a_whole_answer_pays_its_worst_case() -> None:
    """`CancelledError` is not an `Exception`: it used to skip recording and charging."""
    svc, _, gate, sink = limited(small={"token_latency_s": 0.05})
    task = asyncio.ensure_future(
        svc.chat(chat(model="small", max_tokens=20), Wishes(tenant="acme"))
    )
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    tokens, usd = charged(gate)
    assert tokens >= 20 and usd > 0  # the tokens it may have made: max_tokens and the prompt
    (entry,) = sink.entries
    assert (entry.outcome, entry.cost_usd) == ("cancelled", pytest.approx(usd))


async def test_a_pool_that_failed_mid_answer_is_charged_beside_the_fallback() -> None:
    svc, _, gate, sink = limited(small={"fail_after_tokens": 3})
    routed = await svc.chat(chat(model="small", max_tokens=10), Wishes(tenant="acme"))
    assert routed.route.pool != "small"
    usage = routed.body.usage  # type: ignore[union-attr]
    tokens, _ = charged(gate)
    answer = usage.prompt_tokens + usage.completion_tokens
    assert tokens >= answer + 10  # the fallback's answer, and the failed call's worst case


async def test_a_timed_out_pool_is_charged_its_worst_case() -> None:
    svc, pools, gate, _ = limited()

    async def timed_out(pool: str, request: GenerationRequest) -> GenerationResult:
        await asyncio.sleep(0)
        raise PoolTimeoutError(pool, 1.0)

    pools.generate = timed_out
    with pytest.raises(Exception):  # noqa: B017 - every pool timed out
        await svc.chat(chat(model="small", max_tokens=10), Wishes(tenant="acme"))
    tokens, usd = charged(gate)
    assert tokens >= 10 and usd > 0


async def test_a_stream_whose_client_leaves_is_charged_what_was_streamed() -> None:
    svc, _, gate, sink = limited(small={"token_latency_s": 0.01})
    routed = await svc.chat(chat(model="small", max_tokens=30, stream=True), Wishes(tenant="acme"))
    assert routed.stream is not None
    stream: AsyncIterator[str] = routed.stream
    await anext(stream)
    await anext(stream)
    await stream.aclose()  # the client left after the first token
    tokens, _ = charged(gate)
    assert 0 < tokens < 30
    assert sink.entries[0].outcome == "cancelled"


async def test_a_stream_dropped_before_it_started_still_settles() -> None:
    svc, _, gate, sink = limited()
    routed = await svc.chat(chat(model="small", max_tokens=5, stream=True), Wishes(tenant="acme"))
    del routed  # the client left before the response began: the generator never ran
    import gc

    gc.collect()
    (entry,) = sink.entries
    assert entry.outcome == "cancelled"
    reservation_left = [a for a in gate._accounts.values() if a.in_flight]
    assert reservation_left == []


async def test_a_plan_whose_worst_case_does_not_fit_goes_frugal_before_a_429() -> None:
    """This replica's view of the budget is a moment old; the keeper's refusal is not:
    a cascade that no longer fits becomes one cheap pool instead of a 429."""
    from tests.support.keeper import spend

    svc, _, gate, _ = limited()
    await svc.chat(chat(max_tokens=10), Wishes(tenant="acme"))  # this replica's view: ~0 used
    gate.clock.now += 2  # type: ignore[attr-defined]
    await gate.flush()  # idle: its allowance goes back
    other = QuotaGate(svc.config.quotas(), gate.keeper, holder="b", clock=gate.clock)
    await spend(other, "acme", 10, 9.96)  # another replica spends nearly all of it
    await other.flush()
    routed = await svc.chat(chat(max_tokens=10), Wishes(tenant="acme", strategy="cascade"))
    assert routed.route.strategy == "route"
    assert any("too little left" in note for note in routed.route.notes)
    with pytest.raises(QuotaExceededError):  # and when even that does not fit: the 429
        await svc.chat(chat(max_tokens=20), Wishes(tenant="acme"))
