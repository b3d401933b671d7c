"""Overload: far more clients than the pools can hold; are they refused fast and cleanly?

    cd <repository root> && .venv/bin/serve run --address local bench/serve_fake.yaml
    .venv/bin/python bench/overload.py [--clients 2000] [--duration 30] [--stream-share 0.2]

Connects to a Switchyard that is already running (`--url`; it never starts one). Each of
`--clients` concurrent clients loops for `--duration` seconds: POST
/v1/chat/completions (`--model`, max_tokens 8; a `--stream-share` of them streamed),
recording status and latency. A client that gets a 429 waits its Retry-After with ±50%
jitter before it tries again, as a well-behaved client does (`--no-retry-after`: at
once, a client that ignores it); after a connection error it pauses 0.5 s (±50%), so a
dead server is not spun on. A prober GETs /health every 0.1 s meanwhile. Requests still
running at the end are waited for.

Every request has a hard client-side timeout (`--timeout`); one that reaches it is a
"hang". Every non-2xx body must be OpenAI's error shape
{"error": {"message", "type", "param", "code"}}: the ones that are not are "malformed",
and those that are not even JSON are also counted as "plain text". A stream must end
with `data: [DONE]` and carry no error event.

It prints counts per status, latency percentiles per status, /health latency and
failures, and checks two goals: every 429 within 1 s (p99), and /health within 1 s
(p99, none failed). The clients share one event loop, often on the same machine as the
app: "loop lag" says how late its timers fired, an error bar on every client latency
printed (the prober has a thread and an event loop of its own). Numbers only, no
assertions; `--json` prints one JSON summary instead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp

GOAL_S = 1.0
HEALTH_PERIOD_S = 0.1
LAG_PERIOD_S = 0.1
MAX_TOKENS = 8
ERROR_KEYS = {"message", "type", "param", "code"}
CONNECTION_ERROR_PAUSE_S = 0.5  # the openai client's first retry delay
SAMPLES = 3  # bodies of malformed answers kept for the report


@dataclass
class Tally:
    """Everything the clients and the prober saw."""

    latencies: defaultdict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    malformed: int = 0
    plain_text: int = 0
    samples: list[str] = field(default_factory=list)
    no_retry_after: int = 0  # 429s without a usable Retry-After header
    streams: int = 0
    streams_without_done: int = 0
    streams_with_error: int = 0
    health: defaultdict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    loop_lag: list[float] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return sum(len(v) for v in self.latencies.values())


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def is_openai_error(text: str) -> bool | None:
    """True for OpenAI's error shape, False for other JSON, None when not JSON at all."""
    try:
        body = json.loads(text)
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    return isinstance(error, dict) and ERROR_KEYS <= set(error)


def retry_after_s(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def stream_end(lines: list[str]) -> tuple[bool, bool]:
    """How an event stream ended: (saw `data: [DONE]`, saw an error event)."""
    done = errored = False
    for line in lines:
        line = line.strip()
        if not line.startswith("data:"):
            continue
        data = line.removeprefix("data:").strip()
        if data == "[DONE]":
            done = True
            continue
        try:
            event = json.loads(data)
        except ValueError:
            errored = True
            continue
        errored |= isinstance(event, dict) and "error" in event
    return done, errored


def raise_open_files() -> int:
    """Lift the soft limit on open files as far as the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for target in (hard, 1 << 20, 1 << 16):
        if target == resource.RLIM_INFINITY or (hard != resource.RLIM_INFINITY and target > hard):
            continue
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, target), hard))
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Load:
    def __init__(self, session: aiohttp.ClientSession, args: argparse.Namespace) -> None:
        self.session, self.args = session, args
        self.url = args.url.rstrip("/")
        self.tally = Tally()
        self.deadline = 0.0

    def note_error_body(self, text: str) -> None:
        shape = is_openai_error(text)
        if shape:
            return
        self.tally.malformed += 1
        if shape is None:
            self.tally.plain_text += 1
        if len(self.tally.samples) < SAMPLES:
            self.tally.samples.append(text[:200])

    async def read_stream(self, resp: aiohttp.ClientResponse) -> None:
        done, errored = stream_end([raw.decode(errors="replace") async for raw in resp.content])
        self.tally.streams += 1
        self.tally.streams_without_done += not done
        self.tally.streams_with_error += errored

    async def one_request(self, rng: random.Random) -> float | None:
        """One chat request; returns how long to wait before the next (429), else None."""
        stream = rng.random() < self.args.stream_share
        body = {
            "model": self.args.model,
            "messages": [{"role": "user", "content": "Say hello."}],
            "max_tokens": MAX_TOKENS,
            "stream": stream,
        }
        wait = None
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.args.timeout):
                async with self.session.post(f"{self.url}/v1/chat/completions", json=body) as r:
                    key = str(r.status)
                    if 200 <= r.status < 300:
                        if stream:
                            await self.read_stream(r)
                        else:
                            await r.read()
                    else:
                        self.note_error_body(await r.text(errors="replace"))
                    if r.status == 429:
                        wait = retry_after_s(r.headers.get("Retry-After"))
                        if wait is None:
                            self.tally.no_retry_after += 1
                            wait = 1.0
        except TimeoutError:
            key = "hang"
        except aiohttp.ClientError as exc:
            key = f"error {type(exc).__name__}"
            wait = CONNECTION_ERROR_PAUSE_S  # not a refusal: paused even with --no-retry-after
        self.tally.latencies[key].append(time.perf_counter() - started)
        if wait is None or (self.args.no_retry_after and key == "429"):
            return None
        return wait * rng.uniform(0.5, 1.5)

    async def client(self, seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < self.deadline:
            wait = await self.one_request(rng)
            if wait:
                await asyncio.sleep(min(wait, max(0.0, self.deadline - time.monotonic())))

    async def probe(self, session: aiohttp.ClientSession) -> None:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.args.timeout):
                async with session.get(f"{self.url}/health") as r:
                    await r.read()
                    key = str(r.status)
        except TimeoutError:
            key = "hang"
        except aiohttp.ClientError as exc:
            key = f"error {type(exc).__name__}"
        self.tally.health[key].append(time.perf_counter() - started)

    async def prober(self) -> None:
        """A probe every 0.1 s, each on its own task: a stuck probe hides none of the next.

        Runs on its own event loop in its own thread (`run`), so that the clients' backlog
        on the main loop does not add to the /health latencies it records.
        """
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=None)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            probes = []
            while time.monotonic() < self.deadline:
                probes.append(asyncio.create_task(self.probe(session)))
                await asyncio.sleep(HEALTH_PERIOD_S)
            await asyncio.gather(*probes)

    async def lag_monitor(self) -> None:
        while time.monotonic() < self.deadline:
            started = time.perf_counter()
            await asyncio.sleep(LAG_PERIOD_S)
            self.tally.loop_lag.append(time.perf_counter() - started - LAG_PERIOD_S)

    async def progress(self, started: float) -> None:
        while (left := self.deadline - time.monotonic()) > 1:
            await asyncio.sleep(min(5.0, left))
            codes = {k: len(v) for k, v in sorted(self.tally.latencies.items())}
            print(f"  {time.monotonic() - started:4.0f} s  {codes}", file=sys.stderr, flush=True)

    async def run(self) -> float:
        started = time.monotonic()
        self.deadline = started + self.args.duration
        prober = threading.Thread(target=asyncio.run, args=(self.prober(),), daemon=True)
        prober.start()
        side = [asyncio.create_task(self.lag_monitor())]
        if not self.args.json:
            side.append(asyncio.create_task(self.progress(started)))
        await asyncio.gather(*(self.client(i) for i in range(self.args.clients)))
        await asyncio.gather(*side, asyncio.to_thread(prober.join))
        return time.monotonic() - started


def summary(tally: Tally, elapsed: float, args: argparse.Namespace, nofile: int) -> dict[str, Any]:
    def stats(values: list[float]) -> dict[str, float]:
        return {
            "count": len(values),
            "p50_s": pct(values, 0.5),
            "p90_s": pct(values, 0.9),
            "p99_s": pct(values, 0.99),
            "max_s": max(values),
        }

    health = [v for values in tally.health.values() for v in values]
    health_failed = sum(len(v) for k, v in tally.health.items() if k != "200")
    refused = tally.latencies.get("429", [])
    health_p99 = pct(health, 0.99)
    return {
        "url": args.url,
        "clients": args.clients,
        "duration_s": args.duration,
        "elapsed_s": elapsed,
        "model": args.model,
        "stream_share": args.stream_share,
        "honours_retry_after": not args.no_retry_after,
        "open_files_limit": nofile,
        "timeout_s": args.timeout,
        "requests": tally.requests,
        "requests_per_s": tally.requests / elapsed if elapsed else 0.0,
        "statuses": {k: stats(v) for k, v in sorted(tally.latencies.items())},
        "hangs": len(tally.latencies.get("hang", [])),
        "malformed": tally.malformed,
        "plain_text": tally.plain_text,
        "malformed_samples": tally.samples,
        "429_without_retry_after": tally.no_retry_after,
        "streams": tally.streams,
        "streams_without_done": tally.streams_without_done,
        "streams_with_error_event": tally.streams_with_error,
        "health": {
            "count": len(health),
            "statuses": {k: len(v) for k, v in sorted(tally.health.items())},
            "failed": health_failed,
            "p50_s": pct(health, 0.5),
            "p99_s": health_p99,
            "max_s": max(health, default=float("nan")),
        },
        "loop_lag_p99_s": pct(tally.loop_lag, 0.99),
        "loop_lag_max_s": max(tally.loop_lag, default=float("nan")),
        "goals": {
            "429_within_1s_p99": None if not refused else pct(refused, 0.99) <= GOAL_S,
            "health_within_1s": bool(health) and health_p99 <= GOAL_S and health_failed == 0,
        },
    }


def without_nan(value: Any) -> Any:
    """JSON has no NaN: an empty percentile becomes null."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: without_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_nan(v) for v in value]
    return value


def report(s: dict[str, Any]) -> None:
    retry = "honour Retry-After ±50%" if s["honours_retry_after"] else "ignore Retry-After"
    print(
        f"\n{s['clients']} clients for {s['duration_s']:g} s ({s['elapsed_s']:.1f} s with the "
        f"last answers), model {s['model']!r}, {s['stream_share']:.0%} streamed, clients {retry}"
    )
    print(f"{s['requests']} requests, {s['requests_per_s']:.0f}/s\n")
    print(f"{'status':28} {'count':>8} {'p50 s':>8} {'p90 s':>8} {'p99 s':>8} {'max s':>8}")
    for key, st in s["statuses"].items():
        print(
            f"{key:28} {st['count']:8d} {st['p50_s']:8.3f} {st['p90_s']:8.3f}"
            f" {st['p99_s']:8.3f} {st['max_s']:8.3f}"
        )
    h = s["health"]
    print(
        f"\n/health: {h['count']} probes {h['statuses']}, p50 {h['p50_s']:.3f} s"
        f"  p99 {h['p99_s']:.3f} s  max {h['max_s']:.3f} s, failed {h['failed']}"
    )
    print(
        f"hangs (no answer in {s['timeout_s']:g} s): {s['hangs']}; malformed error bodies: "
        f"{s['malformed']} (plain text {s['plain_text']}); 429 without Retry-After: "
        f"{s['429_without_retry_after']}"
    )
    for sample in s["malformed_samples"]:
        print(f"    {sample!r}")
    print(
        f"streams (2xx): {s['streams']}, {s['streams_without_done']} ended without "
        f"[DONE], {s['streams_with_error_event']} with an error event"
    )
    print(
        f"load generator loop lag: p99 {s['loop_lag_p99_s'] * 1000:.0f} ms, "
        f"max {s['loop_lag_max_s'] * 1000:.0f} ms (open files limit {s['open_files_limit']})"
    )

    def verdict(ok: bool | None) -> str:
        return "n/a (no 429 seen)" if ok is None else ("MET" if ok else "NOT MET")

    refused = s["statuses"].get("429")
    p99_429 = f" (p99 {refused['p99_s']:.3f} s)" if refused else ""
    print(
        f"\ngoals: every 429 within 1 s p99: {verdict(s['goals']['429_within_1s_p99'])}{p99_429};"
        f" /health within 1 s: {verdict(s['goals']['health_within_1s'])}"
        f" (p99 {h['p99_s']:.3f} s, {h['failed']} failed)"
    )


async def amain(args: argparse.Namespace) -> None:
    nofile = raise_open_files()
    if nofile < args.clients + 64 and not args.json:
        print(f"warning: {nofile} open files for {args.clients} clients", file=sys.stderr)
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None)  # NOTE: asyncio.timeout per request instead
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        load = Load(session, args)
        elapsed = await load.run()
    s = summary(load.tally, elapsed, args, nofile)
    if args.json:
        print(json.dumps(without_nan(s)))
    else:
        report(s)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--clients", type=int, default=2000, help="concurrent clients")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load")
    parser.add_argument("--model", default="small", help='"model" of every request')
    parser.add_argument(
        "--stream-share", type=float, default=0.0, help="share of requests streamed, 0..1"
    )
    parser.add_argument(
        "--no-retry-after", action="store_true", help="retry a 429 at once, like a bad client"
    )
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds before a request counts as a hang"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON summary only")
    asyncio.run(amain(parser.parse_args()))


if __name__ == "__main__":
    main()
