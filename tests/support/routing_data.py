"""Synthetic routing data for the learned-router tests: grouped prompts and a counting
embedder with a cache identity.

Prompts come in three kinds whose words say what they are (easy chit-chat, hard maths,
code), each mentioning one of several subjects; the subject is the group of `eval
--split-by`, and it says nothing about which pool is right, so a router that learned
the kind generalises to unseen subjects. Correctness is drawn per kind with a fixed seed.
"""

from __future__ import annotations

import csv
import random
import re
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

SUBJECTS = [
    "biology",
    "history",
    "geography",
    "music",
    "finance",
    "chemistry",
    "sports",
    "cooking",
    "astronomy",
    "law",
]
KINDS = {
    "easy": "hello thanks please tell me quickly what the name of this {s} thing is",
    "hard": "prove derive integrate the theorem step by step rigorous lemma about {s} proof",
    "code": "write python function class bug compile refactor code script for {s} module",
}
# P(correct) per kind for the pools (small, large, code).
P_CORRECT = {"easy": (0.92, 0.95, 0.7), "hard": (0.1, 0.85, 0.25), "code": (0.15, 0.55, 0.9)}
POOLS = ("small", "large", "code")


class CountingEmbedder:
    """Bag of words hashed into `dimension` (64) buckets, L2-normalised; counts the texts
    it embeds."""

    dimension = 64

    def __init__(self, cache_id: str | None = "counting-64") -> None:
        if cache_id is not None:
            self.cache_id = cache_id
        self.embedded: list[str] = []

    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        self.embedded.extend(texts)
        vectors = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"[a-z]+", text.lower()):
                vectors[row, zlib.crc32(word.encode()) % self.dimension] += 1.0
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return np.asarray(vectors / np.where(norms == 0, 1.0, norms), dtype=np.float32)


def grouped_rows(per_subject: int = 30, seed: int = 3) -> list[dict[str, str]]:
    """Rows of prompt, small, large, code, kind, subject: every subject has all kinds."""
    rng = random.Random(seed)
    rows = []
    for subject in SUBJECTS:
        for i in range(per_subject):
            kind = list(KINDS)[i % len(KINDS)]
            words = KINDS[kind].format(s=subject).split()
            rng.shuffle(words)
            prompt = " ".join(words[: rng.randint(6, len(words))]) + f" {subject} {i}"
            row = {"prompt": prompt, "kind": kind, "subject": subject}
            for pool, p in zip(POOLS, P_CORRECT[kind], strict=True):
                row[pool] = str(int(rng.random() < p))
            rows.append(row)
    rng.shuffle(rows)
    return rows


def write_rows(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["prompt", *POOLS, "kind", "subject"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def separable(
    n: int, seed: int, dimension: int = 16
) -> tuple[NDArray[np.float32], NDArray[np.bool_], NDArray[np.bool_]]:
    """Unit vectors; "hard" ones (first coordinate > 0) need the strong model."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dimension)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    hard = x[:, 0] > 0
    weak = np.where(hard, rng.random(n) < 0.15, rng.random(n) < 0.9)
    strong = np.where(hard, rng.random(n) < 0.9, rng.random(n) < 0.95)
    return x, weak, strong
