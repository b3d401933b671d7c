"""Learned routing (RouteLLM-style): score a prompt with P(the strong model is needed).

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
rare). Serving needs no scikit-learn: scoring is `sigmoid(X @ w + b)` in numpy, and the
router is saved as a small JSON file (format version, model names, embedding model and
dimension, weights, intercept, optional calibrated threshold) that is readable and
diffable in review. Loading validates the file and raises `ValueError` on any mismatch.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from routing.embedding import Embedder

__all__ = [
    "EMBEDDING_MODEL",
    "FORMAT_VERSION",
    "LearnedRouter",
    "RouterData",
    "add_score_source",
    "default_embedder",
    "fit_router",
    "main",
    "read_router_csv",
    "scores_from_source",
    "strong_needed",
    "train_router",
]

FORMAT_VERSION: Literal[1] = 1
EMBEDDING_MODEL = "all-MiniLM-L6-v2"
_TRUE = {"1", "true", "yes"}
_FALSE = {"0", "false", "no"}

Scores = NDArray[np.float64]
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


class _RouterFile(BaseModel):
    """The JSON file: strict, so a hand-edited or foreign file fails loudly."""

    model_config = ConfigDict(extra="forbid")

    format_version: Literal[1] = Field(description="File format version.")
    weak: str = Field(min_length=1, description="Column name of the weak (cheap) model.")
    strong: str = Field(min_length=1, description="Column name of the strong model.")
    embedding_model: str = Field(description="Sentence-embedding model of the features.")
    dimension: int = Field(gt=0, description="Embedding dimension; len(coef).")
    coef: list[float] = Field(description="Logistic-regression weights, one per dimension.")
    intercept: float = Field(description="Logistic-regression bias.")
    threshold: float | None = Field(
        default=None, description="Route to strong when score >= threshold (calibrated)."
    )

    @model_validator(mode="after")
    def _consistent(self) -> _RouterFile:
        if len(self.coef) != self.dimension:
            raise ValueError(f"coef has {len(self.coef)} values, dimension is {self.dimension}")
        if self.weak == self.strong:
            raise ValueError("weak and strong name the same model")
        if not all(np.isfinite(self.coef)) or not np.isfinite(self.intercept):
            raise ValueError("coef and intercept must be finite")
        return self


class LearnedRouter:
    """A logistic regression on prompt embeddings; `score` is P(strong model needed)."""

    def __init__(
        self,
        *,
        weak: str,
        strong: str,
        coef: Sequence[float] | NDArray[np.float64],
        intercept: float,
        threshold: float | None = None,
        embedding_model: str = EMBEDDING_MODEL,
        embedder: Embedder | None = None,
    ) -> None:
        self.weak = weak
        self.strong = strong
        self.coef = np.asarray(coef, dtype=np.float64)
        self.intercept = float(intercept)
        self.threshold = threshold
        self.embedding_model = embedding_model
        self._embedder = embedder

    @property
    def dimension(self) -> int:
        return int(self.coef.shape[0])

    def score_vectors(self, vectors: NDArray[np.floating]) -> Scores:
        """sigmoid(X @ w + b) for embedding rows X; pure numpy, no scikit-learn."""
        x = np.asarray(vectors, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dimension:
            raise ValueError(f"expected vectors of shape (n, {self.dimension}), got {x.shape}")
        logits = x @ self.coef + self.intercept
        # tanh form of the sigmoid: no overflow warning for large |logits|.
        return np.asarray(0.5 * (1.0 + np.tanh(0.5 * logits)), dtype=np.float64)

    def score(self, texts: Sequence[str]) -> Scores:
        """Embed the texts and score them; higher means route to the strong model."""
        if self._embedder is None:
            self._embedder = default_embedder()
        return self.score_vectors(self._embedder.encode(texts))

    def with_threshold(self, threshold: float | None) -> LearnedRouter:
        return LearnedRouter(
            weak=self.weak,
            strong=self.strong,
            coef=self.coef,
            intercept=self.intercept,
            threshold=threshold,
            embedding_model=self.embedding_model,
            embedder=self._embedder,
        )

    def to_json(self) -> str:
        document = _RouterFile(
            format_version=FORMAT_VERSION,
            weak=self.weak,
            strong=self.strong,
            embedding_model=self.embedding_model,
            dimension=self.dimension,
            coef=[float(w) for w in self.coef],  # float repr round-trips float64 exactly
            intercept=self.intercept,
            threshold=self.threshold,
        )
        return json.dumps(document.model_dump(), indent=1) + "\n"

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path, embedder: Embedder | None = None) -> LearnedRouter:
        """Read and validate a router file; `embedder` defaults to MiniLM on first score."""
        try:
            document = _RouterFile.model_validate_json(Path(path).read_text(encoding="utf-8"))
        except ValidationError as exc:
            raise ValueError(f"{path}: not a valid router file:\n{exc}") from exc
        if embedder is None and document.embedding_model != EMBEDDING_MODEL:
            raise ValueError(
                f"{path}: trained on {document.embedding_model!r} embeddings; "
                f"only {EMBEDDING_MODEL!r} is available here"
            )
        return cls(
            weak=document.weak,
            strong=document.strong,
            coef=document.coef,
            intercept=document.intercept,
            threshold=document.threshold,
            embedding_model=document.embedding_model,
            embedder=embedder,
        )


def default_embedder() -> Embedder:
    """MiniLM, created lazily so importing this module loads no model (tests replace it)."""
    from routing.embedding import MiniLMEmbedder

    return MiniLMEmbedder()


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
    vectors = embedder.encode(data.prompts)
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


def main(argv: Sequence[str] | None = None, *, prog: str = "python -m routing.learned") -> int:
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
        vectors = default_embedder().encode(data.prompts)
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
