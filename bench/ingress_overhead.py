"""Ingress overhead: what Switchyard's ingress adds on top of calling a pool directly.

    .venv/bin/python bench/ingress_overhead.py [--requests 300] [--warmup 30]
        [--auth keys [--limits]]

Starts its own local Ray (2 CPUs) and Serve on a free port, deploys the real app
(`deployments.builder.build_fake_app`) on zero-latency fake engines with a one-word reply,
and times sequential requests on three paths:

    handle   the driver calls `pool-small`'s Serve handle (`chat`), no HTTP
    proxy    HTTP through Serve's proxy to a trivial FastAPI echo deployment
    ingress  HTTP to `/v1/chat/completions`, pinned to the small pool, strategy `route`

The ingress path pays the proxy hop and a pool handle call as well as Switchyard's own
work (parsing, routing, response shaping), so that own work is estimated as
`ingress - proxy - handle`. The goal is <= 1 ms added at p50. The paths are interleaved
request by request so that drift on a shared, noisy machine hits all three alike.
Prints numbers and a verdict; asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import httpx
import ray
from fastapi import FastAPI, Request
from ray import serve
from ray.serve import Deployment

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deployments.builder import build_fake_app  # noqa: E402
from tenancy.db import connect, migrate  # noqa: E402
from tenancy.keys import KeyStore  # noqa: E402
from tests.conftest import fake_app_args, free_port  # noqa: E402

APP = "switchyard"
GOAL_MS = 1.0
MAX_TOKENS = 8
ZERO_LATENCY = {"reply": "ok", "first_token_latency_s": 0.0, "token_latency_s": 0.0}

echo_api = FastAPI()


@serve.deployment(ray_actor_options={"num_cpus": 0})
@serve.ingress(echo_api)
class Echo:
    """The HTTP proxy baseline: reads the body like the ingress does, answers a constant."""

    @echo_api.post("/")
    async def echo(self, request: Request) -> dict[str, str]:
        await request.body()
        return {"object": "echo"}


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(paths: dict[str, Callable[[], None]], warmup: int, n: int) -> dict[str, list[float]]:
    """Call every path once per round, `n` timed rounds after `warmup` untimed ones."""
    times: dict[str, list[float]] = {name: [] for name in paths}
    for i in range(warmup + n):
        for name, call in paths.items():
            started = time.perf_counter()
            call()
            if i >= warmup:
                times[name].append((time.perf_counter() - started) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--requests", type=int, default=300, help="timed requests per path")
    parser.add_argument("--warmup", type=int, default=30, help="untimed requests per path")
    parser.add_argument(
        "--auth",
        choices=["off", "keys"],
        default="off",
        help="`keys`: every ingress request carries an API key the ingress checks",
    )
    parser.add_argument(
        "--limits",
        action="store_true",
        help="with --auth keys: the key's tenant has a rate limit and a budget (never "
        "reached), so every request goes through the quota gate",
    )
    args = parser.parse_args()

    # NOTE: address="local" always starts a private instance, never joins someone else's.
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        app_args = fake_app_args(small=ZERO_LATENCY, large=ZERO_LATENCY, code=ZERO_LATENCY)
        headers: dict[str, str] = {}
        if args.auth == "keys":
            app_args["auth"] = {"mode": "keys"}
            engine = connect(app_args["database"]["url"])
            migrate(engine)
            key, _ = KeyStore(engine).create("bench")
            headers["authorization"] = f"Bearer {key}"
            if args.limits:
                app_args["tenants"] = {
                    "bench": {
                        "limits": {"requests_per_minute": 1_000_000},
                        "budget": {"usd_per_day": 1e9},
                    }
                }
        serve.run(build_fake_app(app_args), name=APP, route_prefix=f"/{APP}")
        serve.run(cast(Deployment, Echo).bind(), name="echo", route_prefix="/echo")
        from ray.serve.llm.openai_api_models import ChatCompletionRequest

        pool = serve.get_deployment_handle("pool-small", APP).options(stream=True)
        body: dict[str, Any] = {
            "model": "small",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": MAX_TOKENS,
            "switchyard": {"strategy": "route"},
        }
        model = app_args["pools"]["small"]["model"]

        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:

            def via_handle() -> None:
                request = ChatCompletionRequest(
                    model=model,
                    request_id=f"bench-{uuid.uuid4().hex}",
                    messages=body["messages"],
                    max_tokens=MAX_TOKENS,
                )
                for _ in pool.chat.remote(request):
                    break

            def via_proxy() -> None:
                http.post("/echo/", json=body).raise_for_status()

            def via_ingress() -> None:
                resp = http.post(f"/{APP}/v1/chat/completions", json=body, headers=headers)
                resp.raise_for_status()
                assert resp.headers["x-switchyard-pool"] == "small"

            times = measure(
                {"handle": via_handle, "proxy": via_proxy, "ingress": via_ingress},
                args.warmup,
                args.requests,
            )
    finally:
        serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()
    report(times, args.requests)


def report(times: dict[str, list[float]], n: int) -> None:
    def row(label: str, p50: float, p99: float) -> None:
        print(f"{label:34} {p50:8.2f} {p99:8.2f}")

    def at(q: float) -> dict[str, float]:
        return {path: pct(samples, q) for path, samples in times.items()}

    p50, p99 = at(0.5), at(0.99)
    print(f"\n{n} sequential requests per path, zero-latency fake engine\n")
    print(f"{'path':34} {'p50 ms':>8} {'p99 ms':>8}")
    row("pool handle (no HTTP)", p50["handle"], p99["handle"])
    row("HTTP proxy baseline (echo)", p50["proxy"], p99["proxy"])
    row("ingress /v1/chat/completions", p50["ingress"], p99["ingress"])
    row("ingress - handle", p50["ingress"] - p50["handle"], p99["ingress"] - p99["handle"])
    added50, added99 = (q["ingress"] - q["proxy"] - q["handle"] for q in (p50, p99))
    row("added by the ingress", added50, added99)
    print("  (added = ingress - proxy baseline - pool handle, per percentile)")
    verdict = "meets" if added50 <= GOAL_MS else "misses"
    print(f"\nverdict: {added50:.2f} ms added at p50 {verdict} the <= {GOAL_MS:g} ms goal")


if __name__ == "__main__":
    main()
