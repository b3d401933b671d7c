"""Budgets and rate limits across replicas, without Ray: several gates (one per ingress
replica) share one in-process keeper, as they share the QuotaKeeper deployment."""

from __future__ import annotations

from typing import Any

import pytest

from core.errors import QuotaExceededError, RateLimitedError
from deployments.openai.errors import to_api_error
from routing.planner import Wishes
from tenancy.config import QuotaConfig, Quotas, TenantConfig
from tenancy.gate import QuotaGate
from tenancy.keeper import QuotaBook, Snapshot, Spend, lease_size
from tests.unit.test_serving import chat, serving

NOW = 1_800_000_020.0  # a fixed instant, 20 s into its minute


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class InProcessKeeper:
    """The keeper deployment's three methods, called directly; counts the calls."""

    def __init__(self, book: QuotaBook | None = None) -> None:
        self.book = book or QuotaBook()
        self.calls = 0

    async def lease(self, account: str, want: int, limit: int, now: float) -> tuple[int, float]:
        self.calls += 1
        return self.book.lease(account, want, limit, now)

    async def report(self, spent: list[Spend], now: float) -> None:
        self.book.report(spent, now)

    async def snapshot(self, account: str, now: float) -> Snapshot:
        return self.book.snapshot(account, now)


def quotas(
    tiers: dict[str, Any] | None = None, keys: dict[str, Any] | None = None, **tenants: Any
) -> Quotas:
    return Quotas(
        {name: TenantConfig.model_validate(p) for name, p in tenants.items()},
        {name: QuotaConfig.model_validate(p) for name, p in (tiers or {}).items()},
        {name: QuotaConfig.model_validate(p) for name, p in (keys or {}).items()},
    )


def cluster(replicas: int, clock: Clock, **tenants: Any) -> list[QuotaGate]:
    keeper = InProcessKeeper()
    return [QuotaGate(quotas(**tenants), keeper, clock=clock) for _ in range(replicas)]


async def test_a_10_rpm_limit_admits_exactly_10_whichever_replica_answers() -> None:
    clock = Clock()
    gates = cluster(3, clock, acme={"limits": {"requests_per_minute": 10}})
    admitted = refused = 0
    for i in range(25):
        try:
            await gates[i % 3].admit("acme")
            admitted += 1
        except RateLimitedError as exc:
            refused += 1
            api = to_api_error(exc)
            assert (api.status, api.code) == (429, "rate_limit_exceeded")
            assert api.headers is not None and api.headers["retry-after"] == "40"
            assert api.headers["x-ratelimit-remaining-requests"] == "0"
    assert (admitted, refused) == (10, 15)
    clock.now += 40  # the next minute
    await gates[0].admit("acme")


async def test_large_limits_lease_in_batches_so_most_requests_skip_the_keeper() -> None:
    clock = Clock()
    gates = cluster(1, clock, acme={"limits": {"requests_per_minute": 2000}})
    keeper = gates[0].keeper
    assert lease_size(2000) == 100
    for _ in range(250):
        await gates[0].admit("acme")
    assert keeper.calls == 3  # type: ignore[attr-defined]


async def test_budget_goes_frugal_then_refuses_before_any_work() -> None:
    clock = Clock()
    (gate,) = cluster(1, clock, acme={"budget": {"usd_per_day": 1.0, "frugal_at": 0.8}})
    assert (await gate.admit("acme")).frugal is None
    gate.spent(["tenant:acme"], NOW, tokens=100, usd=0.85)
    frugal = await gate.admit("acme")  # unreported spend of this replica counts at once
    assert frugal.frugal == "budget: 85% of the usd per day limit used"
    gate.spent(["tenant:acme"], NOW, tokens=100, usd=0.2)
    with pytest.raises(QuotaExceededError) as err:
        await gate.admit("acme")
    api = to_api_error(err.value)
    assert (api.status, api.code, api.type) == (429, "insufficient_quota", "insufficient_quota")
    assert "usd per day" in api.message
    clock.now += 86400  # a new day
    await gate.flush()
    assert (await gate.admit("acme")).frugal is None


async def test_spend_reported_by_one_replica_limits_the_others() -> None:
    clock = Clock()
    a, b = cluster(2, clock, acme={"budget": {"usd_per_hour": 1.0}})
    a.spent(["tenant:acme"], NOW, tokens=10, usd=1.5)
    await b.admit("acme")  # not reported yet: b cannot know (the documented overshoot)
    await a.flush()
    clock.now += 1.1  # b's snapshot is older than its ttl
    with pytest.raises(QuotaExceededError):
        await b.admit("acme")


async def test_tokens_per_minute_and_the_headers() -> None:
    clock = Clock()
    limits = {"requests_per_minute": 100, "tokens_per_minute": 50}
    (gate,) = cluster(1, clock, acme={"limits": limits})
    first = await gate.admit("acme")
    assert first.headers["x-ratelimit-limit-tokens"] == "50"
    assert first.headers["x-ratelimit-reset-requests"] == "40s"
    gate.spent(["tenant:acme"], NOW, tokens=60, usd=0)
    with pytest.raises(RateLimitedError, match="50 tokens per minute"):
        await gate.admit("acme")


async def test_ungoverned_tenants_and_a_dead_keeper_are_admitted() -> None:
    clock = Clock()
    (gate,) = cluster(1, clock, acme={"limits": {"requests_per_minute": 1}})
    assert (await gate.admit(None)).headers == {}
    assert (await gate.admit("other")).headers == {}

    class Down(InProcessKeeper):
        async def snapshot(self, tenant: str, now: float) -> Snapshot:
            raise ConnectionError("keeper gone")

    gate.keeper = Down()
    for _ in range(3):
        await gate.admit("acme")  # fail open, logged


def test_the_book_restores_windows_after_a_restart() -> None:
    book = QuotaBook()
    assert not book.restored("tenant:acme")
    book.restore("tenant:acme", NOW, {"day": (100.0, 1.5), "minute": (10.0, 0.1)}, requests=4)
    assert book.restored("tenant:acme")
    assert book.lease("tenant:acme", 5, 5, NOW)[0] == 1  # 4 of 5 already admitted
    assert book.snapshot("tenant:acme", NOW).used["usd", "day"] == 1.5


async def test_tier_defaults_count_each_tenant_and_keys_add_their_own_limit() -> None:
    clock = Clock()
    gate = QuotaGate(
        quotas(
            tiers={"free": {"limits": {"requests_per_minute": 2}}},
            keys={"k1": {"limits": {"requests_per_minute": 3}}},
            vip={"store_prompts": True},  # no limits of its own: its tier's apply
        ),
        InProcessKeeper(),
        clock=clock,
    )
    for tenant in ("a", "b"):  # two tenants on `free`: 2 each, counted apart
        await gate.admit(tenant, "free")
        await gate.admit(tenant, "free")
        with pytest.raises(RateLimitedError):
            await gate.admit(tenant, "free")
    assert (await gate.admit("vip", "pro")).accounts == ()  # `pro` has no quotas
    # key k1 (3 a minute) on an unlimited tenant: the key's own limit holds
    admitted = [await gate.admit("big", "pro", "k1") for _ in range(3)]
    assert admitted[0].accounts == ("key:k1",)
    with pytest.raises(RateLimitedError):
        await gate.admit("big", "pro", "k1")
    assert (await gate.admit("big", "pro", "k2")).accounts == ()  # other keys are free


async def test_serving_refuses_over_budget_with_no_engine_call_and_goes_frugal() -> None:
    from tests.conftest import fake_app_args

    args = fake_app_args()
    args["tenants"] = {"acme": {"budget": {"usd_per_day": 1.0}}}
    svc, pools = serving(args)
    svc.gate = QuotaGate(svc.config.quotas(), InProcessKeeper(), clock=Clock())
    svc.gate.spent(["tenant:acme"], NOW, 10, 0.9)
    routed = await svc.chat(chat(), Wishes(tenant="acme", strategy="cascade"))
    assert routed.route.strategy == "route"
    assert any("frugal routing" in note for note in routed.route.notes)
    svc.gate.spent(["tenant:acme"], NOW, 10, 0.2)
    calls = len(pools.calls)
    with pytest.raises(QuotaExceededError):
        await svc.chat(chat(), Wishes(tenant="acme"))
    assert len(pools.calls) == calls  # refused before any engine work
    assert svc.metrics.summary()["outcomes"]["rejected"] == 1
