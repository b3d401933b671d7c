"""The real app builder on Ray Serve with the fake engine, driven by the `openai` client."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import client, delete_app, fake_app_args, run_app, wait_healthy

APP = "fakeapp"


@pytest.fixture(scope="module")
def api(serve_port: int) -> Iterator[openai.OpenAI]:
    args = fake_app_args(large={"token_latency_s": 0.01})
    long_reply = " ".join(f"w{i}" for i in range(200))
    words = {"reply": " ".join(f"w{i}" for i in range(60)), "token_latency_s": 0.005}
    args["fake"].update(
        broken={"fail_requests": True},
        cutoff={"fail_after_tokens": 1},
        slow={"reply": long_reply, "token_latency_s": 0.05},
        stuck={"first_token_latency_s": 60},
        plain=words,
        merged=words,
    )
    for pool in ("broken", "cutoff", "slow", "stuck"):
        args["pools"][pool] = {"model": "big-chat"}
    args["pools"]["plain"] = {"model": "big-chat", "stream_interval_ms": 0}
    args["pools"]["merged"] = {"model": "big-chat", "stream_interval_ms": 100}
    args["request_timeout_s"] = 3
    run_app(args, APP)
    yield client(serve_port, APP)
    delete_app(APP)


@pytest.fixture(scope="module")
def http(api: openai.OpenAI) -> httpx.Client:
    return httpx.Client(base_url=str(api.base_url), timeout=30)


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_chat_auto_routes_and_reports_why(api: openai.OpenAI) -> None:
    raw = api.chat.completions.with_raw_response.create(
        model="auto", messages=ask("What is the capital of France?")
    )
    resp = raw.parse()
    assert resp.choices[0].message.content == "small answer from tiny-chat"
    assert resp.model == "tiny-chat"
    assert resp.usage is not None and resp.usage.completion_tokens == 4
    assert raw.headers["x-switchyard-pool"] == "small"
    assert raw.headers["x-switchyard-route"] == "default"
    assert resp.model_extra is not None
    assert resp.model_extra["switchyard"]["detail"] == "no rule matched"


def test_auto_code_and_complex(api: openai.OpenAI) -> None:
    raw = api.chat.completions.with_raw_response.create(
        model="auto", messages=ask("Fix this: def f(x) return x")
    )
    assert raw.headers["x-switchyard-pool"] == "code"
    assert raw.parse().choices[0].message.content == "def answer(): return 42"
    raw = api.chat.completions.with_raw_response.create(
        model="auto", messages=ask("Compare Rome and Athens in depth.")
    )
    assert (raw.headers["x-switchyard-pool"], raw.headers["x-switchyard-route"]) == (
        "large",
        "complex_task",
    )


def test_pinning_by_pool_and_by_model(api: openai.OpenAI) -> None:
    by_pool = api.chat.completions.with_raw_response.create(model="large", messages=ask("hi"))
    assert by_pool.headers["x-switchyard-route"] == "pinned_pool"
    assert by_pool.parse().choices[0].message.content == "large answer from big-chat"
    by_model = api.chat.completions.with_raw_response.create(model="coder", messages=ask("hi"))
    assert by_model.headers["x-switchyard-pool"] == "code"
    assert by_model.headers["x-switchyard-route"] == "pinned_model"


def test_chat_stream(api: openai.OpenAI) -> None:
    stream = api.chat.completions.create(
        model="large", messages=ask("hi"), stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "large answer from big-chat"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


def test_completions(api: openai.OpenAI) -> None:
    resp = api.completions.create(model="small", prompt="Once upon a time", max_tokens=2)
    assert resp.choices[0].text == "small answer"
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage is not None and resp.usage.prompt_tokens == 4
    streamed = api.completions.create(model="small", prompt="x", stream=True)
    assert (
        "".join(c.choices[0].text for c in streamed if c.choices) == "small answer from tiny-chat"
    )


def test_models_list(api: openai.OpenAI) -> None:
    ids = [m.id for m in api.models.list()]
    assert ids[:4] == ["auto", "small", "large", "code"]
    assert {"tiny-chat", "big-chat", "coder"} <= set(ids)


def test_client_errors_are_openai_shaped(api: openai.OpenAI, http: httpx.Client) -> None:
    with pytest.raises(openai.NotFoundError) as nf:
        api.chat.completions.create(model="gpt-17", messages=ask("hi"))
    assert nf.value.body["code"] == "model_not_found"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as br:
        api.chat.completions.create(model="small", messages=ask("hi"), max_tokens=10_000)
    assert br.value.body["param"] == "max_tokens"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as cl:
        api.chat.completions.create(model="small", messages=ask("word " * 200))
    assert cl.value.body["code"] == "context_length_exceeded"  # type: ignore[index]

    for body, param in [
        ("{not json", None),
        ('{"model": "auto"}', "messages"),
        ('{"model": "auto", "messages": []}', "messages"),
        (
            '{"model": "auto", "messages": [{"role": "user", "content": "x"}], "max_tokens": -5}',
            "max_tokens",
        ),
        ('{"model": 7, "messages": [{"role": "user", "content": "x"}]}', "model"),
    ]:
        resp = http.post(
            "/chat/completions", content=body, headers={"content-type": "application/json"}
        )
        assert resp.status_code == 400, body
        error = resp.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert error["param"] == param


def test_engine_failure_is_sanitized_500_and_app_survives(api: openai.OpenAI) -> None:
    for stream in (False, True):
        with pytest.raises(openai.InternalServerError) as err:
            api.chat.completions.create(model="broken", messages=ask("hi"), stream=stream)
        body = err.value.body
        assert body == {  # no traceback, no Ray text, no engine text: a fixed message
            "message": "pool 'broken' failed to serve the request",
            "type": "server_error",
            "param": None,
            "code": "engine_error",
        }
    assert api.chat.completions.create(model="small", messages=ask("hi")).choices


def test_failure_mid_stream_raises_in_client(api: openai.OpenAI) -> None:
    stream = api.chat.completions.create(model="cutoff", messages=ask("hi"), stream=True)
    seen = []
    # vLLM's error event, relayed as the pool wrote it (its message: no traceback)
    with pytest.raises(openai.APIError, match="^Internal server error$"):
        for chunk in stream:
            seen.append(chunk.choices[0].delta.content)
    assert "".join(s or "" for s in seen) == "This"  # the fake's default reply, 1 token


def pool_health(port: int, pool: str) -> dict[str, Any]:
    body = httpx.get(f"http://127.0.0.1:{port}/{APP}/health").json()
    stats: dict[str, Any] = body["pools"][pool]
    return stats


def wait_for(port: int, pool: str, condition: Any) -> dict[str, Any] | None:
    """Poll the pool's stats in /health (about a second old) until `condition` holds
    (bounded: 30 s, a loaded machine's stats calls may miss a round or two)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        stats = pool_health(port, pool)
        if condition(stats):
            return stats
        time.sleep(0.1)
    return None


def wait_for_abort(port: int, pool: str, count: int) -> dict[str, Any]:
    """Poll the pool's stats until the abort shows (bounded: 30 s)."""
    for _ in range(150):
        stats = pool_health(port, pool)
        if stats["aborted"] >= count and stats["running"] == 0:
            return stats
        time.sleep(0.2)
    return stats


def test_health(serve_port: int, api: openai.OpenAI) -> None:
    body = wait_healthy(f"http://127.0.0.1:{serve_port}/{APP}")
    assert body["ok"] is True
    assert set(body["pools"]) == {
        "small", "large", "code", "broken", "cutoff", "slow", "stuck", "plain", "merged",
    }  # fmt: skip
    small = body["pools"]["small"]
    assert 0 <= small.pop("stats_age_s") < 5  # from the poller, never a call on this path
    assert small.pop("busy_s") >= 0 and small.pop("request_s") >= 0  # engine time so far
    assert small == {
        "ok": True,
        "state": "ok",
        "running": 0,
        "waiting": 0,
        "aborted": 0,
        "replicas": 1,
        "circuit": "closed",
    }


def test_pools_account_engine_time(serve_port: int, api: openai.OpenAI) -> None:
    """Two overlapping 60-token answers at 5 ms a token: each spends >= 0.3 s in the
    engine; the pool is busy at least that long and at most their sum."""
    before = wait_for(serve_port, "merged", lambda stats: stats["running"] == 0)
    assert before is not None
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: api.chat.completions.create(
            model="merged", messages=ask("hi")), range(2)))  # fmt: skip
    assert [a.usage.completion_tokens for a in answers if a.usage] == [60, 60]
    after = wait_for(serve_port, "merged", lambda s: s["request_s"] >= before["request_s"] + 0.6)
    assert after is not None, "both requests' engine time shows in /health"
    busy = after["busy_s"] - before["busy_s"]
    assert 0.3 <= busy <= after["request_s"] - before["request_s"]


def test_client_disconnect_aborts_the_engine_request(serve_port: int, http: httpx.Client) -> None:
    body = {"model": "slow", "messages": ask("hi"), "stream": True}
    with http.stream("POST", "/chat/completions", json=body) as resp:
        assert resp.status_code == 200
        lines = resp.iter_lines()
        assert next(lines).startswith("data: ")
        assert wait_for(serve_port, "slow", lambda stats: stats["running"] == 1)
    # the stream is closed after ~1 of 200 tokens (10 s of generation left)
    stats = wait_for_abort(serve_port, "slow", 1)
    assert (stats["aborted"], stats["running"]) == (1, 0)


def test_slow_pool_times_out_with_504_and_is_aborted(serve_port: int, api: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as err:
        api.chat.completions.create(model="stuck", messages=ask("hi"))
    assert err.value.status_code == 504
    assert err.value.body == {
        "message": "pool 'stuck' did not finish within 3 s",
        "type": "server_error",
        "param": None,
        "code": "timeout",
    }
    stats = wait_for_abort(serve_port, "stuck", 1)
    assert (stats["aborted"], stats["running"]) == (1, 0)


def _stream(http: httpx.Client, pool: str, endpoint: str) -> tuple[str, dict[str, Any], int, int]:
    """Text, usage, number of content events and number of HTTP chunks (the batches the
    pool's replica sent: the ingress writes each batch at once) of one streamed answer."""
    body: dict[str, Any] = {
        "model": pool,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if endpoint == "chat":
        body["messages"] = ask("count")
    else:
        body |= {"prompt": "count", "max_tokens": 100}
    path = "/chat/completions" if endpoint == "chat" else "/completions"
    text, usage, events, chunks, raw = "", {}, 0, 0, b""
    with http.stream("POST", path, json=body) as r:
        for piece in r.iter_raw():
            chunks += 1
            raw += piece
    for line in raw.decode().splitlines():
        if not line.startswith("data: {"):
            continue
        event = json.loads(line[6:])
        if event.get("usage"):
            usage = event["usage"]
        for choice in event["choices"]:
            piece = choice.get("text") or (choice.get("delta") or {}).get("content") or ""
            text += piece
            events += bool(piece)
    return text, usage, events, chunks


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_coalesced_stream_carries_the_same_answer(http: httpx.Client, endpoint: str) -> None:
    plain = _stream(http, "plain", endpoint)
    merged = _stream(http, "merged", endpoint)
    assert merged[0] == plain[0] == " ".join(f"w{i}" for i in range(60))
    assert merged[1] == plain[1] and plain[1]["completion_tokens"] == 60
    # vLLM's events, one per token, either way: coalescing moves only batch boundaries
    assert merged[2] == plain[2] == 60
    # 60 tokens 5 ms apart, at most one batch per 100 ms
    assert merged[3] < plain[3] / 2, (merged[3], plain[3])


def test_vllm_parameters_and_logprobs_through_the_openai_client(api: openai.OpenAI) -> None:
    resp = api.chat.completions.create(
        model="small", messages=ask("hi"), max_tokens=9, logprobs=True, top_logprobs=2,
        extra_body={"ignore_eos": True, "min_tokens": 1, "top_k": 5, "repetition_penalty": 1.1},
    )  # fmt: skip
    assert resp.usage is not None and resp.usage.completion_tokens == 9  # past the reply's end
    assert resp.choices[0].finish_reason == "length"
    content = resp.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and len(content) == 9
    assert content[0].token == "small" and len(content[0].top_logprobs) == 2
    with pytest.raises(openai.BadRequestError) as err:
        api.chat.completions.create(model="small", messages=ask("hi"), extra_body={"best_of": 3})
    assert err.value.body["code"] == "unsupported_parameter"  # type: ignore[index]
    assert err.value.body["param"] == "best_of"  # type: ignore[index]


def test_requests_refused_before_routing_are_counted_not_recorded(
    serve_port: int, http: httpx.Client
) -> None:
    """A body or header refused before serving is a metric (`/health` counters,
    Prometheus), never a ledger row: refusals cost the sender nothing (issue 20 #8)."""

    def refused() -> int:
        health = httpx.get(f"http://127.0.0.1:{serve_port}/{APP}/health", timeout=30).json()
        return int(health["counters"].get("refused.client_error", 0))

    before, rows = refused(), http.get("/metrics").json()["requests"]  # flushes the ledger
    bodies = [
        {"model": "small"},  # no messages
        {"model": "small", "messages": ask("hi"), "n": 17},  # n is at most 16
        {"model": "small", "messages": ask("hi"), "priority": 1},  # the operator's field
    ]
    for body in bodies:
        assert http.post("/chat/completions", json=body).status_code == 400
    bad_json = http.post(
        "/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert bad_json.status_code == 400
    assert refused() - before == 4
    assert http.get("/metrics").json()["requests"] == rows  # flushed again: no new rows
    # An unknown field is refused by the pool (vLLM's request model), after a pool call:
    # a client error the ledger records, at no cost (tests/unit/test_serving.py).
    errors = http.get("/metrics").json()["outcomes"].get("client_error", 0)
    bogus = {"model": "small", "messages": ask("hi"), "bogus": 1}
    unknown = http.post("/chat/completions", json=bogus)
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (400, "unsupported_parameter")
    assert refused() - before == 4  # not refused before routing
    metrics = http.get("/metrics").json()
    assert (metrics["requests"], metrics["outcomes"]["client_error"]) == (rows + 1, errors + 1)
