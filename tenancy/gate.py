"""Each ingress replica's side of budgets and rate limits: admit, refuse, or go frugal.

The shared counts live in one `QuotaKeeper` (tenancy/keeper.py behind a Serve
deployment); this gate keeps what it needs to decide most requests without asking it:

    requests per minute  a local lease of requests granted by the keeper (one call per
                         lease, not per request); none left and none granted -> 429
                         `rate_limit_exceeded`
    tokens per minute,   the keeper's snapshot of the tenant's usage, at most
    budgets              `snapshot_ttl_s` old, plus what this replica spent since and has
                         not reported; a spent budget -> 429 `insufficient_quota` before any
                         engine work, `frugal_at` of it -> cheaper routing

Spend is reported to the keeper in batches (`flush`, every `report_interval_s`). If the
keeper cannot be reached, requests are admitted (and the failure logged): a broken
accounting service must not take the API down.

Bound on overshoot: requests per minute, none (leases are counted when granted). Tokens
and USD: what is in flight when a limit is reached, plus what other replicas spent in
the last `report_interval_s + snapshot_ttl_s`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from core.errors import QuotaExceededError, RateLimitedError
from tenancy.config import TenantConfig
from tenancy.keeper import Snapshot, Spend, lease_size
from tenancy.quota import Period, budget_state, rate_limit_headers, window

logger = logging.getLogger(__name__)


class Keeper(Protocol):
    """The shared book, as the gate reaches it (a Serve handle in the ingress)."""

    async def lease(self, tenant: str, want: int, now: float) -> tuple[int, float]: ...

    async def report(self, spent: list[Spend], now: float) -> None: ...

    async def snapshot(self, tenant: str, now: float) -> Snapshot: ...


@dataclass(frozen=True)
class Admission:
    frugal: str | None = None  # why routing must save, when the budget is near its end
    headers: Mapping[str, str] = field(default_factory=dict)  # x-ratelimit-*


@dataclass
class _Lease:
    left: int = 0
    until: float = 0.0


class QuotaGate:
    def __init__(
        self,
        tenants: Mapping[str, TenantConfig],
        keeper: Keeper,
        *,
        snapshot_ttl_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.tenants = {
            name: policy
            for name, policy in tenants.items()
            if policy.limits.requests_per_minute
            or policy.limits.tokens_per_minute
            or policy.budget.limits()
        }
        self.keeper = keeper
        self.snapshot_ttl_s = snapshot_ttl_s
        self.clock = clock
        self._leases: dict[str, _Lease] = {}
        self._snapshots: dict[str, tuple[float, Snapshot]] = {}
        self._unreported: list[Spend] = []
        self._last_error_log = 0.0

    def governs(self, tenant: str | None) -> bool:
        return tenant is not None and tenant in self.tenants

    async def admit(self, tenant: str | None) -> Admission:
        """Admit one request of `tenant`, or raise a 429 domain error."""
        if tenant is None or tenant not in self.tenants:
            return Admission()
        policy, now = self.tenants[tenant], self.clock()
        snap = await self._snapshot(tenant, now)
        if snap is None:
            return Admission()
        used = dict(snap.used)
        for item in self._unreported:
            if item.tenant == tenant:
                for period in ("minute", "hour", "day", "month"):
                    for what, amount in (("tokens", item.tokens), ("usd", item.usd)):
                        key: tuple[str, Period] = (what, period)
                        used[key] = used.get(key, 0.0) + amount
        state = budget_state(policy.budget, used, now)
        if state.level == "exhausted" and state.worst is not None and state.resets_at:
            what, period = state.worst
            raise QuotaExceededError(
                f"the {what} per {period} limit", _seconds(state.resets_at - now)
            )
        limits = policy.limits
        tokens_now = int(used.get(("tokens", "minute"), 0.0))
        if limits.tokens_per_minute is not None and tokens_now >= limits.tokens_per_minute:
            raise self._limited("tokens", limits.tokens_per_minute, snap.minute_ends - now)
        requests_used = snap.requests
        if limits.requests_per_minute is not None:
            try:
                await self._take(tenant, limits.requests_per_minute, now)
            except RateLimitedError as refused:
                refused.headers = rate_limit_headers(
                    limits, limits.requests_per_minute, tokens_now, now
                )
                raise
            requests_used = limits.requests_per_minute - self._remaining(tenant, snap, now)
        headers = rate_limit_headers(limits, requests_used, tokens_now, now)
        frugal = state.note() if state.level == "frugal" else None
        return Admission(frugal, headers)

    def _remaining(self, tenant: str, snap: Snapshot, now: float) -> int:
        limit = self.tenants[tenant].limits.requests_per_minute or 0
        lease = self._leases.get(tenant)
        mine = lease.left if lease is not None and lease.until > now else 0
        return max(0, limit - snap.requests + mine)

    async def _take(self, tenant: str, limit: int, now: float) -> None:
        lease = self._leases.setdefault(tenant, _Lease())
        if lease.until <= now:
            lease.left = 0
        if lease.left <= 0:
            try:
                granted, until = await self.keeper.lease(tenant, lease_size(limit), now)
            except Exception as exc:  # noqa: BLE001 - accounting down: admit, say so
                self._log(exc)
                return
            lease.left, lease.until = granted, until
            if granted <= 0:
                raise self._limited("requests", limit, until - now)
        lease.left -= 1

    def _limited(self, what: str, limit: int, wait_s: float) -> RateLimitedError:
        return RateLimitedError(what, limit, _seconds(wait_s))

    async def _snapshot(self, tenant: str, now: float) -> Snapshot | None:
        cached = self._snapshots.get(tenant)
        if cached is not None and now - cached[0] < self.snapshot_ttl_s:
            return cached[1]
        try:
            snap = await self.keeper.snapshot(tenant, now)
        except Exception as exc:  # noqa: BLE001 - accounting down: admit, say so
            self._log(exc)
            return cached[1] if cached else None
        self._snapshots[tenant] = (now, snap)
        return snap

    def spent(self, tenant: str | None, created_at: float, tokens: int, usd: float) -> None:
        """What a finished request of `tenant` used; reported at the next `flush`."""
        if tenant is not None and tenant in self.tenants and (tokens or usd):
            self._unreported.append(Spend(tenant, created_at, float(tokens), usd))

    async def flush(self) -> None:
        """Report unreported spend to the keeper (kept for the next try if it fails)."""
        if not self._unreported:
            return
        batch, self._unreported = self._unreported, []
        try:
            await self.keeper.report(batch, self.clock())
        except Exception as exc:  # noqa: BLE001 - retried at the next flush
            self._unreported = batch + self._unreported
            self._log(exc)
            return
        self._snapshots.clear()  # the next decision sees this spend from the keeper

    async def budget(self, tenant: str) -> dict[str, object]:
        """`GET /v1/budget`: the tenant's limits, use per window, what remains, reset times."""
        policy, now = self.tenants.get(tenant), self.clock()
        if policy is None:
            return {"object": "budget", "tenant": tenant, "limited": False, "windows": []}
        self._snapshots.pop(tenant, None)  # NOTE: a budget read wants the freshest numbers
        snap = await self._snapshot(tenant, now)
        used = dict(snap.used) if snap is not None else {}
        windows: list[dict[str, object]] = []
        for (what, period), limit in policy.budget.limits().items():
            spent = used.get((what, period), 0.0)
            windows.append(
                {
                    "what": what, "period": period, "limit": limit, "used": round(spent, 6),
                    "remaining": round(max(0.0, limit - spent), 6),
                    "resets_at": int(window(now, period)[1]),
                }
            )  # fmt: skip
        rates, minute_ends = policy.limits, int(window(now, "minute")[1])
        per_minute = (
            ("requests", rates.requests_per_minute, float(snap.requests if snap else 0)),
            ("tokens", rates.tokens_per_minute, used.get(("tokens", "minute"), 0.0)),
        )
        for what, cap, count in per_minute:
            if cap is not None:
                windows.append(
                    {
                        "what": what, "period": "minute", "limit": cap, "used": count,
                        "remaining": max(0.0, cap - count), "resets_at": minute_ends,
                    }
                )  # fmt: skip
        state = budget_state(policy.budget, used, now)
        return {
            "object": "budget", "tenant": tenant, "limited": True, "level": state.level,
            "frugal_at": policy.budget.frugal_at, "windows": windows,
        }  # fmt: skip

    def _log(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_error_log >= 60:
            logger.warning("quota keeper unreachable, requests admitted meanwhile: %r", exc)
            self._last_error_log = now


def _seconds(wait_s: float) -> int:
    return max(1, math.ceil(wait_s))
