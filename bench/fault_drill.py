"""Fault drill: kill one replica of a pool while load runs, and count what clients saw.

The claim it checks: a pool replica killed under load loses no request that has a
fallback, streams already streaming when it dies end with an OpenAI error event (never
a cut connection), and no request waits more than `--slow-s` (10 s).

Run against an app that is already running (`make serve`, or a cluster you can join
with Ray):

    .venv/bin/python bench/fault_drill.py --pool small --workers 4 --before 20 --after 90
    .venv/bin/python bench/fault_drill.py --pool small --model auto --workers 8

`--model` defaults to the pool (`model: <pool>`, pinned); the pool's fallback chain then
applies. `--model auto` sends prompts the default rules (routing/rules.py) route to the
killed pool ("What is the capital of France?" goes to `small`), so routing, circuit
breaker and fallback all take part; `--prompt` overrides the prompt. `--stream-share`
of the workers (default half) send `stream: true` and read the event stream to its end.
With the default chains every request should succeed while the replica is gone; deploy
with `routing.fallback.chains: {}` to see the other side: requests that hit the dead
replica fail with a clean 503 in the OpenAI error shape.

After `--before` seconds of load the drill kills the first replica of `pool-<pool>`
(`ray.kill`, no restart: Serve must start a new one) and the load goes on for `--after`
seconds. Every request is recorded (start, end, status, the pool that answered, and for
a stream how it ended: `done` = [DONE] and no error event, `error_event` = an error
event then [DONE], `error_no_done` = an error event without [DONE], `cut` = neither).
Printed, for the requests in flight at the kill and for those started after it: counts
by outcome, the pools that answered, the slowest request, how many took longer than
`--slow-s`, and errors not in the OpenAI shape; then how long Serve took to run the
replica again and the claim's verdict. JSON report under reports/bench-faults/.

A stream counts as already streaming when its first event reached the client before
the kill; the other requests in flight at the kill still had their fallback. With
several Ray instances on one machine, `--ray-address auto` joins the one whose Serve
listens on `--url`'s port (bench/ingress_drill.py), and nothing is killed when the Serve
joined does not serve that port.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from ingress_drill import (  # bench/ is the script's own folder
    find_ray_address,
    local_auth_like_auto,
    replica_names,
    serve_port,
)

ROOT = Path(__file__).resolve().parent.parent
REPORTS = ROOT / "reports" / "bench-faults"
ERROR_FIELDS = {"message", "type", "param", "code"}
PINNED_PROMPT = "Name three colours."
AUTO_PROMPTS = {  # what the default rules send to each pool under `model: auto`
    "small": "What is the capital of France?",  # no marker: default_pool
    "large": "Compare the trade-offs of trains and planes for a long trip.",  # complex
    "code": "Write a Python function that reverses a string.",  # code markers
}
MAX_RETRY_AFTER_S = 5.0
OK_OUTCOMES = {"ok", "done"}
STREAM_ENDINGS = {"done", "error_event", "error_no_done", "cut"}


@dataclass
class Request:
    """One request as the client saw it; times are seconds since the load started."""

    worker: int
    stream: bool
    start: float
    end: float | None = None
    status: int | None = None  # HTTP status; None when no response came
    outcome: str = "unknown"  # ok | http_error | bad_200 | done | error_event | ...
    code: str | None = None  # the error's code (response or event), or the client error
    pool: str | None = None  # x-switchyard-pool
    first_event: float | None = None  # streams: when the first `data:` line arrived
    malformed: str | None = None  # an error (or answer) not in the OpenAI shape

    @property
    def latency(self) -> float:
        return (self.end if self.end is not None else self.start) - self.start

    def label(self) -> str:
        """The outcome with what tells failures apart (status, error code)."""
        if self.outcome == "http_error":
            return f"http_error {self.status} {self.code}"
        if self.outcome in ("error_event", "error_no_done", "conn_error"):
            return f"{self.outcome} {self.code}"
        return self.outcome


def openai_error(payload: Any) -> tuple[str | None, str | None]:
    """(code, None) for an OpenAI error object, else (None, why it is not one)."""
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict) and ERROR_FIELDS <= set(error):
        return str(error.get("code")), None
    return None, f"not the OpenAI error shape: {json.dumps(payload)[:200]}"


class Load:
    """Workers sending one request after another; the first `streams` of them stream."""

    def __init__(
        self, url: str, body: dict[str, Any], workers: int, streams: int, timeout: float
    ) -> None:
        self.url, self.body, self.timeout = url, body, timeout
        self.t0 = time.monotonic()
        self.records: list[Request] = []
        self.active: dict[int, Request] = {}  # per worker, its request in flight
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self.run, args=(i, i < streams), daemon=True)
            for i in range(workers)
        ]

    def now(self) -> float:
        return time.monotonic() - self.t0

    def start(self) -> None:
        self.t0 = time.monotonic()
        for t in self.threads:
            t.start()

    def finish(self) -> list[Request]:
        """Stop, let requests in flight end (each bounded by the client timeout)."""
        self.stop.set()
        deadline = time.monotonic() + self.timeout + 5
        for t in self.threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
        with self.lock:
            return list(self.active.values())

    def run(self, worker: int, stream: bool) -> None:
        body = {**self.body, "stream": stream}
        with httpx.Client(timeout=self.timeout) as http:
            while not self.stop.is_set():
                record = Request(worker, stream, self.now())
                with self.lock:
                    self.active[worker] = record
                wait = self.once(http, body, record)
                record.end = self.now()
                with self.lock:
                    self.active.pop(worker, None)
                    self.records.append(record)
                if wait:  # a refused connection or an error must not spin
                    self.stop.wait(wait)

    def once(self, http: httpx.Client, body: dict[str, Any], record: Request) -> float:
        """Send one request and fill in `record`; returns how long to wait before the next."""
        try:
            with http.stream("POST", self.url, json=body) as r:
                record.status = r.status_code
                record.pool = r.headers.get("x-switchyard-pool")
                if r.status_code != 200:
                    self.http_error(record, r.read())
                    return retry_after(r)
                if record.stream:
                    self.read_stream(record, r)
                else:
                    self.read_answer(record, r.read())
        except httpx.HTTPError as exc:  # no response, or the body broke off
            if record.outcome in STREAM_ENDINGS:  # it keeps how it ended; the code says why
                record.code = record.code or type(exc).__name__
            else:
                record.outcome, record.code = "conn_error", type(exc).__name__
            return 0.2
        return 0.0

    @staticmethod
    def http_error(record: Request, body: bytes) -> None:
        record.outcome = "http_error"
        try:
            record.code, record.malformed = openai_error(json.loads(body))
        except ValueError:
            record.malformed = f"{record.status} not JSON: {body[:200]!r}"

    @staticmethod
    def read_answer(record: Request, body: bytes) -> None:
        try:
            if not isinstance(json.loads(body)["choices"][0]["message"], dict):
                raise ValueError("no message")
            record.outcome = "ok"
        except Exception:  # noqa: BLE001 - a 200 that is no answer is a finding
            record.outcome, record.malformed = "bad_200", f"200 {body[:200]!r}"

    def read_stream(self, record: Request, r: httpx.Response) -> None:
        """Read the event stream to its end; a broken connection ends it as it stands."""
        if not r.headers.get("content-type", "").startswith("text/event-stream"):
            record.outcome, record.malformed = "bad_200", f"200 {r.headers.get('content-type')}"
            return
        done = errored = False
        record.outcome = "cut"  # until [DONE] or an error event arrives
        try:
            for line in r.iter_lines():
                if not line.startswith("data:"):
                    continue
                if record.first_event is None:
                    record.first_event = self.now()
                data = line.removeprefix("data:").strip()
                if data == "[DONE]":
                    done = True
                    continue
                code, why = self.event_error(data)
                if code is not None or why is not None:
                    errored = True
                    record.code = record.code or code
                    record.malformed = record.malformed or why
        finally:  # also when the connection broke: what arrived decides
            record.outcome = stream_outcome(done, errored)

    @staticmethod
    def event_error(data: str) -> tuple[str | None, str | None]:
        """(code, malformed) of an error event; (None, None) for an ordinary chunk."""
        try:
            event = json.loads(data)
        except ValueError:
            return None, f"event not JSON: {data[:200]}"
        if isinstance(event, dict) and "error" in event:
            return openai_error(event)
        return None, None


def stream_outcome(done: bool, errored: bool) -> str:
    if errored:
        return "error_event" if done else "error_no_done"
    return "done" if done else "cut"


def retry_after(r: httpx.Response) -> float:
    """What a polite client (the `openai` one) waits after an error, at most 5 s."""
    try:
        return min(max(float(r.headers.get("retry-after", 0.2)), 0.0), MAX_RETRY_AFTER_S)
    except ValueError:
        return 0.2


def running_replicas(app: str, deployment: str) -> int:
    from ray import serve

    states = serve.status().applications[app].deployments[deployment].replica_states
    return int(states.get("RUNNING", 0))  # type: ignore[call-overload]


def find_victim(app: str, deployment: str) -> tuple[str, Any]:
    """The first replica actor of the deployment: its name and handle."""
    import ray

    prefix = f"SERVE_REPLICA::{app}#{deployment}#"
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)]
    victim = next((n for n in names if n.startswith(prefix)), None)
    if victim is None:
        raise SystemExit(f"no replica of {app}/{deployment} found: nothing killed")
    return victim, ray.get_actor(victim, namespace="serve")


def kill(handle: Any) -> None:
    """Kill the replica's actor; no restart, so Serve has to start a new replica."""
    import ray

    ray.kill(handle, no_restart=True)


def wait_restored(
    app: str, deployment: str, victim: str, target: int, after: float
) -> float | None:
    """Seconds until Serve runs `target` replicas again, none of them the victim.

    Polled once a second for `after` seconds (the load goes on meanwhile); None when not
    restored by then. A new replica has a new name, so a poll that misses the moment
    the count was down still sees the replacement.
    """
    killed_at = time.monotonic()
    restored, seen_down = None, False
    while time.monotonic() - killed_at < after:
        now = running_replicas(app, deployment)
        seen_down = seen_down or now < target
        if restored is None and now >= target:
            names = replica_names(app, deployment)
            if seen_down or (victim not in names and len(names) >= target):
                restored = time.monotonic() - killed_at
        time.sleep(1)
    return restored


def phase_summary(records: list[Request], slow_s: float) -> dict[str, Any]:
    """Counts by outcome and by answering pool, the slowest request, how many were slow."""
    slowest = max(records, key=lambda r: r.latency, default=None)
    first_events = [r.first_event - r.start for r in records if r.first_event is not None]
    return {
        "requests": len(records),
        "outcomes": dict(Counter(r.label() for r in records).most_common()),
        "pools": dict(Counter(r.pool or "-" for r in records).most_common()),
        "slowest_s": round(slowest.latency, 2) if slowest else None,
        "slowest": slowest.label() + (" (stream)" if slowest.stream else "") if slowest else None,
        "over_slow_s": sum(r.latency > slow_s for r in records),
        "slowest_first_event_s": round(max(first_events), 2) if first_events else None,
        "malformed": sum(r.malformed is not None for r in records),
    }


def verdict(
    in_flight: list[Request], after: list[Request], kill_t: float, slow_s: float
) -> dict[str, Any]:
    """The claim, part by part, over the requests in flight at the kill and after it."""
    touched = in_flight + after

    def streaming_at_kill(r: Request) -> bool:
        return r.stream and r.first_event is not None and r.first_event < kill_t

    lost = [r for r in touched if not streaming_at_kill(r) and r.outcome not in OK_OUTCOMES]
    cut = [r for r in touched if streaming_at_kill(r) and r.outcome not in ("done", "error_event")]
    slow = [r for r in touched if r.latency > slow_s]
    malformed = [r for r in touched if r.malformed is not None]
    checks = {
        "no request with a fallback lost": len(lost),
        "streams streaming at the kill end with done or an error event": len(cut),
        f"no request over {slow_s:g} s": len(slow),
        "every error in the OpenAI shape": len(malformed),
    }
    return {"checks": checks, "met": not any(checks.values())}


def show(name: str, summary: dict[str, Any], slow_s: float) -> None:
    print(f"{name}: {summary['requests']} requests")
    for outcome, n in summary["outcomes"].items():
        print(f"  {outcome:40s} {n}")
    print(f"  answered by: {summary['pools']}")
    if summary["slowest_s"] is not None:
        print(
            f"  slowest {summary['slowest_s']:.2f} s ({summary['slowest']}); "
            f"over {slow_s:g} s: {summary['over_slow_s']}; "
            f"slowest first event {summary['slowest_first_event_s']} s; "
            f"not OpenAI-shaped: {summary['malformed']}"
        )


def request_body(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Pinned: the pool's name and any prompt; auto: a prompt the rules send to the pool."""
    prompt = args.prompt
    if prompt is None and args.model == "auto":
        if args.pool not in AUTO_PROMPTS:
            parser.error(f"--model auto with pool {args.pool!r}: give --prompt that routes there")
        prompt = AUTO_PROMPTS[args.pool]
    return {
        "model": args.model,
        "messages": [{"role": "user", "content": prompt or PINNED_PROMPT}],
        "max_tokens": args.max_tokens,
    }


def parse_args() -> tuple[argparse.Namespace, argparse.ArgumentParser]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--ray-address", default="auto", help="Ray to join (see above)")
    parser.add_argument("--app", default="switchyard")
    parser.add_argument("--pool", default="small")
    parser.add_argument("--model", default=None, help="default: the pool (pinned); or auto")
    parser.add_argument("--prompt", default=None, help="default: one that reaches the pool")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--stream-share", type=float, default=0.5, help="share that streams")
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--before", type=float, default=20.0, help="seconds of load first")
    parser.add_argument("--after", type=float, default=90.0, help="longest wait for recovery")
    parser.add_argument("--slow-s", type=float, default=10.0, help="a request over this is slow")
    parser.add_argument("--timeout", type=float, default=120.0, help="client timeout (s)")
    args = parser.parse_args()
    args.model = args.model or args.pool
    if not 0.0 <= args.stream_share <= 1.0 or args.workers < 1:
        parser.error("--stream-share must lie in [0, 1] and --workers be >= 1")
    return args, parser


def join_ray(url: str, address: str) -> None:
    """Join the Ray whose Serve answers `url`; refuse when it serves another port."""
    import ray

    if address == "auto":
        address = find_ray_address(url)
        local_auth_like_auto()
    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    port = urlsplit(url).port or 80
    if serve_port() != port:
        sys.exit(f"the Serve at {address} listens on {serve_port()}, not {port}: nothing killed")


def main() -> None:
    args, parser = parse_args()
    body = request_body(args, parser)
    join_ray(args.url, args.ray_address)
    deployment = f"pool-{args.pool}"
    replicas = running_replicas(args.app, deployment)
    streams = round(args.workers * args.stream_share)
    print(
        f"{args.app}/{deployment}: {replicas} running replicas; model {args.model}, "
        f"{args.workers} workers ({streams} streaming)"
    )

    load = Load(f"{args.url}/v1/chat/completions", body, args.workers, streams, args.timeout)
    load.start()
    restored: float | None = None
    victim, kill_t = "", None
    try:
        time.sleep(args.before)
        victim, handle = find_victim(args.app, deployment)
        kill_t = load.now()  # requests that started before this were in flight at the kill
        kill(handle)
        with load.lock:
            before = [r for r in load.records if r.end is not None and r.end < kill_t]
        print(f"killed {victim} at {kill_t:.1f} s after {len(before)} requests")
        restored = wait_restored(args.app, deployment, victim, replicas, args.after)
    except KeyboardInterrupt:
        print("interrupted: stopping the load")
    unfinished = load.finish()
    report(args, load, victim, kill_t, restored, unfinished)


def report(
    args: argparse.Namespace,
    load: Load,
    victim: str,
    kill_t: float | None,
    restored: float | None,
    unfinished: list[Request],
) -> None:
    """Print the phases and the verdict; write the JSON report."""
    with load.lock:
        records = sorted(load.records, key=lambda r: r.start)
    cut_at = kill_t if kill_t is not None else float("inf")
    before = [r for r in records if r.end is not None and r.end < cut_at]
    in_flight = [r for r in records if r.start < cut_at <= (r.end or 0.0)]
    after = [r for r in records if r.start >= cut_at]
    phases = {
        "before the kill": phase_summary(before, args.slow_s),
        "in flight at the kill": phase_summary(in_flight, args.slow_s),
        "started after the kill": phase_summary(after, args.slow_s),
    }
    for name, summary in phases.items():
        show(name, summary, args.slow_s)
    if before and not any(r.pool == args.pool for r in before):
        print(f"  NOTE: no request reached {args.pool} before the kill: check --model/--prompt")
    if unfinished:
        print(f"still running after the client timeout: {len(unfinished)}")
    print(f"replica running again after: {restored:.1f} s" if restored else "not restored yet")
    result = verdict(in_flight, after, cut_at, args.slow_s) if kill_t is not None else None
    if result is not None:
        print(f"claim: {'MET' if result['met'] else 'NOT MET'}")
        for check, failures in result["checks"].items():
            print(f"  {check}: {'yes' if not failures else f'no ({failures})'}")
        for r in [r for r in in_flight + after if r.malformed][:3]:
            print("  ", r.malformed)
    write_report(args, victim, kill_t, restored, phases, result, records, unfinished)


def write_report(
    args: argparse.Namespace,
    victim: str,
    kill_t: float | None,
    restored: float | None,
    phases: dict[str, Any],
    result: dict[str, Any] | None,
    records: list[Request],
    unfinished: list[Request],
) -> None:
    REPORTS.mkdir(parents=True, exist_ok=True)
    out = REPORTS / f"faults-{args.pool}-{args.model}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    data = {
        "settings": vars(args),
        "victim": victim,
        "kill_s": kill_t,
        "restored_after_s": restored,
        "phases": phases,
        "verdict": result,
        "unfinished": [asdict(r) for r in unfinished],
        "requests": [asdict(r) for r in records],
    }
    out.write_text(json.dumps(data, indent=2, default=str))
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
