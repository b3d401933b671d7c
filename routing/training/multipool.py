"""N-pool routers offline: pool costs, and calibrating the choice rule to a budget.

Costs. A `PoolRouter` compares P(correct) with cost per request, in any one unit. They
come from `--cost small=0.0001` (e.g. USD per request), or from a Serve config's model
catalog (`--costs-from serve_config.yaml`): each pool's model's `cost` figures
(`models.catalog.TokenCost`, USD per 1M tokens) priced for the mean prompt of the CSV
(about 4 characters per token) and the model's `default_max_tokens` of output.

Calibration. Both rules have one knob (`ChoicePolicy.value`): lam for `tradeoff`, the
quality target for `quality_target`. Over a sample of prompts, the average cost and the
share of the strongest pool (by default the most expensive) move monotonically with it:
raising lam moves each prompt to a cheaper pool on the upper envelope of
q_m - lam * c_m; raising the target shrinks the set of pools that meet it, so its
cheapest member (or, when none is left, the best pool) can only get dearer. The choice
only changes at breakpoints (lam = (q_a - q_b) / (c_a - c_b) between two pools, or a
target equal to some predicted P(correct)), so `calibrate_policy` bisects over the
regions between breakpoints and returns the midpoint of the region whose result is
closest to the target; on a tie the cheaper one, as `calibration` does for thresholds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from routing.learned import ChoicePolicy, choose_pools
from routing.router_file import ChoiceRule

__all__ = [
    "Calibration",
    "calibrate_policy",
    "choice_summary",
    "costs_from_config",
    "parse_costs",
    "parse_pools",
]

Metric = Literal["cost", "share"]
CHARS_PER_TOKEN = 4.0


def parse_pools(text: str) -> tuple[str, ...]:
    pools = tuple(p.strip() for p in text.split(",") if p.strip())
    if len(pools) < 2 or len(set(pools)) != len(pools):
        raise ValueError(f"--pools needs at least two distinct column names, got {text!r}")
    return pools


def parse_costs(items: Sequence[str], pools: Sequence[str]) -> list[float]:
    """`["small=0.0001", "large=0.001"]` -> one cost per pool, in `pools` order."""
    given: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            cost = float(value)
        except ValueError:
            cost = float("nan")
        if not sep or not np.isfinite(cost) or cost < 0:
            raise ValueError(f"--cost {item!r}: expected POOL=COST with a number >= 0")
        given[name.strip()] = cost
    unknown = sorted(set(given) - set(pools))
    missing = [p for p in pools if p not in given]
    if unknown or missing:
        raise ValueError(f"costs: unknown pools {unknown}, missing pools {missing}")
    return [given[p] for p in pools]


def costs_from_config(
    path: str | Path, pools: Sequence[str], prompts: Sequence[str]
) -> list[float]:
    """Cost of a mean request per pool, from a Serve config's catalog (module docstring)."""
    import yaml

    from models.catalog import ModelSpec

    document = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    try:
        args = document["applications"][0]["args"]
        specs = {m.id: m for m in (ModelSpec.model_validate(raw) for raw in args["models"])}
        pool_models = {name: cfg["model"] for name, cfg in args["pools"].items()}
    except (KeyError, IndexError, TypeError) as exc:
        raise ValueError(f"{path}: no applications[0].args models and pools ({exc})") from exc
    missing = [p for p in pools if p not in pool_models or pool_models[p] not in specs]
    if missing:
        raise ValueError(f"{path}: no catalog model for pools {missing}")
    prompt_tokens = float(np.mean([len(p) for p in prompts])) / CHARS_PER_TOKEN
    return [
        specs[pool_models[p]].cost.of(prompt_tokens, specs[pool_models[p]].default_max_tokens)
        for p in pools
    ]


@dataclass(frozen=True)
class Calibration:
    policy: ChoicePolicy
    achieved: float  # average cost or strong share at `policy`
    shares: tuple[float, ...]  # fraction of prompts per pool
    mean_cost: float


def _representatives(
    quality: NDArray[np.float64], costs: NDArray[np.float64], rule: ChoiceRule
) -> NDArray[np.float64]:
    """One knob value per region between breakpoints, ordered cheapest result first."""
    if rule == "tradeoff":
        a, b = np.triu_indices(costs.size, k=1)
        dc = costs[a] - costs[b]
        keep = dc != 0
        slopes = (quality[:, a[keep]] - quality[:, b[keep]]) / dc[keep]
        points = np.unique(slopes[slopes > 0])
        if points.size == 0:
            return np.array([0.0])
        middles = (points[1:] + points[:-1]) / 2
        return np.concatenate([[2 * points[-1]], middles[::-1], [0.0]])
    points = np.unique(np.clip(quality, 0.0, 1.0))
    middles = (points[1:] + points[:-1]) / 2
    above = [(points[-1] + 1.0) / 2] if points[-1] < 1.0 else []
    return np.concatenate([[0.0], middles, above])


def _measure(
    quality: NDArray[np.float64], costs: NDArray[np.float64], policy: ChoicePolicy, strong: int
) -> tuple[float, float, NDArray[np.intp]]:
    chosen = choose_pools(quality, costs, policy)
    return float(costs[chosen].mean()), float((chosen == strong).mean()), chosen


def calibrate_policy(
    quality: NDArray[np.floating],
    costs: Sequence[float] | NDArray[np.floating],
    rule: ChoiceRule,
    target: float,
    *,
    metric: Metric,
    strong: int | None = None,
) -> Calibration:
    """The knob value whose average cost (`metric="cost"`) or share of pool `strong`
    (`metric="share"`; default: the most expensive pool) is closest to `target`."""
    q = np.asarray(quality, dtype=np.float64)
    c = np.asarray(costs, dtype=np.float64)
    if q.ndim != 2 or q.shape[1] != c.size or q.shape[0] == 0:
        raise ValueError(f"quality {q.shape} does not match {c.size} pools")
    if metric == "share" and not 0.0 <= target <= 1.0:
        raise ValueError(f"a share must be in [0, 1], got {target}")
    if metric == "cost" and not (np.isfinite(target) and target >= 0):
        raise ValueError(f"a target cost must be >= 0, got {target}")
    strong = int(np.argmax(c)) if strong is None else strong
    reps = _representatives(q, c, rule)

    def value(i: int) -> float:
        mean_cost, share, _ = _measure(q, c, ChoicePolicy(rule, float(reps[i])), strong)
        return mean_cost if metric == "cost" else share

    lo, hi = 0, reps.size - 1  # first region whose result reaches the target
    if value(hi) < target:
        lo = hi
    while lo < hi:
        mid = (lo + hi) // 2
        if value(mid) >= target:
            hi = mid
        else:
            lo = mid + 1
    best = lo
    if lo > 0 and abs(value(lo - 1) - target) <= abs(value(lo) - target):
        best = lo - 1  # the cheaper of two equally close
    policy = ChoicePolicy(rule, float(reps[best]))
    mean_cost, share, chosen = _measure(q, c, policy, strong)
    shares = tuple(float((chosen == i).mean()) for i in range(c.size))
    return Calibration(policy, mean_cost if metric == "cost" else share, shares, mean_cost)


def choice_summary(pools: Sequence[str], shares: Sequence[float], mean_cost: float) -> str:
    per_pool = ", ".join(f"{p} {s:.1%}" for p, s in zip(pools, shares, strict=True))
    return f"{per_pool}; mean cost {mean_cost:.6g} per request"
