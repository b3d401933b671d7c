"""Routing benchmarks: decision latency, and what cascade/speculation cost vs `route`.

Prints numbers and ratios; asserts nothing (machines are shared and noisy).

    python bench/routing.py              # decisions + strategies on the fake engine
    python bench/routing.py --no-embed   # skip loading MiniLM
    python bench/routing.py --router pools.json   # the decision with your trained router

1. Decision latency p50/p99: rules only, and rules + the MiniLM semantic classifier on
   each embedding backend (torch, ONNX fp32, ONNX int8); then the whole decision with a
   learned N-pool router of each family (lr, knn, mf, mlp) on the int8 embedding.
2. End-to-end latency and engine-seconds of route / cascade / speculative / verify /
   ensemble, in-process on fake engines with set latencies (small 20 ms/token, large
   60 ms/token, 16 tokens), for a confident and an unsure small model (verify's judge is
   the small fake, whose answer is no verdict: it escalates; the ensemble is three small
   samples).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from routing.config import RoutingConfig  # noqa: E402
from routing.planner import PoolView, plan  # noqa: E402
from routing.profile import RequestProfile  # noqa: E402

PROMPTS = [
    "What is the capital of France?",
    "Write a Python function that reverses a string.",
    "Explain why the sky is blue, step by step.",
    "Tell me a joke about cats.",
    "Compare the economies of Japan and Germany in detail. " * 20,
]
VIEWS = {
    "small": PoolView("small", 0.5, 0.0001, 1.0),
    "large": PoolView("large", 0.85, 0.001, 4.0),
    "code": PoolView("code", 0.8, 0.0008, 4.0),
}
POOLS = {"small": "a", "large": "b", "code": "c"}


def profile(
    text: str, similarities: dict[str, float] | None = None, learned: Any = None
) -> RequestProfile:
    """What `OpenAIServing.profile` hands the planner (the embedding is timed with it)."""
    return RequestProfile(
        "auto", text, len(text) / 4, dict.fromkeys(POOLS, 128), {}, similarities or {}, learned
    )


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def decisions(embed: bool, router_file: Path | None = None, n: int = 2000) -> None:
    config = RoutingConfig()
    times = []
    for i in range(n):
        t = time.perf_counter()
        plan(profile(PROMPTS[i % len(PROMPTS)]), VIEWS, POOLS, config)
        times.append((time.perf_counter() - t) * 1000)
    print(
        f"decision, rules only:       p50 {pct(times, 0.5):.3f} ms  p99 {pct(times, 0.99):.3f} ms"
    )
    from routing.planner import Wishes

    for strategy in ("cascade", "speculative", "verify", "ensemble"):
        wishes = Wishes(strategy=strategy)
        times = []
        for i in range(n):
            t = time.perf_counter()
            plan(profile(PROMPTS[i % len(PROMPTS)]), VIEWS, POOLS, config, wishes)
            times.append((time.perf_counter() - t) * 1000)
        print(
            f"decision, rules + {strategy + ':':12}p50 {pct(times, 0.5):.3f} ms  "
            f"p99 {pct(times, 0.99):.3f} ms"
        )
    if not embed:
        return
    from routing.embedding import MiniLMEmbedder
    from routing.semantic import SemanticClassifier

    examples = {
        "large": ["Prove this theorem.", "Analyse the causes of the war."],
        "code": ["Write a function.", "Fix this bug in my program."],
    }
    backends = {
        "torch": MiniLMEmbedder(backend="torch"),
        "onnx fp32": MiniLMEmbedder(precision="fp32"),
        "onnx int8": MiniLMEmbedder(),
    }
    for label, embedder in backends.items():
        classifier = SemanticClassifier(embedder, examples)
        times = []
        for i in range(200):
            t = time.perf_counter()
            sims = classifier.similarities(PROMPTS[i % len(PROMPTS)])
            plan(profile(PROMPTS[i % len(PROMPTS)], sims), VIEWS, POOLS, config)
            times.append((time.perf_counter() - t) * 1000)
        print(
            f"decision, rules + {label + ':':11}"
            f"p50 {pct(times, 0.5):.3f} ms  p99 {pct(times, 0.99):.3f} ms"
        )
    semantic = SemanticClassifier(backends["onnx int8"], examples)
    if router_file is not None:
        router_decisions(router_file, backends["onnx int8"], semantic)
    else:
        learned_decisions(backends["onnx int8"], semantic)


def timed_decisions(label: str, read: Any, embedder: Any, semantic: Any, n: int = 300) -> None:
    """p50/p99 of what `Planning.profile` + `plan` run for one request: one int8
    embedding shared by the semantic classifier and the router, its reading, the planner."""
    config = RoutingConfig()
    times = []
    for i in range(n):
        text = PROMPTS[i % len(PROMPTS)]
        t = time.perf_counter()
        vector = embedder.encode([text])[0]
        reading = read(vector)
        sims = semantic.similarities_of(vector)
        plan(profile(text, sims, reading), VIEWS, POOLS, config)
        times.append((time.perf_counter() - t) * 1000)
    print(
        f"decision, rules + int8 + {label + ':':27}"
        f"p50 {pct(times, 0.5):.3f} ms  p99 {pct(times, 0.99):.3f} ms"
    )


def router_decisions(path: Path, embedder: Any, semantic: Any) -> None:
    """The whole decision with a trained router file (`--router`)."""
    from routing.learned import LearnedRouter, load_router

    router = load_router(path, embedder)
    if isinstance(router, LearnedRouter):
        binary = router

        def read(vector: Any) -> Any:
            return binary.read(vector, binary.threshold or 0.5, "large")
    else:
        read = router.read
    timed_decisions(f"{router.family} router file", read, embedder, semantic)


def learned_decisions(embedder: Any, semantic: Any) -> None:
    """The whole request-path decision with a learned N-pool router of each family, as
    `OpenAIServing.profile` + `plan` run it: one int8 embedding shared by the semantic
    classifier and the router, its reading, the planner. The routers are fitted on random
    unit vectors with random labels (what a decision costs does not depend on what was
    learned); knn holds its default maximum of 20,000 stored vectors."""
    try:
        from routing.choice import ChoicePolicy
        from routing.training.families import fit_pools
    except ImportError:
        print("learned routers: skipped (needs the [train] extra)")
        return
    rng = np.random.default_rng(0)
    pools = list(POOLS)
    for family in ("lr", "knn", "mf", "mlp"):
        rows = 20_000 if family == "knn" else 4_000
        x = rng.normal(size=(rows, embedder.dimension)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        y = rng.random((rows, len(pools))) < [0.4, 0.7, 0.6]
        policy = ChoicePolicy("quality_target", 0.6)
        router = fit_pools(family, x, y, pools=pools, costs=[1e-4, 1e-3, 8e-4], policy=policy)
        timed_decisions(f"{family} N-pool router", router.read, embedder, semantic)


async def strategies() -> None:
    from deployments.openai.protocol import ChatRequest
    from routing.planner import Wishes
    from tests.unit.test_serving import serving

    words = " ".join(f"w{i}" for i in range(16))
    req = ChatRequest.model_validate(
        {"model": "auto", "messages": [{"role": "user", "content": "hello"}]}
    )
    print("\nstrategy     small      e2e ms  engine-s  discarded  served  (fake engines)")
    for label, small_lp in (("confident", -0.1), ("unsure", -2.0)):
        for strategy in ("route", "cascade", "speculative", "verify", "ensemble"):
            svc, pools = serving(
                small={"reply": words, "token_latency_s": 0.02, "logprobs": [small_lp]},
                large={"reply": words, "token_latency_s": 0.06},
            )
            runs: list[tuple[float, Any]] = []
            for _ in range(5):
                t = time.perf_counter()
                routed = await svc.generate(req, Wishes(strategy=strategy))
                runs.append(((time.perf_counter() - t) * 1000, routed.route))
            e2e = statistics.median(r[0] for r in runs)
            route = runs[-1][1]
            per_token = {"small": 0.02, "large": 0.06}
            used = per_token[route.pool] * 15 + route.discarded_engine_s
            print(
                f"{strategy:12} {label:10} {e2e:7.0f}  {used:8.2f}  {route.discarded_tokens:9d}"
                f"  {route.pool}"
            )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--no-embed", action="store_true")
    parser.add_argument(
        "--router", type=Path, help="time this trained router file instead of fitted ones"
    )
    args = parser.parse_args()
    decisions(not args.no_embed, args.router)
    asyncio.run(strategies())


if __name__ == "__main__":
    main()
