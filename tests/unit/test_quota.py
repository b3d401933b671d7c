"""Budget and rate-limit arithmetic: UTC windows, guard levels, OpenAI's headers, and what
frugal mode does to routing."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from routing.planner import Wishes
from tenancy.quota import Budget, RateLimits, budget_state, duration, rate_limit_headers, window
from tests.unit.test_planner import auto


def ts(*parts: int) -> float:
    return datetime(*parts, tzinfo=UTC).timestamp()  # type: ignore[misc]


@pytest.mark.parametrize(
    ("now", "period", "start", "end"),
    [
        (ts(2026, 11, 23, 18, 5, 30), "minute", ts(2026, 11, 23, 18, 5), ts(2026, 11, 23, 18, 6)),
        (ts(2026, 11, 23, 18, 59, 59), "hour", ts(2026, 11, 23, 18), ts(2026, 11, 23, 19)),
        (ts(2026, 11, 23, 23, 59, 59), "day", ts(2026, 11, 23), ts(2026, 11, 24)),
        (ts(2026, 12, 31, 12), "month", ts(2026, 12, 1), ts(2027, 1, 1)),  # year rolls over
        (ts(2028, 2, 29, 1), "month", ts(2028, 2, 1), ts(2028, 3, 1)),  # leap February
        (ts(2026, 2, 1), "month", ts(2026, 2, 1), ts(2026, 3, 1)),  # the first instant
    ],
)
def test_windows_are_utc_calendar_aligned(
    now: float, period: str, start: float, end: float
) -> None:
    assert window(now, period) == (start, end)  # type: ignore[arg-type]


def test_budget_levels_follow_the_limit_closest_to_its_end() -> None:
    budget = Budget(usd_per_day=10, tokens_per_month=1000, frugal_at=0.8)
    now = ts(2026, 11, 23, 12)
    assert budget_state(budget, {}, now).level == "ok"
    assert budget_state(budget, {("usd", "day"): 7.99}, now).level == "ok"
    frugal = budget_state(budget, {("usd", "day"): 8.0, ("tokens", "month"): 100}, now)
    assert (frugal.level, frugal.worst, frugal.resets_at) == (
        "frugal", ("usd", "day"), ts(2026, 11, 24),
    )  # fmt: skip
    assert frugal.note() == "budget: 80% of the usd per day limit used"
    done = budget_state(budget, {("usd", "day"): 2, ("tokens", "month"): 1000}, now)
    assert (done.level, done.worst, done.resets_at) == (
        "exhausted", ("tokens", "month"), ts(2026, 12, 1),
    )  # fmt: skip
    assert budget_state(Budget(), {("usd", "day"): 1e9}, now).level == "ok"  # no limits set


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.0172, "18ms"), (0.0, "0ms"), (1, "1s"), (59.2, "1m0s"), (360, "6m0s"), (3723, "1h2m3s")],
)
def test_reset_durations_read_like_openais(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_rate_limit_headers_count_down_to_the_next_minute() -> None:
    limits = RateLimits(requests_per_minute=10, tokens_per_minute=1000)
    headers = rate_limit_headers(limits, 3, 1200, ts(2026, 11, 23, 18, 5, 45))
    assert headers == {
        "x-ratelimit-limit-requests": "10",
        "x-ratelimit-remaining-requests": "7",
        "x-ratelimit-reset-requests": "15s",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "0",  # never negative
        "x-ratelimit-reset-tokens": "15s",
    }
    assert rate_limit_headers(RateLimits(), 3, 3, 0) == {}  # no limits, no headers


def test_frugal_mode_skips_escalation_and_weighs_cost() -> None:
    frugal = "budget: 85% of the usd per day limit used"
    cascade = auto("hello", wishes=Wishes(strategy="speculative", frugal=frugal))
    assert (cascade.strategy, cascade.target, cascade.downgrade) == (
        "route", None, ("speculative", "budget"),
    )  # fmt: skip
    assert any(n.startswith(frugal) and "speculative skipped" in n for n in cascade.notes)
    # A request the rules send to `large`: its quality outweighs its cost, until frugal
    # mode weighs cost 3x (J: large 0.2 + 0.9 - 0.85 = 0.25 > small 0.05 + 0.09 = 0.14).
    text = "Prove that there are infinitely many primes, step by step, rigorously."
    assert auto(text).pool == "large"
    saving = auto(text, wishes=Wishes(frugal=frugal))
    assert (saving.pool, saving.reason) == ("small", "score")
