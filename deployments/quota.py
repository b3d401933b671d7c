"""The quota keeper deployment: the one owner of cross-replica budget and rate counts.

One replica holds a `QuotaBook` (tenancy/keeper.py); every ingress replica leases
requests from it and reports spend to it (tenancy/gate.py). When it starts — first
deploy, or Serve replacing a dead replica — it restores the current windows of every
governed tenant from the ledger, so limits hold across restarts. What was leased but
not yet recorded in the ledger at that moment is the bound on what a restart forgets.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from tenancy.config import TenantConfig
from tenancy.db import connect, database_url
from tenancy.keeper import QuotaBook, Snapshot, Spend
from tenancy.ledger import window_totals

logger = logging.getLogger(__name__)


@serve.deployment(name="quota", num_replicas=1, max_ongoing_requests=1000)
class QuotaKeeper:
    async def __init__(  # type: ignore[misc]  # Serve awaits async constructors
        self, tenants: dict[str, TenantConfig], configured_url: str | None
    ) -> None:
        governed = {
            name: policy
            for name, policy in tenants.items()
            if policy.limits.requests_per_minute
            or policy.limits.tokens_per_minute
            or policy.budget.limits()
        }
        self.book = QuotaBook(
            {name: p.limits for name, p in governed.items()},
            {name: p.budget for name, p in governed.items()},
        )
        engine = connect(database_url(configured_url))
        now = time.time()
        for tenant in governed:
            totals, admitted = await asyncio.to_thread(window_totals, engine, tenant, now)
            self.book.restore(tenant, now, totals, admitted)
        engine.dispose()
        logger.info("quota keeper restored %d tenants from the ledger", len(governed))

    def lease(self, tenant: str, want: int, now: float) -> tuple[int, float]:
        return self.book.lease(tenant, want, now)

    def report(self, spent: list[Spend], now: float) -> None:
        self.book.report(spent, now)

    def snapshot(self, tenant: str, now: float) -> Snapshot:
        return self.book.snapshot(tenant, now)


class KeeperClient:
    """`tenancy.gate.Keeper` over the keeper's Serve handle, each call bounded."""

    def __init__(self, handle: DeploymentHandle[Any], timeout_s: float = 2.0) -> None:
        self.handle = handle
        self.timeout_s = timeout_s

    async def lease(self, tenant: str, want: int, now: float) -> tuple[int, float]:
        async with asyncio.timeout(self.timeout_s):
            granted: tuple[int, float] = await self.handle.lease.remote(tenant, want, now)
        return granted

    async def report(self, spent: list[Spend], now: float) -> None:
        async with asyncio.timeout(self.timeout_s):
            await self.handle.report.remote(spent, now)

    async def snapshot(self, tenant: str, now: float) -> Snapshot:
        async with asyncio.timeout(self.timeout_s):
            snap: Snapshot = await self.handle.snapshot.remote(tenant, now)
        return snap
