"""The request guard and the proxy edge, driven as plain ASGI apps (no Ray, no server)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request, Response

from core.errors import AuthenticationError
from deployments.config import ApiConfig
from deployments.openai.auth import Authenticated, Authenticator
from deployments.openai.errors import create_error_response
from deployments.openai.guard import GuardMiddleware, RequestGuard
from deployments.proxy import EdgeBody, EdgeErrors, EdgeHeaders, edge_config, edge_requires_key
from tenancy.config import AuthConfig
from tenancy.keys import Caller, KeyRing, digest
from tenancy.schema import ApiKey

Message = dict[str, Any]
LIMITS = ApiConfig(max_body_bytes=2048, max_header_bytes=1024, body_timeout_s=0.2)


def scope(
    path: str = "/v1/chat/completions",
    method: str = "POST",
    headers: list[tuple[bytes, bytes]] | None = None,
    app: Any = None,
) -> dict[str, Any]:
    return {
        "type": "http",
        "method": method,
        "path": path,
        "root_path": "",
        "headers": headers or [(b"content-type", b"application/json")],
        "app": app,
    }


def receiving(*parts: bytes, stall: bool = False) -> Callable[[], Awaitable[Message]]:
    """A client that sends `parts`, then stalls (or waits for nothing more)."""
    queue = [
        {"type": "http.request", "body": p, "more_body": stall or i < len(parts) - 1}
        for i, p in enumerate(parts)
    ]

    async def receive() -> Message:
        if queue:
            return queue.pop(0)
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    return receive


class Sent:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def __call__(self, message: Message) -> None:
        self.messages.append(message)

    @property
    def status(self) -> int:
        return int(self.messages[0]["status"])

    @property
    def headers(self) -> dict[bytes, bytes]:
        return dict(self.messages[0]["headers"])

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages[1:])

    def error(self) -> dict[str, Any]:
        assert self.headers[b"content-type"] == b"application/json"
        error: dict[str, Any] = json.loads(self.body)["error"]
        assert set(error) == {"message", "type", "param", "code"}
        return error


class Echo:
    """The app behind the middleware: answers with the body it got."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls += 1
        message = await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": message.get("body", b"")})


def guarded(config: ApiConfig = LIMITS) -> tuple[GuardMiddleware, RequestGuard, Echo]:
    echo = Echo()
    guard = RequestGuard(config)
    return GuardMiddleware(echo), guard, echo


def app_scope(guard: RequestGuard, **kwargs: Any) -> dict[str, Any]:
    return scope(app=SimpleNamespace(state=SimpleNamespace(guard=guard)), **kwargs)


async def test_a_body_within_limits_reaches_the_app_whole() -> None:
    middleware, guard, echo = guarded()
    sent = Sent()
    await middleware(app_scope(guard), receiving(b'{"a":', b" 1}"), sent)
    assert (sent.status, sent.body, echo.calls) == (200, b'{"a": 1}', 1)
    assert guard.active == 0


async def test_announced_oversize_body_is_413_without_reading() -> None:
    middleware, guard, echo = guarded()
    sent = Sent()
    headers = [(b"content-length", b"999999")]
    await middleware(app_scope(guard, headers=headers), receiving(stall=True), sent)
    assert (sent.status, sent.error()["code"], echo.calls) == (413, "body_too_large", 0)
    assert sent.headers[b"connection"] == b"close"


async def test_chunked_body_past_the_limit_is_413() -> None:
    middleware, guard, echo = guarded()
    sent = Sent()
    await middleware(app_scope(guard), receiving(b"x" * 1500, b"x" * 1500), sent)
    assert (sent.status, echo.calls) == (413, 0)


async def test_a_stalled_body_is_408_after_the_timeout() -> None:
    middleware, guard, echo = guarded()
    sent = Sent()
    await middleware(app_scope(guard), receiving(b"{", stall=True), sent)
    assert (sent.status, sent.error()["code"], echo.calls) == (408, "body_timeout", 0)
    assert guard.active == 0 and guard.refused == {408: 1}


async def test_headers_past_the_limit_are_431() -> None:
    middleware, guard, _ = guarded()
    sent = Sent()
    headers = [(b"x-padding", b"p" * 2000)]
    await middleware(app_scope(guard, headers=headers), receiving(b"{}"), sent)
    assert (sent.status, sent.error()["code"]) == (431, "headers_too_large")


async def test_beyond_max_active_requests_is_429_and_health_still_passes() -> None:
    middleware, guard, echo = guarded(ApiConfig(max_active_requests=1))
    guard.active = 1  # one request in flight
    sent = Sent()
    await middleware(app_scope(guard), receiving(b"{}"), sent)
    assert (sent.status, sent.headers[b"retry-after"], echo.calls) == (429, b"1", 0)
    health = Sent()
    await middleware(app_scope(guard, path="/health", method="GET"), receiving(b""), health)
    assert (health.status, echo.calls) == (200, 1)


@pytest.mark.parametrize("path", ["/docs", "/openapi.json", "/v1/metrics", "/v1/metrics/"])
async def test_hidden_endpoints_are_404(path: str) -> None:
    middleware, guard, echo = guarded(ApiConfig(docs=False, metrics_summary=False))
    sent = Sent()
    await middleware(app_scope(guard, path=path, method="GET"), receiving(b""), sent)
    assert (sent.status, echo.calls) == (404, 0)


async def test_paths_are_judged_inside_the_route_prefix() -> None:
    middleware, guard, echo = guarded(ApiConfig(docs=False))
    sent = Sent()
    s = app_scope(guard, path="/app/docs", method="GET")
    s["root_path"] = "/app"
    await middleware(s, receiving(b""), sent)
    assert sent.status == 404


# --- API keys, checked before the body is read ---------------------------------------------

MIB = 1024 * 1024
SECRET = "s" * 43
KEY = f"sy-{'a' * 12}-{SECRET}"


class CountingRing(KeyRing):
    """A key ring that counts how often a key is checked."""

    checks = 0

    def check(self, key: str) -> Caller | None:
        self.checks += 1
        return super().check(key)


def keyed_state(guard: RequestGuard) -> SimpleNamespace:
    record = ApiKey(
        id="a" * 12, secret_sha256=digest(SECRET), tenant="acme", tier=None, role="tenant",
        name="", created_at=0.0, revoked_at=None,
    )  # fmt: skip
    ring = CountingRing([record])
    return SimpleNamespace(guard=guard, auth=Authenticator(AuthConfig(mode="keys"), ring))


class Client:
    """A client sending 2 MiB: counts how often the server asked for body bytes."""

    def __init__(self) -> None:
        self.receives = 0

    async def __call__(self) -> Message:
        self.receives += 1
        return {"type": "http.request", "body": b"x" * 2 * MIB, "more_body": False}


@pytest.mark.parametrize(
    "authorization",
    [None, b"Bearer " + KEY[:-1].encode() + b"t", b"Basic abc", b"Bearer " + b"k" * 30_000],
)
async def test_without_a_good_key_the_401_comes_before_a_byte_of_the_body(
    authorization: bytes | None,
) -> None:
    config = ApiConfig(max_header_bytes=64 * 1024)  # a 2 MiB body is within the limits
    middleware, guard, echo = guarded(config)
    headers = [(b"content-length", str(2 * MIB).encode())]
    if authorization is not None:
        headers.append((b"authorization", authorization))
    client, sent = Client(), Sent()
    app = SimpleNamespace(state=keyed_state(guard))
    await middleware(scope(headers=headers, app=app), client, sent)
    error = sent.error()
    assert (sent.status, error["code"], sent.headers[b"www-authenticate"]) == (
        401, "invalid_api_key", b"Bearer",
    )  # fmt: skip
    assert sent.headers[b"connection"] == b"close"  # the unread body is not waited for
    assert (client.receives, echo.calls, guard.active, guard.refused) == (0, 0, 0, {401: 1})


async def test_a_good_key_reaches_the_route_as_its_caller_checked_once() -> None:
    guard = RequestGuard(LIMITS)
    state = keyed_state(guard)
    api = FastAPI()
    api.add_middleware(GuardMiddleware)
    api.state.guard, api.state.auth = state.guard, state.auth

    @api.post("/v1/whoami")
    async def whoami(caller: Authenticated) -> dict[str, str | None]:
        return {"tenant": caller.tenant if caller else None}

    transport = httpx.ASGITransport(app=api)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        ok = await http.post("/v1/whoami", json={}, headers={"authorization": f"Bearer {KEY}"})
        assert (ok.status_code, ok.json()) == (200, {"tenant": "acme"})
        assert state.auth.ring.checks == 1  # the guard's check; the route did not redo it
        refused = await http.post("/v1/whoami", json={})
        assert refused.status_code == 401 and guard.refused == {401: 1}
        for open_path in ("/health", "/openapi.json"):  # no key needed (404 or 200 here)
            assert (await http.get(open_path)).status_code != 401


async def test_without_the_guard_the_route_checks_the_header_itself() -> None:
    state = keyed_state(RequestGuard(LIMITS))
    api = FastAPI()
    api.state.auth = state.auth

    async def mapped(request: Request, exc: Exception) -> Response:
        return create_error_response(exc)

    api.add_exception_handler(AuthenticationError, mapped)

    @api.get("/v1/whoami")
    async def whoami(caller: Authenticated) -> dict[str, str | None]:
        return {"tenant": caller.tenant if caller else None}

    transport = httpx.ASGITransport(app=api)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        good = await http.get("/v1/whoami", headers={"authorization": f"Bearer {KEY}"})
        assert good.json() == {"tenant": "acme"}
        assert (await http.get("/v1/whoami")).status_code == 401
    assert state.auth.ring.checks == 1


async def test_with_auth_off_the_guard_checks_no_key() -> None:
    middleware, guard, echo = guarded()
    app = SimpleNamespace(
        state=SimpleNamespace(guard=guard, auth=Authenticator(AuthConfig(mode="off")))
    )
    sent = Sent()
    await middleware(scope(app=app), receiving(b"{}"), sent)
    assert (sent.status, echo.calls) == (200, 1)


# --- the proxy edge ----------------------------------------------------------------------


async def test_edge_strips_privileged_serve_headers_and_limits_size() -> None:
    seen: list[list[tuple[bytes, bytes]]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["headers"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    edge = EdgeHeaders(app, LIMITS)
    headers = [(b"x-request-timeout-seconds", b"0"), (b"x-request-disconnect-disabled", b"?1")]
    await edge(scope(headers=[*headers, (b"x-ok", b"1")]), receiving(b""), Sent())
    assert seen == [[(b"x-ok", b"1")]]
    sent = Sent()
    await edge(scope(headers=[(b"x-padding", b"p" * 2000)]), receiving(b""), sent)
    assert (sent.status, len(seen)) == (431, 1)


async def test_edge_reads_the_body_before_routing() -> None:
    echo = Echo()
    sent = Sent()
    await EdgeBody(echo, LIMITS)(scope(), receiving(b"{", stall=True), sent)
    assert (sent.status, echo.calls) == (408, 0)  # Serve never saw the request


@pytest.mark.parametrize(
    "authorization",
    [None, b"Basic abc", b"Bearer nope", b"Bearer " + b"x" * 30_000],
)
async def test_edge_with_keys_required_refuses_unshaped_keys_before_the_body(
    authorization: bytes | None,
) -> None:
    """Issue 20, finding 13: unauthenticated 2 MiB bodies were buffered at the edge too."""
    echo = Echo()
    sent = Sent()
    reads = 0

    async def never_read() -> Message:
        nonlocal reads
        reads += 1
        return {"type": "http.request", "body": b"x" * (2 << 20), "more_body": False}

    headers = [(b"content-type", b"application/json")]
    if authorization is not None:
        headers.append((b"authorization", authorization))
    edge = EdgeBody(echo, LIMITS, require_key=True)
    await edge(scope("/app/v1/chat/completions", headers=headers), never_read, sent)
    assert (sent.status, sent.error()["code"], reads, echo.calls) == (401, "invalid_api_key", 0, 0)


async def test_edge_passes_key_shaped_bearers_health_and_everything_when_not_required() -> None:
    shaped = b"Bearer sy-0123456789ab-" + b"A" * 43
    for path, headers, required in (
        ("/app/v1/chat/completions", [(b"authorization", shaped)], True),
        ("/app/health", [], True),
        ("/app/v1/chat/completions", [], False),
    ):
        echo = Echo()
        await EdgeBody(echo, LIMITS, require_key=required)(
            scope(path, headers=headers), receiving(b"{}"), Sent()
        )
        assert echo.calls == 1, path
    with pytest.raises(ValueError):
        edge_requires_key({"SWITCHYARD_EDGE_REQUIRE_KEY": "yes"})
    assert edge_requires_key({}) is False


@pytest.mark.parametrize(
    ("status", "code"), [(500, "internal_error"), (503, "router_unavailable"), (408, "timeout")]
)
async def test_edge_turns_serve_plain_text_into_openai_errors(status: int, code: str) -> None:
    async def serve_says(scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"content-type", b"text/plain; charset=utf-8")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"Request abc-123 on replica x"})

    sent = Sent()
    await EdgeErrors(serve_says)(scope(), receiving(b""), sent)
    error = sent.error()
    assert (sent.status, error["code"]) == (status, code)
    assert "abc-123" not in error["message"]  # Serve's internals stay inside


async def test_edge_answers_when_the_replica_died_before_answering() -> None:
    async def died(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("actor died")

    sent = Sent()
    await EdgeErrors(died)(scope(), receiving(b""), sent)
    assert (sent.status, sent.headers[b"retry-after"]) == (503, b"1")
    assert sent.error()["type"] == "server_error"


async def test_edge_ends_a_broken_stream_with_an_error_event_and_done() -> None:
    async def cut(scope: Any, receive: Any, send: Any) -> None:
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"data: {}\n\n", "more_body": True})

    sent = Sent()
    await EdgeErrors(cut)(scope(), receiving(b""), sent)
    text = sent.body.decode()
    assert text.endswith("data: [DONE]\n\n")
    event = json.loads(text.split("data: ")[2].strip())
    assert event["error"]["code"] == "interrupted"


async def test_edge_leaves_complete_answers_alone() -> None:
    echo = Echo()
    sent = Sent()
    await EdgeErrors(echo)(scope(), receiving(b"hello"), sent)
    assert (sent.status, sent.body) == (200, b"hello")


def test_edge_limits_come_from_the_environment() -> None:
    assert edge_config({}) == ApiConfig()
    got = edge_config({"SWITCHYARD_MAX_BODY_BYTES": "4096", "SWITCHYARD_BODY_TIMEOUT_S": "2.5"})
    assert (got.max_body_bytes, got.body_timeout_s) == (4096, 2.5)
    with pytest.raises(ValueError):
        edge_config({"SWITCHYARD_MAX_BODY_BYTES": "tiny"})


async def test_edge_admission_refuses_at_once_while_the_pools_are_full() -> None:
    from deployments.proxy import EdgeAdmission, edge_limit

    answers = [429, 200]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": answers.pop(0), "headers": []})
        await send({"type": "http.response.body", "body": b""})

    limit = edge_limit({"SWITCHYARD_EDGE_MAX_ACTIVE_REQUESTS": "8"})
    edge = EdgeAdmission(app, limit)
    limit.inflight = 8  # full
    sent = Sent()
    await edge(scope(), receiving(b"{}"), sent)
    assert (sent.status, sent.error()["code"], len(answers)) == (429, "router_overloaded", 2)
    health = Sent()
    await edge(scope(path="/app/health", method="GET"), receiving(b""), health)
    assert health.status == 429 and len(answers) == 1  # passed through, not refused
    limit.inflight = 0
    ok = Sent()
    await edge(scope(), receiving(b"{}"), ok)
    assert ok.status == 200 and limit.inflight == 0
    with pytest.raises(ValueError):
        edge_limit({"SWITCHYARD_EDGE_MAX_ACTIVE_REQUESTS": "3"})


async def test_edge_learns_only_from_answers_that_say_capacity_is_full() -> None:
    from deployments.proxy import EdgeAdmission, edge_limit

    full = [(b"x-switchyard-capacity", b"full")]
    answers: list[list[tuple[bytes, bytes]]] = [[], full]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        headers = answers.pop(0)
        await send({"type": "http.response.start", "status": 429, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    limit = edge_limit({"SWITCHYARD_EDGE_MAX_ACTIVE_REQUESTS": "100"})
    edge = EdgeAdmission(app, limit)
    await edge(scope(), receiving(b"{}"), Sent())  # a tenant's rate limit: no signal
    assert limit.limit == 100
    await edge(scope(), receiving(b"{}"), Sent())  # a full pool: the limit drops
    assert limit.limit == 8  # 90% of the one request in flight, floored at 8
