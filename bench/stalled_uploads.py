"""Stalled uploads: do clients that never finish their body slow everyone else down?

    cd <repository root> && .venv/bin/serve run --address local bench/serve_fake.yaml
    .venv/bin/python bench/stalled_uploads.py [--stalled 300] [--probes 20] [--wait 30]

Connects to a Switchyard that is already running (`--url`; it never starts one).

1. Baseline: `--probes` normal chat requests (model small, max_tokens 8), one after
   another, each followed by a GET /health; every probe on a new connection, so a
   server that is slow to accept shows too.
2. Opens `--stalled` raw TCP connections that each send POST /v1/chat/completions with
   a Content-Length 10 bytes larger than the body they send, and then send nothing more.
3. While they stall, the same probes again, compared with the baseline (p50 and max).
4. Reads what the stalled connections got back, up to `--wait` seconds after their
   bodies were sent: the app should answer 408 in OpenAI's error shape once its body
   timeout (`api.body_timeout_s`) passes. Counted by status, with how long it took;
   resets, connections closed without an answer, and no answer at all are counted too.

The goal checked: N stalled uploads delay a normal request by at most 1 s (the slowest
probe under stall against the baseline p50, chat and /health, none failed). Numbers
only, no assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from overload import raise_open_files  # bench/ is the script's own folder

GOAL_S = 1.0
MAX_TOKENS = 8
MISSING_BYTES = 10
ERROR_KEYS = {"message", "type", "param", "code"}
BODY = json.dumps(
    {
        "model": "small",
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": MAX_TOKENS,
    }
).encode()


@dataclass
class Probes:
    """Latencies of the sequential probes; failures are keyed by what went wrong."""

    chat: list[float]
    health: list[float]
    failures: Counter[str]


@dataclass
class Stalled:
    """One connection whose body never completes."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    sent_at: float


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def timed(
    session: aiohttp.ClientSession, method: str, url: str, timeout: float, **kw: Any
) -> tuple[float, str | None]:
    """(seconds, None) for a 200, else (seconds, what went wrong)."""
    started = time.perf_counter()
    problem = None
    try:
        async with asyncio.timeout(timeout):
            async with session.request(method, url, **kw) as r:
                await r.read()
                if r.status != 200:
                    problem = f"status {r.status}"
    except TimeoutError:
        problem = "timeout"
    except aiohttp.ClientError as exc:
        problem = type(exc).__name__
    return time.perf_counter() - started, problem


async def probe(url: str, count: int, timeout: float) -> Probes:
    """`count` chat requests one after another, each followed by a /health probe."""
    result = Probes([], [], Counter())
    connector = aiohttp.TCPConnector(force_close=True)  # a new connection every time
    body = json.loads(BODY)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(count):
            for kind, samples, method, path, kw in (
                ("chat", result.chat, "POST", "/v1/chat/completions", {"json": body}),
                ("health", result.health, "GET", "/health", {}),
            ):
                seconds, problem = await timed(session, method, url + path, timeout, **kw)
                samples.append(seconds)
                if problem:
                    result.failures[f"{kind}: {problem}"] += 1
    return result


async def open_stalled(host: str, port: int) -> Stalled:
    reader, writer = await asyncio.open_connection(host, port)
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(BODY) + MISSING_BYTES}\r\n\r\n"
    ).encode()
    writer.write(head + BODY)
    await writer.drain()
    return Stalled(reader, writer, time.perf_counter())


async def read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "content-length" in headers:
        return await reader.readexactly(int(headers["content-length"]))
    if "chunked" in headers.get("transfer-encoding", ""):
        body = b""
        while size := int((await reader.readline()).split(b";")[0].strip() or b"0", 16):
            body += await reader.readexactly(size)
            await reader.readline()
        return body
    return await reader.read()


async def outcome(conn: Stalled, deadline: float) -> tuple[str, float | None]:
    """What a stalled connection got, and after how many seconds (None: nothing)."""
    try:
        async with asyncio.timeout(max(0.0, deadline - time.perf_counter())):
            status_line = await conn.reader.readline()
            answered = time.perf_counter() - conn.sent_at
            if not status_line:
                return "closed without an answer", answered
            status = status_line.split()[1].decode()
            headers = {}
            while (line := await conn.reader.readline()) not in (b"\r\n", b"\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            text = (await read_body(conn.reader, headers)).decode(errors="replace")
    except TimeoutError:
        return "no answer within --wait", None
    except (ConnectionError, asyncio.IncompleteReadError) as exc:
        return f"connection {type(exc).__name__}", time.perf_counter() - conn.sent_at
    except (IndexError, ValueError):
        return "unparseable answer", time.perf_counter() - conn.sent_at
    try:
        error = json.loads(text).get("error")
        shaped = isinstance(error, dict) and ERROR_KEYS <= set(error)
    except (ValueError, AttributeError):
        shaped = False
    return f"{status}{'' if shaped else ' (not OpenAI-shaped)'}", answered


def describe(label: str, run: Probes) -> None:
    print(
        f"{label:14} chat p50 {statistics.median(run.chat) * 1000:7.1f} ms"
        f"  max {max(run.chat) * 1000:7.1f} ms | /health p50"
        f" {statistics.median(run.health) * 1000:7.1f} ms  max {max(run.health) * 1000:7.1f} ms"
        f" | failed {dict(run.failures) or 0}"
    )


async def amain(args: argparse.Namespace) -> None:
    url = args.url.rstrip("/")
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    raise_open_files()

    baseline = await probe(url, args.probes, args.timeout)
    describe("baseline", baseline)

    opened = await asyncio.gather(
        *(open_stalled(host, port) for _ in range(args.stalled)), return_exceptions=True
    )
    conns = [c for c in opened if isinstance(c, Stalled)]
    refused = Counter(type(c).__name__ for c in opened if isinstance(c, BaseException))
    stall_began = time.perf_counter()
    print(
        f"\n{len(conns)} stalled uploads open ({MISSING_BYTES} bytes short each)"
        + (f"; could not open: {dict(refused)}" if refused else "")
    )

    stalled = await probe(url, args.probes, args.timeout)
    probes_ended = time.perf_counter()
    describe("under stall", stalled)

    deadline = stall_began + args.wait
    results = await asyncio.gather(*(outcome(c, deadline) for c in conns))
    for conn in conns:
        conn.writer.close()
    waiting = sum(
        seconds is None or c.sent_at + seconds > probes_ended
        for c, (_, seconds) in zip(conns, results, strict=True)
    )
    print(
        f"{'':14} probes took {probes_ended - stall_began:.1f} s; {waiting} of {len(conns)}"
        " stalled connections were still unanswered when they ended"
    )
    by_kind: dict[str, list[float | None]] = {}
    for kind, seconds in results:
        by_kind.setdefault(kind, []).append(seconds)
    print(f"\nwhat the stalled uploads got (waited up to {args.wait:g} s after sending):")
    if not by_kind:
        print("  nothing: no stalled connection was opened")
    for kind, times in sorted(by_kind.items()):
        known = [t for t in times if t is not None]
        when = (
            f"after p50 {statistics.median(known):.2f} s, min {min(known):.2f} s,"
            f" max {max(known):.2f} s"
            if known
            else ""
        )
        print(f"  {kind:34} {len(times):5d}  {when}")

    delays = [
        max(stalled.chat) - statistics.median(baseline.chat),
        max(stalled.health) - statistics.median(baseline.health),
    ]
    met = max(delays) <= GOAL_S and not stalled.failures
    print(
        f"\ngoal: {args.stalled} stalled uploads delay a normal request by at most"
        f" {GOAL_S:g} s: {'MET' if met else 'NOT MET'} (slowest probe under stall, minus the"
        f" baseline p50: chat {delays[0]:+.3f} s, /health {delays[1]:+.3f} s;"
        f" {sum(stalled.failures.values())} failed)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--stalled", type=int, default=300, help="stalled connections")
    parser.add_argument("--probes", type=int, default=20, help="normal requests per phase")
    parser.add_argument(
        "--wait",
        type=float,
        default=30.0,
        help="seconds after the stall began to wait for the stalled connections' answers",
    )
    parser.add_argument(
        "--timeout", type=float, default=30.0, help="client timeout of one probe (seconds)"
    )
    args = parser.parse_args()
    if args.probes < 1:
        sys.exit("--probes must be at least 1")
    asyncio.run(amain(args))


if __name__ == "__main__":
    main()
