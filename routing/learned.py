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
  caller keeps its own decision. The file's rule decides (`ChoicePolicy`):

      quality_target  the cheapest eligible pool whose P(correct) >= target; when none
                      reaches it, the eligible pool with the highest P(correct).
      tradeoff        the eligible pool maximising P(correct) - lam * cost (cost in the
                      file's units, e.g. USD per request).

  Ties go to the cheaper pool. `choose_pools` is the same rule over many rows at once
  (calibration and evaluation use it). Cost of one decision on one row, 2 CPU cores
  (`bench/train_scale.py`): p50 13 us for lr, 16 us mf, 27 us mlp (`score_vectors`),
  59 us for `choose` over 3 pools; kNN reads all its stored vectors (memory bound:
  ~2 ms p50 at its default 20,000), so it is for comparison more than for serving.

`load_router(path)` returns whichever kind a file holds.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from routing.embedding import Embedder
from routing.router_file import (
    FORMAT_VERSION,
    BinaryTarget,
    ChoiceRule,
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
    "Scores",
    "choose_pools",
    "default_embedder",
    "load_router",
]

EMBEDDING_MODEL = "all-MiniLM-L6-v2"

Scores = NDArray[np.float64]


def _rows(vectors: NDArray[np.floating], dimension: int) -> Scores:
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != dimension:
        raise ValueError(f"expected vectors of shape (n, {dimension}), got {x.shape}")
    return x


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


@dataclass(frozen=True)
class ChoicePolicy:
    """How a `PoolRouter` turns per-pool P(correct) into one pool (module docstring)."""

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

    def choose(
        self, vector: NDArray[np.floating], eligible_pools: Collection[str]
    ) -> tuple[str, dict[str, float]]:
        """The pool for one request and P(correct) per known pool (module docstring)."""
        row = np.asarray(vector, dtype=np.float64)
        quality = self.quality_vectors(row[None, :] if row.ndim == 1 else row)
        if quality.shape[0] != 1:
            raise ValueError(f"choose takes one embedding row, got {quality.shape[0]}")
        mask = np.array([p in eligible_pools for p in self.pools])
        if not mask.any():
            raise ValueError(
                f"none of the eligible pools {sorted(eligible_pools)} is known to this router "
                f"({', '.join(self.pools)})"
            )
        index = int(choose_pools(quality, self.costs, self.policy, mask)[0])
        return self.pools[index], dict(zip(self.pools, quality[0].tolist(), strict=True))

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


def default_embedder() -> Embedder:
    """MiniLM, created lazily so importing this module loads no model (tests replace it)."""
    from routing.embedding import MiniLMEmbedder

    return MiniLMEmbedder()
