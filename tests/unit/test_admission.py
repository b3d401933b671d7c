"""The edge's adaptive concurrency limit (AIMD), as arithmetic."""

from __future__ import annotations

import pytest

from deployments.admission import AdaptiveLimit


def test_refusals_lower_the_limit_once_per_round_trip() -> None:
    limit = AdaptiveLimit(limit=100)
    limit.inflight = 80
    limit.answered(429, admitted_at=1.0, now=2.0, full=True)
    assert limit.limit == pytest.approx(72)  # 90% of what was in flight
    limit.answered(429, admitted_at=1.5, now=2.1, full=True)  # admitted before the drop: same burst
    assert limit.limit == pytest.approx(72)
    limit.answered(429, admitted_at=2.05, now=3.0, full=True)  # admitted after it: a new signal
    assert limit.limit == pytest.approx(72 * 0.9)
    limit.answered(503, admitted_at=3.5, now=4.0, full=False)  # a dead replica is not a full pool
    assert limit.limit == pytest.approx(72 * 0.9)


def test_a_tenants_own_limit_is_not_a_full_router() -> None:
    """Regression: a tenant's 429 rate_limit_exceeded shrank admission for everyone (in
    CI the 10-RPM test left the edge at its floor, and the next test got 429s)."""
    limit = AdaptiveLimit(limit=100)
    limit.inflight = 80
    for t in range(50):
        limit.answered(429, admitted_at=float(t), now=float(t) + 0.5, full=False)
    assert limit.limit == 100


def test_successes_raise_it_slowly_up_to_the_maximum() -> None:
    limit = AdaptiveLimit(limit=10, maximum=11)
    for _ in range(10):
        limit.answered(200, admitted_at=0.0, now=0.0, full=False)
    assert 10.9 < limit.limit <= 11
    for _ in range(100):
        limit.answered(200, admitted_at=0.0, now=0.0, full=False)
    assert limit.limit == 11
    limit.answered(400, admitted_at=0.0, now=0.0, full=False)  # a client's mistake says nothing
    assert limit.limit == 11


def test_admission_and_the_floor() -> None:
    limit = AdaptiveLimit(limit=10, minimum=8)
    limit.inflight = 9
    assert limit.admit()
    limit.inflight = 10
    assert not limit.admit()
    limit.inflight = 1
    limit.answered(429, admitted_at=1.0, now=1.0, full=True)
    assert limit.limit == 8  # never below the floor: some traffic always gets through
