"""Tenancy drill: budgets, token limits, feedback stuffing and a database outage, tried as
an attacker would, through the running app (Ray Serve, two ingress replicas, the quota
keeper, fake engines, API keys, a real PostgreSQL server the drill starts and stops).

    .venv/bin/python bench/tenancy_drill.py [--outage-s 60] [--ratings 10000] \
        [--scenarios budget tpm stuffing outage]

Prints, per scenario, what the issue's goals are checked against:

- budget: N concurrent requests (N = 20, 200, 1,000) of one tenant with a $0.05/day
  budget; spend (from the answers' usage at the catalog price) against the budget and
  one request's worst case;
- tpm: 200 concurrent requests against 100 tokens/min;
- stuffing: one tenant sends `--ratings` requests and rates every answer three times
  (panning `small`, the policy's pick, praising any other pool the adaptive router
  explored); another tenant's pool shares before and after, over 200 requests each
  (served) and the adaptive router's greedy pick (dry runs), and the stuffer's own;
- outage: the database stopped for `--outage-s` under steady load from a tenant the
  keeper already counts and from one it has never seen; admitted per minute against
  each limit, the quota mode the replicas reported, and ledger rows after the database
  is back against the requests answered.

Needs PostgreSQL's server binaries (as the tests do) and about 2 GB of memory; takes a few
minutes plus the outage.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import fake_app_args, free_port  # noqa: E402
from tests.support.postgres import PostgresServer  # noqa: E402

APP = "drill"
PRICE = 1000.0  # USD per million completion tokens: $0.001 a token
MAX_TOKENS = 8
SAMPLE = 500  # the victim's requests per sample of its pool shares


def app_args(url: str) -> dict[str, Any]:
    args = fake_app_args(
        small={"first_token_latency_s": 0.02},
        large={"first_token_latency_s": 0.02},
        code={"first_token_latency_s": 0.02},
    )
    args["auth"] = {"mode": "keys"}
    args["database"] = {"url": url, "flush_interval_s": 0.5}
    args["ingress"] = {"num_replicas": 2, "max_ongoing_requests": 2100}
    args["api"] = {"max_active_requests": 2048}
    for model in args["models"]:
        model["cost"] = {"output_per_million": PRICE}
    args["accounting"] = {"side_requests_per_minute": 100_000}
    args["routing"] = {"adaptive": {"untiered": True, "refresh_s": 1.0}}
    args["tenants"] = {
        **{f"budget{n}": {"budget": {"usd_per_day": 0.05}} for n in (20, 200, 1000)},
        "tpm": {"limits": {"tokens_per_minute": 100}},
        "steady": {"limits": {"requests_per_minute": 30}},
        "newcomer": {"limits": {"requests_per_minute": 30}},
    }
    return args


def body(text: str = "hello there", **extra: Any) -> dict[str, Any]:
    return {
        "model": "auto",
        "max_tokens": MAX_TOKENS,
        "messages": [{"role": "user", "content": text}],
        **extra,
    }


async def post(
    http: httpx.AsyncClient, key: str, path: str, payload: dict[str, Any]
) -> httpx.Response:
    return await http.post(path, json=payload, headers={"authorization": f"Bearer {key}"})


async def burst(
    http: httpx.AsyncClient, key: str, n: int, *, with_prompt: bool = False
) -> tuple[Counter[int], int]:
    """n concurrent chat requests: status counts, and the answers' tokens (completion,
    and prompt too with `with_prompt`)."""
    answers = await asyncio.gather(
        *(post(http, key, "/chat/completions", body()) for _ in range(n)),
        return_exceptions=True,
    )
    codes: Counter[int] = Counter()
    tokens = 0
    for r in answers:
        if isinstance(r, BaseException):
            codes[-1] += 1
            continue
        codes[r.status_code] += 1
        if r.status_code == 200:
            usage = r.json()["usage"]
            tokens += usage["completion_tokens"] + (usage["prompt_tokens"] if with_prompt else 0)
    return codes, tokens


async def budget_scenario(http: httpx.AsyncClient, keys: dict[str, str]) -> None:
    worst = MAX_TOKENS * PRICE / 1e6
    print("\n## budget: $0.05/day, concurrent requests")
    header = ("N", "200", "429", "spent $", "x budget", "overshoot $", "worst $")
    print(" ".join(f"{h:>11}" for h in header))
    for n in (20, 200, 1000):
        codes, tokens = await burst(http, keys[f"budget{n}"], n)
        spent = tokens * PRICE / 1e6
        row = (n, codes[200], codes[429], f"{spent:.4f}", f"{spent / 0.05:.2f}",
               f"{max(0.0, spent - 0.05):.4f}", f"{worst:.4f}")  # fmt: skip
        print(" ".join(f"{v:>11}" for v in row))


async def tpm_scenario(http: httpx.AsyncClient, keys: dict[str, str]) -> None:
    print("\n## tokens per minute: 100, 200 concurrent requests")
    codes, tokens = await burst(http, keys["tpm"], 200, with_prompt=True)
    print(f"200: {codes[200]}, 429: {codes[429]}, 400: {codes[400]}; tokens used {tokens} "
          f"({tokens / 100:.2f}x the limit; one worst case ~{MAX_TOKENS + 3} tokens)")  # fmt: skip


async def shares(http: httpx.AsyncClient, key: str, n: int) -> tuple[Counter[str], Counter[str]]:
    served: Counter[str] = Counter()
    greedy: Counter[str] = Counter()
    for _ in range(n):
        r = await post(http, key, "/chat/completions", body("What is the capital of France?"))
        served[r.headers.get("x-switchyard-pool", str(r.status_code))] += 1
        d = await post(http, key, "/route", body("What is the capital of France?"))
        greedy[d.json().get("pool", str(d.status_code)) if d.status_code == 200 else "err"] += 1
    return served, greedy


async def stuffing_scenario(http: httpx.AsyncClient, keys: dict[str, str], ratings: int) -> None:
    print(f"\n## feedback stuffing: {ratings} ratings by one tenant")
    control = await shares(http, keys["victim"], SAMPLE)  # two samples, nothing changed:
    before = await shares(http, keys["victim"], SAMPLE)  # the noise of exploration
    sem = asyncio.Semaphore(64)
    rated = Counter[str]()

    async def one() -> None:
        async with sem:
            r = await post(http, keys["attacker"], "/chat/completions",
                           body("What is the capital of France?"))  # fmt: skip
            if r.status_code != 200:
                rated["refused"] += 1
                return
            # Praise whatever is not the policy's pick: what would move routing.
            score = 0.0 if r.headers["x-switchyard-pool"] == "small" else 1.0
            for _ in range(3):  # and again: only the first verdict counts
                f = await post(http, keys["attacker"], "/feedback",
                               {"id": r.json()["id"], "score": score})  # fmt: skip
                rated[str(f.status_code)] += 1

    await asyncio.gather(*(one() for _ in range(ratings)))
    await asyncio.sleep(3)  # every replica syncs the shared evidence (refresh_s 1)
    after = await shares(http, keys["victim"], SAMPLE)
    attacker = await shares(http, keys["attacker"], 100)
    print(f"feedback answers: {dict(rated)}")
    rows = (("victim, control", control), ("victim before", before), ("victim after", after),
            ("stuffer after", attacker))  # fmt: skip
    for label, (s, g) in rows:
        print(f"{label:<16} served {_pct(s, sum(s.values()))}  greedy {_pct(g, sum(g.values()))}")
    print(f"victim's served shares moved {_moved(before[0], after[0]):.1f} points "
          f"(between two samples with nothing changed: {_moved(control[0], before[0]):.1f}); "
          f"greedy pick moved {_moved(before[1], after[1]):.1f} points")  # fmt: skip


def _moved(a: Counter[str], b: Counter[str]) -> float:
    """The largest change of any pool's share, in points."""
    ta, tb = max(1, sum(a.values())), max(1, sum(b.values()))
    return max(abs(a[p] / ta - b[p] / tb) * 100 for p in set(a) | set(b))


def _pct(c: Counter[str], total: int) -> str:
    return ", ".join(f"{p} {100 * n / max(1, total):.1f}%" for p, n in sorted(c.items()))


async def outage_scenario(
    http: httpx.AsyncClient, keys: dict[str, str], pg: PostgresServer, outage_s: float, url: str
) -> None:
    from sqlalchemy import create_engine, func, select

    from tenancy.schema import RequestRecord

    print(f"\n## database down for {outage_s:.0f} s under load (30 requests/min limits)")
    answered: dict[str, Counter[tuple[int, int]]] = {"steady": Counter(), "newcomer": Counter()}
    modes: Counter[str] = Counter()
    stop = time.monotonic() + outage_s + 20
    await post(http, keys["steady"], "/chat/completions", body())  # the keeper knows steady

    async def load(tenant: str, start_after: float) -> None:
        await asyncio.sleep(start_after)
        while time.monotonic() < stop:
            r = await post(http, keys[tenant], "/chat/completions", body())
            answered[tenant][int(time.time() // 60), r.status_code] += 1
            await asyncio.sleep(0.25)

    async def watch() -> None:
        while time.monotonic() < stop:
            h = await http.get("../health")
            modes[h.json().get("quota", {}).get("mode", "?")] += 1
            await asyncio.sleep(1)

    async def outage() -> None:
        await asyncio.sleep(5)
        await asyncio.to_thread(pg.pause)
        await asyncio.sleep(outage_s)
        await asyncio.to_thread(pg.resume)

    await asyncio.gather(load("steady", 0), load("newcomer", 8), watch(), outage())
    await asyncio.sleep(3)  # the ledger writers' retries land
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = dict(
            conn.execute(
                select(RequestRecord.tenant, func.count())
                .where(RequestRecord.tenant.in_(["steady", "newcomer"]))
                .group_by(RequestRecord.tenant)
            ).all()
        )
    for tenant, seen in answered.items():
        per_minute = Counter[int]()
        for (minute, status), n in seen.items():
            if status == 200:
                per_minute[minute] += n
        ok = sum(n for (_, s), n in seen.items() if s == 200)
        print(f"{tenant:<9} admitted per minute {sorted(per_minute.values())} (limit 30); "
              f"answered {ok}, ledger rows {rows.get(tenant, 0)}")  # fmt: skip
    print(f"quota mode seen by /health: {dict(modes)}")


async def run(args: argparse.Namespace, port: int, pg: PostgresServer, url: str) -> None:
    from tenancy.db import connect, migrate
    from tenancy.keys import KeyStore

    engine = connect(url)
    migrate(engine)
    store = KeyStore(engine)
    tenants = ["budget20", "budget200", "budget1000", "tpm", "victim", "attacker", "steady",
               "newcomer"]  # fmt: skip
    keys = {t: store.create(t)[0] for t in tenants}
    engine.dispose()
    from tests.conftest import run_app

    run_app(app_args(url), APP)
    limits = httpx.Limits(max_connections=1200, max_keepalive_connections=200)
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}/{APP}/v1/", timeout=120, limits=limits
    ) as http:
        if "budget" in args.scenarios:
            await budget_scenario(http, keys)
        if "tpm" in args.scenarios:
            await tpm_scenario(http, keys)
        if "stuffing" in args.scenarios:
            await stuffing_scenario(http, keys, args.ratings)
        if "outage" in args.scenarios:
            await outage_scenario(http, keys, pg, args.outage_s, url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outage-s", type=float, default=60.0)
    parser.add_argument("--ratings", type=int, default=10_000)
    parser.add_argument(
        "--scenarios", nargs="+", default=["budget", "tpm", "stuffing", "outage"],
        choices=["budget", "tpm", "stuffing", "outage"],
    )  # fmt: skip
    args = parser.parse_args()
    os.environ["RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"] = "deployments.proxy:middlewares"
    import ray
    from ray import serve

    port = free_port()
    pg = PostgresServer()
    with pg as url:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        try:
            asyncio.run(run(args, port, pg, url))
        finally:
            serve.shutdown()
            ray.shutdown()


if __name__ == "__main__":
    main()
