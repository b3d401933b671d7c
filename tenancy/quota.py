"""Budgets and rate limits, as arithmetic: windows, guard levels, response headers.

Pure (no I/O, the clock passed in), so every threshold and reset time is tested as a
function. What is counted where, and how replicas share it, is the job of the code that
calls this; here a tenant's usage in each window is just numbers.

Windows are fixed and aligned to UTC calendar boundaries — the minute, the hour, the
day, the calendar month — so "spend this month" means what an invoice means, and every
replica computes the same window for the same instant.

A budget has three levels. Below `frugal_at` of every limit: `ok`. From `frugal_at`:
`frugal` (routing gets cheaper: see `routing.planner`, `Wishes.frugal`). At a limit:
`exhausted` (429 `insufficient_quota`, no engine work) until that window resets.
"""

from __future__ import annotations

import calendar
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from pydantic import Field

from core.config import StrictConfig

Period = Literal["minute", "hour", "day", "month"]
PERIODS: tuple[Period, ...] = ("minute", "hour", "day", "month")
Level = Literal["ok", "frugal", "exhausted"]


def window(now: float, period: Period) -> tuple[float, float]:
    """[start, end) of the UTC window of `period` that contains unix time `now`."""
    t = datetime.fromtimestamp(now, UTC)
    if period == "minute":
        start = t.replace(second=0, microsecond=0)
        return start.timestamp(), start.timestamp() + 60
    if period == "hour":
        start = t.replace(minute=0, second=0, microsecond=0)
        return start.timestamp(), start.timestamp() + 3600
    if period == "day":
        start = t.replace(hour=0, minute=0, second=0, microsecond=0)
        return start.timestamp(), start.timestamp() + 86400
    start = t.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    days = calendar.monthrange(t.year, t.month)[1]
    return start.timestamp(), start.timestamp() + days * 86400


class RateLimits(StrictConfig):
    """Requests and tokens per minute (prompt + completion tokens), requests at once."""

    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(
        default=None,
        ge=1,
        description="Counted as OpenAI counts it: a request reserves its prompt plus "
        "`max_tokens` when admitted, and is charged what it really used when it ends.",
    )
    max_in_flight: int | None = Field(
        default=None,
        ge=1,
        description="Requests of this account being served at once, across every ingress "
        "replica; one more is a 429 until one ends.",
    )


class Budget(StrictConfig):
    """Spend limits per window (USD, estimated from the catalog's prices) and optional
    token quotas. Discarded cascade/speculative work counts: it was real GPU time."""

    usd_per_hour: float | None = Field(default=None, gt=0)
    usd_per_day: float | None = Field(default=None, gt=0)
    usd_per_month: float | None = Field(default=None, gt=0)
    tokens_per_day: int | None = Field(default=None, ge=1)
    tokens_per_month: int | None = Field(default=None, ge=1)
    frugal_at: float = Field(
        default=0.8,
        gt=0,
        le=1,
        description="Share of any limit from which routing turns frugal (no speculation, "
        "no escalation, cost weighs more).",
    )

    def limits(self) -> dict[tuple[str, Period], float]:
        """(what, period) -> limit, for the limits that are set."""
        pairs: dict[tuple[str, Period], float | None] = {
            ("usd", "hour"): self.usd_per_hour,
            ("usd", "day"): self.usd_per_day,
            ("usd", "month"): self.usd_per_month,
            ("tokens", "day"): self.tokens_per_day,
            ("tokens", "month"): self.tokens_per_month,
        }
        return {key: float(value) for key, value in pairs.items() if value is not None}


@dataclass(frozen=True)
class BudgetState:
    level: Level
    worst: tuple[str, Period] | None  # the limit closest to (or past) its end
    used_share: float  # of that limit, 0..1+
    resets_at: float | None  # when that limit's window ends

    def note(self) -> str:
        if self.worst is None:
            return ""
        what, period = self.worst
        return f"budget: {self.used_share:.0%} of the {what} per {period} limit used"


def budget_state(
    budget: Budget, used: Mapping[tuple[str, Period], float], now: float
) -> BudgetState:
    """The guard's level from usage in the current windows (`used`: (what, period) ->
    amount, e.g. ("usd", "day") -> 3.2)."""
    worst: tuple[str, Period] | None = None
    share = 0.0
    for key, limit in budget.limits().items():
        ratio = used.get(key, 0.0) / limit
        if worst is None or ratio > share:
            worst, share = key, ratio
    if worst is None:
        return BudgetState("ok", None, 0.0, None)
    level: Level = "exhausted" if share >= 1 else "frugal" if share >= budget.frugal_at else "ok"
    return BudgetState(level, worst, share, window(now, worst[1])[1])


def duration(seconds: float) -> str:
    """A reset time in OpenAI's header form: `20ms`, `1s`, `6m0s`, `1h2m3s`."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    whole = math.ceil(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def rate_limit_headers(
    limits: RateLimits, requests_used: int, tokens_used: int, now: float
) -> dict[str, str]:
    """OpenAI's `x-ratelimit-*` response headers for the current minute."""
    resets = duration(window(now, "minute")[1] - now)
    headers: dict[str, str] = {}
    for kind, limit, used in (
        ("requests", limits.requests_per_minute, requests_used),
        ("tokens", limits.tokens_per_minute, tokens_used),
    ):
        if limit is not None:
            headers[f"x-ratelimit-limit-{kind}"] = str(limit)
            headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, limit - used))
            headers[f"x-ratelimit-reset-{kind}"] = resets
    return headers
