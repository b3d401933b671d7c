"""The pool monitor: the one owner of live pool state, and what /health reports from it."""

from __future__ import annotations

from execution.monitor import EngineStats, PoolLimits, PoolMonitor


def monitor() -> PoolMonitor:
    return PoolMonitor(
        {
            "small": PoolLimits(max_ongoing=4),
            "code": PoolLimits(max_ongoing=4, may_scale_to_zero=True),
        },
        failure_threshold=2,
    )


def test_pools_at_zero_or_possibly_at_zero_are_never_polled() -> None:
    m = monitor()
    assert m.pools_to_poll() == []  # replica counts unknown: any call could wake a pool
    m.record_replicas("small", 1)
    m.record_replicas("code", 0)
    assert m.pools_to_poll() == ["small"]
    m.record_replicas("code", None)  # being redeployed: still not polled
    assert m.pools_to_poll() == ["small"]


def test_health_reads_the_last_samples_without_calling_pools() -> None:
    m = monitor()
    report = m.health()
    assert report["small"]["ok"] is False and report["small"]["state"] == "pending"
    assert (report["code"]["ok"], report["code"]["state"]) == (True, "unknown")
    m.record_replicas("small", 1)
    m.record_replicas("code", 0)
    m.record_stats("small", EngineStats(running=2, waiting=1, busy_s=1.23456, request_s=2.5))
    report = m.health()
    assert report["small"] | {"stats_age_s": 0} == {
        "ok": True, "state": "ok", "running": 2, "waiting": 1, "aborted": 0,
        "busy_s": 1.235, "request_s": 2.5,
        "stats_age_s": 0, "replicas": 1, "circuit": "closed",
    }  # fmt: skip
    assert (report["code"]["ok"], report["code"]["state"]) == (True, "scaled_to_zero")


def test_a_busy_pool_with_replicas_is_healthy_a_failed_one_is_not() -> None:
    m = monitor()
    m.record_replicas("small", 1)
    m.record_poll_failure("small", busy=True)
    assert m.health()["small"]["ok"] is True
    m.record_poll_failure("small", busy=False)
    assert m.health()["small"]["ok"] is False


def test_saturation_circuit_and_latency_are_updated_only_through_the_monitor() -> None:
    m = monitor()
    m.record_stats("small", EngineStats(running=3, waiting=1))
    assert m.saturated("small")
    m.record_failure("small")
    m.record_failure("small")
    assert (m.circuit("small"), m.available("small"), m.admit("small")) == ("open", False, False)
    m.record_success("small", seconds=2.0, tokens=10)
    assert m.circuit("small") == "closed"
    assert m.state("small").seconds_per_token == 0.2
    m.record_success("small", seconds=4.0, tokens=10)  # EWMA, weight 0.2
    assert m.state("small").seconds_per_token == 0.2 * 0.8 + 0.4 * 0.2
