"""Fitting each router family on embedding rows; the server scores them with numpy alone.

`fit_scorer(family, vectors, targets)` fits one family to boolean targets of shape
(n, heads) and returns a `routing.scorers` scorer:

- `lr`: a scikit-learn logistic regression per head (the baseline). `balanced` class
  weights for the binary "strong needed" label, whose positives are often rare; plain
  weights for per-pool P(correct), which the N-pool chooser compares with a quality
  target and so must stay calibrated.
- `knn`: stores (at most `knn_max_points`, sampled) unit vectors and their labels.
- `mf`: RouteLLM's matrix factorisation, trained here with numpy (Adam on the mean
  binary cross-entropy, L2 on the factors, early stopping on a 10% split): no torch.
- `mlp`: scikit-learn `MLPClassifier` (ReLU, strong L2, no early stopping: see
  `mlp_classifier`), one logistic output per head (multi-label for several heads).

Partial labels. Traffic labels only the pools that served a prompt, so `fit_scorer`
and `fit_pools` take a mask `known` (n, heads) beside the targets: each head learns from
the rows where its label is known, and rows with no known label are dropped. `lr` fits
each head on its known rows; `mf` masks the loss (an unknown cell has no gradient, the
mean is over known cells, the early-stopping loss too); `knn` stores an unknown cell as
that head's mean over its known rows, a prior rather than a label; `mlp` (whose
scikit-learn fit cannot mask) fits one network per head on its known rows and merges
them into one block-diagonal network (`merge_mlps`), exactly equivalent to the separate
ones, that the server scores as any other. Every head needs both classes among its
known rows.

`fit_binary` and `fit_pools` wrap it into the two router kinds of `routing.learned`:
binary routers learn "strong right and weak wrong" directly, except `mf`, which models
each model's correctness (its design: one vector per model) and scores
P(strong right) * P(weak wrong). A binary label needs both models' cells, so binary
routers take complete rows only (`routing.training.train.complete_rows`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from routing.embedding import Embedder
from routing.learned import EMBEDDING_MODEL, ChoicePolicy, LearnedRouter, PoolRouter
from routing.scorers import (
    FAMILIES,
    FactorScorer,
    Family,
    KnnScorer,
    LogisticScorer,
    MlpScorer,
    Scorer,
)

__all__ = [
    "FAMILIES",
    "FamilyOptions",
    "fit_binary",
    "fit_needed",
    "fit_pools",
    "fit_scorer",
    "merge_mlps",
    "mlp_classifier",
    "parse_families",
]

Mask = NDArray[np.bool_]


@dataclass(frozen=True)
class FamilyOptions:
    """Hyper-parameters. `knn_temperature` and `mlp_alpha` were chosen on grouped folds
    of `make-data --questions tasks` (their docstrings say how); the others on synthetic
    data."""

    knn_neighbours: int = 32
    knn_temperature: float = 0.2  # see `_fit_knn`
    knn_max_points: int = 20_000  # serving scans them all: ~1 ms per request at 20k x 384
    mf_rank: int = 64
    mf_epochs: int = 40
    mf_l2: float = 1e-4
    mlp_hidden: tuple[int, ...] = (128,)
    mlp_alpha: float = 1.0  # see `mlp_classifier`
    seed: int = 0


def parse_families(text: str) -> tuple[Family, ...]:
    """`lr,knn` -> ("lr", "knn"); `ValueError` naming unknown families."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in FAMILIES]
    if unknown or not names:
        raise ValueError(f"unknown families {unknown or text!r}; known: {', '.join(FAMILIES)}")
    return tuple(f for f in FAMILIES if f in names)


def _fit_lr(x: NDArray[np.floating], y: Mask, known: Mask, balanced: bool) -> LogisticScorer:
    from sklearn.linear_model import LogisticRegression

    coef, intercept = [], []
    for head in range(y.shape[1]):
        rows = known[:, head]
        model = LogisticRegression(class_weight="balanced" if balanced else None, max_iter=1000)
        model.fit(x[rows], y[rows, head])
        coef.append(model.coef_[0])
        intercept.append(float(model.intercept_[0]))
    return LogisticScorer(np.array(coef, dtype=np.float64), np.array(intercept))


def _fit_knn(x: NDArray[np.floating], y: Mask, known: Mask, options: FamilyOptions) -> KnnScorer:
    """Neighbours vote with weights exp((sim - best) / `knn_temperature`). At 0.05 the
    nearest one or two decide (a prompt's own label when scored in-sample: ROC AUC 0.99,
    the "memorising" seen on public data); 0.2 averages the neighbourhood, which did as
    well or better on every held-out subject fold (mean APGR 0.674 -> 0.681, lowest fold
    0.650 -> 0.668).

    Unknown cells are stored as their head's mean over the known rows: a prior, not a
    label. Such a neighbour pulls the vote towards the head's base rate (as `smoothing`
    does), so a head whose labels are sparse leans on its prior where they are missing."""
    labels = y.astype(np.float32)
    if not known.all():
        prior = (labels * known).sum(axis=0) / known.sum(axis=0)
        labels = np.where(known, labels, prior[None, :]).astype(np.float32)
    rows = np.arange(x.shape[0])
    if rows.size > options.knn_max_points:
        rng = np.random.default_rng(options.seed)
        rows = np.sort(rng.choice(rows, options.knn_max_points, replace=False))
    vectors = x[rows].astype(np.float32)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return KnnScorer(
        vectors,
        labels[rows],
        neighbours=options.knn_neighbours,
        temperature=options.knn_temperature,
    )


def _bce(p: NDArray[np.float64], y: NDArray[np.float64], known: NDArray[np.float64]) -> float:
    """Mean binary cross-entropy over the known cells (`known` 1.0) only."""
    p = np.clip(p, 1e-7, 1 - 1e-7)
    cells = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    return float((cells * known).sum() / max(known.sum(), 1.0))


def _fit_mf(x: NDArray[np.floating], y: Mask, known: Mask, options: FamilyOptions) -> FactorScorer:
    """Mini-batch Adam on the mean BCE of sigmoid((x A^T) U^T + b) over the known cells
    (an unknown cell has zero gradient; each batch is normalised by its known cells),
    L2 on A and U; early stopping on the masked loss of a 10% split."""
    rng = np.random.default_rng(options.seed)
    n, d = x.shape
    target = y.astype(np.float64)
    weight = known.astype(np.float64)
    order = rng.permutation(n)
    held = order[: n // 10] if n >= 50 else order[:0]
    if not weight[held].any():
        held = held[:0]  # nothing known to stop on
    train = order[held.size :]
    rank = options.mf_rank
    counts = weight[train].sum(axis=0)
    mean = (target[train] * weight[train]).sum(axis=0) / np.maximum(counts, 1.0)
    mean = np.clip(np.where(counts > 0, mean, 0.5), 1e-3, 1 - 1e-3)
    params = [
        rng.normal(0.0, 1.0 / np.sqrt(d), (rank, d)),
        rng.normal(0.0, 0.1, (y.shape[1], rank)),
        np.log(mean / (1 - mean)),
    ]
    moments = [(np.zeros_like(p), np.zeros_like(p)) for p in params]
    step, rate, batch = 0, 3e-3, 256

    def predict(rows: NDArray[np.intp]) -> NDArray[np.float64]:
        scorer = FactorScorer(params[0], params[1], params[2])
        return scorer.predict(x[rows])

    best = (np.inf, [p.copy() for p in params])
    stale = 0
    for _ in range(options.mf_epochs):
        for start in range(0, train.size, batch):
            rows = train[start : start + batch]
            cells = weight[rows]
            if not cells.any():
                continue
            a, u, b = params
            h = x[rows] @ a.T
            p = 1.0 / (1.0 + np.exp(-(h @ u.T + b)))
            g = (p - target[rows]) * cells / cells.sum()
            grads = [(g @ u).T @ x[rows] + options.mf_l2 * a, g.T @ h + options.mf_l2 * u]
            grads.append(g.sum(axis=0))
            step += 1
            for param, grad, (m, v) in zip(params, grads, moments, strict=True):
                m *= 0.9
                m += 0.1 * grad
                v *= 0.999
                v += 0.001 * grad * grad
                param -= rate * (m / (1 - 0.9**step)) / (np.sqrt(v / (1 - 0.999**step)) + 1e-8)
        train = rng.permutation(train)
        if held.size == 0:
            continue
        loss = _bce(predict(held), target[held], weight[held])
        if loss < best[0] - 1e-5:
            best, stale = (loss, [p.copy() for p in params]), 0
        else:
            stale += 1
            if stale >= 3:
                break
    final = best[1] if held.size else params
    return FactorScorer(final[0], final[1], final[2])


def mlp_classifier(rows: int, options: FamilyOptions) -> Any:
    """The scikit-learn `MLPClassifier` the `mlp` family fits on `rows` training rows.

    Held back by L2 (`mlp_alpha`), not by early stopping. scikit-learn stops on the
    validation split's *accuracy*, and with "strong needed" positives at 10-30% accuracy
    sits at the majority class from the first epoch: the fit stopped after a few epochs
    having barely moved (in-sample ROC AUC 0.51-0.67, below random on some held-out
    folds). Without a penalty the network memorises instead (in-sample AUC 0.99, one
    held-out fold at random). `alpha` 1.0 was chosen on grouped folds: 5 folds by
    subject of `make-data --questions tasks` (mean APGR 0.65 at 0.1 and 0.3, 0.67 at 1.0
    and 3.0, the lowest fold rising from 0.50 to 0.61).
    """
    from sklearn.neural_network import MLPClassifier

    return MLPClassifier(
        hidden_layer_sizes=options.mlp_hidden,
        alpha=options.mlp_alpha,
        early_stopping=False,
        # About 3*10^5 rows seen in all, 15 to 200 epochs (10^5 prompts: 15).
        max_iter=int(np.clip(3e5 / max(rows, 1), 15, 200)),
        random_state=options.seed,
    )


def _mlp_fit(
    x: NDArray[np.floating], y: NDArray[np.bool_] | NDArray[np.int64], options: FamilyOptions
) -> MlpScorer:
    from sklearn.exceptions import ConvergenceWarning

    model = mlp_classifier(x.shape[0], options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # max_iter is the budget
        model.fit(x, y)
    if model.out_activation_ != "logistic":
        raise ValueError(f"unexpected MLP output activation {model.out_activation_!r}")
    return MlpScorer(
        tuple(np.asarray(w, dtype=np.float64) for w in model.coefs_),
        tuple(np.asarray(b, dtype=np.float64) for b in model.intercepts_),
    )


def merge_mlps(networks: Sequence[MlpScorer]) -> MlpScorer:
    """One network computing every one of `networks` side by side, heads in order: the
    first layers concatenated, every later layer block-diagonal. ReLU is elementwise and
    the off-diagonal weights are zero, so each head's output is exactly its own
    network's (up to float rounding of the matrix products)."""
    if not networks:
        raise ValueError("no networks to merge")
    layers = len(networks[0].weights)
    if any(len(n.weights) != layers for n in networks):
        raise ValueError("networks to merge need the same number of layers")
    if len({n.dimension for n in networks}) != 1:
        raise ValueError("networks to merge need the same input dimension")
    weights = [np.concatenate([n.weights[0] for n in networks], axis=1)]
    for i in range(1, layers):
        rows = sum(n.weights[i].shape[0] for n in networks)
        block = np.zeros((rows, sum(n.weights[i].shape[1] for n in networks)))
        r = c = 0
        for n in networks:
            w = n.weights[i]
            block[r : r + w.shape[0], c : c + w.shape[1]] = w
            r, c = r + w.shape[0], c + w.shape[1]
        weights.append(block)
    biases = [np.concatenate([n.biases[i] for n in networks]) for i in range(layers)]
    return MlpScorer(tuple(weights), tuple(biases))


def _fit_mlp(x: NDArray[np.floating], y: Mask, known: Mask, options: FamilyOptions) -> MlpScorer:
    """One multi-label network with complete labels; with unknown cells (which
    `MLPClassifier` cannot mask) one network per head on its known rows, merged into
    one (`merge_mlps`) that serves as the multi-label one does."""
    if known.all():
        return _mlp_fit(x, y[:, 0] if y.shape[1] == 1 else y.astype(np.int64), options)
    heads = [
        _mlp_fit(x[known[:, h]], y[known[:, h], h].astype(np.int64), options)
        for h in range(y.shape[1])
    ]
    return merge_mlps(heads)


def fit_scorer(
    family: Family,
    vectors: NDArray[np.floating],
    targets: Mask,
    *,
    known: Mask | None = None,
    balanced: bool = False,
    options: FamilyOptions | None = None,
) -> Scorer:
    """Fit `family` to boolean `targets` (n, heads). `known` (n, heads), default all
    True: which cells are labelled; each head learns from its known rows only (module
    docstring), rows with no known cell are dropped. Every head needs both classes
    among its known rows."""
    options = options or FamilyOptions()
    # float32 rows for knn and mf (half the memory at 10^5 prompts), float64 for sklearn.
    x: NDArray[np.floating] = np.asarray(
        vectors, dtype=np.float32 if family in ("knn", "mf") else np.float64
    )
    y = np.asarray(targets, dtype=bool)
    if y.ndim != 2 or y.shape[0] != x.shape[0] or x.ndim != 2:
        raise ValueError(f"targets {y.shape} do not match vectors {x.shape}")
    mask = np.ones_like(y) if known is None else np.asarray(known, dtype=bool)
    if mask.shape != y.shape:
        raise ValueError(f"known {mask.shape} does not match targets {y.shape}")
    if not mask.all():
        rows = mask.any(axis=1)
        x, y, mask = x[rows], y[rows], mask[rows]
    constant = [
        h for h in range(y.shape[1]) if y[mask[:, h], h].all() or not y[mask[:, h], h].any()
    ]
    if constant:
        raise ValueError(f"heads {constant}: labels are all the same (or none is known)")
    if family == "lr":
        return _fit_lr(x, y, mask, balanced)
    if family == "knn":
        return _fit_knn(x, y, mask, options)
    if family == "mf":
        return _fit_mf(x, y, mask, options)
    if family == "mlp":
        return _fit_mlp(x, y, mask, options)
    raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")


def _both_classes(column: Mask, what: str) -> None:
    if column.all() or not column.any():
        raise ValueError(f"{what}: labels are all the same")


def fit_binary(
    family: Family,
    vectors: NDArray[np.floating],
    weak_correct: Mask,
    strong_correct: Mask,
    *,
    weak: str,
    strong: str,
    options: FamilyOptions | None = None,
    embedding_model: str = EMBEDDING_MODEL,
    embedder: Embedder | None = None,
) -> LearnedRouter:
    """A binary router of `family`: P(strong needed) (see the module docstring)."""
    needed = strong_correct & ~weak_correct
    if family != "mf":
        return fit_needed(
            family, vectors, needed, weak=weak, strong=strong, options=options,
            embedding_model=embedding_model, embedder=embedder,
        )  # fmt: skip
    _mixed(needed)
    _both_classes(weak_correct, f"{weak} correctness")
    _both_classes(strong_correct, f"{strong} correctness")
    scorer = fit_scorer(
        family, vectors, np.stack([weak_correct, strong_correct], axis=1), options=options
    )
    return LearnedRouter(
        weak=weak, strong=strong, scorer=scorer, target="correct",
        embedding_model=embedding_model, embedder=embedder,
    )  # fmt: skip


def fit_needed(
    family: Family,
    vectors: NDArray[np.floating],
    needed: Mask,
    *,
    weak: str,
    strong: str,
    options: FamilyOptions | None = None,
    embedding_model: str = EMBEDDING_MODEL,
    embedder: Embedder | None = None,
) -> LearnedRouter:
    """A binary router of `family` fitted to "strong needed" labels given as they are
    (balanced class weights: positives are often rare)."""
    _mixed(needed)
    scorer = fit_scorer(family, vectors, needed[:, None], balanced=True, options=options)
    return LearnedRouter(
        weak=weak,
        strong=strong,
        scorer=scorer,
        target="strong_needed",
        embedding_model=embedding_model,
        embedder=embedder,
    )


def _mixed(needed: Mask) -> None:
    if len(set(np.asarray(needed, dtype=bool).tolist())) < 2:
        raise ValueError(
            "labels are all the same: need prompts where only the strong model is right "
            "and prompts where it is not"
        )


def fit_pools(
    family: Family,
    vectors: NDArray[np.floating],
    correct: Mask,
    *,
    pools: Sequence[str],
    costs: Sequence[float],
    policy: ChoicePolicy,
    known: Mask | None = None,
    options: FamilyOptions | None = None,
    embedding_model: str = EMBEDDING_MODEL,
    embedder: Embedder | None = None,
) -> PoolRouter:
    """An N-pool router of `family`: one P(correct) head per column of `correct` (n, N).
    `known` (n, N), default all True: which labels are known; each pool's head learns
    from the rows where its label is (partial labels: module docstring)."""
    correct = np.asarray(correct, dtype=bool)
    mask = np.ones_like(correct) if known is None else np.asarray(known, dtype=bool)
    if correct.ndim != 2 or correct.shape[1] != len(pools) or mask.shape != correct.shape:
        raise ValueError(
            f"labels {correct.shape} and known {mask.shape} do not match {len(pools)} pools"
        )
    for i, pool in enumerate(pools):
        labelled = correct[mask[:, i], i]
        if labelled.size == 0:
            raise ValueError(f"pool {pool!r} correctness: no prompt has a label")
        _both_classes(labelled, f"pool {pool!r} correctness ({labelled.size} labelled prompts)")
    scorer = fit_scorer(family, vectors, correct, known=mask, options=options)
    return PoolRouter(
        pools=pools,
        costs=costs,
        scorer=scorer,
        policy=policy,
        embedding_model=embedding_model,
        embedder=embedder,
    )
