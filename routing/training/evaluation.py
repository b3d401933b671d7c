"""Evaluate a router the way RouteLLM does: accuracy against strong-model calls.

Input: one score per prompt (higher = route to the strong model) and, per prompt, whether
the weak and the strong model answered correctly (data format: `routing.training.train`).

- Thresholds are the deciles of the scores, including both extremes (RouteLLM cuts the
  scores into 10 equal-count bins and uses the 11 bin edges). At each threshold the
  strong model gets every prompt with score >= threshold, except at the last one (the
  maximum score) where the rule is score > threshold, so the curve always runs from 100%
  down to 0% strong calls.
- accuracy = mean over prompts of the chosen model's correctness;
  strong share = fraction of prompts routed to the strong model.
- PGR (performance gap recovered) = (accuracy - weak_acc) / (strong_acc - weak_acc):
  0 is the weak model alone, 1 the strong model alone; a router can exceed 1 when the
  weak model is right on prompts the strong model gets wrong.
- APGR = area under PGR over strong share in [0, 1] (trapezoid rule, points sorted by
  share; the 0% and 100% points are (0, 0) and (1, 1) by construction). Equal to
  RouteLLM's (AUC - weak AUC) / (strong AUC - weak AUC). A random router scores ~0.5.
- CPT(x) (call-performance threshold) = strong share needed to reach PGR x: the first
  segment of the curve that crosses x, linearly interpolated. RouteLLM calls
  `np.interp(target, accuracy, share)`, which assumes accuracy rises monotonically;
  taking the first crossing gives the same answer when it does and a defined one when not.

Everything here is a pure function of arrays except `plot`, which writes a PNG.
`switchyard eval --split-by COLUMN` compares router families on grouped folds instead
(`routing.training.crossval`); given an N-pool router, `eval` reports the accuracy and
mean cost of its choices next to each pool alone.

Unknown labels (empty cells): the curve needs both models' labels, and an N-pool
router's accuracy the chosen pool's, so `eval` scores only the rows labelled for both
models (for every pool) and prints one line saying how many it skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike, NDArray

from routing.learned import PoolRouter, choose_pools, load_router
from routing.training.train import (
    RouterData,
    add_score_source,
    complete_rows,
    embed_prompts,
    read_router_csv,
    scores_from_source,
)

__all__ = [
    "CurvePoint",
    "EvalResult",
    "evaluate",
    "format_table",
    "main",
    "plot",
    "random_baseline",
]

DEFAULT_BINS = 10


@dataclass(frozen=True)
class CurvePoint:
    """One threshold: who gets the strong model, and what that buys."""

    threshold: float
    strict: bool  # route when score > threshold (the last, 0%-strong point) instead of >=
    strong_share: float
    accuracy: float
    pgr: float


@dataclass(frozen=True)
class EvalResult:
    """A router's accuracy / strong-call curve and its summary numbers."""

    name: str
    points: tuple[CurvePoint, ...]  # sorted by strong share, ascending
    weak_accuracy: float
    strong_accuracy: float
    apgr: float

    def cpt(self, pgr: float) -> float:
        """Strong share needed to reach `pgr` (first crossing); NaN if never reached."""
        shares = [p.strong_share for p in self.points]
        gains = [p.pgr for p in self.points]
        if gains[0] >= pgr:
            return shares[0]
        for i in range(1, len(gains)):
            if gains[i] >= pgr:
                x0, x1, y0, y1 = shares[i - 1], shares[i], gains[i - 1], gains[i]
                return x0 + (x1 - x0) * (pgr - y0) / (y1 - y0)
        return float("nan")


def _as_mask(values: ArrayLike, name: str, n: int) -> NDArray[np.bool_]:
    mask = np.asarray(values, dtype=bool)
    if mask.shape != (n,):
        raise ValueError(f"{name} has shape {mask.shape}, expected ({n},)")
    return mask


def _apgr(shares: NDArray[np.float64], pgrs: NDArray[np.float64]) -> float:
    widths = np.diff(shares)
    return float(np.sum(widths * (pgrs[1:] + pgrs[:-1]) / 2.0))


def evaluate(
    scores: ArrayLike,
    weak_correct: ArrayLike,
    strong_correct: ArrayLike,
    *,
    name: str = "router",
    bins: int = DEFAULT_BINS,
) -> EvalResult:
    """The RouteLLM curve and APGR of one set of scores (see the module docstring)."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or s.size == 0 or not np.all(np.isfinite(s)):
        raise ValueError("scores must be a non-empty 1-d array of finite numbers")
    weak = _as_mask(weak_correct, "weak_correct", s.size)
    strong = _as_mask(strong_correct, "strong_correct", s.size)
    weak_acc, strong_acc = float(weak.mean()), float(strong.mean())
    if weak_acc == strong_acc:
        raise ValueError(
            f"both models have accuracy {weak_acc:.3f}: no gap to recover, PGR is undefined"
        )
    thresholds = np.quantile(s, np.linspace(0.0, 1.0, bins + 1))
    points = []
    for i, threshold in enumerate(thresholds):
        strict = i == len(thresholds) - 1
        to_strong = s > threshold if strict else s >= threshold
        accuracy = float(np.where(to_strong, strong, weak).mean())
        points.append(
            CurvePoint(
                threshold=float(threshold),
                strict=strict,
                strong_share=float(to_strong.mean()),
                accuracy=accuracy,
                pgr=(accuracy - weak_acc) / (strong_acc - weak_acc),
            )
        )
    points.sort(key=lambda p: p.strong_share)  # stable: ties keep threshold order
    shares = np.array([p.strong_share for p in points])
    pgrs = np.array([p.pgr for p in points])
    return EvalResult(name, tuple(points), weak_acc, strong_acc, _apgr(shares, pgrs))


def random_baseline(
    weak_correct: ArrayLike,
    strong_correct: ArrayLike,
    *,
    draws: int = 20,
    seed: int = 0,
    bins: int = DEFAULT_BINS,
) -> EvalResult:
    """A router with uniform random scores, averaged over `draws` seeded draws.

    Random scores have no ties, so every draw has the same strong shares and the points
    can be averaged one by one; APGR of the averaged curve is the mean APGR. Expected
    APGR is 0.5: a random router's accuracy grows linearly with its strong calls.
    """
    weak = np.asarray(weak_correct, dtype=bool)
    rng = np.random.default_rng(seed)
    runs = [evaluate(rng.random(weak.size), weak, strong_correct, bins=bins) for _ in range(draws)]
    points = tuple(
        CurvePoint(
            threshold=float("nan"),
            strict=column[0].strict,
            strong_share=float(np.mean([p.strong_share for p in column])),
            accuracy=float(np.mean([p.accuracy for p in column])),
            pgr=float(np.mean([p.pgr for p in column])),
        )
        for column in zip(*(run.points for run in runs), strict=True)
    )
    first = runs[0]
    apgr = float(np.mean([run.apgr for run in runs]))
    return EvalResult("random", points, first.weak_accuracy, first.strong_accuracy, apgr)


def _summary_row(result: EvalResult) -> str:
    return (
        f"{result.name:<10} {result.apgr:>6.3f} {result.cpt(0.5):>10.1%} {result.cpt(0.8):>10.1%}"
    )


def format_table(
    result: EvalResult,
    baseline: EvalResult | None = None,
    *,
    weak: str = "weak",
    strong: str = "strong",
) -> str:
    """The per-threshold table of `result`, then APGR and CPT for it and the baseline."""
    lines = [f"{'threshold':>12} {'strong %':>9} {'accuracy':>9} {'PGR':>7}"]
    for p in result.points:  # highest threshold (fewest strong calls) first
        rule = ">" if p.strict else ">="
        lines.append(
            f"{rule:>2}{p.threshold:>10.4f} {p.strong_share:>9.1%} {p.accuracy:>9.1%} {p.pgr:>7.3f}"
        )
    lines.append("")
    lines.append(
        f"{weak} (weak) accuracy {result.weak_accuracy:.1%}, "
        f"{strong} (strong) accuracy {result.strong_accuracy:.1%}"
    )
    lines.append(f"{'':<10} {'APGR':>6} {'CPT(50%)':>10} {'CPT(80%)':>10}")
    lines.append(_summary_row(result))
    if baseline is not None:
        lines.append(_summary_row(baseline))
    return "\n".join(lines)


def plot(
    result: EvalResult,
    baseline: EvalResult | None,
    path: str | Path,
    *,
    weak: str = "weak",
    strong: str = "strong",
) -> None:
    """Accuracy vs strong-call % with the baseline and both models' accuracy as lines."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # A bare Figure on the Agg canvas: no pyplot, so no global backend or GUI state.
    figure = Figure(figsize=(8, 5), dpi=100)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    for curve, style in ((result, "o-"), (baseline, ".--")):
        if curve is None:
            continue
        ax.plot(
            [100 * p.strong_share for p in curve.points],
            [100 * p.accuracy for p in curve.points],
            style,
            label=f"{curve.name} (APGR {curve.apgr:.3f})",
        )
    ax.axhline(100 * result.weak_accuracy, color="grey", linestyle=":", label=f"{weak} only")
    ax.axhline(100 * result.strong_accuracy, color="red", linestyle=":", label=f"{strong} only")
    ax.set_xlabel("strong model calls (%)")
    ax.set_ylabel("accuracy (%)")
    ax.set_xlim(0, 100)
    ax.set_title("Accuracy vs strong-model calls")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path)


def main(
    argv: Sequence[str] | None = None, *, prog: str = "python -m routing.training.evaluation"
) -> int:
    """Command line: print the RouteLLM table for a router (or a scores column) on a CSV,
    or, with `--split-by`, compare router families on grouped folds."""
    parser = argparse.ArgumentParser(
        prog=prog, description="Evaluate a router: accuracy vs strong-model calls, APGR, CPT."
    )
    parser.add_argument("data", type=Path, metavar="DATA.csv", help="prompt + correctness CSV")
    add_score_source(parser, required=False)
    parser.add_argument("--weak", help="weak model column (default: from the router file)")
    parser.add_argument("--strong", help="strong model column (default: from the router file)")
    parser.add_argument("--plot", type=Path, metavar="PNG", help="write the curve to a PNG")
    parser.add_argument("--bins", type=int, default=DEFAULT_BINS, help="score quantile bins")
    grouped = parser.add_argument_group("grouped folds (train and compare families)")
    grouped.add_argument(
        "--split-by", metavar="COLUMN", help="group column: no group in train and test"
    )
    grouped.add_argument("--folds", type=int, default=5, help="number of folds (default 5)")
    grouped.add_argument(
        "--families", default="lr,knn,mf,mlp", help="families to compare (default: all)"
    )
    grouped.add_argument("--json", type=Path, metavar="FILE", help="also write results as JSON")
    args = parser.parse_args(argv)
    if args.split_by is None and args.router is None and args.scores_column is None:
        parser.error("give --router or --scores-column (or --split-by to train and compare)")
    if args.split_by is not None and (args.router or args.scores_column or args.plot):
        parser.error("--split-by trains its own routers: no --router, --scores-column, --plot")

    try:
        data = read_router_csv(args.data)
        if args.split_by is not None:
            return _grouped(data, args)
        router = load_router(args.router) if args.router is not None else None
        if isinstance(router, PoolRouter):
            return _eval_pools(router, data, args)
        weak = args.weak or (router.weak if router else None)
        strong = args.strong or (router.strong if router else None)
        if weak is None or strong is None:
            raise ValueError("--weak and --strong are required with --scores-column")
        rows = complete_rows(data, (weak, strong))  # the curve needs both labels
        if (note := rows.note()) is not None:
            print(note)
        if router is not None:
            scores = router.score_vectors(embed_prompts(rows.data.prompts, router.embedder, args))
        else:
            scores, _ = scores_from_source(rows.data, None, args.scores_column, args)
        weak_correct, strong_correct = rows.correct[:, 0], rows.correct[:, 1]
        name = "learned" if router is not None else args.scores_column
        result = evaluate(scores, weak_correct, strong_correct, name=name, bins=args.bins)
        baseline = random_baseline(weak_correct, strong_correct, bins=args.bins)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{len(scores)} prompts, weak={weak}, strong={strong}")
    print(format_table(result, baseline, weak=weak, strong=strong))
    if args.plot is not None:
        plot(result, baseline, args.plot, weak=weak, strong=strong)
        print(f"wrote {args.plot}")
    return 0


def _grouped(data: RouterData, args: argparse.Namespace) -> int:
    """`eval --split-by COLUMN`: every family on grouped folds (`crossval`)."""
    from routing.learned import default_embedder
    from routing.training.crossval import cross_validate
    from routing.training.families import parse_families

    if args.weak is None or args.strong is None:
        raise ValueError("--split-by needs --weak and --strong")
    families = parse_families(args.families)
    data.values(args.split_by)  # a missing column fails before anything else
    rows = complete_rows(data, (args.weak, args.strong))
    if (note := rows.note()) is not None:
        print(note)
    groups = rows.data.values(args.split_by)
    weak_correct, strong_correct = rows.correct[:, 0], rows.correct[:, 1]
    vectors = embed_prompts(rows.data.prompts, default_embedder(), args)
    report = cross_validate(
        vectors,
        weak_correct,
        strong_correct,
        groups,
        families=families,
        folds=args.folds,
        split_by=args.split_by,
        bins=args.bins,
    )
    print(report.table(args.weak, args.strong))
    if args.json is not None:
        args.json.write_text(json.dumps(report.as_json(args.weak, args.strong), indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


def _eval_pools(router: PoolRouter, data: RouterData, args: argparse.Namespace) -> int:
    """An N-pool router on labelled prompts: accuracy and cost of its choices, next to
    each pool alone and a random choice with the same shares. The chosen pool's label is
    needed, so only the prompts labelled for every pool are evaluated."""
    from routing.training.multipool import choice_summary

    try:
        rows = complete_rows(data, router.pools)
    except ValueError as exc:
        raise ValueError(f"eval scores the prompts labelled for every pool: {exc}") from exc
    if (note := rows.note()) is not None:
        print(note)
    correct = rows.correct
    quality = router.quality_vectors(embed_prompts(rows.data.prompts, router.embedder, args))
    chosen = choose_pools(quality, router.costs, router.policy)
    shares = [float((chosen == i).mean()) for i in range(len(router.pools))]
    accuracy = correct[np.arange(chosen.size), chosen].mean()
    mean_cost = float(router.costs[chosen].mean())
    print(f"{chosen.size} prompts, pools {', '.join(router.pools)}; {router.policy.describe()}")
    print(f"{'':<16} {'accuracy':>9} {'mean cost':>11}")
    summary = choice_summary(router.pools, shares, mean_cost)
    print(f"{'router':<16} {accuracy:>9.1%} {mean_cost:>11.6g}  ({summary})")
    same = float(np.dot(shares, correct.mean(axis=0)))
    print(f"{'random, same mix':<16} {same:>9.1%} {mean_cost:>11.6g}")
    for i, pool in enumerate(router.pools):
        print(f"{'only ' + pool:<16} {correct[:, i].mean():>9.1%} {router.costs[i]:>11.6g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
