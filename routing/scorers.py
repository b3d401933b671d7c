"""Numpy scoring for every learned-router family: what the server runs, no scikit-learn.

A scorer maps embedding rows X, shape (n, d), to probabilities, shape (n, k): one column
("head") per thing the router predicts, e.g. P(strong model needed) (k = 1) or
P(correct | prompt, pool) for each of N pools (k = N). Training lives in
`routing.training.families`; this module only evaluates trained weights, so serving
needs numpy alone.

    lr   logistic regression per head: sigmoid(X W^T + b). The baseline.
    knn  the `neighbours` stored training vectors most similar to the prompt (cosine);
         their labels averaged with weights exp((sim - best sim) / temperature), shrunk
         towards the training prior by `smoothing` pseudo-neighbours. Memorises; its
         stored vectors are the large array of the family (the `.npz` beside the JSON).
    mf   matrix factorisation as in RouteLLM: the prompt is projected, p = A x (rank r),
         each head (model/pool) has a vector u_m and a bias b_m, and the score is
         sigmoid(u_m . p + b_m). RouteLLM's classifier weights are folded into u_m.
         NOTE: with a handful of heads this is a low-rank multi-output logistic
         regression; the shared projection pays off as the number of models grows.
    mlp  ReLU hidden layers and a logistic output layer (scikit-learn `MLPClassifier`
         weights, evaluated here).

Every scorer splits into `params` (small, JSON-able: the router file) and `arrays`
(numpy: the `.npz` beside it, may be empty), and is rebuilt by `scorer_from_parts`,
which checks every shape and refuses non-finite numbers with `ValueError`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol, Self

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "FAMILIES",
    "Arrays",
    "Family",
    "FactorScorer",
    "KnnScorer",
    "LogisticScorer",
    "MlpScorer",
    "Scorer",
    "scorer_from_parts",
    "sigmoid",
]

Family = Literal["lr", "knn", "mf", "mlp"]
FAMILIES: tuple[Family, ...] = ("lr", "knn", "mf", "mlp")

Matrix = NDArray[np.float64]
Arrays = dict[str, NDArray[Any]]

_QUERY_CHUNK = 256  # kNN: query rows per similarity block (256 x 100k floats = 100 MB)


def sigmoid(logits: NDArray[np.floating]) -> Matrix:
    # tanh form: no overflow warning for large |logits|.
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * np.asarray(logits, np.float64))), np.float64)


class Scorer(Protocol):
    """Embedding rows in, one probability per head out."""

    @property
    def family(self) -> Family: ...

    @property
    def dimension(self) -> int: ...

    @property
    def heads(self) -> int: ...

    def predict(self, x: NDArray[np.floating]) -> Matrix:
        """Probabilities of shape (n, heads) for rows x of shape (n, dimension)."""
        ...

    def params(self) -> dict[str, Any]:
        """Small JSON-able values stored in the router file itself."""
        ...

    def arrays(self) -> Arrays:
        """Large arrays stored in the `.npz` beside the router file (may be empty)."""
        ...


def _finite(name: str, *values: NDArray[Any]) -> None:
    if not all(np.all(np.isfinite(v)) for v in values):
        raise ValueError(f"{name}: weights must be finite")


def _shape(name: str, array: NDArray[Any], shape: tuple[int, ...]) -> None:
    if array.shape != shape:
        raise ValueError(f"{name} has shape {array.shape}, expected {shape}")


@dataclass(frozen=True)
class LogisticScorer:
    """One logistic regression per head: coef (heads, d), intercept (heads,)."""

    coef: Matrix
    intercept: Matrix
    family: ClassVar[Family] = "lr"

    def __post_init__(self) -> None:
        if self.coef.ndim != 2 or self.coef.shape[0] == 0 or self.coef.shape[1] == 0:
            raise ValueError(f"coef must be (heads, dimension), got shape {self.coef.shape}")
        _shape("intercept", self.intercept, (self.coef.shape[0],))
        _finite("lr", self.coef, self.intercept)

    @property
    def dimension(self) -> int:
        return int(self.coef.shape[1])

    @property
    def heads(self) -> int:
        return int(self.coef.shape[0])

    def predict(self, x: NDArray[np.floating]) -> Matrix:
        return sigmoid(x @ self.coef.T + self.intercept)

    def params(self) -> dict[str, Any]:
        # float repr round-trips float64 exactly, so a JSON file scores like the original.
        return {
            "coef": [[float(w) for w in row] for row in self.coef],
            "intercept": [float(b) for b in self.intercept],
        }

    def arrays(self) -> Arrays:
        return {}

    @classmethod
    def from_parts(cls, params: Mapping[str, Any], arrays: Arrays, dimension: int) -> Self:
        coef = _float_array(params.get("coef"), "coef", ndim=2)
        intercept = _float_array(params.get("intercept"), "intercept", ndim=1)
        if coef.shape[1] != dimension:
            raise ValueError(f"coef has {coef.shape[1]} values, dimension is {dimension}")
        return cls(coef, intercept)


@dataclass(frozen=True)
class KnnScorer:
    """Stored unit vectors (m, d) and their labels (m, heads), see the module docstring."""

    vectors: NDArray[np.float32]
    labels: NDArray[np.float32]
    neighbours: int = 32
    temperature: float = 0.05
    smoothing: float = 1.0
    family: ClassVar[Family] = "knn"

    def __post_init__(self) -> None:
        if self.vectors.ndim != 2 or self.vectors.shape[0] == 0:
            raise ValueError(f"knn vectors must be (m, dimension), got {self.vectors.shape}")
        if self.labels.ndim != 2 or self.labels.shape[0] != self.vectors.shape[0]:
            raise ValueError(
                f"knn labels have shape {self.labels.shape}, vectors {self.vectors.shape}"
            )
        if self.neighbours < 1 or self.temperature <= 0 or self.smoothing < 0:
            raise ValueError("knn needs neighbours >= 1, temperature > 0, smoothing >= 0")
        _finite("knn", self.vectors, self.labels)

    @property
    def dimension(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def heads(self) -> int:
        return int(self.labels.shape[1])

    def predict(self, x: NDArray[np.floating]) -> Matrix:
        queries = np.asarray(x, np.float32)
        queries = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
        k = min(self.neighbours, self.vectors.shape[0])
        prior = self.labels.mean(axis=0, dtype=np.float64)
        out = np.empty((queries.shape[0], self.heads), dtype=np.float64)
        for start in range(0, queries.shape[0], _QUERY_CHUNK):
            sims = queries[start : start + _QUERY_CHUNK] @ self.vectors.T
            top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            near = np.take_along_axis(sims, top, axis=1).astype(np.float64)
            weights = np.exp((near - near.max(axis=1, keepdims=True)) / self.temperature)
            votes = np.einsum("qk,qkh->qh", weights, self.labels[top].astype(np.float64))
            total = weights.sum(axis=1, keepdims=True) + self.smoothing
            out[start : start + len(near)] = (votes + self.smoothing * prior) / total
        return out

    def params(self) -> dict[str, Any]:
        return {
            "neighbours": self.neighbours,
            "temperature": self.temperature,
            "smoothing": self.smoothing,
        }

    def arrays(self) -> Arrays:
        return {"vectors": self.vectors, "labels": self.labels}

    @classmethod
    def from_parts(cls, params: Mapping[str, Any], arrays: Arrays, dimension: int) -> Self:
        vectors = _stored(arrays, "vectors", np.float32, ndim=2)
        labels = _stored(arrays, "labels", np.float32, ndim=2)
        if vectors.shape[1] != dimension:
            raise ValueError(f"knn vectors have dimension {vectors.shape[1]}, file {dimension}")
        return cls(
            vectors,
            labels,
            neighbours=_number(params, "neighbours", int),
            temperature=_number(params, "temperature", float),
            smoothing=_number(params, "smoothing", float),
        )


@dataclass(frozen=True)
class FactorScorer:
    """projection (rank, d), head vectors (heads, rank), head biases (heads,)."""

    projection: Matrix
    head_vectors: Matrix
    head_bias: Matrix
    family: ClassVar[Family] = "mf"

    def __post_init__(self) -> None:
        if self.projection.ndim != 2 or self.head_vectors.ndim != 2:
            raise ValueError("mf projection and head vectors must be 2-d")
        rank = self.projection.shape[0]
        _shape("mf head_vectors", self.head_vectors, (self.head_vectors.shape[0], rank))
        _shape("mf head_bias", self.head_bias, (self.head_vectors.shape[0],))
        _finite("mf", self.projection, self.head_vectors, self.head_bias)

    @property
    def dimension(self) -> int:
        return int(self.projection.shape[1])

    @property
    def heads(self) -> int:
        return int(self.head_vectors.shape[0])

    def predict(self, x: NDArray[np.floating]) -> Matrix:
        return sigmoid((x @ self.projection.T) @ self.head_vectors.T + self.head_bias)

    def params(self) -> dict[str, Any]:
        return {"rank": int(self.projection.shape[0])}

    def arrays(self) -> Arrays:
        return {
            "projection": self.projection,
            "head_vectors": self.head_vectors,
            "head_bias": self.head_bias,
        }

    @classmethod
    def from_parts(cls, params: Mapping[str, Any], arrays: Arrays, dimension: int) -> Self:
        projection = _stored(arrays, "projection", np.float64, ndim=2)
        rank = _number(params, "rank", int)
        _shape("mf projection", projection, (rank, dimension))
        return cls(
            projection,
            _stored(arrays, "head_vectors", np.float64, ndim=2),
            _stored(arrays, "head_bias", np.float64, ndim=1),
        )


@dataclass(frozen=True)
class MlpScorer:
    """weights[i] (in, out) and biases[i] (out,); ReLU between layers, logistic output."""

    weights: tuple[Matrix, ...]
    biases: tuple[Matrix, ...]
    family: ClassVar[Family] = "mlp"

    def __post_init__(self) -> None:
        if not self.weights or len(self.weights) != len(self.biases):
            raise ValueError("mlp needs as many bias vectors as weight matrices, at least one")
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            if w.ndim != 2:
                raise ValueError(f"mlp w{i} must be 2-d, got shape {w.shape}")
            _shape(f"mlp b{i}", b, (w.shape[1],))
            if i and w.shape[0] != self.weights[i - 1].shape[1]:
                raise ValueError(f"mlp w{i} has {w.shape[0]} inputs, layer {i - 1} gives more")
        _finite("mlp", *self.weights, *self.biases)

    @property
    def dimension(self) -> int:
        return int(self.weights[0].shape[0])

    @property
    def heads(self) -> int:
        return int(self.weights[-1].shape[1])

    def predict(self, x: NDArray[np.floating]) -> Matrix:
        h = x
        for w, b in zip(self.weights[:-1], self.biases[:-1], strict=True):
            h = np.maximum(h @ w + b, 0.0)
        return sigmoid(h @ self.weights[-1] + self.biases[-1])

    def params(self) -> dict[str, Any]:
        return {"layers": len(self.weights)}

    def arrays(self) -> Arrays:
        named: Arrays = {}
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            named[f"w{i}"], named[f"b{i}"] = w, b
        return named

    @classmethod
    def from_parts(cls, params: Mapping[str, Any], arrays: Arrays, dimension: int) -> Self:
        layers = _number(params, "layers", int)
        if layers < 1:
            raise ValueError("mlp needs at least one layer")
        weights = tuple(_stored(arrays, f"w{i}", np.float64, ndim=2) for i in range(layers))
        biases = tuple(_stored(arrays, f"b{i}", np.float64, ndim=1) for i in range(layers))
        if weights[0].shape[0] != dimension:
            raise ValueError(f"mlp w0 has {weights[0].shape[0]} inputs, dimension is {dimension}")
        return cls(weights, biases)


_BUILDERS: dict[str, Callable[[Mapping[str, Any], Arrays, int], Scorer]] = {
    "lr": LogisticScorer.from_parts,
    "knn": KnnScorer.from_parts,
    "mf": FactorScorer.from_parts,
    "mlp": MlpScorer.from_parts,
}
_ARRAY_NAMES: dict[str, frozenset[str]] = {
    "lr": frozenset(),
    "knn": frozenset({"vectors", "labels"}),
    "mf": frozenset({"projection", "head_vectors", "head_bias"}),
}


def scorer_from_parts(
    family: str, params: Mapping[str, Any], arrays: Arrays, dimension: int, heads: int
) -> Scorer:
    """Rebuild a scorer from a router file's parts; `ValueError` on any mismatch."""
    if family not in _BUILDERS:
        raise ValueError(f"unknown router family {family!r}; known: {', '.join(FAMILIES)}")
    expected = _ARRAY_NAMES.get(family)
    if family == "mlp":
        layers = params.get("layers")
        count = layers if isinstance(layers, int) and not isinstance(layers, bool) else 0
        expected = frozenset(f"{p}{i}" for i in range(count) for p in "wb")
    if expected is not None and set(arrays) != expected:
        raise ValueError(
            f"{family} router arrays are {sorted(arrays)}, expected {sorted(expected)}"
        )
    scorer = _BUILDERS[family](params, arrays, dimension)
    if scorer.heads != heads:
        raise ValueError(f"{family} scorer has {scorer.heads} heads, the file names {heads}")
    return scorer


def _float_array(value: Any, name: str, *, ndim: int) -> Matrix:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numbers: {exc}") from exc
    if array.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-d, got shape {array.shape}")
    return array


def _stored(arrays: Arrays, name: str, dtype: type[np.generic], *, ndim: int) -> NDArray[Any]:
    if name not in arrays:
        raise ValueError(f"array {name!r} missing from the router's .npz")
    array = arrays[name]
    if array.dtype != dtype or array.ndim != ndim:
        raise ValueError(
            f"array {name!r} is {array.dtype} with {array.ndim} dims, expected "
            f"{np.dtype(dtype)} with {ndim}"
        )
    return array


def _number(params: Mapping[str, Any], name: str, kind: type[int] | type[float]) -> Any:
    value = params.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"parameter {name!r} must be a number, got {value!r}")
    if kind is int and not isinstance(value, int):
        raise ValueError(f"parameter {name!r} must be an integer, got {value!r}")
    return kind(value)
