"""Load test: a realistic mix of OpenAI chat traffic against a running Switchyard.

    make loadtest LOAD_HOST=http://127.0.0.1:8000 LOAD_USERS=4 LOAD_TIME=60s
    .venv/bin/locust -f tests/load/locustfile.py --host http://127.0.0.1:8000   # web UI

Each request is `POST /v1/chat/completions` with `"model": "auto"`, so the router picks
the pool the way it does for real clients: short factual questions stay on `small`,
multi-step reasoning prompts go to `large` (complexity words), code requests go to `code`
(code markers). The strategy is chosen per request in the `switchyard` body extension.

Requests are named "<strategy> chat" and "<strategy> stream" so locust's CSV and HTML
report show every strategy separately. Streaming requests are timed until the stream
ends, and their time to first token is recorded as its own row ("<strategy> stream
TTFT", type TTFT): TTFT is what a streaming user feels, the total is what a pool pays.

Environment variables (read once at start):

    SWITCHYARD_WEIGHT_ROUTE        task weight of `route` requests        (default 6)
    SWITCHYARD_WEIGHT_CASCADE      task weight of `cascade` requests      (default 3)
    SWITCHYARD_WEIGHT_SPECULATIVE  task weight of `speculative` requests  (default 1)
    SWITCHYARD_STREAM_SHARE        share of requests that stream, 0..1    (default 0.5)
    SWITCHYARD_MAX_TOKENS          max_tokens of every request            (default 32)

A weight of 0 turns a strategy off. max_tokens is small by default because the embedded
profile runs three vLLM engines on 2 CPU cores; raise it on a GPU cluster.

What counts as a failure: any non-200 status (a 429 from an overloaded pool is reported
as "429 pool overloaded" and the user then waits for its Retry-After, as a polite client
would), a body without an answer, a stream that carries an `error` event, or a stream
that does not end with `data: [DONE]`. Failures never stop a user.
"""

from __future__ import annotations

import json
import os
import random
import time
from typing import Any, cast

from locust import HttpUser, between, task
from locust.clients import ResponseContextManager


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


WEIGHTS = {
    strategy: int(_env_float(f"SWITCHYARD_WEIGHT_{strategy.upper()}", default))
    for strategy, default in (("route", 6), ("cascade", 3), ("speculative", 1))
}
STREAM_SHARE = _env_float("SWITCHYARD_STREAM_SHARE", 0.5)
MAX_TOKENS = int(_env_float("SWITCHYARD_MAX_TOKENS", 32))
RETRY_AFTER_CAP_S = 5.0

# Prompt families and their share of traffic; the comment says which pool `auto` picks.
FACTUAL = [  # -> small: no rule matches
    "What is the capital of France?",
    "How many legs does a spider have?",
    "Who wrote Pride and Prejudice?",
    "What is the boiling point of water at sea level?",
    "Name three primary colours.",
]
REASONING = [  # -> large: complexity words
    "Explain step by step how to compute 17% of 240.",
    "Compare trains and planes for a 500 km trip.",
    "Explain why the sky is blue.",
    "A bat and a ball cost 1.10 in total; the bat costs 1.00 more. Derive the ball's price.",
]
CODE = [  # -> code: code markers
    "Write a Python function that reverses a string.",
    "Fix this bug: def add(a, b): return a - b",
    "Write a SQL query that counts orders per customer.",
    "Refactor this code to use a list comprehension: out = []\nfor x in xs: out.append(x * 2)",
]
PROMPT_MIX = [(5, FACTUAL), (3, REASONING), (2, CODE)]


def pick_prompt() -> str:
    family = random.choices([p for _, p in PROMPT_MIX], weights=[w for w, _ in PROMPT_MIX])[0]
    return random.choice(family)


def error_code(resp: ResponseContextManager) -> str:
    """The OpenAI error code of a failed response, or the transport error."""
    if resp.status_code == 0:  # locust's marker for "no response at all"
        return type(resp.error).__name__ if resp.error else "no response"
    try:
        return str(resp.json()["error"].get("code") or resp.json()["error"]["type"])
    except (ValueError, KeyError, TypeError):
        return resp.reason or "unknown"


def has_answer(resp: ResponseContextManager) -> bool:
    try:
        return bool(resp.json()["choices"][0]["message"]["content"])
    except (ValueError, KeyError, IndexError, TypeError):
        return False


class SwitchyardUser(HttpUser):
    """One chat client; think time between requests like a person or a light agent loop."""

    wait_time = between(0.5, 2.0)

    def chat(self, strategy: str) -> None:
        stream = random.random() < STREAM_SHARE
        name = f"{strategy} {'stream' if stream else 'chat'}"
        body: dict[str, Any] = {
            "model": "auto",
            "messages": [{"role": "user", "content": pick_prompt()}],
            "max_tokens": MAX_TOKENS,
            "stream": stream,
            "switchyard": {"strategy": strategy},
        }
        started = time.perf_counter()
        with self.client.post(
            "/v1/chat/completions", json=body, name=name, stream=stream, catch_response=True
        ) as resp:
            if resp.status_code == 429:
                retry_after = float(resp.headers.get("retry-after") or 1)
                resp.failure(f"429 pool overloaded (retry-after {retry_after:g} s)")
                time.sleep(min(retry_after, RETRY_AFTER_CAP_S))  # gevent-patched: yields
            elif resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code} {error_code(resp)}")
            elif stream:
                self.read_stream(resp, name, started)
            elif not has_answer(resp):
                resp.failure("200 without an answer in the body")

    def read_stream(self, resp: ResponseContextManager, name: str, started: float) -> None:
        """Drain the SSE stream, fire a TTFT sample, and time the request to its end."""
        ttft_ms: float | None = None
        done = False
        problem: str | None = None
        size = 0
        try:
            for raw in resp.iter_lines():
                size += len(raw) + 1
                line = raw.decode()
                if not line.startswith("data: "):
                    continue
                data = line.removeprefix("data: ")
                if data == "[DONE]":
                    done = True
                    break
                event = json.loads(data)
                if "error" in event:
                    problem = f"stream error event: {event['error'].get('code')}"
                elif ttft_ms is None and any(
                    c["delta"].get("content") for c in event.get("choices", [])
                ):
                    ttft_ms = (time.perf_counter() - started) * 1000
        except Exception as exc:  # noqa: BLE001 - a broken stream is a failed request
            problem = f"stream broken: {type(exc).__name__}"
        # NOTE: with stream=True locust stops the clock at the response headers. Its
        # metadata is reported when the `with` block exits, so the time set here (the
        # whole stream, what a pool serves) is the one in the stats.
        meta = cast(dict[str, Any], resp.request_meta)
        meta["response_time"] = (time.perf_counter() - started) * 1000
        meta["response_length"] = size
        if ttft_ms is not None:
            self.environment.events.request.fire(
                request_type="TTFT",
                name=f"{name} TTFT",
                response_time=ttft_ms,
                response_length=0,
                exception=None,
                context={},
            )
        if problem is None and not done:
            problem = "stream ended without data: [DONE]"
        if problem is not None:
            resp.failure(problem)  # type: ignore[no-untyped-call]

    @task(WEIGHTS["route"])
    def route(self) -> None:
        self.chat("route")

    @task(WEIGHTS["cascade"])
    def cascade(self) -> None:
        self.chat("cascade")

    @task(WEIGHTS["speculative"])
    def speculative(self) -> None:
        self.chat("speculative")
