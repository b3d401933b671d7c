"""What one HTTP request may cost the ingress, enforced before any route runs.

An ASGI middleware in front of the FastAPI routes. Serve's proxy hands every request to
an ingress replica, where it holds one of the replica's `max_ongoing_requests` slots
until it is answered; so a client that trickles its body, sends a huge one, or simply
arrives when the replica is busy must be answered here, fast, never queued:

- headers above `max_header_bytes`                         -> 431
- with API keys, no key or a bad one (every path but `/health` and the docs), checked
  from the headers before a byte of the body is read      -> 401
- `Content-Length` above `max_body_bytes` (nothing read)   -> 413; a longer chunked body
  is cut off at the limit                                   -> 413
- body not complete within `body_timeout_s`                -> 408
- `max_active_requests` already in this replica            -> 429 + Retry-After, at once
- `/docs`, `/openapi.json`, `/v1/metrics` when the config hides them -> 404

`/health` skips the admission count: it must answer while the replica is full. Every
refusal is an OpenAI-shaped error (`errors.error_body`), counted by status in
`RequestGuard.refused` (shown by `/health`). The key is checked before the body is read
so that a client without a key cannot make the replica hold `max_body_bytes` for it; the
`Caller` it names goes to the route in the scope's state (deployments/openai/auth.py).
The body is then read whole (bounded) and replayed to the app, so routes never wait on
the network. The proxy edge (`deployments/proxy.py`) applies the same body and header
limits one hop earlier (it holds no keys, so it cannot check them).

The `RequestGuard` instance is live state owned by the ingress replica; the middleware
finds it on the app's `state` (set when the replica starts).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.errors import AuthenticationError
from deployments.config import ApiConfig
from deployments.openai.auth import CALLER_STATE, Authenticator, authorization_header
from deployments.openai.errors import (
    CAPACITY_FULL,
    CAPACITY_HEADER,
    APIError,
    error_body,
    to_api_error,
)

__all__ = [
    "BodyReader",
    "GuardMiddleware",
    "RequestGuard",
    "header_bytes",
    "headers_too_large",
    "router_overloaded",
    "send_error",
]

HEALTH_PATHS = frozenset({"/health"})
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
OPEN_PATHS = HEALTH_PATHS | DOCS_PATHS  # no key needed (hidden docs are a 404 before)
METRICS_PATHS = frozenset({"/v1/metrics"})
BODYLESS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})


def header_bytes(scope: Scope) -> int:
    return sum(len(k) + len(v) for k, v in scope.get("headers", ()))


def headers_too_large(limit: int) -> APIError:
    return APIError(431, f"request headers exceed {limit} bytes", code="headers_too_large")


def router_overloaded(retry_after_s: int) -> APIError:
    return APIError(
        429,
        "the router is at capacity; retry shortly",
        code="router_overloaded",
        headers={"retry-after": str(retry_after_s), CAPACITY_HEADER: CAPACITY_FULL},
    )


class BodyReader:
    """Reads a request body whole, within `max_body_bytes` and `body_timeout_s`."""

    def __init__(self, config: ApiConfig, refused: Callable[[int], None] | None = None) -> None:
        self.limit = config.max_body_bytes
        self.timeout_s = config.body_timeout_s
        self.refused = refused or (lambda status: None)

    def check_length(self, scope: Scope) -> APIError | None:
        """Refuse from the announced Content-Length, before reading a byte of the body."""
        for key, value in scope.get("headers", ()):
            if key == b"content-length":
                if not value.isdigit() or len(value) > 18:
                    return APIError(400, "invalid Content-Length header", code="invalid_header")
                if int(value) > self.limit:
                    return self.too_large()
        return None

    def too_large(self) -> APIError:
        return APIError(413, f"request body exceeds {self.limit} bytes", code="body_too_large")

    async def forward(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        """Call `app` with the body already read, or answer 400/408/413 instead."""
        if scope.get("method") in BODYLESS:
            await app(scope, receive, send)
            return
        refusal = self.check_length(scope)
        if refusal is None:
            try:
                async with asyncio.timeout(self.timeout_s):
                    body = await self._read(receive)
            except TimeoutError:
                refusal = APIError(
                    408,
                    f"request body not received within {self.timeout_s:g} s",
                    code="body_timeout",
                )
            except OverflowError:
                refusal = self.too_large()
            else:
                if body is not None:  # None: the client left before sending its request
                    await app(scope, _replay(body, receive), send)
                return
        self.refused(refusal.status)
        # NOTE: the rest of the body may still be on its way: do not reuse the connection.
        await send_error(send, refusal, close=True)

    async def _read(self, receive: Receive) -> bytes | None:
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                raise OverflowError
            parts.append(chunk)
            if not message.get("more_body", False):
                return b"".join(parts)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the app the buffered body, then the real connection events
    (so a streaming response still learns that the client left)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


class RequestGuard:
    """Admission and limits of one ingress replica."""

    def __init__(self, config: ApiConfig) -> None:
        self.config = config
        self.active = 0
        self.refused: dict[int, int] = {}  # status -> count, shown in /health
        self.body = BodyReader(config, self.count)
        hidden: set[str] = set()
        if not config.docs:
            hidden |= DOCS_PATHS
        if not config.metrics_summary:
            hidden |= METRICS_PATHS
        self.hidden = frozenset(hidden)

    def check(self, scope: Scope, path: str) -> APIError | None:
        """A refusal that needs no body: headers, hidden paths, admission."""
        if header_bytes(scope) > self.config.max_header_bytes:
            return headers_too_large(self.config.max_header_bytes)
        if path in self.hidden:
            return APIError(404, "no such endpoint", code="not_found")
        if path not in HEALTH_PATHS and self.active >= self.config.max_active_requests:
            return router_overloaded(self.config.retry_after_s)
        return None

    def count(self, status: int) -> None:
        self.refused[status] = self.refused.get(status, 0) + 1


def _relative_path(scope: Scope) -> str:
    """The path inside the app (Serve mounts it under its route prefix)."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path.rstrip("/") or "/"


class GuardMiddleware:
    """Pure ASGI middleware applying the replica's `RequestGuard` (see module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app_state = getattr(scope.get("app"), "state", None)
        guard: RequestGuard | None = getattr(app_state, "guard", None)
        if scope["type"] != "http" or guard is None:
            await self.app(scope, receive, send)
            return
        path = _relative_path(scope)
        refusal = guard.check(scope, path)
        if refusal is not None:
            guard.count(refusal.status)
            await send_error(send, refusal)
            return
        if path in HEALTH_PATHS:
            await self.app(scope, receive, send)
            return
        auth = getattr(app_state, "auth", None)
        if path not in OPEN_PATHS and isinstance(auth, Authenticator) and auth.required:
            try:
                caller = auth.caller(authorization_header(scope))
            except AuthenticationError as exc:
                guard.count(401)
                # NOTE: a body may be on its way and is never read: close the connection.
                await send_error(send, to_api_error(exc), close=scope.get("method") not in BODYLESS)
                return
            scope["state"] = {**scope.get("state", {}), CALLER_STATE: caller}
        guard.active += 1
        try:
            await guard.body.forward(self.app, scope, receive, send)
        finally:
            guard.active -= 1


async def send_error(send: Send, err: APIError, *, close: bool = False) -> None:
    """Answer with an OpenAI-shaped error straight from ASGI (no framework involved)."""
    payload = json.dumps(error_body(err)).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    headers += [(k.encode(), v.encode()) for k, v in (err.headers or {}).items()]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
