"""The one shared book of what each account (a tenant, or a key) used in the current
windows.

Owned by a single `QuotaKeeper` replica (deployments/quota.py); every ingress replica
asks it for request *leases* and reports what requests actually spent. Pure: the clock is
passed in, the ledger's totals are handed to `restore` before an account's first use.

Requests per minute are exact: a lease is counted when granted, so no more than the
limit is ever admitted, whatever replica answers; a replica that does not use its whole
lease admits fewer (leases are small for small limits: one request when the limit is 20
a minute or less). Tokens and spend are known only when a request ends, so their limits
can be overshot by what is in flight when the limit is reached, plus what replicas have
not reported yet (their report interval).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from tenancy.quota import PERIODS, Period, window

LEASES_PER_MINUTE = 20  # a lease is at most 1/20 of a minute's requests


def lease_size(limit: int) -> int:
    return max(1, math.floor(limit / LEASES_PER_MINUTE))


@dataclass
class Usage:
    """One tenant's usage in the current windows."""

    windows: dict[Period, float] = field(default_factory=dict)  # period -> window start
    requests: int = 0  # this minute (leased)
    tokens: dict[Period, float] = field(default_factory=dict)
    usd: dict[Period, float] = field(default_factory=dict)

    def roll(self, now: float) -> None:
        """Start new windows whose period has passed."""
        for period in PERIODS:
            start = window(now, period)[0]
            if self.windows.get(period) != start:
                self.windows[period] = start
                self.tokens[period] = 0.0
                self.usd[period] = 0.0
                if period == "minute":
                    self.requests = 0

    def add(self, created_at: float, tokens: float, usd: float) -> None:
        """Spend of a request that arrived at `created_at` (only windows it falls in)."""
        for period in PERIODS:
            start = self.windows.get(period)
            if start is not None and start <= created_at:
                self.tokens[period] = self.tokens.get(period, 0.0) + tokens
                self.usd[period] = self.usd.get(period, 0.0) + usd

    def amounts(self) -> dict[tuple[str, Period], float]:
        """(what, period) -> used, as `tenancy.quota.budget_state` reads it."""
        used: dict[tuple[str, Period], float] = {}
        for period in PERIODS:
            used["usd", period] = self.usd.get(period, 0.0)
            used["tokens", period] = self.tokens.get(period, 0.0)
        return used


@dataclass(frozen=True)
class Snapshot:
    """What an ingress needs to decide about a tenant without asking again."""

    requests: int  # leased this minute, cluster-wide
    used: dict[tuple[str, Period], float]
    minute_ends: float


@dataclass(frozen=True)
class Spend:
    account: str
    created_at: float
    tokens: float
    usd: float


class QuotaBook:
    """Usage per account: `tenant:<id>` or `key:<id>`. Limits come with each lease call
    (the ingress resolves which policy applies); the book only counts."""

    def __init__(self) -> None:
        self._usage: dict[str, Usage] = {}
        self._restored: set[str] = set()

    def _of(self, account: str, now: float) -> Usage:
        usage = self._usage.setdefault(account, Usage())
        usage.roll(now)
        return usage

    def restored(self, account: str) -> bool:
        return account in self._restored

    def restore(
        self, account: str, now: float, totals: Mapping[Period, tuple[float, float]], requests: int
    ) -> None:
        """The ledger's totals of this account's current windows, once, before first use
        (`totals`: period -> (tokens, usd); `requests`: admitted this minute)."""
        usage = self._of(account, now)
        usage.requests = max(usage.requests, requests)
        for period, (tokens, usd) in totals.items():
            usage.tokens[period] = max(usage.tokens.get(period, 0.0), tokens)
            usage.usd[period] = max(usage.usd.get(period, 0.0), usd)
        self._restored.add(account)

    def lease(self, account: str, want: int, limit: int, now: float) -> tuple[int, float]:
        """Up to `want` of this minute's `limit` requests: (granted, when the minute ends)."""
        usage = self._of(account, now)
        granted = max(0, min(want, limit - usage.requests))
        usage.requests += granted
        return granted, window(now, "minute")[1]

    def report(self, spent: Iterable[Spend], now: float) -> None:
        for item in spent:
            self._of(item.account, now).add(item.created_at, item.tokens, item.usd)

    def snapshot(self, account: str, now: float) -> Snapshot:
        usage = self._of(account, now)
        return Snapshot(usage.requests, usage.amounts(), window(now, "minute")[1])
