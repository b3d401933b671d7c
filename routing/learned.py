"""Learned routing (RouteLLM-style), serving side: pure numpy over one embedding per request.

Routers are trained offline (`routing.training`, the `[train]` extra: `switchyard
train-router`, `calibrate`, `eval`) and saved as a JSON file plus, for families with
large arrays, an `.npz` beside it (`routing.router_file`). Serving needs neither
scikit-learn nor the offline tools; the scorer families (lr, knn, mf, mlp) are evaluated
in numpy by `routing.scorers`. Loading validates everything and raises `ValueError`.

Two kinds of router:

- `LearnedRouter`, binary: `score_vectors(X)` (or `score(texts)`) is P(strong model
  needed) for each row; the planner routes to the strong pool when it is >= a threshold
  (the config's, else the file's calibrated one, else 0.5).

- `PoolRouter`, N pools: P(correct | prompt) per pool, then one choice. For the planner
  (and the cascade, choosing where to escalate), with the request's one embedding row:

      router = PoolRouter.load("pools.json", embedder=embedder)
      pool, quality = router.choose(vector, eligible_pools={"small", "code"})

  `vector` has shape (d,) or (1, d); `eligible_pools` is any collection of pool names
  the caller may use for this request (healthy, allowed by tier and budget; for an
  escalation, the pools above the one that answered). The result is the chosen pool,
  always one of `eligible_pools`, and `quality`: P(correct) for every pool the router
  knows, eligible or not (for the decision's detail). Eligible pools the router does
  not know are ignored; if it knows none of them, `choose` raises `ValueError` and the
  caller keeps its own decision. The file's rule decides (`routing.choice`: the
  cheapest pool meeting a quality target, or the best quality - lam * cost).

On the request path both kinds give the planner a *reading* instead (`read`:
`routing.choice.StrongScore` or `PoolQuality`), computed once from the request's
embedding; the planner applies it to the pools it knows the request may use.

  `choose_pools` is the same rule over many rows at once
  (calibration and evaluation use it). Cost of one decision on one row, 2 CPU cores
  (`bench/train_scale.py`): p50 13 us for lr, 16 us mf, 27 us mlp (`score_vectors`),
  59 us for `choose` over 3 pools; kNN reads all its stored vectors (memory bound:
  ~2 ms p50 at its default 20,000), so it is for comparison more than for serving.

`load_router(path)` returns whichever kind a file holds; `load_serving_router` also checks
it against the pools an app serves.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from routing.choice import ChoicePolicy, PoolQuality, StrongScore, choose_pools
from routing.embedding import Embedder
from routing.router_file import (
    FORMAT_VERSION,
    BinaryTarget,
    LoadedRouter,
    read_router_file,
    render_router,
    write_router_file,
)
from routing.scorers import Family, LogisticScorer, Scorer

__all__ = [
    "EMBEDDING_MODEL",
    "FORMAT_VERSION",
    "ChoicePolicy",
    "LearnedRouter",
    "PoolRouter",
    "PoolQuality",
    "Scores",
    "StrongScore",
    "choose_pools",
    "default_embedder",
    "load_router",
    "load_serving_router",
]

EMBEDDING_MODEL = "all-MiniLM-L6-v2"

Scores = NDArray[np.float64]


def _rows(vectors: NDArray[np.floating], dimension: int) -> Scores:
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != dimension:
        raise ValueError(f"expected vectors of shape (n, {dimension}), got {x.shape}")
    return x


def _one_row(vector: NDArray[np.floating]) -> Scores:
    row = np.asarray(vector, dtype=np.float64)
    row = row[None, :] if row.ndim == 1 else row
    if row.shape[0] != 1:
        raise ValueError(f"expected one embedding row, got {row.shape[0]}")
    return row


def _check_embedder(path: str | Path, loaded: LoadedRouter, embedder: Embedder | None) -> None:
    model = loaded.document.embedding_model
    if embedder is None and model != EMBEDDING_MODEL:
        raise ValueError(
            f"{path}: trained on {model!r} embeddings; only {EMBEDDING_MODEL!r} is available here"
        )


class _Embedding:
    """What both kinds of router share: a scorer over embeddings, the file they are saved
    as, and the embedder `score`/`quality` use (MiniLM, created on first use, unless
    given)."""

    scorer: Scorer
    _embedder: Embedder | None

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = default_embedder()
        return self._embedder

    @property
    def family(self) -> Family:
        return self.scorer.family

    @property
    def dimension(self) -> int:
        return self.scorer.dimension

    def _fields(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_json(self, arrays_file: str = "router.npz") -> str:
        """The JSON document; families with large arrays reference `arrays_file`."""
        return render_router(self._fields(), self.scorer, arrays_file)[0]

    def save(self, path: str | Path) -> None:
        write_router_file(path, self._fields(), self.scorer)


class LearnedRouter(_Embedding):
    """A binary router; `score` is P(strong model needed).

    Built from a scorer of any family, or (the logistic-regression baseline, as in format
    version 1) from `coef` and `intercept`. With `target="correct"` the scorer has two
    heads, P(correct) of the weak and of the strong model, and the score is
    P(strong right) * P(weak wrong).
    """

    def __init__(
        self,
        *,
        weak: str,
        strong: str,
        coef: Sequence[float] | NDArray[np.float64] | None = None,
        intercept: float | None = None,
        scorer: Scorer | None = None,
        target: BinaryTarget = "strong_needed",
        threshold: float | None = None,
        embedding_model: str = EMBEDDING_MODEL,
        embedder: Embedder | None = None,
    ) -> None:
        if scorer is None:
            if coef is None or intercept is None:
                raise ValueError("give a scorer, or coef and intercept")
            scorer = LogisticScorer(
                np.asarray(coef, dtype=np.float64)[None, :], np.array([float(intercept)])
            )
        expected = 2 if target == "correct" else 1
        if scorer.heads != expected:
            raise ValueError(f"target {target!r} needs {expected} heads, scorer has {scorer.heads}")
        self.weak = weak
        self.strong = strong
        self.scorer = scorer
        self.target: BinaryTarget = target
        self.threshold = threshold
        self.embedding_model = embedding_model
        self._embedder = embedder

    def score_vectors(self, vectors: NDArray[np.floating]) -> Scores:
        """P(strong needed) for embedding rows of shape (n, dimension); pure numpy."""
        p = self.scorer.predict(_rows(vectors, self.dimension))
        if self.target == "correct":
            return np.asarray(p[:, 1] * (1.0 - p[:, 0]), dtype=np.float64)
        return np.asarray(p[:, 0], dtype=np.float64)

    def read(self, vector: NDArray[np.floating], threshold: float, pool: str) -> StrongScore:
        """This router's reading of one request's embedding row: `pool` (the config's
        strong pool; the file's names are its training columns) when the score reaches
        `threshold`."""
        score = float(self.score_vectors(_one_row(vector))[0])
        return StrongScore(score, threshold, strong=pool)

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
            scorer=self.scorer,
            target=self.target,
            threshold=threshold,
            embedding_model=self.embedding_model,
            embedder=self._embedder,
        )

    def _fields(self) -> dict[str, Any]:
        return {
            "embedding_model": self.embedding_model,
            "weak": self.weak,
            "strong": self.strong,
            "target": self.target,
            "threshold": self.threshold,
        }

    @classmethod
    def load(cls, path: str | Path, embedder: Embedder | None = None) -> LearnedRouter:
        """Read and validate a binary router file; `embedder` defaults to MiniLM."""
        router = load_router(path, embedder)
        if not isinstance(router, LearnedRouter):
            raise ValueError(f"{path}: an N-pool router; load it with PoolRouter.load")
        return router


class PoolRouter(_Embedding):
    """P(correct | prompt) for each of N pools, and a choice among the eligible ones."""

    def __init__(
        self,
        *,
        pools: Sequence[str],
        costs: Sequence[float] | NDArray[np.float64],
        scorer: Scorer,
        policy: ChoicePolicy,
        embedding_model: str = EMBEDDING_MODEL,
        embedder: Embedder | None = None,
    ) -> None:
        self.pools = tuple(pools)
        self.costs = np.asarray(costs, dtype=np.float64)
        if len(set(self.pools)) != len(self.pools) or len(self.pools) < 2:
            raise ValueError("a pool router needs at least two distinct pools")
        if self.costs.shape != (len(self.pools),) or not np.all(np.isfinite(self.costs)):
            raise ValueError(f"need one finite cost per pool, got {self.costs.tolist()}")
        if scorer.heads != len(self.pools):
            raise ValueError(f"{len(self.pools)} pools but the scorer has {scorer.heads} heads")
        self.scorer = scorer
        self.policy = policy
        self.embedding_model = embedding_model
        self._embedder = embedder

    def quality_vectors(self, vectors: NDArray[np.floating]) -> Scores:
        """P(correct) per pool, shape (n, N), for embedding rows of shape (n, dimension)."""
        return self.scorer.predict(_rows(vectors, self.dimension))

    def quality(self, texts: Sequence[str]) -> Scores:
        return self.quality_vectors(self.embedder.encode(texts))

    def read(self, vector: NDArray[np.floating]) -> PoolQuality:
        """This router's reading of one request's embedding row: P(correct) per pool."""
        quality = self.quality_vectors(_one_row(vector))[0]
        return PoolQuality(
            quality=dict(zip(self.pools, quality.tolist(), strict=True)),
            costs=dict(zip(self.pools, self.costs.tolist(), strict=True)),
            policy=self.policy,
        )

    def choose(
        self, vector: NDArray[np.floating], eligible_pools: Collection[str]
    ) -> tuple[str, dict[str, float]]:
        """The pool for one request and P(correct) per known pool (module docstring):
        `read`, then the reading's choice."""
        reading = self.read(vector)
        pool = reading.choose(eligible_pools)
        if pool is None:
            raise ValueError(
                f"none of the eligible pools {sorted(eligible_pools)} is known to this router "
                f"({', '.join(self.pools)})"
            )
        return pool, dict(reading.quality)

    def with_policy(self, policy: ChoicePolicy) -> PoolRouter:
        return PoolRouter(
            pools=self.pools,
            costs=self.costs,
            scorer=self.scorer,
            policy=policy,
            embedding_model=self.embedding_model,
            embedder=self._embedder,
        )

    def _fields(self) -> dict[str, Any]:
        rule = self.policy.rule
        return {
            "embedding_model": self.embedding_model,
            "pools": list(self.pools),
            "costs": [float(c) for c in self.costs],
            "rule": rule,
            "quality_target": self.policy.value if rule == "quality_target" else None,
            "lam": self.policy.value if rule == "tradeoff" else None,
        }

    @classmethod
    def load(cls, path: str | Path, embedder: Embedder | None = None) -> PoolRouter:
        router = load_router(path, embedder)
        if not isinstance(router, PoolRouter):
            raise ValueError(f"{path}: a binary router; load it with LearnedRouter.load")
        return router


def load_router(path: str | Path, embedder: Embedder | None = None) -> LearnedRouter | PoolRouter:
    """Read and validate a router file of either kind and either format version."""
    loaded = read_router_file(path)
    _check_embedder(path, loaded, embedder)
    doc = loaded.document
    if doc.pools is not None:
        assert doc.costs is not None and doc.rule is not None
        value = doc.quality_target if doc.rule == "quality_target" else doc.lam
        assert value is not None
        return PoolRouter(
            pools=doc.pools,
            costs=doc.costs,
            scorer=loaded.scorer,
            policy=ChoicePolicy(doc.rule, value),
            embedding_model=doc.embedding_model,
            embedder=embedder,
        )
    assert doc.weak is not None and doc.strong is not None and doc.target is not None
    return LearnedRouter(
        weak=doc.weak,
        strong=doc.strong,
        scorer=loaded.scorer,
        target=doc.target,
        threshold=doc.threshold,
        embedding_model=doc.embedding_model,
        embedder=embedder,
    )


def load_serving_router(
    path: str | Path, pools: Collection[str], embedder: Embedder | None = None
) -> LearnedRouter | PoolRouter:
    """`load_router` for an app serving `pools`: an N-pool router (its pools are pool
    names) that could never choose among them is refused (`ValueError`) before it is
    served, not discovered per request. A binary router's names are its training
    columns; `routing.learned.strong_pool` says where it sends."""
    router = load_router(path, embedder)
    if isinstance(router, PoolRouter):
        known = [p for p in router.pools if p in pools]
        if len(known) < 2:
            raise ValueError(
                f"{path}: routes among pools {', '.join(router.pools)}, of which the app "
                f"serves {', '.join(known) or 'none'}; it needs at least two of them"
            )
    return router


def default_embedder() -> Embedder:
    """MiniLM, created lazily so importing this module loads no model (tests replace it)."""
    from routing.embedding import MiniLMEmbedder

    return MiniLMEmbedder()
