"""Each ingress replica's side of budgets and rate limits: admit, refuse, or go frugal.

A request is checked against every account that governs it (`tenancy.config.Quotas`):
its tenant (the tenant's own limits, else its tier's, counted per tenant) and its API
key (when that key has limits of its own).

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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from core.errors import QuotaExceededError, RateLimitedError
from tenancy.config import QuotaConfig, Quotas
from tenancy.keeper import Snapshot, Spend, lease_size
from tenancy.quota import PERIODS, Period, budget_state, rate_limit_headers, window

logger = logging.getLogger(__name__)


class Keeper(Protocol):
    """The shared book, as the gate reaches it (a Serve handle in the ingress)."""

    async def lease(self, account: str, want: int, limit: int, now: float) -> tuple[int, float]: ...

    async def report(self, spent: list[Spend], now: float) -> None: ...

    async def snapshot(self, account: str, now: float) -> Snapshot: ...


@dataclass(frozen=True)
class Admission:
    accounts: tuple[str, ...] = ()  # what the request's spend is booked to
    frugal: str | None = None  # why routing must save, when a budget is near its end
    headers: Mapping[str, str] = field(default_factory=dict)  # x-ratelimit-*


@dataclass
class _Lease:
    left: int = 0
    until: float = 0.0


class QuotaGate:
    def __init__(
        self,
        quotas: Quotas,
        keeper: Keeper,
        *,
        snapshot_ttl_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.quotas = quotas
        self.keeper = keeper
        self.snapshot_ttl_s = snapshot_ttl_s
        self.clock = clock
        self._leases: dict[str, _Lease] = {}
        self._snapshots: dict[str, tuple[float, Snapshot]] = {}
        self._unreported: list[Spend] = []
        self._last_error_log = 0.0

    async def admit(
        self, tenant: str | None, tier: str | None = None, key_id: str | None = None
    ) -> Admission:
        """Admit one request, or raise a 429 domain error (no engine work done)."""
        accounts = self.quotas.accounts(tenant, tier, key_id)
        if not accounts:
            return Admission()
        now = self.clock()
        frugal: str | None = None
        headers: dict[str, str] = {}
        for account, policy in accounts:
            note, account_headers = await self._admit(account, policy, now)
            frugal = frugal or note
            headers = headers or account_headers  # the tenant's, when both have limits
        return Admission(tuple(a for a, _ in accounts), frugal, headers)

    async def _admit(
        self, account: str, policy: QuotaConfig, now: float
    ) -> tuple[str | None, dict[str, str]]:
        snap = await self._snapshot(account, now)
        if snap is None:
            return None, {}
        used = self._with_unreported(account, snap)
        state = budget_state(policy.budget, used, now)
        if state.level == "exhausted" and state.worst is not None and state.resets_at:
            what, period = state.worst
            raise QuotaExceededError(
                f"the {what} per {period} limit of {account}", _seconds(state.resets_at - now)
            )
        limits = policy.limits
        tokens_now = int(used.get(("tokens", "minute"), 0.0))
        if limits.tokens_per_minute is not None and tokens_now >= limits.tokens_per_minute:
            raise self._limited("tokens", limits.tokens_per_minute, snap.minute_ends - now)
        requests_used = snap.requests
        if limits.requests_per_minute is not None:
            limit = limits.requests_per_minute
            try:
                await self._take(account, limit, now)
            except RateLimitedError as refused:
                refused.headers = rate_limit_headers(limits, limit, tokens_now, now)
                raise
            requests_used = limit - self._remaining(account, limit, snap, now)
        headers = rate_limit_headers(limits, requests_used, tokens_now, now)
        return (state.note() if state.level == "frugal" else None), headers

    def _with_unreported(self, account: str, snap: Snapshot) -> dict[tuple[str, Period], float]:
        """The keeper's numbers plus what this replica spent and has not reported yet."""
        used = dict(snap.used)
        for item in self._unreported:
            if item.account == account:
                for period in PERIODS:
                    used["tokens", period] = used.get(("tokens", period), 0.0) + item.tokens
                    used["usd", period] = used.get(("usd", period), 0.0) + item.usd
        return used

    def _remaining(self, account: str, limit: int, snap: Snapshot, now: float) -> int:
        lease = self._leases.get(account)
        mine = lease.left if lease is not None and lease.until > now else 0
        return max(0, limit - snap.requests + mine)

    async def _take(self, account: str, limit: int, now: float) -> None:
        lease = self._leases.setdefault(account, _Lease())
        if lease.until <= now:
            lease.left = 0
        if lease.left <= 0:
            try:
                granted, until = await self.keeper.lease(account, lease_size(limit), limit, now)
            except Exception as exc:  # noqa: BLE001 - accounting down: admit, say so
                self._log(exc)
                return
            lease.left, lease.until = granted, until
            if granted <= 0:
                raise self._limited("requests", limit, until - now)
        lease.left -= 1

    def _limited(self, what: str, limit: int, wait_s: float) -> RateLimitedError:
        return RateLimitedError(what, limit, _seconds(wait_s))

    async def _snapshot(self, account: str, now: float) -> Snapshot | None:
        cached = self._snapshots.get(account)
        if cached is not None and now - cached[0] < self.snapshot_ttl_s:
            return cached[1]
        try:
            snap = await self.keeper.snapshot(account, now)
        except Exception as exc:  # noqa: BLE001 - accounting down: admit, say so
            self._log(exc)
            return cached[1] if cached else None
        self._snapshots[account] = (now, snap)
        return snap

    def spent(self, accounts: Iterable[str], created_at: float, tokens: int, usd: float) -> None:
        """What a finished request used, booked to its accounts at the next `flush`."""
        if tokens or usd:
            for account in accounts:
                self._unreported.append(Spend(account, created_at, float(tokens), usd))

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

    async def budget(
        self, tenant: str, tier: str | None = None, key_id: str | None = None
    ) -> dict[str, object]:
        """`GET /v1/budget`: limits, use per window, what remains, reset times, for each
        account of the caller (its tenant, and its key when the key has limits)."""
        now = self.clock()
        accounts = []
        for account, policy in self.quotas.accounts(tenant, tier, key_id):
            self._snapshots.pop(account, None)  # NOTE: a budget read wants fresh numbers
            snap = await self._snapshot(account, now)
            used = self._with_unreported(account, snap) if snap is not None else {}
            state = budget_state(policy.budget, used, now)
            accounts.append(
                {
                    "account": account, "level": state.level,
                    "frugal_at": policy.budget.frugal_at,
                    "windows": _windows(policy, used, snap.requests if snap else 0, now),
                }
            )  # fmt: skip
        return {"object": "budget", "tenant": tenant, "limited": bool(accounts),
                "accounts": accounts}  # fmt: skip

    def _log(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_error_log >= 60:
            logger.warning("quota keeper unreachable, requests admitted meanwhile: %r", exc)
            self._last_error_log = now


def _windows(
    policy: QuotaConfig, used: Mapping[tuple[str, Period], float], requests: int, now: float
) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for (what, period), limit in policy.budget.limits().items():
        spent = used.get((what, period), 0.0)
        rows.append(
            {
                "what": what, "period": period, "limit": limit, "used": round(spent, 6),
                "remaining": round(max(0.0, limit - spent), 6),
                "resets_at": int(window(now, period)[1]),
            }
        )  # fmt: skip
    rates, minute_ends = policy.limits, int(window(now, "minute")[1])
    per_minute = (
        ("requests", rates.requests_per_minute, float(requests)),
        ("tokens", rates.tokens_per_minute, used.get(("tokens", "minute"), 0.0)),
    )
    for what, cap, count in per_minute:
        if cap is not None:
            rows.append(
                {
                    "what": what, "period": "minute", "limit": cap, "used": count,
                    "remaining": max(0.0, cap - count), "resets_at": minute_ends,
                }
            )  # fmt: skip
    return rows


def _seconds(wait_s: float) -> int:
    return max(1, math.ceil(wait_s))
