"""The pool autoscaling policy on hand-built Serve contexts: no cluster, no controller."""

from __future__ import annotations

from typing import Any

import pytest
from ray.serve.config import AutoscalingConfig, AutoscalingContext

from deployments.autoscaling import (
    ANTICIPATED,
    ENGINE_WAITING,
    ScalingSignals,
    desired_replicas,
    pool_autoscaling_policy,
    pool_load,
)


def load(**kw: float) -> ScalingSignals:
    base: dict[str, Any] = dict(
        replicas=2, ongoing=0.0, queued=0.0, engine_waiting=0.0, anticipated=0.0, target=4.0
    )
    return ScalingSignals(**{**base, **kw})


def context(
    replicas: int, ongoing: float, queued: float = 0.0, metrics: dict[str, Any] | None = None
) -> AutoscalingContext:
    config = AutoscalingConfig(min_replicas=0, max_replicas=8, target_ongoing_requests=4)
    ids = [f"r{i}" for i in range(replicas)]
    return AutoscalingContext(
        deployment_id="pool-large",  # type: ignore[arg-type]
        deployment_name="pool-large",
        app_name="switchyard",
        current_num_replicas=replicas,
        target_num_replicas=replicas,
        running_replicas=ids,  # type: ignore[arg-type]
        total_num_requests=ongoing,
        total_queued_requests=queued,
        aggregated_metrics=metrics,
        raw_metrics=None,
        capacity_adjusted_min_replicas=0,
        capacity_adjusted_max_replicas=8,
        policy_state={},
        last_scale_up_time=None,
        last_scale_down_time=None,
        current_time=1000.0,
        config=config,
    )


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({"ongoing": 8}, (2, "steady")),  # exactly at target
        ({"ongoing": 13}, (4, "ongoing")),  # 13 / 4 -> 3.25 -> 4: jumps, not +1
        ({"ongoing": 8, "anticipated": 6}, (4, "anticipated")),  # 14 / 4 -> 4
        ({"ongoing": 6, "engine_waiting": 2}, (3, "queue")),  # average fine, engines queue
        ({"ongoing": 6, "queued": 1}, (3, "queue")),  # requests wait at handles
        ({"ongoing": 6, "engine_waiting": 0.4}, (2, "steady")),  # under one waiting on average
        ({"ongoing": 3.2}, (1, "low_load")),  # fits 80% of one replica's target
        ({"ongoing": 3.3}, (2, "steady")),  # would run the last replica too hot: hold
        ({"ongoing": 0}, (1, "low_load")),
    ],
)
def test_desired_replicas(kw: dict[str, float], expected: tuple[int, str]) -> None:
    assert desired_replicas(load(**kw)) == expected


def test_scale_down_is_one_replica_at_a_time_while_scale_up_jumps() -> None:
    assert desired_replicas(load(replicas=6, ongoing=0))[0] == 5
    assert desired_replicas(load(replicas=1, ongoing=24))[0] == 6


def test_an_idle_pool_at_zero_stays_there_and_anticipation_wakes_it() -> None:
    assert desired_replicas(load(replicas=0)) == (0, "idle")
    assert desired_replicas(load(replicas=0, anticipated=5)) == (2, "anticipated")
    assert desired_replicas(load(replicas=1, ongoing=0))[0] == 0  # Serve's bounds keep min


def test_pool_load_reads_serve_context_and_custom_metrics() -> None:
    ctx = context(
        replicas=2,
        ongoing=7,
        queued=1,
        metrics={
            ENGINE_WAITING: {"r0": 2.0, "r1": 1.0},
            # The same broadcast estimate on both replicas counts once.
            ANTICIPATED: {"r0": 3.0, "r1": 3.0},
        },
    )
    assert pool_load(ctx) == ScalingSignals(
        replicas=2, ongoing=7, queued=1, engine_waiting=3, anticipated=3, target=4
    )


def test_missing_metrics_count_as_zero() -> None:
    assert pool_load(context(replicas=1, ongoing=2, metrics=None)).anticipated == 0


def test_policy_entry_point_returns_replicas_and_its_reason() -> None:
    replicas, state = pool_autoscaling_policy(
        context(replicas=1, ongoing=4, metrics={ANTICIPATED: {"r0": 4.0}})
    )
    assert replicas == 2
    assert state == {"signal": "anticipated", "demand": 8.0}
