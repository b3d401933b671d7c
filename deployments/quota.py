"""The quota keeper deployment: the one owner of cross-replica budget and rate counts.

One replica holds a `QuotaBook` (tenancy/keeper.py); every ingress replica acquires
allowances from it and settles spend with it (tenancy/gate.py). The keeper reads its own
clock: callers' clocks never decide a window. After it starts — first deploy, or Serve
replacing a dead replica — each account's current windows are restored from the ledger
the first time the account is used, so limits hold across restarts. What was admitted
but not yet written to the ledger at that moment, and the allowances ingresses held, are
the bound on what a restart forgets.

When the database cannot be read, an account not restored yet cannot be counted: the
call fails with `DatabaseUnavailable`, naming the database as the cause, and the
ingress enforces its local share of the limits instead (`accounting.fail_mode`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Literal

from ray import serve
from ray.exceptions import RayTaskError
from ray.serve.handle import DeploymentHandle

from tenancy.config import QuotaConfig
from tenancy.db import connect, database_url
from tenancy.keeper import AccountUnavailable, Amounts, Grant, QuotaBook, Settlement
from tenancy.ledger import window_totals

logger = logging.getLogger(__name__)

EVICT_PERIOD_S = 60.0


class DatabaseUnavailable(AccountUnavailable):
    """The ledger could not be read to restore an account: its usage is unknown."""


# NOTE: no CPU reserved: the keeper does microseconds of work per call, and a reserved
# core would not fit beside the engines on a small node (the embedded profile's 2 CPUs).
@serve.deployment(
    name="quota", num_replicas=1, max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0}
)
class QuotaKeeper:
    def __init__(self, configured_url: str | None) -> None:
        self.book = QuotaBook()
        self.engine = connect(database_url(configured_url))
        self._evicted_at = time.time()
        self._restoring: dict[str, asyncio.Future[None]] = {}

    async def _ready(self, account: str) -> None:
        """An account's first use since this replica started (or since it was evicted):
        restore it from the ledger, once, however many calls wait for it."""
        if self.book.restored(account):
            return
        pending = self._restoring.get(account)
        if pending is None:
            pending = self._restoring[account] = asyncio.ensure_future(self._restore(account))
            pending.add_done_callback(lambda _: self._restoring.pop(account, None))
        await asyncio.shield(pending)

    async def _restore(self, account: str) -> None:
        kind, _, name = account.partition(":")
        column: Literal["tenant", "key_id"] = "tenant" if kind == "tenant" else "key_id"
        now = time.time()
        try:
            totals, admitted = await asyncio.to_thread(
                window_totals, self.engine, column, name, now
            )
        except Exception as exc:
            raise DatabaseUnavailable(
                f"the state database could not be read ({type(exc).__name__})"
            ) from exc
        if not self.book.restored(account):
            self.book.restore(account, now, totals, admitted)

    def _evict(self, now: float) -> None:
        if now - self._evicted_at >= EVICT_PERIOD_S:
            self._evicted_at = now
            self.book.evict(now)

    async def acquire(
        self, account: str, holder: str, need: Amounts, want: Amounts, policy: QuotaConfig
    ) -> Grant:
        await self._ready(account)
        now = time.time()
        self._evict(now)
        return self.book.acquire(account, holder, need, want, policy, now)

    async def settle(self, holder: str, items: list[Settlement]) -> dict[str, Grant]:
        for account in {item.account for item in items}:
            await self._ready(account)
        return self.book.settle(holder, items, time.time())

    async def snapshot(self, account: str) -> Grant:
        await self._ready(account)
        return self.book.snapshot(account, time.time())


class KeeperClient:
    """`tenancy.gate.Keeper` over the keeper's Serve handle, each call bounded. An account
    the keeper cannot count comes out as `AccountUnavailable`, not as Ray's wrapper."""

    def __init__(self, handle: DeploymentHandle[Any], timeout_s: float = 2.0) -> None:
        self.handle = handle
        self.timeout_s = timeout_s

    async def _call(self, method: str, *args: Any) -> Any:
        try:
            async with asyncio.timeout(self.timeout_s):
                return await getattr(self.handle, method).remote(*args)
        except RayTaskError as exc:
            if isinstance(exc.cause, AccountUnavailable):
                raise exc.cause from exc
            raise

    async def acquire(
        self, account: str, holder: str, need: Amounts, want: Amounts, policy: QuotaConfig
    ) -> Grant:
        grant: Grant = await self._call("acquire", account, holder, need, want, policy)
        return grant

    async def settle(self, holder: str, items: list[Settlement]) -> dict[str, Grant]:
        usage: dict[str, Grant] = await self._call("settle", holder, items)
        return usage

    async def snapshot(self, account: str) -> Grant:
        grant: Grant = await self._call("snapshot", account)
        return grant
