"""The semantic classifier: how similar a request is to each pool's example requests.

Each pool lists example utterances in config; they are embedded once at start-up. A
request's similarity to a pool is its best cosine similarity to any of that pool's
examples (a nearest-example classifier: easy to extend by adding one line of config,
and every decision can be explained by naming the closest example).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from routing.embedding import Embedder, Vectors


class SemanticClassifier:
    def __init__(self, embedder: Embedder, examples: Mapping[str, Sequence[str]]) -> None:
        self.embedder = embedder
        self.pools = [p for p, texts in examples.items() if texts]
        self._examples = {p: list(examples[p]) for p in self.pools}
        self._matrices: dict[str, Vectors] = {
            p: embedder.encode(self._examples[p]) for p in self.pools
        }

    def similarities(self, text: str) -> dict[str, float]:
        """Best cosine similarity of `text` to each pool's examples."""
        return self.similarities_of(self.embedder.encode([text])[0])

    def similarities_of(self, vector: Vectors) -> dict[str, float]:
        """The same, for a request already embedded (one embedding serves every classifier)."""
        return {p: round(float(np.max(m @ vector)), 4) for p, m in self._matrices.items()}

    def nearest(self, text: str, pool: str) -> str:
        """The example of `pool` closest to `text`, to explain a decision."""
        vector = self.embedder.encode([text])[0]
        return self._examples[pool][int(np.argmax(self._matrices[pool] @ vector))]
