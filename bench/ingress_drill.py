"""Ingress drill: SIGKILL one ingress replica under load, and count what clients saw.

Run against an app that is already running with two ingress replicas, e.g.
`bench/serve_fake_2ingress.yaml` (slow fake tokens, so streams are in flight):

    RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=deployments.proxy:middlewares \\
        setsid .venv/bin/serve run --address local bench/serve_fake_2ingress.yaml &
    .venv/bin/python bench/ingress_drill.py --url http://127.0.0.1:8124

Half the clients stream, half do not (`model: small`). After `--before` seconds the
drill finds one ingress replica (its Serve actor name, then its pid from Ray's state
API) and SIGKILLs its process, so no Python cleanup runs in it; the clients go on for
`--after` seconds. After an error a client waits its Retry-After (at most 5 s), as the
`openai` client does, unless `--no-retry-after`. The drill prints the outcomes before
and after the kill: 200s, each OpenAI-shaped error (status and code), errors that are
plain text or not the OpenAI shape (status, headers and body shown), connection errors,
and how streams ended ([DONE] with no error, an error event then [DONE], an error event
without [DONE], or cut with neither); how long Serve took to run all ingress replicas
again; and whether the rule "no plain-text error and no stream cut without an error
event" was met.

With several Ray instances on one machine, `--ray-address auto` uses the one whose Serve
proxy listens on `--url`'s port (found from the listening process), with Ray's local
token as `auto` would; the drill refuses to kill anything when the Serve it joined does
not serve that port.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
from overload import stream_end  # bench/ is the script's own folder

ERROR_FIELDS = {"message", "type", "param", "code"}
MAX_RETRY_AFTER_S = 5.0


@dataclass
class Tally:
    """What clients saw in one phase (before or after the kill)."""

    outcomes: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)  # the first of each failure
    first_failure: float | None = None
    last_failure: float | None = None

    def add(self, outcome: str, at: float, *, failure: bool, detail: str | None = None) -> None:
        self.outcomes[outcome] += 1
        if failure and detail is not None:
            self.examples.setdefault(outcome, detail)
        if failure:
            self.first_failure = at if self.first_failure is None else self.first_failure
            self.last_failure = at


def error_outcome(r: httpx.Response, body: bytes) -> tuple[str, str | None]:
    """`json <status> <code>` for an OpenAI-shaped error, else `plain <status>`; and what came."""
    detail = f"{r.status_code} {dict(r.headers)} {body[:300]!r}"
    try:
        error = json.loads(body)["error"]
        if not (isinstance(error, dict) and set(error) >= ERROR_FIELDS):
            raise ValueError("not the OpenAI error shape")
        if not r.headers.get("content-type", "").startswith("application/json"):
            raise ValueError("JSON body without a JSON content type")
    except Exception:  # noqa: BLE001 - anything else is what the drill looks for
        return f"plain {r.status_code}", detail
    return f"json {r.status_code} {error.get('code')}", detail


def stream_outcome(lines: list[str]) -> str:
    """How a 200 event stream ended, from its `data:` lines."""
    done, error = stream_end(lines)
    if done:
        return "stream error+[DONE]" if error else "stream [DONE]"
    return "stream error, no [DONE]" if error else "stream CUT (no error, no [DONE])"


def connection_outcome(exc: httpx.HTTPError) -> str:
    text = f"{exc!r} {exc.__cause__!r}".lower()
    if isinstance(exc, httpx.ConnectError):
        return "conn refused" if "refused" in text else f"conn {type(exc).__name__}"
    if isinstance(exc, httpx.TimeoutException):
        return f"conn timeout ({type(exc).__name__})"
    if "reset" in text:
        return "conn reset"
    return f"conn {type(exc).__name__}"


class Load:
    def __init__(
        self, url: str, body: dict[str, Any], workers: int, timeout: float, retry_after: bool
    ) -> None:
        self.url, self.body, self.timeout, self.retry_after = url, body, timeout, retry_after
        self.before, self.after = Tally(), Tally()
        self.killed_at: float | None = None
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self.run, args=(i % 2 == 0,), daemon=True)
            for i in range(workers)
        ]

    def record(self, outcome: str, detail: str | None = None) -> None:
        # Counted when it ends: "after" holds every request still running at the kill.
        now = time.monotonic()
        failure = not outcome.startswith(("ok ", "stream [DONE]"))
        with self.lock:
            killed = self.killed_at
            tally = self.before if killed is None else self.after
            at = now - killed if killed is not None else 0.0
            tally.add(outcome, at, failure=failure, detail=detail)

    def run(self, stream: bool) -> None:
        body = {**self.body, "stream": stream}
        with httpx.Client(timeout=self.timeout) as http:
            while not self.stop.is_set():
                wait = 0.0
                try:
                    outcome, detail, wait = self.once(http, body, stream)
                except httpx.HTTPError as exc:
                    outcome, detail = connection_outcome(exc), repr(exc)
                    self.stop.wait(0.05)  # a refused connection must not spin
                self.record(outcome, detail)
                if wait and self.retry_after:
                    self.stop.wait(wait)

    def once(
        self, http: httpx.Client, body: dict[str, Any], stream: bool
    ) -> tuple[str, str | None, float]:
        with http.stream("POST", self.url, json=body) as r:
            if r.status_code != 200:
                outcome, detail = error_outcome(r, r.read())
                try:  # what a polite client (the `openai` one) waits before retrying
                    wait = min(float(r.headers.get("retry-after", 0)), MAX_RETRY_AFTER_S)
                except ValueError:
                    wait = 0.0
                return outcome, detail, wait
            if not stream:
                try:
                    data = json.loads(r.read())
                    assert data["choices"][0]["message"]["content"]
                except Exception:  # noqa: BLE001 - a 200 that is no answer is a finding
                    return "plain 200 (not a completion)", f"200 {dict(r.headers)!r}", 0.0
                return "ok 200", None, 0.0
            if not r.headers.get("content-type", "").startswith("text/event-stream"):
                return "plain 200 (not an event stream)", f"200 {dict(r.headers)!r}", 0.0
            lines: list[str] = []
            ending = "closed cleanly"
            try:
                for line in r.iter_lines():
                    lines.append(line)
            except httpx.HTTPError as exc:  # the connection broke: what arrived decides
                ending = connection_outcome(exc)
            outcome = stream_outcome(lines)
            if outcome == "stream [DONE]":
                return outcome, None, 0.0
            tail = [line for line in lines if line][-3:]
            return outcome, f"{ending} after {len(lines)} lines, last: {tail!r}", 0.0


def find_ray_address(url: str) -> str:
    """The GCS address of the Ray whose process listens on the URL's port, else `auto`."""
    import psutil

    port = urlsplit(url).port or 80
    try:
        listeners = [
            c.pid
            for c in psutil.net_connections("tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid
        ]
    except psutil.Error:
        return "auto"
    for pid in listeners:
        with_parents = [psutil.Process(pid), *psutil.Process(pid).parents()]
        for proc in with_parents:
            try:
                for arg in proc.cmdline():
                    if arg.startswith("--gcs-address="):
                        return arg.split("=", 1)[1]
            except psutil.Error:
                continue
    return "auto"


def local_auth_like_auto() -> None:
    """Let Ray use its local token as it does for `auto` (the address found is local)."""
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # a Ray without token authentication
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def serve_port() -> int:
    from ray.serve.context import _get_global_client

    return int(_get_global_client().http_config.port)


def running_replicas(app: str, deployment: str) -> int:
    from ray import serve

    states = serve.status().applications[app].deployments[deployment].replica_states
    return int(states.get("RUNNING", 0))  # type: ignore[call-overload]


def replica_names(app: str, deployment: str) -> list[str]:
    import ray

    prefix = f"SERVE_REPLICA::{app}#{deployment}#"
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)]
    return sorted(n for n in names if n.startswith(prefix))


def replica_pid(name: str) -> int:
    """The pid of a live Serve replica actor on this node (Ray's state API)."""
    import ray
    from ray.util.state import get_actor

    handle = ray.get_actor(name, namespace="serve")
    context = ray.get_runtime_context()
    state = get_actor(handle._actor_id.hex(), address=context.gcs_address)
    if state is None or state.state != "ALIVE" or not state.pid:
        raise RuntimeError(f"{name} is not alive: {state}")
    if state.node_id != context.get_node_id():
        raise RuntimeError(f"{name} runs on another node; run the drill there")
    return int(state.pid)


def pct(part: int, whole: int) -> str:
    return f"{part} ({100 * part / whole:.1f}%)" if whole else "0"


def report(name: str, tally: Tally) -> None:
    total = sum(tally.outcomes.values())
    print(f"{name}: {total} requests")
    for outcome, n in sorted(tally.outcomes.items()):
        print(f"  {outcome:40s} {pct(n, total)}")
    if tally.first_failure is not None and tally.last_failure:
        print(
            f"  failures from {tally.first_failure:+.2f} s to {tally.last_failure:+.2f} s "
            "after the kill"
        )
    for outcome, detail in sorted(tally.examples.items()):
        print(f"  e.g. {outcome}: {detail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--ray-address", default="auto", help="Ray to join (see above)")
    parser.add_argument("--app", default="switchyard")
    parser.add_argument("--deployment", default="ingress")
    parser.add_argument("--workers", type=int, default=20, help="half stream, half do not")
    parser.add_argument("--model", default="small")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--before", type=float, default=10.0, help="seconds of load first")
    parser.add_argument("--after", type=float, default=30.0, help="seconds of load after")
    parser.add_argument("--timeout", type=float, default=60.0, help="client timeout (s)")
    parser.add_argument(
        "--no-retry-after",
        action="store_true",
        help="retry at once after an error instead of waiting its Retry-After",
    )
    args = parser.parse_args()

    import ray

    address = args.ray_address
    if address == "auto":
        address = find_ray_address(args.url)
        local_auth_like_auto()
    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    port = urlsplit(args.url).port or 80
    if serve_port() != port:
        sys.exit(f"the Serve at {address} listens on {serve_port()}, not {port}: nothing killed")
    target = running_replicas(args.app, args.deployment)
    print(f"{args.app}/{args.deployment}: {target} running replicas; Ray at {address}")

    body = {
        "model": args.model,
        "messages": [{"role": "user", "content": "Count to sixteen."}],
        "max_tokens": args.max_tokens,
    }
    url = f"{args.url}/v1/chat/completions"
    load = Load(url, body, args.workers, args.timeout, not args.no_retry_after)
    for t in load.threads:
        t.start()
    time.sleep(args.before)

    victim = replica_names(args.app, args.deployment)[0]
    pid = replica_pid(victim)
    with load.lock:
        os.kill(pid, signal.SIGKILL)
        load.killed_at = killed_at = time.monotonic()
    print(f"SIGKILLed {victim} (pid {pid})")

    restored: float | None = None
    while time.monotonic() - killed_at < args.after:
        if restored is None:
            names = replica_names(args.app, args.deployment)
            running = running_replicas(args.app, args.deployment)
            if victim not in names and running >= target and len(names) >= target:
                restored = time.monotonic() - killed_at
        time.sleep(0.5)
    load.stop.set()
    for t in load.threads:
        t.join(timeout=args.timeout + 5)

    report("before the kill", load.before)
    report("after the kill (requests running at or started after it)", load.after)
    print(
        f"{target} ingress replicas running again after {restored:.1f} s"
        if restored is not None
        else f"not back to {target} running ingress replicas within {args.after:.0f} s"
    )
    seen = load.before.outcomes + load.after.outcomes
    plain = sum(n for o, n in seen.items() if o.startswith("plain"))
    cut = sum(n for o, n in seen.items() if o.startswith("stream CUT"))
    verdict = "MET" if plain == 0 and cut == 0 else "NOT MET"
    print(
        f"no plain-text error and no stream cut without an error event: {verdict} "
        f"(plain-text/non-JSON errors: {plain}, streams cut: {cut})"
    )


if __name__ == "__main__":
    main()
