"""The one owner of what is known about the pools right now.

Load (engine stats), running replicas, latency per token, circuit breakers and the
escalation forecast all live here. The ingress's background loops feed it through the
`record_*` methods; the executor reports call results; the planner's views and
`/health` read it. Nothing else keeps a copy, so no two places can disagree.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from execution.breaker import BreakerState, CircuitBreaker

PollState = Literal["pending", "ok", "busy", "failed"]


@dataclass(frozen=True)
class EngineStats:
    """Load of one pool replica's engine: what routing and autoscaling read."""

    running: int
    waiting: int
    aborted: int = 0  # requests stopped before they finished, since start
    # Engine time since start: seconds with at least one request in the engine (what a
    # replica costs while it works) and the sum of every request's time in it.
    busy_s: float = 0.0
    request_s: float = 0.0


@dataclass(frozen=True)
class PoolLimits:
    """What the monitor needs from a pool's config."""

    max_ongoing: int  # requests one replica runs at once
    cold_start_timeout_s: float = 60.0  # longest wait for a pool at zero with no fallback
    may_scale_to_zero: bool = False  # autoscaling min_replicas == 0


@dataclass
class PoolState:
    """Live view of one pool; written only through `PoolMonitor`."""

    stats: EngineStats = field(default_factory=lambda: EngineStats(running=0, waiting=0))
    seconds_per_token: float | None = None  # EWMA over finished requests
    replicas: int | None = None  # running replicas; None until Serve's status is read
    stats_at: float | None = None  # monotonic time of the last stats sample
    polled: PollState = "pending"  # last stats call; "busy": no answer in time


class EscalationForecast:
    """Escalations a pool should expect soon, for its autoscaler.

    Cascades still running on their cheap pool will escalate to their target with the
    recently observed share; their sum is what the target pool will receive in seconds.
    """

    def __init__(self, prior_share: float = 0.5, weight: float = 0.1) -> None:
        self.running: Counter[str] = Counter()  # target pool -> cascades on the cheap pool
        self.share: dict[str, float] = {}  # target pool -> EWMA of escalated (1) or not (0)
        self.prior_share = prior_share
        self.weight = weight

    def started(self, target: str) -> None:
        self.running[target] += 1

    def finished(self, target: str, escalated: bool | None) -> None:
        """`escalated` None: the cheap pool failed, no verdict to learn from."""
        self.running[target] -= 1
        if escalated is not None:
            old = self.share.get(target, self.prior_share)
            self.share[target] = (1 - self.weight) * old + self.weight * float(escalated)

    def expected(self) -> dict[str, float]:
        return {
            target: round(n * self.share.get(target, self.prior_share), 3)
            for target, n in self.running.items()
        }


class PoolMonitor:
    def __init__(
        self,
        limits: Mapping[str, PoolLimits],
        failure_threshold: int = 3,
        cooldown_s: float = 30.0,
        latency_weight: float = 0.2,
    ) -> None:
        self.limits = dict(limits)
        self._state = {pool: PoolState() for pool in limits}
        self._breakers = {pool: CircuitBreaker(failure_threshold, cooldown_s) for pool in limits}
        self.forecast = EscalationForecast()
        self._weight = latency_weight

    @property
    def pools(self) -> list[str]:
        return list(self._state)

    def state(self, pool: str) -> PoolState:
        """Read-only by convention: change it through the `record_*` methods."""
        return self._state[pool]

    # --- updates --------------------------------------------------------------------

    def record_stats(self, pool: str, stats: EngineStats) -> None:
        state = self._state[pool]
        state.stats, state.stats_at, state.polled = stats, time.monotonic(), "ok"

    def record_poll_failure(self, pool: str, busy: bool) -> None:
        """`busy`: the call waited in line behind requests (slots full), not an error."""
        self._state[pool].polled = "busy" if busy else "failed"

    def record_replicas(self, pool: str, running: int | None) -> None:
        """None: unknown (being deployed), so not taken for scaled to zero."""
        self._state[pool].replicas = running

    def record_success(self, pool: str, seconds: float, tokens: int) -> None:
        self._breakers[pool].record_success()
        if tokens > 0:
            state, sample = self._state[pool], seconds / tokens
            old = state.seconds_per_token
            w = self._weight
            state.seconds_per_token = sample if old is None else (1 - w) * old + w * sample

    def record_failure(self, pool: str) -> None:
        self._breakers[pool].record_failure()

    # --- reads ----------------------------------------------------------------------

    def admit(self, pool: str) -> bool:
        """May a request go to the pool now? In half-open this takes the one trial."""
        return self._breakers[pool].allow()

    def circuit(self, pool: str) -> BreakerState:
        return self._breakers[pool].state

    def retry_after_s(self, pool: str) -> int:
        """Seconds until an open circuit lets a trial through."""
        return max(1, round(self._breakers[pool].cooldown_s))

    def available(self, pool: str) -> bool:
        return self._breakers[pool].state != "open"

    def saturated(self, pool: str) -> bool:
        """No free slot in the last stats sample: more requests would only queue."""
        stats = self._state[pool].stats
        return stats.running + stats.waiting >= self.limits[pool].max_ongoing

    def scaled_to_zero(self, pool: str) -> bool:
        return self._state[pool].replicas == 0

    def pools_to_poll(self) -> list[str]:
        """Pools whose stats may be asked for: a call to a pool at zero would wake it.

        A pool whose replica count is not known yet is skipped too: it may be at zero.
        """
        return [pool for pool, state in self._state.items() if state.replicas]

    def known(self) -> bool:
        """Serve's replica counts have been read at least once."""
        return any(state.replicas is not None for state in self._state.values())

    def health(self) -> dict[str, dict[str, Any]]:
        """Per pool: healthy or not, and why, from the last samples; never calls a pool.

        Healthy: the last stats call answered, or found every slot busy while Serve runs
        a replica (busy, not dead), or the pool is at zero replicas on purpose.
        """
        now = time.monotonic()
        report: dict[str, dict[str, Any]] = {}
        for pool, state in self._state.items():
            entry: dict[str, Any]
            if state.replicas == 0:
                entry = {"ok": True, "state": "scaled_to_zero"}
            elif state.replicas is None and self.limits[pool].may_scale_to_zero:
                entry = {"ok": True, "state": "unknown"}  # may be at zero: never woken to see
            else:
                ok = state.polled == "ok" or (state.polled == "busy" and bool(state.replicas))
                entry = {"ok": ok, "state": state.polled}
                entry.update(running=state.stats.running, waiting=state.stats.waiting)
                entry.update(
                    aborted=state.stats.aborted,
                    busy_s=round(state.stats.busy_s, 3),
                    request_s=round(state.stats.request_s, 3),
                )
                if state.stats_at is not None:
                    entry["stats_age_s"] = round(now - state.stats_at, 2)
            entry["replicas"] = state.replicas
            entry["circuit"] = self.circuit(pool)
            report[pool] = entry
        return report
