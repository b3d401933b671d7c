"""How a learned router's reading of one request becomes a pool: the choice rules.

Pure numpy, no I/O. The ingress embeds a request once and asks its router for a reading
(`LearnedRouter.read`, `PoolRouter.read`); the reading goes into the `RequestProfile`,
and the planner, which alone knows which pools this request may use (tier, health,
servability, the pools above the cascade's source), asks the reading to choose among
exactly those. So the router never picks a pool the request may not use, and the same
reading serves the first pick of `route` and the escalation target of `cascade` and
`speculative`.

    StrongScore   binary router: P(strong pool needed) against a threshold
    PoolQuality   N-pool router: P(correct) per pool, and the file's `ChoicePolicy`:

      quality_target  the cheapest eligible pool whose P(correct) >= target; when none
                      reaches it, the eligible pool with the highest P(correct).
      tradeoff        the eligible pool maximising P(correct) - lam * cost (cost in the
                      file's units, e.g. USD per request).

Ties go to the cheaper pool.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from routing.router_file import ChoiceRule

__all__ = ["ChoicePolicy", "LearnedScores", "PoolQuality", "StrongScore", "choose_pools"]


@dataclass(frozen=True)
class ChoicePolicy:
    """How per-pool P(correct) becomes one pool (module docstring)."""

    rule: ChoiceRule
    value: float  # the quality target in [0, 1], or lam >= 0

    def __post_init__(self) -> None:
        if not np.isfinite(self.value) or self.value < 0:
            raise ValueError(f"{self.rule} value must be finite and >= 0, got {self.value}")
        if self.rule == "quality_target" and self.value > 1:
            raise ValueError(f"a quality target is a probability, got {self.value}")

    def describe(self) -> str:
        if self.rule == "quality_target":
            return f"cheapest pool with P(correct) >= {self.value:.4g}"
        return f"max P(correct) - {self.value:.4g} * cost"


def choose_pools(
    quality: NDArray[np.floating],
    costs: NDArray[np.floating],
    policy: ChoicePolicy,
    eligible: NDArray[np.bool_] | None = None,
) -> NDArray[np.intp]:
    """The chosen pool's column for each row of `quality` (n, N); `eligible` is (N,) or
    (n, N). `ValueError` if a row has no eligible pool."""
    q = np.asarray(quality, dtype=np.float64)
    c = np.asarray(costs, dtype=np.float64)
    n, pools = q.shape
    ok = np.broadcast_to(np.ones(pools, bool) if eligible is None else eligible, (n, pools))
    if not ok.any(axis=1).all():
        raise ValueError("no eligible pool to choose from")
    order = np.lexsort((np.arange(pools), c))  # cheapest first: argmax picks it on ties
    q, c, ok = q[:, order], c[order], ok[:, order]
    if policy.rule == "tradeoff":
        pick = np.argmax(np.where(ok, q - policy.value * c, -np.inf), axis=1)
    else:
        meets = ok & (q >= policy.value)
        best = np.argmax(np.where(ok, q, -np.inf), axis=1)
        pick = np.where(meets.any(axis=1), np.argmax(meets, axis=1), best)
    return np.asarray(order[pick], dtype=np.intp)


@dataclass(frozen=True)
class StrongScore:
    """A binary router's reading: route to `strong` when `score >= threshold`."""

    score: float  # P(strong pool needed)
    threshold: float  # the config's, else the file's calibrated one, else 0.5
    strong: str  # the pool that gets it: `routing.learned.strong_pool`

    def choose(self, eligible: Collection[str]) -> str | None:
        """`strong` when the score reaches the threshold and it is eligible; else None
        (the caller keeps its own decision)."""
        return self.strong if self.score >= self.threshold and self.strong in eligible else None

    def describe(self) -> str:
        sign = ">=" if self.score >= self.threshold else "<"
        return f"learned router: P(strong needed)={self.score:.2f} {sign} {self.threshold:.2f}"


@dataclass(frozen=True)
class PoolQuality:
    """An N-pool router's reading: P(correct) for each pool it knows, and its rule."""

    quality: Mapping[str, float]
    costs: Mapping[str, float]  # the file's, in the units its lam was calibrated in
    policy: ChoicePolicy

    def choose(self, eligible: Collection[str]) -> str | None:
        """The pool the policy picks among the eligible ones it knows; None if it knows
        none of them."""
        known = [p for p in self.quality if p in eligible]
        if not known:
            return None
        q = np.array([[self.quality[p] for p in known]])
        c = np.array([self.costs[p] for p in known])
        return known[int(choose_pools(q, c, self.policy)[0])]

    def describe(self) -> str:
        pools = ", ".join(f"{p} {q:.2f}" for p, q in self.quality.items())
        return f"learned router: P(correct) {pools}; {self.policy.describe()}"


LearnedScores = StrongScore | PoolQuality
