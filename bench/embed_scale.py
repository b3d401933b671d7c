"""Embedding a training set at the size routers are trained on: time and peak memory.

    .venv/bin/python bench/embed_scale.py [--prompts 100000] [--threads 2]

Synthetic prompts of 5 to 300 words (the length spread of chat benchmarks), embedded by
MiniLM int8 on ONNX Runtime through `encode_with_progress`, as `switchyard train-router`
does. Prints prompts/s and the process's peak RSS (goal: 100k prompts within 2 GB).
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from routing.embedding import MiniLMEmbedder, encode_with_progress  # noqa: E402

WORDS = (
    "explain the difference between a process and a thread write python code that sorts "
    "a list prove the theorem about prime numbers summarise this article translate into "
    "french what is the capital of the country compute the derivative of the function"
).split()


def prompts(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(5, 300))) for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    texts = prompts(args.prompts)
    embedder = MiniLMEmbedder(threads=args.threads)
    embedder.load()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    vectors = encode_with_progress(embedder, texts)
    elapsed = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{len(texts):,} prompts in {elapsed:.0f} s ({len(texts) / elapsed:,.0f} prompts/s)")
    print(f"peak RSS {peak:,.0f} MB (model loaded: {before:,.0f} MB); vectors {vectors.shape}")
    print(f"verdict: peak RSS {'within' if peak <= 2048 else 'above'} the 2 GB goal")


if __name__ == "__main__":
    main()
