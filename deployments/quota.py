"""The quota keeper deployment: the one owner of cross-replica budget and rate counts.

One replica holds a `QuotaBook` (tenancy/keeper.py); every ingress replica leases
requests from it and reports spend to it (tenancy/gate.py). After it starts — first
deploy, or Serve replacing a dead replica — each account's current windows are restored
from the ledger the first time the account is used, so limits hold across restarts.
What was admitted but not yet written to the ledger at that moment is the bound on what
a restart forgets.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Literal

from ray import serve
from ray.serve.handle import DeploymentHandle

from tenancy.db import connect, database_url
from tenancy.keeper import QuotaBook, Snapshot, Spend
from tenancy.ledger import window_totals

logger = logging.getLogger(__name__)


# NOTE: no CPU reserved: the keeper does microseconds of work per call, and a reserved
# core would not fit beside the engines on a small node (the embedded profile's 2 CPUs).
@serve.deployment(
    name="quota", num_replicas=1, max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0}
)
class QuotaKeeper:
    def __init__(self, configured_url: str | None) -> None:
        self.book = QuotaBook()
        self.engine = connect(database_url(configured_url))

    async def _ready(self, account: str, now: float) -> None:
        """An account's first use since this replica started: restore it from the ledger."""
        if self.book.restored(account):
            return
        kind, _, name = account.partition(":")
        column: Literal["tenant", "key_id"] = "tenant" if kind == "tenant" else "key_id"
        totals, admitted = await asyncio.to_thread(window_totals, self.engine, column, name, now)
        if not self.book.restored(account):  # NOTE: another call may have restored it meanwhile
            self.book.restore(account, now, totals, admitted)

    async def lease(self, account: str, want: int, limit: int, now: float) -> tuple[int, float]:
        await self._ready(account, now)
        return self.book.lease(account, want, limit, now)

    async def report(self, spent: list[Spend], now: float) -> None:
        for account in {item.account for item in spent}:
            await self._ready(account, now)
        self.book.report(spent, now)

    async def snapshot(self, account: str, now: float) -> Snapshot:
        await self._ready(account, now)
        return self.book.snapshot(account, now)


class KeeperClient:
    """`tenancy.gate.Keeper` over the keeper's Serve handle, each call bounded."""

    def __init__(self, handle: DeploymentHandle[Any], timeout_s: float = 2.0) -> None:
        self.handle = handle
        self.timeout_s = timeout_s

    async def lease(self, account: str, want: int, limit: int, now: float) -> tuple[int, float]:
        async with asyncio.timeout(self.timeout_s):
            granted: tuple[int, float] = await self.handle.lease.remote(account, want, limit, now)
        return granted

    async def report(self, spent: list[Spend], now: float) -> None:
        async with asyncio.timeout(self.timeout_s):
            await self.handle.report.remote(spent, now)

    async def snapshot(self, account: str, now: float) -> Snapshot:
        async with asyncio.timeout(self.timeout_s):
            snap: Snapshot = await self.handle.snapshot.remote(account, now)
        return snap
