"""Learned routing (RouteLLM-style), serving side: score a prompt with P(strong needed).

A trained router is a logistic regression on sentence embeddings (`routing.embedding`,
all-MiniLM-L6-v2): scoring is `sigmoid(X @ w + b)` in numpy, so serving needs neither
scikit-learn nor the offline tools. The router is a small JSON file (format version, model
names, embedding model and dimension, weights, intercept, optional calibrated threshold)
that is readable and diffable in review. Loading validates the file and raises
`ValueError` on any mismatch.

Training, calibration and evaluation from labelled CSVs are offline tools in
`routing.training` (the `[train]` extra; `switchyard train-router`, `calibrate`, `eval`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
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
    "Scores",
    "default_embedder",
]

FORMAT_VERSION: Literal[1] = 1
EMBEDDING_MODEL = "all-MiniLM-L6-v2"

Scores = NDArray[np.float64]


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
        """sigmoid(X @ w + b) for embedding rows X of shape (n, dimension); pure numpy."""
        x = np.asarray(vectors, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dimension:
            raise ValueError(f"expected vectors of shape (n, {self.dimension}), got {x.shape}")
        logits = x @ self.coef + self.intercept
        # tanh form of the sigmoid: no overflow warning for large |logits|.
        return np.asarray(0.5 * (1.0 + np.tanh(0.5 * logits)), dtype=np.float64)

    @property
    def embedder(self) -> Embedder:
        """The embedder `score` uses; MiniLM, created on first use, unless one was given."""
        if self._embedder is None:
            self._embedder = default_embedder()
        return self._embedder

    def score(self, texts: Sequence[str]) -> Scores:
        """Embed the texts and score them; higher means route to the strong model.

        Callers that already hold the embeddings (one per request, shared with the
        semantic classifier) call `score_vectors` instead and embed nothing twice.
        """
        return self.score_vectors(self.embedder.encode(texts))

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
