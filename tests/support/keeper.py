"""An in-process quota keeper that behaves like the remote one: every call yields to the
event loop (and may wait, fail or time out), so concurrent gates really interleave."""

from __future__ import annotations

import asyncio
from typing import Any

from tenancy.config import QuotaConfig, Quotas, TenantConfig
from tenancy.gate import QuotaGate
from tenancy.keeper import AccountUnavailable, Amounts, Grant, QuotaBook, Settlement

NOW = 1_800_000_020.0  # a fixed instant, 20 s into its minute


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class RemoteKeeper:
    """`tenancy.gate.Keeper` over a `QuotaBook`, with its own clock (as the deployment).

    `latency_s`: each call waits this long (0 still yields once); `down`: calls raise
    (the keeper or its database unreachable); `hang`: calls never answer (the client's
    timeout must end them)."""

    def __init__(self, clock: Clock | None = None, latency_s: float = 0.0) -> None:
        self.book = QuotaBook()
        self.clock = clock or Clock()
        self.latency_s = latency_s
        self.down = False
        self.hang = False
        self.unavailable: set[str] = set()  # accounts it cannot restore (database down)
        self.calls = 0

    async def _call(self) -> None:
        self.calls += 1
        if self.hang:
            await asyncio.sleep(3600)
        await asyncio.sleep(self.latency_s)
        if self.down:
            raise ConnectionError("the state database could not be read")

    async def acquire(
        self, account: str, holder: str, need: Amounts, want: Amounts, policy: QuotaConfig
    ) -> Grant:
        await self._call()
        if account in self.unavailable and not self.book.restored(account):
            raise AccountUnavailable("the state database could not be read")
        return self.book.acquire(account, holder, need, want, policy, self.clock())

    async def settle(self, holder: str, items: list[Settlement]) -> dict[str, Grant]:
        await self._call()
        return self.book.settle(holder, items, self.clock())

    async def snapshot(self, account: str) -> Grant:
        await self._call()
        return self.book.snapshot(account, self.clock())


class TimeoutKeeper:
    """`RemoteKeeper` behind a client timeout, as `deployments.quota.KeeperClient`."""

    def __init__(self, inner: RemoteKeeper, timeout_s: float) -> None:
        self.inner, self.timeout_s = inner, timeout_s

    async def acquire(self, *args: Any) -> Grant:
        async with asyncio.timeout(self.timeout_s):
            return await self.inner.acquire(*args)

    async def settle(self, *args: Any) -> dict[str, Grant]:
        async with asyncio.timeout(self.timeout_s):
            return await self.inner.settle(*args)

    async def snapshot(self, *args: Any) -> Grant:
        async with asyncio.timeout(self.timeout_s):
            return await self.inner.snapshot(*args)


def quotas(
    tiers: dict[str, Any] | None = None, keys: dict[str, Any] | None = None, **tenants: Any
) -> Quotas:
    return Quotas(
        {name: TenantConfig.model_validate(p) for name, p in tenants.items()},
        {name: QuotaConfig.model_validate(p) for name, p in (tiers or {}).items()},
        {name: QuotaConfig.model_validate(p) for name, p in (keys or {}).items()},
    )


def cluster(
    replicas: int, clock: Clock, keeper: RemoteKeeper | None = None, **tenants: Any
) -> list[QuotaGate]:
    """`replicas` gates (ingress replicas) sharing one keeper."""
    shared = keeper or RemoteKeeper(clock)
    return [
        QuotaGate(quotas(**tenants), shared, holder=f"ingress-{i}", clock=clock)
        for i in range(replicas)
    ]


async def spend(gate: QuotaGate, tenant: str, tokens: float, usd: float) -> None:
    """Book a finished request's spend through the gate, as serving does."""
    accounts = gate.accounts(tenant, None, None, None)
    reservation = await gate.reserve(accounts, tokens, usd)
    gate.settle(reservation, tokens, usd)
