"""Simulate the adaptive router (`routing.bandit`) against a synthetic environment.

The environment: three pools with known relative costs (small 0.1, large 1.0, code 0.6)
and four request classes whose chance of a good answer differs by pool, so that each
class has another best pool once cost counts (utility = P(good) - cost_weight * cost /
dearest cost): chat -> small, code -> code, reasoning -> large, extraction -> large by a
small margin. A share of requests comes from a tier that may not use `large`, and a
share is frugal (a budget near its limit: no exploration). Feedback is what production
gives: half of the answers get an explicit score (Beta-distributed around the true
quality), the rest only a cascade-style verdict (good or not, half the weight).

Regret of a step = the best eligible pool's expected utility - the chosen one's; the
curve is its running sum, for the bandit and two baselines on the same request stream:
uniform-random among the eligible pools, and a fixed router that always takes the best
pool on average over classes (an oracle without context; its next best when the tier
forbids it). `flip_at` degrades the code pool on code requests mid-run (a bad model
update), to show that decay lets the bandit re-learn.

Time is simulated: step t happens at t seconds (`half_life_s` is in the same unit).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from routing.bandit import (
    Reward,
    ThompsonRouter,
    context_key,
    feedback_reward,
    outcome_reward,
)

__all__ = ["Environment", "Request", "SimResult", "main", "plot", "requests", "simulate"]

POOLS = ("small", "large", "code")
COSTS = {"small": 0.1, "large": 1.0, "code": 0.6}
QUALITY = {  # P(good answer) per class and pool
    "chat": {"small": 0.80, "large": 0.85, "code": 0.60},
    "code": {"small": 0.35, "large": 0.70, "code": 0.90},
    "reasoning": {"small": 0.30, "large": 0.90, "code": 0.55},
    "extraction": {"small": 0.60, "large": 0.95, "code": 0.65},
}
CLASS_SHARE = {"chat": 0.4, "code": 0.25, "reasoning": 0.2, "extraction": 0.15}
FLIPPED = {"code": {"code": 0.30}}  # after `flip_at`: the code pool breaks on code requests


@dataclass(frozen=True)
class Environment:
    """What the simulated traffic looks like and how good each pool is."""

    quality: Mapping[str, Mapping[str, float]] = field(default_factory=lambda: QUALITY)
    costs: Mapping[str, float] = field(default_factory=lambda: COSTS)
    class_share: Mapping[str, float] = field(default_factory=lambda: CLASS_SHARE)
    limited_share: float = 0.3  # requests from a tier limited to `limited_pools`
    limited_pools: tuple[str, ...] = ("small", "code")
    frugal_share: float = 0.1
    feedback_share: float = 0.5  # answers with an explicit score; the rest a verdict
    cost_weight: float = 0.3
    flip_at: int | None = None
    flipped: Mapping[str, Mapping[str, float]] = field(default_factory=lambda: FLIPPED)

    def q(self, cls: str, pool: str, step: int) -> float:
        if self.flip_at is not None and step >= self.flip_at and pool in self.flipped.get(cls, {}):
            return self.flipped[cls][pool]
        return self.quality[cls][pool]

    def utility(self, cls: str, pool: str, step: int) -> float:
        return self.q(cls, pool, step) - self.cost_weight * self.costs[pool] / self._top_cost

    @cached_property
    def _top_cost(self) -> float:
        return max(self.costs.values())


@dataclass(frozen=True)
class Request:
    cls: str
    eligible: tuple[str, ...]
    frugal: bool


def requests(env: Environment, steps: int, rng: random.Random) -> list[Request]:
    """The request stream every router sees."""
    classes, weights = list(env.class_share), list(env.class_share.values())
    stream = []
    for _ in range(steps):
        cls = rng.choices(classes, weights)[0]
        limited = rng.random() < env.limited_share
        eligible = env.limited_pools if limited else POOLS
        stream.append(Request(cls, tuple(eligible), rng.random() < env.frugal_share))
    return stream


@dataclass
class SimResult:
    steps: int
    regret: dict[str, list[float]]  # router -> cumulative regret after each step
    stream: list[Request]
    chosen: list[str]  # the bandit's pool per step
    explored: list[bool]
    best: list[str]  # the best eligible pool per step
    violations: int  # bandit choices outside the eligible set (must be 0)

    def final(self) -> dict[str, float]:
        return {name: round(curve[-1], 2) for name, curve in self.regret.items()}

    def best_share(self, start: int, end: int | None = None) -> dict[str, float]:
        """Per class: how often the bandit chose the best eligible pool in [start, end)."""
        hits: dict[str, list[int]] = {}
        for i in range(start, self.steps if end is None else end):
            hits.setdefault(self.stream[i].cls, []).append(int(self.chosen[i] == self.best[i]))
        return {cls: round(sum(h) / len(h), 3) for cls, h in sorted(hits.items())}

    def explore_share(self) -> float:
        decisions = sum(not r.frugal and len(r.eligible) > 1 for r in self.stream)
        return round(sum(self.explored) / decisions, 4) if decisions else 0.0

    def slope(self, name: str, start: int, end: int) -> float:
        """Regret per step of `name` over steps [start, end)."""
        curve = self.regret[name]
        before = curve[start - 1] if start > 0 else 0.0
        return (curve[end - 1] - before) / (end - start)

    def summary(self) -> dict[str, object]:
        quarter = self.steps // 4
        return {
            "steps": self.steps,
            "final_regret": self.final(),
            "bandit_regret_per_step": {
                "first_quarter": round(self.slope("bandit", 0, quarter), 4),
                "last_quarter": round(self.slope("bandit", self.steps - quarter, self.steps), 4),
            },
            "best_pool_share_last_quarter": self.best_share(self.steps - quarter),
            "explore_share": self.explore_share(),
            "violations": self.violations,
        }


def simulate(
    steps: int = 8000,
    seed: int = 0,
    env: Environment | None = None,
    *,
    explore_share: float = 0.1,
    half_life_s: float = 2000.0,
) -> SimResult:
    """Run the bandit and both baselines on one request stream; deterministic per seed."""
    env = env or Environment()
    stream = requests(env, steps, random.Random(seed))
    router = ThompsonRouter(
        half_life_s=half_life_s, explore_share=explore_share, cost_weight=env.cost_weight
    )
    choose_rng, outcome_rng, random_rng = (random.Random(seed + k) for k in (1, 2, 3))
    averages = {p: sum(s * env.utility(c, p, 0) for c, s in env.class_share.items()) for p in POOLS}
    ranking = sorted(POOLS, key=lambda p: -averages[p])
    curves: dict[str, list[float]] = {"bandit": [], "random": [], "fixed": []}
    totals = dict.fromkeys(curves, 0.0)
    chosen, explored, best = [], [], []
    violations = 0
    for step, request in enumerate(stream):
        context = context_key(request.cls)
        choice = router.choose(
            context, request.eligible, choose_rng, costs=env.costs, frugal=request.frugal,
            now=float(step),
        )  # fmt: skip
        violations += choice.pool not in request.eligible
        _observe(router, env, context, request.cls, choice.pool, step, outcome_rng)
        picks = {
            "bandit": choice.pool,
            "random": random_rng.choice(request.eligible),
            "fixed": next(p for p in ranking if p in request.eligible),
        }
        utility = {p: env.utility(request.cls, p, step) for p in request.eligible}
        top = max(request.eligible, key=lambda p: utility[p])
        for name, pool in picks.items():
            totals[name] += utility[top] - utility[pool]
            curves[name].append(totals[name])
        chosen.append(choice.pool)
        explored.append(choice.explored)
        best.append(top)
    return SimResult(steps, curves, stream, chosen, explored, best, violations)


def _observe(
    router: ThompsonRouter,
    env: Environment,
    context: str,
    cls: str,
    pool: str,
    step: int,
    rng: random.Random,
) -> None:
    """The signal the answer gets: an explicit score (mean = the pool's quality), or a
    cascade-style verdict good / not good."""
    q = env.q(cls, pool, step)
    if rng.random() < env.feedback_share:
        reward: Reward | None = feedback_reward(rng.betavariate(4 * q, 4 * (1 - q)))
    else:
        reward = outcome_reward("ok", escalated=rng.random() >= q)
    if reward is None:  # an answered cascade always has a verdict
        return
    router.update(context, pool, reward.value, weight=reward.weight, now=float(step))


def plot(result: SimResult, path: str | Path, flip_at: int | None = None) -> None:
    """Cumulative regret vs steps of the bandit and the baselines, as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 5), dpi=100)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    steps = range(1, result.steps + 1)
    labels = {
        "bandit": "Thompson bandit",
        "random": "uniform random",
        "fixed": "fixed best-on-average",
    }
    for name, curve in result.regret.items():
        ax.plot(steps, curve, label=f"{labels[name]} ({curve[-1]:.0f})")
    if flip_at is not None:
        ax.axvline(flip_at, color="grey", linestyle=":", label="code pool degrades")
    ax.set_xlabel("requests")
    ax.set_ylabel("cumulative regret (expected utility)")
    ax.set_title("Adaptive routing: regret against the best eligible pool")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    figure.tight_layout()
    figure.savefig(path)


def main(
    argv: Sequence[str] | None = None, *, prog: str = "python -m routing.training.bandit_sim"
) -> int:
    """Command line: run the simulation, print the regret numbers, write the plot/JSON."""
    parser = argparse.ArgumentParser(
        prog=prog, description="Simulate the adaptive router: regret vs random and fixed."
    )
    parser.add_argument("--steps", type=int, default=8000, help="requests to simulate")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--explore-share", type=float, default=0.1, help="exploration cap")
    parser.add_argument(
        "--half-life", type=float, default=2000.0, help="evidence half-life, in requests"
    )
    parser.add_argument(
        "--flip-at", type=int, metavar="STEP", help="degrade the code pool from this step on"
    )
    parser.add_argument("--plot", type=Path, metavar="PNG", help="write the regret curve")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the summary as JSON")
    args = parser.parse_args(argv)
    if args.steps < 4:
        parser.error("--steps must be at least 4")
    try:
        result = simulate(
            args.steps,
            args.seed,
            Environment(flip_at=args.flip_at),
            explore_share=args.explore_share,
            half_life_s=args.half_life,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    summary = result.summary()
    print(json.dumps(summary, indent=2))
    if args.plot is not None:
        plot(result, args.plot, args.flip_at)
        print(f"wrote {args.plot}")
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
