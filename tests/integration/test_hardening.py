"""Hostile and careless clients against the real app on the fake engine.

One regression test per defect found when the app was probed as an attacker would
(issue "Hardening"): every refusal is a 4xx in the OpenAI error shape with the right
`param`, limits hold, the ingress admits a bounded number of requests and refuses the
rest at once, and `/health` answers while the replica is full.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import delete_app, fake_app_args, run_app, wait_healthy

APP = "hardened"
HIDDEN = "locked"
MAX_BODY = 512 * 1024
BODY_TIMEOUT_S = 1.0
MAX_ACTIVE = 4
BATCH = {"switchyard": {"tier": "batch"}}  # the default tier may only use `small`


@pytest.fixture(scope="module")
def base(serve_port: int) -> Iterator[str]:
    args = fake_app_args()
    args["pools"]["slow"] = {
        "model": "big-chat",
        "max_ongoing_requests": 2,  # 4 requests fill it: a stats call would queue
    }
    args["fake"]["slow"] = {"reply": "slow answer", "first_token_latency_s": 4.0}
    args["api"] = {
        "max_body_bytes": MAX_BODY,
        "max_header_bytes": 8192,
        "body_timeout_s": BODY_TIMEOUT_S,
        "max_active_requests": MAX_ACTIVE,
    }
    args["routing"] = {
        "tiers": {"free": {"pools": ["small"]}, "pro": {}, "batch": {"selectable": True}},
        "default_tier": "free",
    }
    run_app(args, APP)
    wait_healthy(f"http://127.0.0.1:{serve_port}/{APP}")
    yield f"http://127.0.0.1:{serve_port}/{APP}"
    delete_app(APP)


@pytest.fixture(scope="module")
def http(base: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base, timeout=30) as client:
        yield client


def chat(content: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": "auto", "messages": [{"role": "user", "content": content}], **extra}


def assert_openai_error(resp: httpx.Response, status: int, param: str | None = None) -> Any:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert not error["message"].startswith("Value error")
    assert error["param"] == param
    return error


# --- 1. one request must not freeze the ingress ------------------------------------


def test_pathological_prompts_are_routed(http: httpx.Client) -> None:
    """Regression: 80 KB of newlines took 22 s of rule matching on the event loop."""
    for text in ("\n" * 100_000, " " * 200_000, "function " * 20_000, "\n import" * 20_000):
        resp = http.post("/v1/route", json=chat(text))
        assert resp.status_code == 200, resp.text
    health = http.get("/health")
    assert health.status_code == 200, health.text


# --- 4. every error in the OpenAI shape -----------------------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (chat(n=1000), "n"),
        (chat(tools=[{"type": "function", "function": {"name": "f"}}]), "tools"),
        (chat(stop=["a", "b", "c", "d", "e"]), "stop"),
        (chat(top_logprobs=2), "top_logprobs"),
        (chat(best_of=2), "best_of"),
        (chat(priority=1), "priority"),  # the operator's field (README "Errors")
        (chat(max_tokens=10**30), "max_tokens"),
        ({"model": "auto", "messages": []}, "messages"),
        # parts vLLM validates only when rendering: the pool checks them first (a 400,
        # never an engine failure that opens the pool's circuit)
        (
            {"model": "auto", "messages": [{"role": "user", "content": ["hi"]}]},
            "messages.0.content.0",
        ),
        ({"model": "x" * 100_000, "messages": [{"role": "user", "content": "hi"}]}, "model"),
    ],
)
def test_bad_fields_name_their_param(http: httpx.Client, body: dict[str, Any], param: str) -> None:
    error = assert_openai_error(http.post("/v1/chat/completions", json=body), 400, param)
    assert len(error["message"]) < 300  # never echoes what the client sent
    assert http.post("/v1/chat/completions", json=chat()).status_code == 200  # nothing lost


def test_completion_fields_name_their_param(http: httpx.Client) -> None:
    # Batched prompts and `echo` are vLLM's and served now (README "Request parameters").
    batched = http.post("/v1/completions", json={"model": "small", "prompt": ["a", "b"]})
    assert batched.status_code == 200, batched.text
    assert [(c["index"], c["text"]) for c in batched.json()["choices"]] == [
        (0, "small answer from tiny-chat"),
        (1, "small answer from tiny-chat"),
    ]
    echoed = http.post("/v1/completions", json={"model": "small", "prompt": "a", "echo": True})
    assert echoed.status_code == 200, echoed.text
    assert echoed.json()["choices"][0]["text"] == "asmall answer from tiny-chat"
    # what is still refused names its param: in the ingress, and in the pool (vLLM's model)
    body = {"model": "small", "prompt": "a", "n": 17}
    assert_openai_error(http.post("/v1/completions", json=body), 400, "n")
    body = {"model": "small", "prompt": "a", "echoo": True}
    error = assert_openai_error(http.post("/v1/completions", json=body), 400, "echoo")
    assert error["code"] == "unsupported_parameter"


def test_route_refuses_what_chat_refuses(http: httpx.Client) -> None:
    """Regression: /v1/route answered 200 to max_tokens=10**30."""
    assert_openai_error(http.post("/v1/route", json=chat(max_tokens=10**30)), 400, "max_tokens")
    assert_openai_error(http.post("/v1/route", json=chat(max_tokens=100_000)), 400, "max_tokens")
    assert_openai_error(http.post("/v1/route", json={"model": "auto"}), 400, "prompt")


def test_unparseable_bodies(http: httpx.Client) -> None:
    """Regression: non-UTF-8 and deeply nested JSON got FastAPI's `{"detail": ...}`."""
    headers = {"content-type": "application/json"}
    for raw in (b"\xff\xfe{", b"[" * 100_000 + b"]" * 100_000, b"{", b""):
        resp = http.post("/v1/chat/completions", content=raw, headers=headers)
        if len(raw) > MAX_BODY:
            assert_openai_error(resp, 413)
        else:
            assert assert_openai_error(resp, 400)["code"] == "invalid_json"
    nested = b'{"model": "auto", "messages": ' + b"[" * 20_000 + b"]" * 20_000 + b"}"
    resp = http.post("/v1/chat/completions", content=nested, headers=headers)
    assert resp.status_code == 400 and "error" in resp.json()


def test_routing_errors_are_openai_shaped(base: str, http: httpx.Client) -> None:
    """Regression: 405 and 404 from Starlette came as `{"detail": ...}`."""
    assert assert_openai_error(http.get("/v1/chat/completions"), 405)["code"] == (
        "method_not_allowed"
    )
    assert_openai_error(http.get("/no/such/endpoint"), 404)
    resp = httpx.post(f"{base}//v1/chat/completions", json=chat())
    assert_openai_error(resp, 404)


def test_openapi_declares_every_error(http: httpx.Client) -> None:
    schema = http.get("/openapi.json").json()
    assert "ErrorResponse" in schema["components"]["schemas"]
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    chat_op = schema["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert "422" not in chat_op
    for status in ("400", "403", "404", "408", "413", "429", "431", "500", "503", "504"):
        ref = chat_op[status]["content"]["application/json"]["schema"]["$ref"]
        assert ref.endswith("/ErrorResponse")
    assert "text/event-stream" in chat_op["200"]["content"]
    route_op = schema["paths"]["/v1/route"]["post"]["responses"]
    assert {"200", "400", "403", "413", "429"} <= set(route_op)


# --- 5. size limits -------------------------------------------------------------------


def test_body_larger_than_the_limit_is_413(http: httpx.Client) -> None:
    big = chat("x" * (MAX_BODY + 10))
    assert assert_openai_error(http.post("/v1/chat/completions", json=big), 413)["code"] == (
        "body_too_large"
    )

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer
        yield b'{"model": "auto", "messages": [{"role": "user", "content": "'
        for _ in range(80):
            yield b"y" * 8192
        yield b'"}]}'

    resp = http.post(
        "/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"}
    )
    assert_openai_error(resp, 413)
    assert http.post("/v1/chat/completions", json=chat("fits")).status_code == 200


def test_large_headers_are_431(http: httpx.Client) -> None:
    resp = http.post("/v1/chat/completions", json=chat(), headers={"x-padding": "p" * 20_000})
    assert_openai_error(resp, 431)


def raw_post(port: int, path: str, body: bytes, announced: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        f"content-length: {announced}\r\n\r\n"
    ).encode()
    sock.sendall(head + body)
    return sock


def read_status(sock: socket.socket) -> tuple[int, bytes]:
    data = b""
    while b"\r\n\r\n" not in data or not data.endswith(b"}"):
        part = sock.recv(65536)
        if not part:
            break
        data += part
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]


def test_stalled_upload_gets_408_and_does_not_block_others(
    serve_port: int, http: httpx.Client
) -> None:
    """Regression: uploads that never finished their body held ingress slots forever."""
    body = json.dumps(chat()).encode()
    stalled = [
        raw_post(serve_port, f"/{APP}/v1/chat/completions", body, len(body) + 10)
        for _ in range(MAX_ACTIVE - 1)
    ]
    try:
        assert http.post("/v1/chat/completions", json=chat()).status_code == 200
        health = http.get("/health")
        assert health.status_code == 200, health.text
        for sock in stalled:  # answered once the body timeout passed, not left hanging
            status, payload = read_status(sock)
            assert status == 408
            assert json.loads(payload)["error"]["code"] == "body_timeout"
    finally:
        for sock in stalled:
            sock.close()


# --- 6. overload is answered at once --------------------------------------------------


def test_beyond_max_active_requests_is_an_immediate_429(base: str, http: httpx.Client) -> None:
    """Regression: with the ingress full, requests queued unboundedly (429s took 7-86 s)."""
    slow = {"model": "slow", "messages": [{"role": "user", "content": "hi"}], **BATCH}

    async def flood() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            held = [asyncio.create_task(client.post("/v1/chat/completions", json=slow))]
            held += [
                asyncio.create_task(client.post("/v1/chat/completions", json=slow))
                for _ in range(MAX_ACTIVE - 1)
            ]
            deadline = time.monotonic() + 30
            # until all MAX_ACTIVE are in the ingress, waiting on `slow` (4 s)
            while (await client.get("/health")).json()["active_requests"] < MAX_ACTIVE:
                assert time.monotonic() < deadline, "the held requests never all got in"
                await asyncio.sleep(0.1)
            extra = [await client.post("/v1/chat/completions", json=chat()) for _ in range(3)]
            health = await client.get("/health")
            done = await asyncio.gather(*held)
            return [*extra, health, *done]

    responses = asyncio.run(flood())
    extra, health, held = responses[:3], responses[3], responses[4:]
    for resp in extra:
        error = assert_openai_error(resp, 429)
        assert error["code"] == "router_overloaded"
        assert resp.headers["retry-after"] == "1"
    assert health.status_code == 200, health.text  # /health is never refused or queued
    assert health.json()["refused"]["429"] >= 3
    assert [r.status_code for r in held] == [200] * MAX_ACTIVE
    assert http.post("/v1/chat/completions", json=chat()).status_code == 200


# --- 3. tiers are not self-service ----------------------------------------------------


def test_a_client_cannot_choose_its_tier(http: httpx.Client) -> None:
    """Regression: `switchyard.tier: pro` or `x-switchyard-tenant` gave any client pro."""
    body = chat("Compare Rome and Athens in depth.", switchyard={"tier": "pro"})
    error = assert_openai_error(
        http.post("/v1/chat/completions", json=body), 403, "switchyard.tier"
    )
    assert error["code"] == "tier_not_allowed"
    resp = http.post("/v1/chat/completions", json=chat(), headers={"x-switchyard-tier": "pro"})
    assert_openai_error(resp, 403, "switchyard.tier")
    resp = http.post("/v1/chat/completions", json=chat(), headers={"x-switchyard-tenant": "acme"})
    assert_openai_error(resp, 400, "x-switchyard-tenant")
    # the default tier limits an ordinary request; a selectable tier may be asked for
    resp = http.post("/v1/chat/completions", json=chat("Compare Rome and Athens in depth."))
    assert resp.json()["switchyard"]["pool"] == "small"
    batch = chat("Compare Rome and Athens in depth.", **BATCH)
    assert http.post("/v1/chat/completions", json=batch).json()["switchyard"]["pool"] == "large"


# --- 8. exposure ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def locked(serve_port: int) -> Iterator[str]:
    args = fake_app_args()
    args["api"] = {"docs": False, "metrics_summary": False}
    run_app(args, HIDDEN)
    wait_healthy(f"http://127.0.0.1:{serve_port}/{HIDDEN}")
    yield f"http://127.0.0.1:{serve_port}/{HIDDEN}"
    delete_app(HIDDEN)


def test_docs_and_metrics_can_be_switched_off(locked: str, base: str) -> None:
    for path in ("/docs", "/redoc", "/openapi.json", "/v1/metrics"):
        assert_openai_error(httpx.get(f"{locked}{path}"), 404)
        assert httpx.get(f"{base}{path}").status_code == 200
    health = httpx.get(f"{locked}/health")
    assert health.status_code == 200, health.text


# --- 7. health answers in bounded time while a pool is busy ----------------------------


def test_health_does_not_wait_for_a_busy_pool(base: str) -> None:
    """Regression: /health called pools without a timeout and waited behind requests.

    Every slot of `slow` is taken (2 running, 2 queued, 4 s each): /health must answer
    before any of those requests finishes, and call the pool healthy.
    """
    slow = {"model": "slow", "messages": [{"role": "user", "content": "hi"}], **BATCH}
    finished: list[int] = []

    def hold() -> None:
        resp = httpx.post(f"{base}/v1/chat/completions", json=slow, timeout=30)
        finished.append(resp.status_code)

    threads = [threading.Thread(target=hold) for _ in range(MAX_ACTIVE)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while True:  # until the poller has found the pool full (its stats call queued)
        health = httpx.get(f"{base}/health", timeout=30)
        slow_pool = health.json()["pools"]["slow"]
        if slow_pool["state"] == "busy" or finished:
            break
        assert time.monotonic() < deadline, health.text
        time.sleep(0.1)
    answered_before = len(finished)
    for t in threads:
        t.join()
    assert answered_before == 0  # not queued behind the pool's requests
    assert health.status_code == 200
    assert slow_pool["ok"] is True and slow_pool["state"] in ("ok", "busy")
    assert finished == [200] * MAX_ACTIVE
