"""Budgets and rate limits across replicas, without Ray: several gates (one per ingress
replica) share one in-process keeper whose every call yields like a remote call
(tests/support/keeper.py), so concurrent requests really interleave."""

from __future__ import annotations

import asyncio
import random

import pytest

from core.errors import (
    AccountingUnavailableError,
    ConcurrencyLimitError,
    QuotaExceededError,
    RateLimitedError,
    RequestExceedsLimitError,
)
from deployments.openai.errors import to_api_error
from tenancy.config import QuotaConfig
from tenancy.gate import QuotaGate
from tenancy.keeper import Amounts, QuotaBook
from tests.support.keeper import NOW, Clock, RemoteKeeper, TimeoutKeeper, cluster, quotas, spend


async def _request(
    gate: QuotaGate, tenant: str, tokens: float, usd: float, work_s: float = 0.001
) -> tuple[bool, float, float]:
    """One request: reserve its worst case, work, settle what it really used (a random
    share of the worst case). (admitted, tokens, usd)."""
    accounts = gate.accounts(tenant, None, None, None)
    try:
        reservation = await gate.reserve(accounts, tokens, usd)
    except (RateLimitedError, QuotaExceededError):
        return False, 0.0, 0.0
    await asyncio.sleep(work_s * random.random())
    share = random.uniform(0.5, 1.0)
    gate.settle(reservation, tokens * share, usd * share)
    return True, tokens * share, usd * share


async def test_a_10_rpm_limit_admits_exactly_10_whichever_replica_answers() -> None:
    clock = Clock()
    gates = cluster(3, clock, acme={"limits": {"requests_per_minute": 10}})
    keeper = gates[0].keeper
    admitted = refused = 0
    for i in range(25):
        try:
            await spend(gates[i % 3], "acme", 0, 0)
            admitted += 1
        except RateLimitedError as exc:
            refused += 1
            api = to_api_error(exc)
            assert (api.status, api.code) == (429, "rate_limit_exceeded")
            assert api.headers is not None and api.headers["retry-after"] == "40"
            assert api.headers["x-ratelimit-remaining-requests"] == "0"
    assert (admitted, refused) == (10, 15)
    calls = keeper.calls  # type: ignore[attr-defined]
    for gate in gates:  # refusals are cached to the end of the minute: no keeper calls
        with pytest.raises(RateLimitedError):
            await spend(gate, "acme", 0, 0)
    assert keeper.calls == calls  # type: ignore[attr-defined]
    clock.now += 40  # the next minute
    await spend(gates[0], "acme", 0, 0)


async def test_large_limits_are_acquired_in_allowances_so_most_requests_skip_the_keeper() -> None:
    clock = Clock()
    gates = cluster(1, clock, acme={"limits": {"requests_per_minute": 2000}})
    for _ in range(250):
        await spend(gates[0], "acme", 0, 0)
    assert gates[0].keeper.calls == 3  # type: ignore[attr-defined]  # 100 a time


@pytest.mark.parametrize("concurrent", [20, 200, 1000])
async def test_concurrent_requests_spend_at_most_the_budget_plus_one_worst_case(
    concurrent: int,
) -> None:
    """Finding 1: 20 concurrent requests on a $0.05/day budget spent $1.34 (26.8x)."""
    random.seed(concurrent)
    clock = Clock()
    keeper = RemoteKeeper(clock, latency_s=0.001)
    budget = {"budget": {"usd_per_day": 0.05}}
    gates = cluster(3, clock, keeper, acme=budget)
    worst = 0.0067  # one request's worst case in USD
    results = await asyncio.gather(
        *(_request(gates[i % 3], "acme", 100, worst) for i in range(concurrent))
    )
    clock.now += 2  # idle: allowances go back, so the book shows only what was spent
    for gate in gates:
        await gate.flush()
    spent = sum(usd for _, _, usd in results)
    admitted = sum(ok for ok, _, _ in results)
    assert admitted >= 7  # it is a limit, not a wall: the budget buys requests
    assert spent <= 0.05 + worst
    assert keeper.book.snapshot("tenant:acme", clock()).used["usd", "day"] == pytest.approx(spent)


@pytest.mark.parametrize("concurrent", [20, 200])
async def test_tokens_per_minute_hold_under_concurrency(concurrent: int) -> None:
    """Finding 1: a 100 tokens/min limit let 13,400 tokens through."""
    random.seed(concurrent)
    clock = Clock()
    gates = cluster(
        3, clock, RemoteKeeper(clock, 0.001), acme={"limits": {"tokens_per_minute": 100}}
    )
    results = await asyncio.gather(
        *(_request(gates[i % 3], "acme", 30, 0) for i in range(concurrent))
    )
    assert sum(tokens for _, tokens, _ in results) <= 100 + 30
    assert sum(ok for ok, _, _ in results) >= 3


async def test_a_request_larger_than_the_whole_limit_is_a_400_not_a_retry() -> None:
    clock = Clock()
    (gate,) = cluster(1, clock, acme={"limits": {"tokens_per_minute": 100}})
    with pytest.raises(RequestExceedsLimitError) as err:
        await gate.reserve(gate.accounts("acme", None, None, None), 500, 0)
    api = to_api_error(err.value)
    assert (api.status, api.code, api.param) == (400, "request_exceeds_limit", "max_tokens")


async def test_in_flight_cap_holds_across_replicas_and_frees_slots_when_requests_end() -> None:
    clock = Clock()
    gates = cluster(2, clock, acme={"limits": {"max_in_flight": 3}})
    accounts = gates[0].accounts("acme", None, None, None)
    outcomes = await asyncio.gather(
        *(gates[i % 2].reserve(accounts, 1, 0) for i in range(10)), return_exceptions=True
    )
    held = [r for r in outcomes if not isinstance(r, BaseException)]
    refused = [r for r in outcomes if isinstance(r, ConcurrencyLimitError)]
    assert (len(held), len(refused)) == (3, 7)
    assert to_api_error(refused[0]).status == 429
    for gate, reservation in zip(gates * 2, held, strict=False):
        gate.settle(reservation, 1, 0)
    clock.now += 2  # the refusal was cached for a second
    for gate in gates:
        await gate.flush()  # idle: the slots go back to the keeper
    clock.now += 2
    for gate in gates:
        await gate.flush()
    again = [await gates[1].reserve(accounts, 1, 0) for _ in range(3)]
    assert len(again) == 3


async def test_a_burst_on_one_replica_fetches_one_allowance_at_a_time_and_none_is_lost() -> None:
    """Finding 5: at 600/min a burst of 20 made the keeper count 600 while 49 were
    admitted; 620 requests made 591 keeper calls."""
    clock = Clock()
    keeper = RemoteKeeper(clock, latency_s=0.005)
    (gate,) = cluster(1, clock, keeper, acme={"limits": {"requests_per_minute": 600}})
    accounts = gate.accounts("acme", None, None, None)
    outcomes = await asyncio.gather(
        *(gate.reserve(accounts, 0, 0) for _ in range(620)), return_exceptions=True
    )
    admitted = sum(not isinstance(o, BaseException) for o in outcomes)
    assert admitted == 600
    assert keeper.calls <= 25  # allowances of 30, one fetch at a time
    assert keeper.book.snapshot("tenant:acme", clock()).requests == 600


async def test_a_keys_refusal_does_not_spend_its_tenants_quota() -> None:
    """Finding 14."""
    clock = Clock()
    gate = QuotaGate(
        quotas(
            keys={"k1": {"limits": {"requests_per_minute": 2}}},
            acme={"limits": {"requests_per_minute": 5}},
        ),
        RemoteKeeper(clock),
        clock=clock,
    )
    k1 = gate.accounts("acme", None, "k1", None)
    k2 = gate.accounts("acme", None, "k2", None)
    got = []
    for _ in range(5):
        try:
            await gate.reserve(k1, 0, 0)
            got.append("ok")
        except RateLimitedError:
            got.append("429")
    assert got == ["ok", "ok", "429", "429", "429"]
    for _ in range(3):  # the tenant was admitted twice: three more fit its 5
        await gate.reserve(k2, 0, 0)
    with pytest.raises(RateLimitedError):
        await gate.reserve(k2, 0, 0)


def test_quotas_come_from_the_assigned_tier_and_a_chosen_tier_only_narrows() -> None:
    """Finding 4: a key whose tier allows 2/min got 20 of 20 by choosing `batch`."""
    q = quotas(
        tiers={
            "free": {"limits": {"requests_per_minute": 2}},
            "batch": {"limits": {"requests_per_minute": 100, "tokens_per_minute": 500}},
        }
    )
    ((account, policy),) = q.accounts("acme", "free", None, "batch")
    assert account == "tenant:acme"
    assert (policy.limits.requests_per_minute, policy.limits.tokens_per_minute) == (2, 500)
    assert q.accounts("acme", "free", None, None)[0][1].limits.requests_per_minute == 2


async def test_database_down_limits_hold_at_the_local_share_then_spend_is_reconciled() -> None:
    """Finding 3: with the database unreachable a 2/min, $0.01/day tenant got 50 of 50."""
    clock = Clock()
    keeper = RemoteKeeper(clock)
    policy = {"limits": {"requests_per_minute": 10}, "budget": {"usd_per_day": 1.0}}
    gates = [
        QuotaGate(quotas(acme=policy), keeper, holder=f"i{n}", local_share=0.5, clock=clock)
        for n in range(2)
    ]
    keeper.down = True
    admitted = 0
    for i in range(50):
        ok, _, _ = await _request(gates[i % 2], "acme", 10, 0.01)
        admitted += ok
    assert admitted == 10  # each replica 5 of the 10 a minute, never unlimited
    assert {g.mode for g in gates} == {"local"}
    keeper.down = False
    for gate in gates:
        gate._retry_at = 0.0  # NOTE: skip the wait before the keeper is asked again
        await gate.flush()
    assert {g.mode for g in gates} == {"keeper"}
    used = keeper.book.snapshot("tenant:acme", clock()).used
    assert 0.05 <= used["usd", "day"] <= 0.1  # what was spent meanwhile is on the book


async def test_fail_closed_refuses_while_the_keeper_is_unreachable() -> None:
    clock = Clock()
    keeper = RemoteKeeper(clock)
    keeper.down = True
    gate = QuotaGate(
        quotas(acme={"limits": {"requests_per_minute": 10}}), keeper, fail_mode="closed",
        clock=clock,
    )  # fmt: skip
    with pytest.raises(AccountingUnavailableError) as err:
        await spend(gate, "acme", 0, 0)
    assert to_api_error(err.value).status == 503
    assert gate.mode == "closed"


async def test_a_keeper_that_times_out_is_asked_once_per_retry_period_not_per_request() -> None:
    """Finding 6: every refused request was a keeper call with a 2 s timeout."""
    clock = Clock()
    inner = RemoteKeeper(clock)
    inner.hang = True
    gate = QuotaGate(
        quotas(acme={"limits": {"requests_per_minute": 4}}),
        TimeoutKeeper(inner, 0.05),
        local_share=1.0,
        clock=clock,
    )
    results = [await _request(gate, "acme", 0, 0) for _ in range(20)]
    assert sum(ok for ok, _, _ in results) == 4
    assert inner.calls == 1


async def test_the_keeper_uses_its_own_clock_so_skewed_replicas_get_no_extra_requests() -> None:
    """Finding 11: two replicas 50 ms apart across a minute boundary got 40 against 10."""
    keeper_clock = Clock(NOW + 39.98)  # 20 ms before the minute ends
    keeper = RemoteKeeper(keeper_clock)
    a_clock, b_clock = Clock(NOW + 39.98), Clock(NOW + 40.03)  # b is already in the next
    tenant = {"acme": {"limits": {"requests_per_minute": 10}}}
    a = QuotaGate(quotas(**tenant), keeper, holder="a", clock=a_clock)
    b = QuotaGate(quotas(**tenant), keeper, holder="b", clock=b_clock)
    admitted = 0
    for i in range(40):
        ok, _, _ = await _request(a if i % 2 else b, "acme", 0, 0)
        admitted += ok
    assert admitted == 10


async def test_budget_goes_frugal_then_refuses_before_any_work() -> None:
    clock = Clock()
    (gate,) = cluster(1, clock, acme={"budget": {"usd_per_day": 1.0, "frugal_at": 0.8}})
    accounts = gate.accounts("acme", None, None, None)
    assert gate.frugal(accounts) is None
    await spend(gate, "acme", 100, 0.85)
    await gate.flush()
    assert gate.frugal(accounts) == "budget: 85% of the usd per day limit used"
    await spend(gate, "acme", 100, 0.1)
    with pytest.raises(QuotaExceededError) as err:
        await gate.reserve(accounts, 100, 0.1)
    api = to_api_error(err.value)
    assert (api.status, api.code, api.type) == (429, "insufficient_quota", "insufficient_quota")
    assert "usd per day" in api.message
    clock.now += 86400  # a new day
    await gate.flush()
    await gate.reserve(accounts, 100, 0.1)


async def test_idle_accounts_leave_memory_in_the_gate_and_the_keeper() -> None:
    """Finding 10's other half: tables never shrank."""
    clock = Clock()
    keeper = RemoteKeeper(clock)
    policy = QuotaConfig.model_validate({"limits": {"requests_per_minute": 5}})
    gate = QuotaGate(quotas(), keeper, clock=clock)
    for i in range(2000):
        reservation = await gate.reserve([(f"tenant:t{i}", policy)], 0, 0)
        gate.settle(reservation, 0, 0)
    assert gate.tracked() == 2000
    clock.now += 400
    await gate.flush()
    assert gate.tracked() == 0
    clock.now += 700
    assert keeper.book.evict(clock()) == 2000
    assert keeper.book.accounts() == 0


def test_the_book_restores_windows_after_a_restart() -> None:
    book = QuotaBook()
    assert not book.restored("tenant:acme")
    book.restore("tenant:acme", NOW, {"day": (100.0, 1.5), "minute": (10.0, 0.1)}, requests=4)
    assert book.restored("tenant:acme")
    policy = QuotaConfig.model_validate({"limits": {"requests_per_minute": 5}})
    one = Amounts(requests=1)
    grant = book.acquire("tenant:acme", "i", one, Amounts(requests=5), policy, NOW)
    assert grant.granted.requests == 1  # 4 of 5 already admitted
    assert book.snapshot("tenant:acme", NOW).used["usd", "day"] == 1.5


async def test_ungoverned_tenants_reserve_nothing() -> None:
    clock = Clock()
    (gate,) = cluster(1, clock, acme={"limits": {"requests_per_minute": 1}})
    assert gate.accounts(None, None, None, None) == []
    assert gate.accounts("other", None, None, None) == []
    assert (await gate.reserve([], 10, 1.0)).parts == ()


async def test_local_mode_starts_from_the_share_of_what_was_already_used() -> None:
    """A keeper lost mid-minute: replicas do not grant the minute's limit a second time."""
    clock = Clock()
    keeper = RemoteKeeper(clock)
    tenant = {"acme": {"limits": {"requests_per_minute": 10}}}
    gates = [
        QuotaGate(quotas(**tenant), keeper, holder=f"i{n}", local_share=0.5, clock=clock)
        for n in range(2)
    ]
    for i in range(6):
        assert (await _request(gates[i % 2], "acme", 0, 0))[0]
    for gate in gates:
        await gate.flush()
    keeper.down = True
    admitted = sum([(await _request(gates[i % 2], "acme", 0, 0))[0] for i in range(10)])
    assert admitted == 4  # each replica: its 5 minus its share (3) of the 6 used


async def test_an_account_the_keeper_cannot_restore_goes_local_alone() -> None:
    """The database down: the keeper still counts the accounts it knows, exactly; only
    the one it cannot restore is held to the replicas' local shares."""
    clock = Clock()
    keeper = RemoteKeeper(clock)
    tenant = {"limits": {"requests_per_minute": 6}}
    gates = [
        QuotaGate(quotas(known=tenant, newcomer=tenant), keeper, holder=f"i{n}",
                  local_share=0.5, clock=clock)
        for n in range(2)
    ]  # fmt: skip
    await _request(gates[0], "known", 0, 0)
    keeper.unavailable = {"tenant:newcomer"}
    admitted = {"known": 1, "newcomer": 0}
    for i in range(24):
        tenant_name = ("known", "newcomer")[i % 2]
        admitted[tenant_name] += (await _request(gates[(i // 2) % 2], tenant_name, 0, 0))[0]
    assert admitted == {"known": 6, "newcomer": 6}  # 3 a replica
    assert {g.mode for g in gates} == {"local"}


async def test_an_account_under_two_policies_keeps_one_allowance() -> None:
    """A tenant whose requests sometimes choose a narrower tier: its allowance is not
    dropped (and so never stranded at the keeper) when the policy changes."""
    clock = Clock()
    keeper = RemoteKeeper(clock)
    wide = QuotaConfig.model_validate({"limits": {"requests_per_minute": 100}})
    narrow = QuotaConfig.model_validate({"limits": {"requests_per_minute": 40}})
    gate = QuotaGate(quotas(), keeper, clock=clock)
    for i in range(20):
        reservation = await gate.reserve([("tenant:acme", (wide, narrow)[i % 2])], 0, 0)
        gate.settle(reservation, 0, 0)
    clock.now += 2
    await gate.flush()  # idle: whatever it held goes back
    grant = keeper.book.snapshot("tenant:acme", clock())
    assert grant.requests == 20  # exactly what was used; nothing stranded
    assert not keeper.book._accounts["tenant:acme"].held
