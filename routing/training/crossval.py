"""Comparing router families on groups they never saw: grouped K-fold APGR and CPT.

`switchyard eval DATA.csv --split-by subject --weak small --strong large` splits the
prompts into K folds by the values of a column (scikit-learn `GroupKFold`: every value,
e.g. a subject, is in exactly one fold), trains each family on the other K-1 folds and
scores the held-out one with RouteLLM's metrics (`routing.training.evaluation`). A
router that memorised its training domains scores well on a random split and poorly
here; generalisation to unseen groups is what a deployed router needs, and what this
measures. The random router (APGR ~0.5) is evaluated on the same held-out folds.

Means are over folds (each fold's APGR is already a per-prompt average of its own
held-out set); a CPT that a fold never reaches is NaN and makes its mean NaN, which the
table prints as "n/a" rather than hiding the fold.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from routing.scorers import Family
from routing.training.evaluation import EvalResult, evaluate, random_baseline
from routing.training.families import FamilyOptions, fit_binary

__all__ = ["CrossValidation", "FamilyFolds", "cross_validate", "grouped_folds"]

Fold = tuple[NDArray[np.intp], NDArray[np.intp]]


def grouped_folds(groups: Sequence[str], folds: int) -> list[Fold]:
    """(train rows, test rows) per fold; no group is ever on both sides of a fold."""
    from sklearn.model_selection import GroupKFold

    distinct = len(set(groups))
    if folds < 2:
        raise ValueError(f"need at least 2 folds, got {folds}")
    if distinct < folds:
        raise ValueError(f"{distinct} distinct groups cannot fill {folds} folds")
    splitter = GroupKFold(n_splits=folds)
    rows = np.zeros(len(groups))
    return [(train, test) for train, test in splitter.split(rows, groups=list(groups))]


@dataclass(frozen=True)
class FamilyFolds:
    """One family's held-out results, one per fold."""

    name: str
    results: tuple[EvalResult, ...]
    fit_seconds: float

    def mean(self, metric: str) -> float:
        values = [_metric(r, metric) for r in self.results]
        return float(np.mean(values))


def _metric(result: EvalResult, metric: str) -> float:
    if metric == "apgr":
        return result.apgr
    return result.cpt({"cpt50": 0.5, "cpt80": 0.8}[metric])


@dataclass(frozen=True)
class CrossValidation:
    split_by: str
    groups: int
    prompts: int
    folds: tuple[Fold, ...]
    families: tuple[FamilyFolds, ...]  # the random baseline last

    def table(self, weak: str, strong: str) -> str:
        lines = [
            f"grouped {len(self.folds)}-fold by {self.split_by!r}: {self.groups} groups, "
            f"{self.prompts} prompts (weak={weak}, strong={strong}); held-out folds only",
            f"{'family':<8} {'APGR':>6} {'CPT(50%)':>9} {'CPT(80%)':>9}  APGR by fold",
        ]
        for family in self.families:
            cpts = [family.mean(m) for m in ("cpt50", "cpt80")]
            shown = ["n/a" if math.isnan(c) else f"{c:.1%}" for c in cpts]
            folds = " ".join(f"{r.apgr:.3f}" for r in family.results)
            lines.append(
                f"{family.name:<8} {family.mean('apgr'):>6.3f} {shown[0]:>9} {shown[1]:>9}  {folds}"
            )
        return "\n".join(lines)

    def as_json(self, weak: str, strong: str) -> dict[str, Any]:
        def number(value: float) -> float | None:
            return None if math.isnan(value) else value

        return {
            "split_by": self.split_by,
            "groups": self.groups,
            "prompts": self.prompts,
            "weak": weak,
            "strong": strong,
            "fold_sizes": [int(test.size) for _, test in self.folds],
            "families": {
                f.name: {
                    **{m: number(f.mean(m)) for m in ("apgr", "cpt50", "cpt80")},
                    "fit_seconds": round(f.fit_seconds, 3),
                    "folds": [
                        {m: number(_metric(r, m)) for m in ("apgr", "cpt50", "cpt80")}
                        for r in f.results
                    ],
                }
                for f in self.families
            },
        }


def cross_validate(
    vectors: NDArray[np.floating],
    weak_correct: NDArray[np.bool_],
    strong_correct: NDArray[np.bool_],
    groups: Sequence[str],
    *,
    families: Sequence[Family],
    folds: int = 5,
    split_by: str = "group",
    bins: int = 10,
    options: FamilyOptions | None = None,
    progress: bool = True,
) -> CrossValidation:
    """Train every family on each fold's training groups; evaluate on its held-out ones."""
    from tqdm import tqdm

    splits = grouped_folds(groups, folds)
    results: dict[str, list[EvalResult]] = {name: [] for name in (*families, "random")}
    seconds = dict.fromkeys(results, 0.0)
    steps = tqdm(total=len(splits) * len(families), desc="folds", disable=not progress)
    with steps:
        for number, (train, test) in enumerate(splits, start=1):
            weak, strong = weak_correct[test], strong_correct[test]
            try:
                results["random"].append(random_baseline(weak, strong, bins=bins))
                for family in families:
                    started = time.perf_counter()
                    router = fit_binary(
                        family,
                        vectors[train],
                        weak_correct[train],
                        strong_correct[train],
                        weak="weak",
                        strong="strong",
                        options=options,
                    )
                    scores = router.score_vectors(vectors[test])
                    seconds[family] += time.perf_counter() - started
                    results[family].append(evaluate(scores, weak, strong, name=family, bins=bins))
                    steps.update()
            except ValueError as exc:
                raise ValueError(f"fold {number} ({test.size} held-out prompts): {exc}") from exc
    return CrossValidation(
        split_by=split_by,
        groups=len(set(groups)),
        prompts=len(groups),
        folds=tuple(splits),
        families=tuple(
            FamilyFolds(name, tuple(found), seconds[name]) for name, found in results.items()
        ),
    )
