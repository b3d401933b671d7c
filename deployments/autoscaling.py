"""Switchyard's autoscaling policy for pool deployments (Serve's `policy_function`).

Serve's default policy scales a deployment on its own ongoing requests only. A pool
knows more: requests already queued inside its engines (vLLM's scheduler holds them
when the batch or KV cache is full) mean it is saturated *now*, and the `large` pool is
about to receive the escalations of cascades still running on `small`. The ingress
estimates those (cascades in flight x recent escalation rate) and broadcasts them to the
target pool's replicas, which report them, with their engine queue, as custom metrics
(`PoolServer.record_autoscaling_stats`).

Serve runs this function in its controller every control-loop tick and then applies the
config's bounds, `upscale_delay_s`, `downscale_delay_s` and `downscale_to_zero_delay_s`
to what it returns. The function is pure: context in, `(replicas, state)` out.

NOTE: Serve pickles this module by value into the controller, whose Python path does not
hold the project, so it imports nothing from the project.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ray.serve.config import AutoscalingContext

# Custom metric names, reported by every pool replica.
ENGINE_WAITING = "engine_waiting"
ANTICIPATED = "anticipated_requests"

# Shrink only when the remaining replicas would run below this share of their target.
DOWNSCALE_HEADROOM = 0.8


@dataclass(frozen=True)
class ScalingSignals:
    """What the policy reads, in plain numbers."""

    replicas: int
    ongoing: float  # running + waiting at handles (Serve's total_num_requests)
    queued: float  # waiting at handles for a free replica slot
    engine_waiting: float  # admitted by replicas, waiting for the engine's scheduler
    anticipated: float  # expected soon: escalations of cascades still running elsewhere
    target: float  # target ongoing requests per replica


def desired_replicas(load: ScalingSignals) -> tuple[int, str]:
    """Replicas this load asks for, and the signal that decided it.

    Scale-up is immediate and jumps to what the demand needs; scale-down removes one
    replica at a time and only once the remaining replicas would sit below
    DOWNSCALE_HEADROOM of their target. The asymmetry is deliberate: an LLM replica
    costs minutes to start (weights, KV cache, CUDA graphs), so shrinking on a dip makes
    the next burst queue behind cold starts, while scaling up a little early only costs
    an idle GPU for the downscale delay.
    """
    demand = load.ongoing + load.anticipated
    if load.replicas == 0:
        # Serve wakes a pool at zero on queued requests itself; anticipation wakes it early.
        return (math.ceil(demand / load.target), "anticipated") if demand > 0 else (0, "idle")
    wanted = demand / load.target
    signal = "anticipated" if load.anticipated > 0 else "ongoing"
    if load.queued + load.engine_waiting >= 1 and wanted <= load.replicas:
        # A request or more waiting (averaged over Serve's look-back window) although the
        # average load looks fine: the pool is saturated now.
        return load.replicas + 1, "queue"
    if wanted > load.replicas:
        return math.ceil(wanted), signal
    if demand <= DOWNSCALE_HEADROOM * load.target * (load.replicas - 1):
        return load.replicas - 1, "low_load"
    return load.replicas, "steady"


def pool_load(ctx: AutoscalingContext) -> ScalingSignals:
    """Read a ScalingSignals off Serve's context; a metric no replica reported counts as 0."""
    metrics: dict[str, dict[Any, float]] = ctx.aggregated_metrics or {}
    waiting = metrics.get(ENGINE_WAITING, {})
    # Every replica reports the same broadcast estimate: take it once, not once per replica.
    anticipated = metrics.get(ANTICIPATED, {})
    return ScalingSignals(
        replicas=ctx.current_num_replicas,
        ongoing=float(ctx.total_num_requests or 0.0),
        queued=float(ctx.total_queued_requests or 0.0),
        engine_waiting=float(sum(waiting.values())),
        anticipated=float(max(anticipated.values(), default=0.0)),
        target=float(ctx.config.get_target_ongoing_requests()) if ctx.config else 1.0,
    )


def pool_autoscaling_policy(ctx: AutoscalingContext) -> tuple[int, dict[str, Any]]:
    """Serve's entry point: `autoscaling_config.policy.policy_function`.

    The returned state is shown by Serve's status API and kept between ticks.
    """
    load = pool_load(ctx)
    replicas, signal = desired_replicas(load)
    return replicas, {"signal": signal, "demand": load.ongoing + load.anticipated}
