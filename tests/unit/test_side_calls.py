"""The cheap bucket of endpoints that generate nothing (issue 20, finding 9): after a
tenant's 429, 50 calls each to /v1/feedback, /v1/route, /v1/metrics, /v1/budget had all
answered 200."""

from __future__ import annotations

import pytest

from core.errors import RateLimitedError
from deployments.openai.errors import to_api_error
from tenancy.side import SideCalls
from tests.support.keeper import Clock


def test_each_caller_gets_its_own_bucket_and_it_refills() -> None:
    clock = Clock(0.0)
    side = SideCalls(10, clock=clock)
    outcomes = []
    for _ in range(50):
        try:
            side.take("acme")
            outcomes.append(200)
        except RateLimitedError as exc:
            outcomes.append(to_api_error(exc).status)
            assert exc.retry_after_s == 6
    assert (outcomes.count(200), outcomes.count(429)) == (10, 40)
    side.take("bob")  # another tenant is not starved by acme
    side.take(None)  # nor are anonymous callers, who share one bucket
    clock.now += 6  # one call's worth refilled
    side.take("acme")
    with pytest.raises(RateLimitedError):
        side.take("acme")


def test_ten_thousand_callers_keep_memory_bounded() -> None:
    side = SideCalls(10, max_callers=1000, clock=Clock(0.0))
    for i in range(10_000):
        side.take(f"tenant-{i}")
    assert len(side) == 1000
