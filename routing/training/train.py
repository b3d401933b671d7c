"""Train a learned router from labelled prompts; the CSV format all offline tools read.

Data format, shared by `switchyard train-router`, `eval` and `calibrate`: a CSV file with
a header, one `prompt` column and one boolean column per model saying whether that
model's answer to the prompt was correct (`1/0`, `true/false`, `yes/no`, any case):

    prompt,small,large
    What is the capital of France?,1,1
    Prove that the square root of 2 is irrational.,0,1

The weak and the strong model are chosen by column name (`--weak small --strong large`).
Other columns are allowed and ignored, except that `--scores-column NAME` reads a column
of precomputed numeric scores (e.g. a cascade's confidences) instead of a router.

Label: a prompt is positive when the strong model is right AND the weak model is wrong,
RouteLLM's "strong needed" label. Prompts both models get right, or both get wrong, are
negative: calling the strong model there costs more and changes nothing, so a router
that learns this label spends strong calls only where they buy accuracy.

Features are sentence embeddings (`routing.embedding`, all-MiniLM-L6-v2) and the model is
a scikit-learn logistic regression with balanced class weights (positives are often
rare). scikit-learn is needed here only (the `[train]` extra); the result is a
`routing.learned.LearnedRouter`, which the server loads and scores in numpy.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from routing.embedding import Embedder, encode_with_progress
from routing.learned import EMBEDDING_MODEL, LearnedRouter, Scores, default_embedder

__all__ = [
    "RouterData",
    "add_score_source",
    "fit_router",
    "main",
    "read_router_csv",
    "scores_from_source",
    "strong_needed",
    "train_router",
]

_TRUE = {"1", "true", "yes"}
_FALSE = {"0", "false", "no"}

Mask = NDArray[np.bool_]


@dataclass(frozen=True)
class RouterData:
    """Prompts and the raw text of every other column, parsed on demand by name."""

    prompts: tuple[str, ...]
    columns: Mapping[str, tuple[str, ...]]

    def _column(self, name: str) -> tuple[str, ...]:
        if name not in self.columns:
            raise ValueError(f"no column {name!r} (columns: {', '.join(sorted(self.columns))})")
        return self.columns[name]

    def correct(self, model: str) -> Mask:
        """The boolean correctness column of `model`."""
        values = []
        for row, cell in enumerate(self._column(model), start=2):
            text = cell.strip().lower()
            if text not in _TRUE | _FALSE:
                raise ValueError(f"column {model!r}, line {row}: {cell!r} is not 1/0/true/false")
            values.append(text in _TRUE)
        return np.array(values, dtype=bool)

    def numbers(self, name: str) -> Scores:
        """A numeric column, e.g. precomputed router scores or cascade confidences."""
        try:
            return np.array([float(cell) for cell in self._column(name)], dtype=np.float64)
        except ValueError as exc:
            raise ValueError(f"column {name!r} is not numeric: {exc}") from exc


def read_router_csv(path: str | Path) -> RouterData:
    """Read the CSV format described in the module docstring."""
    with Path(path).open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = list(reader.fieldnames or [])
        if "prompt" not in fields:
            raise ValueError(f"{path}: no 'prompt' column (columns: {', '.join(fields)})")
        rows = list(reader)
    if not rows:
        raise ValueError(f"{path}: no rows")
    others = [name for name in fields if name != "prompt"]
    return RouterData(
        prompts=tuple(row["prompt"] or "" for row in rows),
        columns={name: tuple(row[name] or "" for row in rows) for name in others},
    )


def strong_needed(data: RouterData, weak: str, strong: str) -> Mask:
    """The training label: strong model right and weak model wrong."""
    return data.correct(strong) & ~data.correct(weak)


def fit_router(
    vectors: NDArray[np.floating],
    labels: Mask,
    *,
    weak: str,
    strong: str,
    embedding_model: str = EMBEDDING_MODEL,
    embedder: Embedder | None = None,
) -> LearnedRouter:
    """Fit the logistic regression; scikit-learn is needed here only, not for scoring."""
    from sklearn.linear_model import LogisticRegression

    if len(set(labels.tolist())) < 2:
        raise ValueError(
            "labels are all the same: need prompts where only the strong model is right "
            "and prompts where it is not"
        )
    classifier = LogisticRegression(class_weight="balanced", max_iter=1000)
    classifier.fit(np.asarray(vectors, dtype=np.float64), labels)
    return LearnedRouter(
        weak=weak,
        strong=strong,
        coef=classifier.coef_[0],
        intercept=float(classifier.intercept_[0]),
        embedding_model=embedding_model,
        embedder=embedder,
    )


def train_router(
    csv_path: str | Path | RouterData,
    weak: str,
    strong: str,
    embedder: Embedder,
    *,
    embedding_model: str = EMBEDDING_MODEL,
) -> LearnedRouter:
    """Train on a CSV file (or already-read data); the router keeps `embedder` for scoring."""
    data = csv_path if isinstance(csv_path, RouterData) else read_router_csv(csv_path)
    labels = strong_needed(data, weak, strong)
    vectors = encode_with_progress(embedder, data.prompts)
    return fit_router(
        vectors,
        labels,
        weak=weak,
        strong=strong,
        embedding_model=embedding_model,
        embedder=embedder,
    )


def add_score_source(parser: argparse.ArgumentParser) -> None:
    """`--router FILE` or `--scores-column NAME`: where `eval` and `calibrate` get scores."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--router", type=Path, metavar="FILE", help="learned router JSON (embeds prompts)"
    )
    source.add_argument(
        "--scores-column", metavar="NAME", help="CSV column of precomputed scores (no embedder)"
    )


def scores_from_source(
    data: RouterData, router_path: Path | None, scores_column: str | None
) -> tuple[Scores, LearnedRouter | None]:
    """Scores for every prompt, from a router file or a CSV column, and the router if any."""
    if scores_column is not None:
        return data.numbers(scores_column), None
    if router_path is None:
        raise ValueError("give a router file or a scores column")
    router = LearnedRouter.load(router_path)
    return router.score(data.prompts), router


def main(
    argv: Sequence[str] | None = None, *, prog: str = "python -m routing.training.train"
) -> int:
    """Command line: train a router from a CSV and save it as JSON."""
    parser = argparse.ArgumentParser(
        prog=prog, description="Train a learned router (P(strong model needed)) from a CSV."
    )
    parser.add_argument("data", type=Path, metavar="DATA.csv", help="prompt + correctness CSV")
    parser.add_argument("--weak", required=True, help="column of the weak model")
    parser.add_argument("--strong", required=True, help="column of the strong model")
    parser.add_argument("-o", "--output", type=Path, required=True, help="router JSON to write")
    args = parser.parse_args(argv)

    try:
        data = read_router_csv(args.data)
        labels = strong_needed(data, args.weak, args.strong)
        vectors = encode_with_progress(default_embedder(), data.prompts)
        router = fit_router(vectors, labels, weak=args.weak, strong=args.strong)
        router.save(args.output)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    predicted = router.score_vectors(vectors) >= 0.5
    print(f"trained on {len(labels)} prompts ({args.weak} -> {args.strong})")
    print(f"positive rate (strong needed): {labels.mean():.1%}")
    # Balanced class weights: 0.5 is the balanced decision point, not a serving threshold.
    print(f"in-sample accuracy at 0.5: {(predicted == labels).mean():.1%}")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
