"""The whole router trainer at the size routers are trained on: time and peak memory.

    nice .venv/bin/python bench/train_scale.py [--prompts 100000] [--threads 2]

On synthetic prompts (10 to 120 words of English: a kind, easy / hard / code, that
decides which pool tends to be right, and one of 50 subjects, the group), runs what
`switchyard train-router` and `eval --split-by` run, through the same functions:

1. embedding with MiniLM int8 through the on-disk cache, cold (a fresh temporary cache
   folder, deleted at the end; `--cache-dir` keeps one, so a run can be resumed) and
   warm (the same prompts again: nothing is embedded);
2. fitting each family (lr, knn, mf, mlp) as a binary router on all prompts, and an mf
   router over three pools;
3. grouped 5-fold evaluation by subject of every family (APGR, CPT; `crossval`);
4. one routing decision per family on one embedding row (`score_vectors` / `choose`):
   p50 and p99 over 2,000 calls;
5. fitting each family over three pools on partial labels, as `switchyard export`
   gives them from traffic (`--partial-only`: this step alone, on random vectors).

Prints the time of each step and the process's peak RSS after it (goal: within 2 GB).
The synthetic labels are easy to learn, so the APGR here says the pipeline works at
scale, not how well a family does on real prompts.
"""

from __future__ import annotations

import argparse
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from routing.embedding import MiniLMEmbedder  # noqa: E402
from routing.learned import ChoicePolicy  # noqa: E402
from routing.scorers import FAMILIES  # noqa: E402
from routing.training.crossval import cross_validate  # noqa: E402
from routing.training.embedding_cache import EmbeddingCache, embed_texts  # noqa: E402
from routing.training.families import fit_binary, fit_pools  # noqa: E402

SUBJECTS = (
    "astronomy anatomy algebra botany chemistry cooking economics electronics ethics "
    "finance gardening genetics geography geology history immigration journalism law "
    "linguistics literature marketing medicine meteorology music mythology nutrition "
    "oceanography painting philosophy photography physics poetry politics psychology "
    "religion robotics sculpture shipping sociology sports statistics surgery taxation "
    "theatre tourism trade transport veterinary welding zoology"
).split()
KINDS = {
    "easy": [
        "hi there, quick question about {s}",
        "what is the name of a famous person in {s}",
        "thanks for the help with {s} yesterday",
        "can you tell me one fun fact about {s}",
        "what does the word {s} mean",
    ],
    "hard": [
        "prove rigorously, step by step, the main theorem of {s}",
        "derive the equations behind {s} from first principles and justify each step",
        "compare two competing theories of {s} and evaluate the evidence in depth",
        "solve this multi-step quantitative problem in {s}, showing all the algebra",
        "explain the subtle edge cases of {s} and why the naive argument fails",
    ],
    "code": [
        "write a python function that parses {s} records from a csv file",
        "fix the bug in this javascript class that models {s} data",
        "refactor my sql query over the {s} tables, it is too slow",
        "write unit tests for a rust module handling {s} events",
        "why does my c++ program about {s} crash with a segfault",
    ],
}
FILLER = (
    "please be concise and clear and give an example if you can because I am preparing "
    "for an exam next week and my teacher said this topic is important for the final"
).split()
P_CORRECT = {"easy": (0.9, 0.95, 0.75), "hard": (0.2, 0.8, 0.35), "code": (0.25, 0.6, 0.85)}
POOLS = ("small", "large", "code")
COSTS = (1.0, 10.0, 3.0)


def synthetic(n: int, seed: int = 11) -> tuple[list[str], list[str], np.ndarray]:
    """Prompts, their subjects, and correctness (n, 3) for the three pools."""
    rng = random.Random(seed)
    prompts, groups, correct = [], [], np.zeros((n, 3), dtype=bool)
    kinds = list(KINDS)
    for i in range(n):
        kind, subject = rng.choice(kinds), rng.choice(SUBJECTS)
        text = rng.choice(KINDS[kind]).format(s=subject)
        words = text.split() + rng.sample(FILLER, rng.randint(0, len(FILLER)))
        words += rng.choices(FILLER, k=rng.randint(0, 80))
        prompts.append(" ".join(words[: rng.randint(10, 120)]) + f" (#{i})")
        groups.append(subject)
        difficulty = rng.gauss(0.0, 0.1)
        for pool, p in enumerate(P_CORRECT[kind]):
            correct[i, pool] = rng.random() < min(max(p - difficulty, 0.0), 1.0)
    return prompts, groups, correct


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def step(name: str, started: float) -> None:
    print(f"{name:<34} {time.perf_counter() - started:>8.1f} s   peak RSS {peak_mb():>6,.0f} MB")


def decision_latency(call: object, row: np.ndarray, repeats: int = 2000) -> tuple[float, float]:
    assert callable(call)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call(row)
        times.append(time.perf_counter() - started)
    p50, p99 = np.percentile(times, [50, 99]) * 1e6
    return float(p50), float(p99)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument(
        "--cache-dir", type=Path, help="keep the embedding cache here (resumable; not deleted)"
    )
    parser.add_argument(
        "--partial-only",
        action="store_true",
        help="only step 5, on random unit vectors instead of embeddings, with labels a "
        "hidden logistic model draws from them (no embedding: minutes instead of an hour)",
    )
    args = parser.parse_args()
    if args.partial_only:
        # Labels drawn from a hidden logistic model of the vectors: learnable, so each
        # family trains as long as it would on real embeddings (unlearnable labels would
        # stop the early-stopping families at once).
        rng = np.random.default_rng(0)
        vectors = rng.normal(size=(args.prompts, MiniLMEmbedder.dimension)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        hidden = rng.normal(size=(MiniLMEmbedder.dimension, len(POOLS))) * 3.0
        p_correct = 1 / (1 + np.exp(-(vectors @ hidden + [0.0, 1.0, 0.3])))
        partial_fits(vectors, rng.random(p_correct.shape) < p_correct)
        return

    prompts, groups, correct = synthetic(args.prompts)
    weak, strong = correct[:, 0], correct[:, 1]
    print(
        f"{len(prompts):,} synthetic prompts, {len(set(groups))} subjects; peak {peak_mb():,.0f} MB"
    )
    cache_dir = args.cache_dir or Path(tempfile.mkdtemp(prefix="switchyard-bench-cache-"))
    if args.cache_dir is not None and EmbeddingCache(cache_dir).path.exists():
        print(f"cache {cache_dir} holds {EmbeddingCache(cache_dir).count():,} vectors already")
    try:
        embedder = MiniLMEmbedder(threads=args.threads)
        started = time.perf_counter()
        vectors = embed_texts(prompts, embedder, cache_dir=cache_dir)
        step(
            f"embed, cache cold ({len(prompts) / (time.perf_counter() - started):,.0f}/s)", started
        )
        del embedder  # as in `train-router`: the ONNX session is gone before fitting
        size = EmbeddingCache(cache_dir).path.stat().st_size / 2**20
        started = time.perf_counter()
        warm = embed_texts(prompts, MiniLMEmbedder(threads=args.threads), cache_dir=cache_dir)
        step(f"embed, cache warm ({size:,.0f} MB on disk)", started)
        assert np.array_equal(vectors, warm)
        del warm
    finally:
        if args.cache_dir is None:
            shutil.rmtree(cache_dir, ignore_errors=True)

    routers = {}
    for family in FAMILIES:
        started = time.perf_counter()
        routers[family] = fit_binary(family, vectors, weak, strong, weak="small", strong="large")
        step(f"fit {family} (binary, all prompts)", started)
    started = time.perf_counter()
    pools = fit_pools(
        "mf", vectors, correct, pools=POOLS, costs=COSTS, policy=ChoicePolicy("tradeoff", 0.02)
    )
    step("fit mf over 3 pools", started)

    started = time.perf_counter()
    report = cross_validate(
        vectors, weak, strong, groups, families=FAMILIES, folds=args.folds, split_by="subject"
    )
    step(f"grouped {args.folds}-fold eval, all families", started)
    print(report.table("small", "large"))
    for family in report.families:
        print(f"  {family.name}: fit + score over the folds {family.fit_seconds:.1f} s")

    row = vectors[:1]
    print("one routing decision (one embedding row), microseconds:")
    for family, router in routers.items():
        p50, p99 = decision_latency(router.score_vectors, row)
        print(f"  {family:<4} score_vectors  p50 {p50:>8.1f}  p99 {p99:>8.1f}")
    p50, p99 = decision_latency(lambda r: pools.choose(r[0], POOLS), row)
    print(f"  mf   choose (3 pools) p50 {p50:>8.1f}  p99 {p99:>8.1f}")
    partial_fits(vectors, correct)


def partial_fits(vectors: np.ndarray, correct: np.ndarray) -> None:
    """Step 5: every family over 3 pools on labels as traffic gives them (each prompt
    labelled for the one pool that served it, 10% also for a second: a cascade), the
    rest unknown."""
    rng = np.random.default_rng(1)
    n = len(correct)
    known = np.zeros_like(correct, dtype=bool)
    known[np.arange(n), rng.integers(0, len(POOLS), n)] = True
    second = rng.random(n) < 0.1
    known[np.flatnonzero(second), rng.integers(0, len(POOLS), int(second.sum()))] = True
    print(f"partial labels: {known.mean():.0%} of the cells known")
    for family in FAMILIES:
        started = time.perf_counter()
        fit_pools(
            family, vectors, correct, known=known, pools=POOLS, costs=COSTS,
            policy=ChoicePolicy("tradeoff", 0.02),
        )  # fmt: skip
        step(f"fit {family} over 3 pools, partial labels", started)
    peak = peak_mb()
    print(f"peak RSS {peak:,.0f} MB: {'within' if peak <= 2048 else 'above'} the 2 GB goal")


if __name__ == "__main__":
    main()
