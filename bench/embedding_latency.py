"""How much latency does the learned router add? MiniLM load time and encode latency.

Measures each backend of `MiniLMEmbedder` in turn (torch reference, ONNX fp32, ONNX
int8), so one run shows the ratio.

A learned route embeds every `model="auto"` prompt before it is dispatched, so the
embedding's single-prompt latency is added to time-to-first-token; batch throughput
says how far one ingress replica can go if we batch. This is a script, not a test:
numbers depend on the machine and its load.

    .venv/bin/python bench/embedding_latency.py [--prompts 200] [--batch 16]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

# NOTE: the script's own folder comes first on sys.path, and bench/routing.py would
# shadow the `routing` package; put the repository root before it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if TYPE_CHECKING:
    from routing.embedding import MiniLMEmbedder

WORDS = (
    "the a model answer prove explain why how many capital train step integral "
    "function between compare essay market river energy policy simple greeting"
).split()


def make_prompts(count: int, seed: int = 0) -> list[str]:
    """Mixed lengths: mostly short chat turns, some paragraphs, a few long documents."""
    rng = random.Random(seed)
    lengths = [rng.choice([5, 8, 12, 20, 40, 80, 150, 300]) for _ in range(count)]
    return [" ".join(rng.choices(WORDS, k=n)) + "?" for n in lengths]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()

    from routing.embedding import MiniLMEmbedder

    prompts = make_prompts(args.prompts)
    words = [len(p.split()) for p in prompts]
    print(f"{len(prompts)} prompts, {min(words)}-{max(words)} words; batches of {args.batch}")
    backends: list[tuple[str, MiniLMEmbedder]] = [
        ("torch", MiniLMEmbedder(backend="torch")),
        ("onnx fp32", MiniLMEmbedder(precision="fp32")),
        ("onnx int8", MiniLMEmbedder()),
    ]
    for label, embedder in backends:
        bench(label, embedder, prompts, args.batch)


def bench(label: str, embedder: MiniLMEmbedder, prompts: list[str], batch: int) -> None:
    started = time.perf_counter()
    embedder.load()  # ONNX: includes the one-time export if the cache misses
    loaded = time.perf_counter() - started

    embedder.encode(prompts[:4])  # warm-up: first call pays for lazy init
    single = []
    for prompt in prompts:
        started = time.perf_counter()
        embedder.encode([prompt])
        single.append((time.perf_counter() - started) * 1000)

    batches = [prompts[i : i + batch] for i in range(0, len(prompts), batch)]
    started = time.perf_counter()
    for chunk in batches:
        embedder.encode(chunk)
    elapsed = time.perf_counter() - started
    print(
        f"{label:10} load {loaded:5.2f} s | single prompt p50 {percentile(single, 0.5):5.1f} ms"
        f"  p99 {percentile(single, 0.99):5.1f} ms  mean {statistics.fmean(single):5.1f} ms"
        f" | batched {len(prompts) / elapsed:4.0f} prompts/s"
    )


if __name__ == "__main__":
    main()
