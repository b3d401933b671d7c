"""How much latency does the learned router add? MiniLM load time and encode latency.

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
import time

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
    embedder = MiniLMEmbedder()
    started = time.perf_counter()
    embedder.load()
    print(f"load: {time.perf_counter() - started:.2f} s")

    embedder.encode(prompts[:4])  # warm-up: first call pays for lazy init
    single = []
    for prompt in prompts:
        started = time.perf_counter()
        embedder.encode([prompt])
        single.append((time.perf_counter() - started) * 1000)
    words = [len(p.split()) for p in prompts]
    print(
        f"single prompt ({len(prompts)} prompts, {min(words)}-{max(words)} words): "
        f"p50 {percentile(single, 0.5):.1f} ms, p99 {percentile(single, 0.99):.1f} ms, "
        f"mean {statistics.fmean(single):.1f} ms"
    )

    batches = [prompts[i : i + args.batch] for i in range(0, len(prompts), args.batch)]
    started = time.perf_counter()
    for batch in batches:
        embedder.encode(batch)
    elapsed = time.perf_counter() - started
    print(
        f"batches of {args.batch}: {len(prompts) / elapsed:.0f} prompts/s "
        f"({elapsed / len(batches) * 1000:.0f} ms per batch)"
    )


if __name__ == "__main__":
    main()
