"""Embeddings cached on disk by content hash, so re-training on the same prompts is cheap.

Embedding is what makes the offline tools slow (MiniLM int8 on 2 cores: tens of prompts
per second at chat lengths), while fitting a router on the vectors takes seconds. So
`train-router`, `calibrate` and `eval` look every prompt up here first and embed only
the misses.

Key: sha256 of (the embedder's `cache_id`, a NUL byte, the prompt text). `cache_id`
names the model, its version, backend, precision and truncation length
(`MiniLMEmbedder.cache_id`), so vectors of different models never mix. An embedder
without a `cache_id` (the tiny test embedders) is not cached at all.

Storage: one SQLite file, `vectors.sqlite3`, under
`models.prepare.cache_root() / "embeddings" / "vectors"` (never inside the repository;
`--cache-dir` overrides, `--no-cache` bypasses). A table keyed by the 32-byte digest
(indexed), the vector as float32 bytes: point look-ups stay fast at 10^6 rows without loading an
index into memory, concurrent runs are safe (WAL; a row written twice holds the same
vector), and each chunk is committed as it is embedded, so an interrupted run keeps
what it paid for. 10^5 MiniLM vectors take ~160 MB on disk.

NOTE: int8 ONNX vectors shift slightly with the batch they were padded in, so a cached
vector is the one computed first; a fresh run may differ in the 3rd decimal.
"""

from __future__ import annotations

import argparse
import hashlib
import sqlite3
from collections.abc import Iterable, Sequence
from contextlib import closing
from pathlib import Path

import numpy as np

from routing.embedding import Embedder, Vectors, encode_with_progress

__all__ = [
    "CachedEmbedder",
    "EmbeddingCache",
    "add_cache_options",
    "default_cache_dir",
    "embed_texts",
]

FILE_NAME = "vectors.sqlite3"
_LOOKUP = 500  # keys per SELECT ... IN (...): under SQLite's oldest variable limit (999)


def default_cache_dir() -> Path:
    from models.prepare import cache_root

    return cache_root() / "embeddings" / "vectors"


class EmbeddingCache:
    """Vectors by (model id, text) in one SQLite file; see the module docstring."""

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self.path = self.directory / FILE_NAME

    def _connect(self) -> sqlite3.Connection:
        self.directory.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=60)
        # NOTE: page size first, it only applies to a new file. 8 KB pages hold five
        # 1.5 KB MiniLM rows; a WITHOUT ROWID table spilled each row to an overflow page
        # (447 MB at 10^5 rows against 161 MB, and 3x slower reads).
        db.execute("PRAGMA page_size=8192")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(
            "CREATE TABLE IF NOT EXISTS vectors "
            "(key BLOB PRIMARY KEY, dim INTEGER NOT NULL, vector BLOB NOT NULL)"
        )
        return db

    @staticmethod
    def key(model_id: str, text: str) -> bytes:
        return hashlib.sha256(f"{model_id}\0{text}".encode()).digest()

    def get(self, keys: Sequence[bytes]) -> dict[bytes, Vectors]:
        """The cached vectors among `keys` (missing keys are simply absent)."""
        found: dict[bytes, Vectors] = {}
        with closing(self._connect()) as db:
            for start in range(0, len(keys), _LOOKUP):
                part = keys[start : start + _LOOKUP]
                marks = ",".join("?" * len(part))
                rows = db.execute(
                    f"SELECT key, dim, vector FROM vectors WHERE key IN ({marks})", part
                )
                for key, dim, blob in rows:
                    if len(blob) == 4 * dim:  # a torn or foreign row is a miss, not an error
                        found[bytes(key)] = np.frombuffer(blob, dtype=np.float32)
        return found

    def put(self, items: Iterable[tuple[bytes, Vectors]]) -> None:
        rows = [
            (key, int(v.size), np.ascontiguousarray(v, dtype=np.float32).tobytes())
            for key, v in items
        ]
        with closing(self._connect()) as db, db:
            db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?)", rows)

    def count(self) -> int:
        with closing(self._connect()) as db:
            return int(db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0])


class CachedEmbedder:
    """An `Embedder` that reads `cache` first and embeds (and stores) only the misses."""

    def __init__(self, embedder: Embedder, cache: EmbeddingCache, model_id: str) -> None:
        self.inner = embedder
        self.cache = cache
        self.model_id = model_id
        self.hits = 0
        self.misses = 0

    @property
    def cache_id(self) -> str:
        return self.model_id

    def encode(self, texts: Sequence[str]) -> Vectors:
        keys = [EmbeddingCache.key(self.model_id, t) for t in texts]
        found = self.cache.get(keys)
        missing: dict[bytes, str] = {}  # unique texts to embed, in first-seen order
        for key, text in zip(keys, texts, strict=True):
            if key not in found:
                missing.setdefault(key, text)
        if missing:
            fresh = self.inner.encode(list(missing.values()))
            computed = dict(zip(missing, fresh, strict=True))
            self.cache.put(computed.items())
            found.update(computed)
        self.misses += len(missing)
        self.hits += len(texts) - len(missing)
        if not texts:
            return self.inner.encode([])
        return np.stack([found[key] for key in keys]).astype(np.float32, copy=False)


def add_cache_options(parser: argparse.ArgumentParser) -> None:
    """`--cache-dir DIR` and `--no-cache`, for every tool that embeds prompts."""
    parser.add_argument(
        "--cache-dir",
        type=Path,
        metavar="DIR",
        help="embedding cache folder (default: the Switchyard cache, embeddings/vectors)",
    )
    parser.add_argument(
        "--no-cache", action="store_true", help="embed every prompt, read and write no cache"
    )


def embed_texts(
    texts: Sequence[str],
    embedder: Embedder,
    *,
    cache_dir: Path | None = None,
    use_cache: bool = True,
    label: str = "embedding",
) -> Vectors:
    """Vectors of `texts` with a progress bar, through the cache when the embedder has a
    `cache_id` and `use_cache` is set."""
    model_id = getattr(embedder, "cache_id", None)
    if use_cache and isinstance(model_id, str):
        embedder = CachedEmbedder(embedder, EmbeddingCache(cache_dir), model_id)
    return encode_with_progress(embedder, texts, chunk=1024, label=label)
