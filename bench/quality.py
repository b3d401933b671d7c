"""What routing saves, and at what accuracy: a graded workload through the running app.

Routing exists to spend less of the expensive pool at the same answer quality, so each
policy is judged on both, through the running app: the same graded, mixed workload
(`routing.training.quality_tasks`, seeded; 7 kinds from easy to hard, answers checked by
a program) replayed at a fixed concurrency under each policy, streaming, temperature 0.
Per policy: accuracy, the large model's engine time from the pools' own accounting
(`busy_s`, `request_s` in `/health`, summed over `--expensive-pools`: the embedded
`code` pool runs the same model as `large`), share of answers per pool, escalations,
p50/p95 latency and time to first token; then each policy against always-large
(accuracy kept, large busy-seconds saved), and the per-question oracle: what a perfect
router would reach on the same answers. Writes JSON, Markdown and a PNG (accuracy vs large
engine-seconds) under reports/bench-quality/.

    make bench-quality                                  # starts the embedded app itself
    python bench/quality.py --url http://127.0.0.1:8000 --tasks 100 --policies small large

Policies: `small` and `large` (pinned), `auto` (the rules), and the strategies on
`auto`: `cascade` (the whole cheap answer judged; asked unstreamed, since a held-back
stream releases the whole answer at its end, so its TTFT is its latency),
`cascade-stream` (streamed, judged on its first `--decide-tokens` tokens: mid-stream
escalation), `speculative`, `verify` (the judge is `--judge-pool`) and `ensemble` (the
members are `--ensemble`, sampled at `--ensemble-temperature`: self-consistency when a
pool repeats), and `adaptive`: the feedback-driven router (routing/bandit.py) on a tier
of its own, after a warm-up of `--warmup` tasks of another seed, every answer rated by
its grade through `POST /v1/feedback` (during the measured pass too). `learned`: the
rules, then the router file `--router` (`switchyard train-router`; the app routes every
`auto` request with it, so run it apart from the other auto policies); `random`: each
task pinned to `large` with probability `--random-large-share` (seeded by the task),
the baseline a router must beat at the same share. The generated app
config (reports/bench-quality/serve_quality.yaml) carries these settings. Numbers only;
nothing here asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from routing.training.quality_tasks import Task, grade, tasks  # noqa: E402

REPORTS = ROOT / "reports" / "bench-quality"
PORT = 8103


ADAPTIVE_TIER = "adaptive"  # the tier the generated config has the bandit route


@dataclass(frozen=True)
class Policy:
    model: str
    strategy: str | None = None  # the x-switchyard-strategy header
    stream: bool = True
    temperature: float | None = None  # None: the bench's (0)
    tier: str | None = None  # the x-switchyard-tier header
    warmup: bool = False  # first a disjoint workload, with feedback on every answer
    large_share: float | None = None  # random: pin this share of tasks (seeded) to large


POLICIES: dict[str, Policy] = {
    "small": Policy("small"),
    "large": Policy("large"),
    "auto": Policy("auto", "route"),
    "cascade": Policy("auto", "cascade", stream=False),
    "cascade-stream": Policy("auto", "cascade"),
    "speculative": Policy("auto", "speculative"),
    "verify": Policy("auto", "verify"),
    "ensemble": Policy("auto", "ensemble"),
    "adaptive": Policy("auto", "route", tier=ADAPTIVE_TIER, warmup=True),
    "learned": Policy("auto", "route"),  # needs --router: the app routes with it
    "random": Policy("auto", large_share=0.5),  # --random-large-share
}


@dataclass
class Answer:
    task_id: str
    kind: str
    difficulty: str
    correct: bool
    pool: str | None
    escalated: bool
    latency_s: float
    ttft_s: float | None
    error: str | None = None
    text: str = ""  # the answer as the client saw it, kept in the JSON for reading
    confidence: float | None = None  # what a cascade judged (for calibrating its threshold)
    response_id: str | None = None  # for feedback


@dataclass
class PolicyResult:
    policy: str
    answers: list[Answer] = field(default_factory=list)
    engine: dict[str, dict[str, float]] = field(default_factory=dict)  # pool -> busy/request s
    wall_s: float = 0.0


async def ask(client: httpx.AsyncClient, task: Task, policy: Policy, max_tokens: int) -> Answer:
    """One chat request (streamed unless the policy says not); the answer's text, who
    served it, and its timings (unstreamed: TTFT is the latency)."""
    model = policy.model
    if policy.large_share is not None:  # the same pin for a task in every run
        model = "large" if random.Random(task.id).random() < policy.large_share else "small"
    body = {
        "model": model,
        "messages": [{"role": "user", "content": task.prompt}],
        "max_tokens": max_tokens,
        "temperature": policy.temperature or 0,
        "stream": policy.stream,
    }
    headers = {"x-switchyard-strategy": policy.strategy} if policy.strategy else {}
    if policy.tier:
        headers["x-switchyard-tier"] = policy.tier
    response_id: str | None = None
    started = time.monotonic()
    ttft: float | None = None
    text: list[str] = []
    route: dict[str, Any] = {}
    if not policy.stream:
        return await _ask_whole(client, task, body, headers, started)
    try:
        async with client.stream(
            "POST", "/v1/chat/completions", json=body, headers=headers
        ) as resp:
            if resp.status_code != 200:
                await resp.aread()
                return _failed(task, started, f"{resp.status_code}: {resp.text[:200]}")
            async for line in resp.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    return _failed(task, started, str(event["error"])[:200])
                route = event.get("switchyard") or route
                response_id = response_id or event.get("id")
                for choice in event.get("choices") or []:
                    piece = (choice.get("delta") or {}).get("content")
                    if piece:
                        ttft = ttft if ttft is not None else time.monotonic() - started
                        text.append(piece)
    except httpx.HTTPError as exc:
        return _failed(task, started, repr(exc)[:200])
    answer = "".join(text)
    return Answer(
        task.id,
        task.kind,
        task.difficulty,
        grade(task, answer),
        route.get("pool"),
        bool(route.get("escalated")),
        time.monotonic() - started,
        ttft,
        text=answer[:2000],
        confidence=route.get("confidence"),
        response_id=response_id,
    )


async def _ask_whole(
    client: httpx.AsyncClient,
    task: Task,
    body: dict[str, Any],
    headers: dict[str, str],
    started: float,
) -> Answer:
    try:
        resp = await client.post("/v1/chat/completions", json=body, headers=headers)
    except httpx.HTTPError as exc:
        return _failed(task, started, repr(exc)[:200])
    if resp.status_code != 200:
        return _failed(task, started, f"{resp.status_code}: {resp.text[:200]}")
    answer = resp.json()
    route = answer.get("switchyard") or {}
    text = answer["choices"][0]["message"].get("content") or ""
    latency = time.monotonic() - started
    return Answer(
        task.id, task.kind, task.difficulty, grade(task, text), route.get("pool"),
        bool(route.get("escalated")), latency, latency, text=text[:2000],
        confidence=route.get("confidence"), response_id=answer.get("id"),
    )  # fmt: skip


def _failed(task: Task, started: float, why: str) -> Answer:
    return Answer(
        task.id, task.kind, task.difficulty, False, None, False,
        time.monotonic() - started, None, why,
    )  # fmt: skip


async def engine_time(client: httpx.AsyncClient, after: float | None = None) -> dict[str, Any]:
    """Per pool `busy_s` / `request_s` from `/health`, once every pool is idle and its
    sample is newer than `after` (a monotonic time here; stats are about a second old)."""
    deadline = time.monotonic() + 60
    while True:
        pools = (await client.get("/health")).json()["pools"]
        idle = all(p.get("running", 0) == 0 for p in pools.values())
        fresh = after is None or all(
            time.monotonic() - p.get("stats_age_s", 1e9) > after for p in pools.values()
        )
        if (idle and fresh) or time.monotonic() > deadline:
            return {
                name: {"busy_s": p.get("busy_s", 0.0), "request_s": p.get("request_s", 0.0)}
                for name, p in pools.items()
            }
        await asyncio.sleep(0.5)


async def feedback(client: httpx.AsyncClient, answer: Answer) -> None:
    """The answer's grade as the client's verdict (`POST /v1/feedback`): what the
    adaptive router learns from."""
    if answer.response_id is None:
        return
    body = {"id": answer.response_id, "score": 1.0 if answer.correct else 0.0}
    await client.post("/v1/feedback", json=body)


async def replay(
    client: httpx.AsyncClient,
    policy: Policy,
    workload: list[Task],
    concurrency: int,
    max_tokens: int,
    answers: list[Answer],
) -> None:
    """The workload at `concurrency`; with feedback on each answer for a learning policy."""
    queue: asyncio.Queue[Task] = asyncio.Queue()
    for task in workload:
        queue.put_nowait(task)

    async def worker() -> None:
        while not queue.empty():
            task = queue.get_nowait()
            answer = await ask(client, task, policy, max_tokens)
            answers.append(answer)
            if policy.warmup:
                await feedback(client, answer)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def run_policy(
    url: str,
    name: str,
    policy: Policy,
    workload: list[Task],
    concurrency: int,
    max_tokens: int,
    warmup: list[Task] | None = None,
) -> PolicyResult:
    result = PolicyResult(name)
    limits = httpx.Limits(max_connections=concurrency)
    timeout = httpx.Timeout(600, connect=10)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as client:
        if policy.warmup and warmup:
            learned: list[Answer] = []
            await replay(client, policy, warmup, concurrency, max_tokens, learned)
            right = sum(a.correct for a in learned) / max(1, len(learned))
            print(f"  {name:14} warm-up: {len(learned)} answers, {right:.1%} right", flush=True)
        before = await engine_time(client)
        started = time.monotonic()
        await replay(client, policy, workload, concurrency, max_tokens, result.answers)
        result.wall_s = time.monotonic() - started
        after = await engine_time(client, after=time.monotonic())
    result.engine = {
        pool: {k: round(after[pool][k] - before.get(pool, {}).get(k, 0.0), 2) for k in after[pool]}
        for pool in after
    }
    return result


def summarise(result: PolicyResult, expensive: list[str]) -> dict[str, Any]:
    answers = result.answers
    latencies = sorted(a.latency_s for a in answers)
    ttfts = sorted(a.ttft_s for a in answers if a.ttft_s is not None)
    pools = Counter(a.pool or "error" for a in answers)
    return {
        "policy": result.policy,
        "requests": len(answers),
        "accuracy": sum(a.correct for a in answers) / max(1, len(answers)),
        "errors": sum(a.error is not None for a in answers),
        "escalated": sum(a.escalated for a in answers),
        "served_by": dict(pools),
        "large_busy_s": round(
            sum(result.engine.get(p, {}).get("busy_s", 0.0) for p in expensive), 2
        ),
        "large_request_s": round(
            sum(result.engine.get(p, {}).get("request_s", 0.0) for p in expensive), 2
        ),
        "engine": result.engine,
        "p50_s": _pct(latencies, 0.5),
        "p95_s": _pct(latencies, 0.95),
        "ttft_p50_s": _pct(ttfts, 0.5),
        "ttft_p95_s": _pct(ttfts, 0.95),
        "wall_s": round(result.wall_s, 1),
        "by_kind": _by_kind(answers),
    }


def oracle(
    rows: list[dict[str, Any]], answers: dict[str, list[dict[str, Any]]]
) -> dict[str, Any] | None:
    """The per-question best of always-small and always-large: `large` only where small
    is wrong and large right. Its large engine time is always-large's times that share
    (an estimate: questions differ in length). What a perfect router would reach."""
    by = {r["policy"]: r for r in rows}
    if "small" not in by or "large" not in by:
        return None
    small = {a["task_id"]: a["correct"] for a in answers["small"]}
    large = {a["task_id"]: a["correct"] for a in answers["large"]}
    needed = sum(1 for t, ok in large.items() if ok and not small.get(t, False))
    right = sum(1 for t in large if large[t] or small.get(t, False))
    n = max(1, len(large))
    share = needed / n
    return {
        "policy": "oracle (per-question best, estimated)",
        "requests": n,
        "accuracy": right / n,
        "errors": 0,
        "escalated": 0,
        "served_by": {"small": n - needed, "large": needed},
        "large_busy_s": round(by["large"]["large_busy_s"] * share, 2),
        "large_request_s": round(by["large"]["large_request_s"] * share, 2),
        "engine": {"large": {"busy_s": round(by["large"]["large_busy_s"] * share, 2)}},
        "p50_s": None,
        "p95_s": None,
        "ttft_p50_s": None,
        "ttft_p95_s": None,
        "wall_s": None,
        "by_kind": {},
    }


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(values[min(len(values) - 1, int(q * len(values)))], 3)


def _by_kind(answers: list[Answer]) -> dict[str, float]:
    kinds: dict[str, list[bool]] = {}
    for a in answers:
        kinds.setdefault(a.kind, []).append(a.correct)
    return {k: round(statistics.fmean(v), 3) for k, v in sorted(kinds.items())}


def table(rows: list[dict[str, Any]]) -> str:
    """Per policy, against always-large. Cost is the large model's engine time: `busy_s`
    (seconds its engines had at least one request: what the hardware was held for) and
    `request_s` (the sum of requests' seconds in them, queueing included, so it grows
    with concurrency)."""
    base = next((r for r in rows if r["policy"] == "large"), None)
    lines = [
        "| policy | accuracy | vs always-large | large busy-s | saved vs always-large "
        "| large request-s | other pools busy-s | served by | escalated | p50 s | p95 s "
        "| TTFT p50 s | TTFT p95 s | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        kept = saved = ""
        if base and base["accuracy"]:
            kept = f"{r['accuracy'] / base['accuracy']:.0%}"
        if base and base["large_busy_s"]:
            saved = f"{1 - r['large_busy_s'] / base['large_busy_s']:.0%}"
        served = ", ".join(f"{k} {v}" for k, v in sorted(r["served_by"].items()))
        other = sum(e.get("busy_s", 0.0) for e in r["engine"].values()) - r["large_busy_s"]
        lines.append(
            f"| {r['policy']} | {r['accuracy']:.1%} | {kept} | {r['large_busy_s']:.1f} | "
            f"{saved} | {r['large_request_s']:.1f} | {max(other, 0.0):.1f} | {served} | "
            f"{r['escalated']} | {r['p50_s']} | {r['p95_s']} | {r['ttft_p50_s']} | "
            f"{r['ttft_p95_s']} | {r['errors']} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        ax.scatter(r["large_busy_s"], r["accuracy"])
        ax.annotate(r["policy"].split(" ")[0], (r["large_busy_s"], r["accuracy"]))
    ax.set_xlabel("large model's engine busy-seconds")
    ax.set_ylabel("accuracy")
    ax.set_title("Accuracy vs large-pool engine time")
    fig.tight_layout()
    fig.savefig(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--url", help="a running app (default: start the embedded profile)")
    p.add_argument("--config", type=Path, default=ROOT / "serve_config.yaml")
    p.add_argument("--tasks", type=int, default=210)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES))
    p.add_argument(
        "--expensive-pools",
        nargs="+",
        default=["large", "code"],
        help="pools whose engine time is the cost (the embedded code pool runs large's model)",
    )
    p.add_argument("--decide-tokens", type=int, default=8, help="cascade-stream's first tokens")
    p.add_argument("--judge-pool", default="large", help="verify's judge")
    p.add_argument("--ensemble", nargs="+", default=["small", "small", "small"])
    p.add_argument("--ensemble-pick", default="majority", choices=["majority", "logprob"])
    p.add_argument("--ensemble-temperature", type=float, default=0.7)
    p.add_argument(
        "--warmup", type=int, default=140, help="adaptive: tasks of another seed, with feedback"
    )
    p.add_argument(
        "--router",
        type=Path,
        help="learned: a router file (switchyard train-router); the app routes every "
        "auto request with it, so give it in a run of its own",
    )
    p.add_argument("--random-large-share", type=float, default=0.5, help="random: share to large")
    args = p.parse_args(argv)
    if "learned" in args.policies and args.router is None:
        p.error("the learned policy needs --router FILE")
    if args.router is not None and args.url is not None:
        p.error("--router configures the app this script starts; not with --url")
    policies = dict(POLICIES)
    policies["ensemble"] = Policy("auto", "ensemble", temperature=args.ensemble_temperature)
    policies["random"] = Policy("auto", large_share=args.random_large_share)

    REPORTS.mkdir(parents=True, exist_ok=True)
    workload = tasks(args.tasks, seed=args.seed)
    server = None
    url = args.url
    if url is None:
        from bench.vllm_peer import BIN, Server, _with_port

        path = REPORTS / "serve_quality.yaml"
        config = _with_port(args.config, PORT)
        routing = config["applications"][0]["args"].setdefault("routing", {})
        routing.setdefault("cascade", {})["stream_decide_tokens"] = args.decide_tokens
        routing["verifier"] = {**routing.get("verifier", {}), "judge_pool": args.judge_pool}
        routing["ensemble"] = {"members": args.ensemble, "pick": args.ensemble_pick}
        # The bandit routes one selectable tier only, so it never touches the other
        # policies; its evidence lives in a database of this run's own.
        tiers = routing.setdefault("tiers", {})
        tiers[ADAPTIVE_TIER] = {"selectable": True}
        routing["adaptive"] = {"tiers": [ADAPTIVE_TIER], "refresh_s": 1}
        if args.router is not None:
            routing["learned"] = {"path": str(args.router.resolve()), "reload_s": 0}
        state = REPORTS / "quality-state.sqlite"
        state.unlink(missing_ok=True)
        config["applications"][0]["args"]["database"] = {"url": f"sqlite:///{state}"}
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        url = f"http://127.0.0.1:{PORT}"
        argv_ = [str(BIN / "serve"), "run", "--address", "local", str(path)]
        env = {"RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "deployments.proxy:middlewares"}
        server = Server("quality", argv_, env, f"{url}/health", log_dir=REPORTS)
        print("starting the app ...", flush=True)
        server.start()
    rows: list[dict[str, Any]] = []
    raw_answers: dict[str, list[dict[str, Any]]] = {}
    try:
        for policy in args.policies:
            warm = tasks(args.warmup, seed=args.seed + 1000) if args.warmup else None
            result = asyncio.run(
                run_policy(
                    url, policy, policies[policy], workload, args.concurrency, args.max_tokens,
                    warm,
                )
            )  # fmt: skip
            row = summarise(result, args.expensive_pools)
            rows.append(row)
            raw_answers[policy] = [asdict(a) for a in result.answers]
            print(
                f"  {policy:14} accuracy {row['accuracy']:.1%}  large busy-s "
                f"{row['large_busy_s']:.1f}  served {row['served_by']}  "
                f"p50 {row['p50_s']} s  errors {row['errors']}",
                flush=True,
            )
    finally:
        if server is not None:
            server.stop()
    best = oracle(rows, raw_answers)
    if best is not None:
        rows.append(best)
    text = table(rows)
    print("\n" + text)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    settings = vars(args) | {"config": args.config.name}
    out = REPORTS / f"quality-{stamp}.json"
    out.write_text(
        json.dumps({"settings": settings, "rows": rows, "answers": raw_answers}, indent=1,
                   default=str)
    )  # fmt: skip
    (REPORTS / f"quality-{stamp}.md").write_text(text + "\n")
    plot(rows, REPORTS / f"quality-{stamp}.png")
    print(f"\nwrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
