"""The edge: ASGI middleware that runs inside Ray Serve's HTTP proxy, before Serve routes.

Serve's proxy is where a request arrives, and by itself it (measured on Ray 2.60):
- calls the ingress replica as soon as the headers are in, and the replica then pulls
  the body from the proxy: a client that trickles its body holds an ingress slot;
- accepts headers of any size (uvicorn with httptools has no limit);
- answers its own failures in plain text (`Internal Server Error` when the ingress
  replica dies, 503 on back-pressure, 408 on its timeout) and cuts an event stream
  without an error event when the replica dies mid-stream;
- lets any client switch off its request timeout (`x-request-timeout-seconds: 0`) and
  its cancel-on-disconnect (`x-request-disconnect-disabled`).

Loaded by the proxy through Serve's hook, set in the environment Ray starts with:

    RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=deployments.proxy:middlewares

(`make serve`, the tests and the cluster manifests set it). Then every request gets
its headers checked (431) and Serve's privileged headers removed; it is refused at once
(429) while the pools are known to be full (an adaptive concurrency limit learnt from
the answers, `deployments/admission.py`, at most `SWITCHYARD_EDGE_MAX_ACTIVE_REQUESTS`,
default 1024); its whole body is read in
the proxy under a size cap (413) and a deadline (408) before any replica is involved,
and every answer Serve itself produces becomes an OpenAI-shaped error; a stream that
breaks ends with an error event and `data: [DONE]`. The limits are `ApiConfig`'s
defaults, overridable with `SWITCHYARD_MAX_BODY_BYTES`, `SWITCHYARD_MAX_HEADER_BYTES`
and `SWITCHYARD_BODY_TIMEOUT_S`; the ingress enforces its app's own limits again.

The edge holds no API keys (they live in each ingress replica's key ring). With
`SWITCHYARD_EDGE_REQUIRE_KEY=1` (set it where the app runs with `auth.mode: keys`, as the
cluster manifests do) it refuses at once (401), before reading a byte of the body, any
request to the API that carries no `Authorization: Bearer` value shaped like one of our
keys (`tenancy.keys.split_key`: constant work for any input). A well-shaped but unknown
key still has its body read here, within the limits above, and is then refused by the
ingress's guard from its headers (401) without the ingress reading it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.errors import AuthenticationError
from deployments.admission import AdaptiveLimit
from deployments.config import ApiConfig
from deployments.openai.auth import authorization_header
from deployments.openai.errors import (
    CAPACITY_FULL,
    CAPACITY_HEADER,
    APIError,
    error_body,
    to_api_error,
)
from deployments.openai.guard import (
    BODYLESS,
    BodyReader,
    header_bytes,
    headers_too_large,
    router_overloaded,
    send_error,
)
from tenancy.keys import bearer_token, split_key

__all__ = [
    "EdgeAdmission",
    "EdgeBody",
    "EdgeErrors",
    "EdgeHeaders",
    "edge_config",
    "edge_limit",
    "edge_requires_key",
    "middlewares",
]

logger = logging.getLogger(__name__)

CAPACITY, FULL = CAPACITY_HEADER.encode(), CAPACITY_FULL.encode()

# Serve obeys these from any client; a client must not choose its own timeout.
PRIVILEGED_HEADERS = frozenset({b"x-request-timeout-seconds", b"x-request-disconnect-disabled"})

# What Serve's own plain-text answers mean, in the API's words (never Serve's text: it
# names deployments and request ids).
SERVE_ANSWERS: dict[int, tuple[str, str]] = {
    404: ("no such endpoint", "not_found"),
    408: ("the request took longer than the router allows", "timeout"),
    429: ("the router is at capacity; retry shortly", "router_overloaded"),
    500: ("the router failed while serving the request; retry", "internal_error"),
    503: ("the router is unavailable or at capacity; retry shortly", "router_unavailable"),
}


def edge_config(env: dict[str, str] | None = None) -> ApiConfig:
    """The proxy's limits: `ApiConfig` defaults, overridden from the environment."""
    env = dict(os.environ) if env is None else env
    fields = ("max_body_bytes", "max_header_bytes", "body_timeout_s")
    given = {f: env[f"SWITCHYARD_{f.upper()}"] for f in fields if f"SWITCHYARD_{f.upper()}" in env}
    # NOTE: environment values are strings; the config is strict, so numbers are parsed
    # from text here on purpose (`strict=False`), and only here.
    return ApiConfig.model_validate(given, strict=False)


def edge_limit(env: dict[str, str] | None = None) -> AdaptiveLimit:
    """The edge's concurrency limit, at most `SWITCHYARD_EDGE_MAX_ACTIVE_REQUESTS`."""
    env = dict(os.environ) if env is None else env
    raw = env.get("SWITCHYARD_EDGE_MAX_ACTIVE_REQUESTS", "1024")
    if not raw.isdigit() or not 8 <= int(raw) <= 1_000_000:
        raise ValueError("SWITCHYARD_EDGE_MAX_ACTIVE_REQUESTS must be an integer, 8 or more")
    return AdaptiveLimit(limit=int(raw), maximum=int(raw))


class EdgeAdmission:
    """Refuses at once (429) what the pools would refuse anyway (`deployments/admission`).

    `/health` and Serve's `/-/` paths are never refused or counted.
    """

    def __init__(self, app: ASGIApp, limit: AdaptiveLimit) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path.startswith("/-/") or path.endswith("/health"):
            await self.app(scope, receive, send)
            return
        limit = self.limit
        if not limit.admit():
            await send_error(send, router_overloaded(retry_after_s=1))
            return
        admitted_at = time.monotonic()

        async def watched(message: Message) -> None:
            if message["type"] == "http.response.start":
                full = (CAPACITY, FULL) in message.get("headers", ())
                limit.answered(message["status"], admitted_at, time.monotonic(), full=full)
            await send(message)

        limit.inflight += 1
        try:
            await self.app(scope, receive, watched)
        finally:
            limit.inflight -= 1


class EdgeHeaders:
    """Outermost: drop Serve's privileged headers, refuse oversized ones (431)."""

    def __init__(self, app: ASGIApp, config: ApiConfig) -> None:
        self.app = app
        self.limit = config.max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            headers = scope["headers"]
            if any(k in PRIVILEGED_HEADERS for k, _ in headers):
                headers = [(k, v) for k, v in headers if k not in PRIVILEGED_HEADERS]
                scope["headers"] = headers
            if scope["type"] == "http" and header_bytes(scope) > self.limit:
                await send_error(send, headers_too_large(self.limit), close=True)
                return
        await self.app(scope, receive, send)


class EdgeBody:
    """The whole body in the proxy (bounded, with a deadline) before admission and routing;
    with `require_key`, no body is read for a request without a key-shaped bearer."""

    def __init__(self, app: ASGIApp, config: ApiConfig, require_key: bool = False) -> None:
        self.app = app
        self.reader = BodyReader(config)
        self.require_key = require_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path.startswith("/-/"):
            await self.app(scope, receive, send)
            return
        if self.require_key and "/v1/" in path and not _key_shaped(scope):
            error = to_api_error(AuthenticationError("missing or malformed API key"))
            await send_error(send, error, close=scope.get("method") not in BODYLESS)
            return
        await self.reader.forward(self.app, scope, receive, send)


def _key_shaped(scope: Scope) -> bool:
    """Does the request carry `Authorization: Bearer <something shaped like our keys>`?"""
    value = authorization_header(scope)
    token = bearer_token(value) if value is not None else None
    return token is not None and split_key(token) is not None


def edge_requires_key(env: dict[str, str] | None = None) -> bool:
    env = dict(os.environ) if env is None else env
    raw = env.get("SWITCHYARD_EDGE_REQUIRE_KEY", "0")
    if raw not in ("0", "1"):
        raise ValueError("SWITCHYARD_EDGE_REQUIRE_KEY must be 0 or 1")
    return raw == "1"


class EdgeErrors:
    """Serve's own answers in the OpenAI error shape; broken streams end properly."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path", "").startswith("/-/"):
            await self.app(scope, receive, send)
            return
        response = _Response(send)
        try:
            await self.app(scope, receive, response.send)
        except Exception:  # noqa: BLE001 - the replica died or Serve failed: answer anyway
            logger.warning("request failed inside Serve's proxy", exc_info=True)
        await response.finish()


class _Response:
    """Watches what Serve sends; rewrites plain-text errors; knows whether it finished."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False
        self.finished = False
        self.stream = False
        self._held: Message | None = None  # a plain-text error start, replaced at its end

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = {k.lower(): v for k, v in message.get("headers", [])}
            content_type = headers.get(b"content-type", b"")
            self.stream = content_type.startswith(b"text/event-stream")
            if message["status"] >= 400 and not content_type.startswith(b"application/json"):
                self._held = message
                return
            self.started = True
            await self._send(message)
            return
        if message["type"] == "http.response.body":
            if self._held is not None:
                if not message.get("more_body", False):
                    status, self._held = self._held["status"], None
                    await self._error(status)
                return
            if not message.get("more_body", False):
                self.finished = True
        await self._send(message)

    async def _error(self, status: int) -> None:
        text, code = SERVE_ANSWERS.get(status, SERVE_ANSWERS[500])
        headers = {"retry-after": "1"} if status in (429, 503) else None
        self.started = self.finished = True
        await send_error(self._send, APIError(status, text, code=code, headers=headers))

    async def finish(self) -> None:
        """After Serve returned or raised: make sure the client got a complete answer."""
        if self.finished:
            return
        with contextlib.suppress(Exception):  # the client may be gone as well
            if not self.started:  # the ingress replica died before answering
                await self._error(503)
            elif self.stream:
                event = error_body(
                    APIError(503, "the router stopped while streaming; retry", code="interrupted")
                )
                body = f"data: {json.dumps(event)}\n\ndata: [DONE]\n\n".encode()
                await self._send({"type": "http.response.body", "body": body})
            else:
                await self._send({"type": "http.response.body", "body": b""})
        self.finished = True


def middlewares() -> list[Middleware]:
    """Serve's proxy callback. Serve wraps in list order, so the last is outermost."""
    config = edge_config()
    # NOTE: the body is read before admission, so uploads still arriving (or stalled)
    # never hold one of the admitted places.
    return [
        Middleware(EdgeErrors),
        Middleware(EdgeAdmission, limit=edge_limit()),
        Middleware(EdgeBody, config=config, require_key=edge_requires_key()),
        Middleware(EdgeHeaders, config=config),
    ]
