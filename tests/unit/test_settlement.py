"""Every token any pool produced is charged (issue 20, finding 7): cancelled, timed-out,
failed-then-fallback and raced requests settle their reservation with what their pools
did, and what could not be counted is charged as its worst case: the prompt (as routing
estimated it) plus `max_tokens` for each answer asked for (`execution.executor.Call`).

Pools are Ray Serve LLM servers: a whole-answer call reports its tokens only when it
ends, and a stream only in its closing usage event, so a call stopped before that (a
client that left, a speculative loser, a failure) is charged its worst case."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from typing import Any

import pytest

from core.errors import AllPoolsFailedError, PoolTimeoutError, QuotaExceededError
from deployments.openai.serving import OpenAIServing
from execution.executor import Answer
from routing.planner import Wishes
from tenancy.gate import QuotaGate
from tests.conftest import fake_app_args
from tests.support.keeper import Clock, RemoteKeeper, spend
from tests.support.pools import InProcessPools
from tests.unit.test_ledger import Sink
from tests.unit.test_serving import body, chat, serving

BUDGET = {"acme": {"budget": {"usd_per_day": 10.0, "tokens_per_day": 1_000_000}}}
ACME = Wishes(tenant="acme")
PRICE = {"input_per_million": 1000.0, "output_per_million": 2000.0}  # every model


def limited(**fakes: dict[str, Any]) -> tuple[OpenAIServing, InProcessPools, QuotaGate, Sink]:
    args = fake_app_args(**fakes)
    args["tenants"] = BUDGET
    for model in args["models"]:
        model["cost"] = PRICE
    svc, pools = serving(args)
    clock = Clock()
    gate = svc.gate = QuotaGate(svc.config.quotas(), RemoteKeeper(clock), clock=clock)
    sink = svc.ledger = Sink()
    return svc, pools, gate, sink


def charged(gate: QuotaGate) -> tuple[float, float]:
    """(tokens, usd) settled so far, not yet reported."""
    items = [i for i in gate._unreported if i.tokens or i.usd]
    return sum(i.tokens for i in items), sum(i.usd for i in items)


def bill(prompt: float, completion: float) -> tuple[float, float]:
    """(tokens, usd) of `prompt` and `completion` tokens at `PRICE`."""
    usd = (prompt * PRICE["input_per_million"] + completion * PRICE["output_per_million"]) / 1e6
    return pytest.approx(prompt + completion), pytest.approx(usd)  # type: ignore[return-value]


def worst_case(svc: OpenAIServing, text: str, max_tokens: int) -> tuple[float, float]:
    """The prompt as routing estimates it (characters per token), and `max_tokens`."""
    return len(text) / svc.config.routing.rules.chars_per_token, float(max_tokens)


async def until_called(pools: InProcessPools, count: int = 1) -> None:
    """Until `count` pool calls were made (each is then inside its engine)."""
    for _ in range(1000):
        if len(pools.calls) >= count:
            await asyncio.sleep(0)  # and the engine has begun its answer
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{len(pools.calls)} pool calls, expected {count}")


async def test_a_served_request_is_charged_what_it_used() -> None:
    svc, _, gate, sink = limited()
    answer = body(await svc.generate(chat(model="small", max_tokens=8), ACME))
    usage = answer["usage"]
    assert charged(gate) == bill(usage["prompt_tokens"], usage["completion_tokens"])
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (3, 4)
    (entry,) = sink.entries
    assert entry.id == answer["id"]
    assert entry.cost_usd == pytest.approx(charged(gate)[1])


async def test_a_client_that_leaves_a_whole_answer_pays_its_worst_case() -> None:
    """`CancelledError` is not an `Exception`: it used to skip recording and charging."""
    svc, pools, gate, sink = limited(small={"token_latency_s": 0.05})
    task = asyncio.ensure_future(svc.generate(chat(model="small", max_tokens=20), ACME))
    await until_called(pools)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (sent,) = pools.requests("small")
    assert pools.engines["small"].aborted == [sent["request_id"]]  # vLLM stopped it
    tokens, usd = charged(gate)
    # the tokens it may have made: the prompt and max_tokens
    assert (tokens, usd) == bill(*worst_case(svc, "hello there", 20))
    (entry,) = sink.entries
    assert (entry.outcome, entry.cost_usd) == ("cancelled", pytest.approx(usd))


async def test_a_client_that_leaves_n_answers_pays_the_worst_case_of_each() -> None:
    svc, pools, gate, _ = limited(small={"token_latency_s": 0.05})
    task = asyncio.ensure_future(svc.generate(chat(model="small", max_tokens=20, n=2), ACME))
    await until_called(pools)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert charged(gate) == bill(*worst_case(svc, "hello there", 2 * 20))


async def test_a_pool_that_failed_mid_answer_is_charged_beside_the_fallback() -> None:
    svc, _, gate, sink = limited(small={"fail_after_tokens": 3})
    routed = await svc.generate(chat(model="small", max_tokens=10), ACME)
    assert (routed.route.pool, routed.route.pools_tried) == ("large", ["small", "large"])
    usage = body(routed)["usage"]
    prompt, most = worst_case(svc, "hello there", 10)
    # the fallback's answer, and the failed call's worst case
    assert charged(gate) == bill(usage["prompt_tokens"] + prompt, usage["completion_tokens"] + most)
    assert sink.entries[0].cost_usd == pytest.approx(charged(gate)[1])


async def test_a_timed_out_pool_is_charged_its_worst_case() -> None:
    svc, pools, gate, _ = limited()
    timed = []

    async def timed_out(pool: str, method: str, request: Any) -> Answer:
        timed.append(pool)
        await asyncio.sleep(0)
        raise PoolTimeoutError(pool, 1.0)

    pools.generate = timed_out  # type: ignore[method-assign]
    with pytest.raises(AllPoolsFailedError):  # every pool of the chain timed out
        await svc.generate(chat(model="small", max_tokens=10), ACME)
    assert timed == ["small", "large"]
    prompt, most = worst_case(svc, "hello there", 10)
    assert charged(gate) == bill(2 * prompt, 2 * most)


async def test_a_stream_whose_client_leaves_is_charged_its_worst_case() -> None:
    """What a stream produced is known from its closing usage event (vLLM's); a client
    that leaves before it leaves the count unknown: the call is charged its worst case.
    (It used to be charged the tokens streamed so far, which Switchyard counted itself.)"""
    svc, pools, gate, sink = limited(small={"token_latency_s": 0.01})
    routed = await svc.generate(chat(model="small", max_tokens=30, stream=True), ACME)
    assert routed.stream is not None
    stream: AsyncIterator[str] = routed.stream
    first = await anext(stream)
    assert '"role":"assistant"' in first
    await stream.aclose()  # the client left after the first event
    assert charged(gate) == bill(*worst_case(svc, "hello there", 30))
    (entry,) = sink.entries
    assert entry.outcome == "cancelled"
    (sent,) = pools.requests("small")
    # the relay closed the pool's stream as the client left: vLLM aborted the request
    assert pools.engines["small"].aborted == [sent["request_id"]]


async def test_a_speculative_loser_is_cancelled_and_charged_its_worst_case() -> None:
    """The winner's tokens are known; the loser's partial answer is not (a whole-answer
    call reports nothing until it ends): it is charged its worst case."""
    svc, pools, gate, sink = limited(small={"logprobs": [-0.1]}, large={"token_latency_s": 0.05})
    routed = await svc.generate(chat(), Wishes(tenant="acme", strategy="speculative"))
    assert (routed.route.pool, routed.route.speculative_winner) == ("small", "source")
    (loser,) = pools.requests("large")
    assert pools.engines["large"].aborted == [loser["request_id"]]
    usage = body(routed)["usage"]
    prompt, most = worst_case(svc, "hello there", 256)  # big-chat's default max_tokens
    assert charged(gate) == bill(usage["prompt_tokens"] + prompt, usage["completion_tokens"] + most)
    (entry,) = sink.entries
    assert entry.cost_usd == pytest.approx(charged(gate)[1])


async def test_a_stream_dropped_before_it_started_still_settles() -> None:
    svc, _, gate, sink = limited()
    routed = await svc.generate(chat(model="small", max_tokens=5, stream=True), ACME)
    del routed  # the client left before the response began: the generator never ran
    gc.collect()
    (entry,) = sink.entries
    assert entry.outcome == "cancelled"
    assert charged(gate) == bill(*worst_case(svc, "hello there", 5))
    reservation_left = [a for a in gate._accounts.values() if a.in_flight]
    assert reservation_left == []


async def test_a_plan_whose_worst_case_does_not_fit_goes_frugal_before_a_429() -> None:
    """This replica's view of the budget is a moment old; the keeper's refusal is not:
    a cascade that no longer fits becomes one cheap pool instead of a 429."""
    svc, _, gate, _ = limited()
    await svc.generate(chat(max_tokens=10), ACME)  # this replica's view: ~0 used
    gate.clock.now += 2  # type: ignore[attr-defined]
    await gate.flush()  # idle: its allowance goes back
    other = QuotaGate(svc.config.quotas(), gate.keeper, holder="b", clock=gate.clock)
    await spend(other, "acme", 10, 9.96)  # another replica spends nearly all of it
    await other.flush()
    routed = await svc.generate(chat(max_tokens=10), Wishes(tenant="acme", strategy="cascade"))
    assert routed.route.strategy == "route"
    assert any("too little left" in note for note in routed.route.notes)
    with pytest.raises(QuotaExceededError):  # and when even that does not fit: the 429
        await svc.generate(chat(max_tokens=20), ACME)
