"""Throughput: one pool driven to saturation through the ingress vs straight to its handle.

    make serve                                    # in another terminal: the real app
    .venv/bin/python bench/throughput.py [--concurrency 8] [--duration 60] [--max-tokens 64]

Connects to a Switchyard that is already running (it never starts one) and drives the
same chat request, pinned to one pool (`"model": "small"`, strategy `route`), on two
paths, one after the other, each with `--concurrency` workers for `--duration` seconds:

    ingress  HTTP `POST /v1/chat/completions` (httpx.AsyncClient, keep-alive)
    direct   the pool deployment's Serve handle (`pool-<pool>`.chat, Ray Serve LLM's call
             with vLLM's request model) from this driver, which joins the app's Ray cluster
             (`--address`, default "auto")

It prints generated tokens/s, requests and errors of each path and their ratio; the goal
is ingress >= 95% of direct. Tokens are what the engines report (`usage.completion_tokens`
over HTTP and on the handle). Answers may stop before `--max-tokens`; both paths use
temperature 0 and the same prompt so that they generate the same answers. Requests still
running when the time is up are finished and counted; tokens/s divides by the time until
the last one ended. Numbers only, no assertions.

Other apps: `--url`, `--address` and `--app` point it at any Switchyard, e.g. one on the
fake engine (with a small `token_latency_s`) to check this script itself. Ray turns on
token authentication for new local clusters; `--address auto` picks the local token up
by itself, an explicit address does so only with `RAY_AUTH_MODE=token` set (Ray's rule).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import ray
from ray import serve

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


GOAL = 0.95
PROMPT = "Write a long story about a lighthouse keeper and a storm."
WARMUP_REQUESTS = 2


@dataclass
class Run:
    """What one path achieved in one timed run."""

    tokens: int = 0
    requests: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    latencies_s: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.elapsed_s if self.elapsed_s else 0.0


async def drive(call: Callable[[], Awaitable[int]], concurrency: int, duration_s: float) -> Run:
    """`concurrency` workers repeat `call` (which returns tokens) until the time is up."""
    run = Run()
    started = time.perf_counter()
    deadline = started + duration_s

    async def worker() -> None:
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            try:
                tokens = await call()
            except Exception as exc:  # noqa: BLE001 - counted and reported, the run goes on
                run.errors[type(exc).__name__] += 1
                await asyncio.sleep(0.1)  # do not spin on a failing path
                continue
            run.latencies_s.append(time.perf_counter() - t)
            run.tokens += tokens
            run.requests += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    run.elapsed_s = time.perf_counter() - started
    return run


async def measure(args: argparse.Namespace) -> dict[str, Run]:
    body: dict[str, Any] = {
        "model": args.pool,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": args.max_tokens,
        "temperature": 0,
        "top_p": 1,
        "switchyard": {"strategy": "route"},
    }
    from ray.serve.llm.openai_api_models import ChatCompletionRequest

    handle = serve.get_deployment_handle(f"pool-{args.pool}", args.app).options(stream=True)
    limits = httpx.Limits(max_connections=args.concurrency)
    async with httpx.AsyncClient(base_url=args.url, timeout=300, limits=limits) as http:

        async def via_ingress() -> int:
            resp = await http.post("/v1/chat/completions", json=body)
            if resp.status_code != 200:
                raise RuntimeError(f"HTTP {resp.status_code}")
            if resp.headers.get("x-switchyard-pool") != args.pool:
                raise RuntimeError(f"served by {resp.headers.get('x-switchyard-pool')}")
            return int(resp.json()["usage"]["completion_tokens"])

        card = (await http.get(f"/v1/models/{args.pool}")).json()
        model = card["switchyard"]["model"]

        async def direct() -> int:
            request = ChatCompletionRequest(
                model=model, request_id=f"bench-{uuid.uuid4().hex}", **body_fields(body)
            )
            async for response in handle.chat.remote(request):
                return int(response.usage.completion_tokens)
            raise RuntimeError("no answer")

        paths = {"ingress": via_ingress, "direct": direct}
        for call in paths.values():  # first requests pay connection and router set-up
            for _ in range(WARMUP_REQUESTS):
                await call()
        runs = {}
        for name, call in paths.items():
            print(f"{name}: {args.concurrency} workers for {args.duration:g} s ...", flush=True)
            runs[name] = await drive(call, args.concurrency, args.duration)
    return runs


def body_fields(body: dict[str, Any]) -> dict[str, Any]:
    """The request body's fields vLLM reads (not `model`, not Switchyard's extension)."""
    return {k: v for k, v in body.items() if k not in ("model", "switchyard")}


def report(runs: dict[str, Run], args: argparse.Namespace) -> None:
    print(
        f"\npool {args.pool}, {args.concurrency} concurrent workers, {args.duration:g} s per "
        f"path, max_tokens {args.max_tokens}\n"
    )
    print(f"{'path':8} {'tokens/s':>9} {'requests':>9} {'tokens':>8} {'p50 s':>7}  errors")
    for name, run in runs.items():
        p50 = statistics.median(run.latencies_s) if run.latencies_s else float("nan")
        errors = ", ".join(f"{k} x{v}" for k, v in run.errors.items()) or "0"
        print(
            f"{name:8} {run.tokens_per_s:9.1f} {run.requests:9d} {run.tokens:8d} {p50:7.3f}  "
            f"{errors}"
        )
    direct = runs["direct"].tokens_per_s
    if not direct:
        print("\nno tokens on the direct path; no ratio")
        return
    ratio = runs["ingress"].tokens_per_s / direct
    verdict = "meets" if ratio >= GOAL else "misses"
    print(f"\ningress/direct = {ratio:.1%}: {verdict} the >= {GOAL:.0%} goal")


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Tokens/s of one pool through the ingress vs straight to its Serve handle."
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the app's HTTP root")
    parser.add_argument("--address", default="auto", help="Ray address of the app's cluster")
    parser.add_argument("--app", default="switchyard", help="Serve application name")
    parser.add_argument("--pool", default="small", help="pool to saturate")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent workers")
    parser.add_argument("--duration", type=float, default=60, help="seconds per path")
    parser.add_argument("--max-tokens", type=int, default=64, help="max_tokens per request")
    args = parser.parse_args()
    ray.init(address=args.address, log_to_driver=False)
    try:
        runs = asyncio.run(measure(args))
    finally:
        ray.shutdown()  # disconnects this driver; the app keeps running
    report(runs, args)


if __name__ == "__main__":
    main()
