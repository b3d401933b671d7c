"""Authentication of API requests: `Authorization: Bearer <key>` -> the `Caller`.

The key is checked from the request's headers before a byte of its body is read: the
request guard (deployments/openai/guard.py) calls `Authenticator.caller` on every path
but `/health` and the docs, answers a missing or bad key with the 401 at once, and
leaves the `Caller` in the ASGI scope's state (`CALLER_STATE`). The FastAPI dependency
`Authenticated` on every `/v1` endpoint takes it from there; only where the guard did not
run (an app without one, e.g. in unit tests) does it check the header itself.

The check is a dictionary lookup and one SHA-256 against the ingress's in-memory
`KeyRing` (tenancy/keys.py), which a background loop reloads from the database: no
request waits on the database, and keys never reach a log. Header values are hostile:
one longer than `AUTHORIZATION_CHARS` is refused before it is parsed.
"""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Header, Request
from starlette.types import Scope

from core.errors import AuthenticationError, EngineUnavailableError
from tenancy.config import AuthConfig
from tenancy.keys import Caller, KeyRing, bearer_token

TOKEN_CHARS = 256  # longer is not one of our keys; refuse before hashing
AUTHORIZATION_CHARS = TOKEN_CHARS + 32  # room for the scheme and spaces around the token
CALLER_STATE = "switchyard.caller"  # key in scope["state"]: the Caller the guard found
INVALID_KEY = "invalid API key (unknown, revoked or malformed)"


class Authenticator:
    """The ingress's auth state: the mode, and the keys it currently accepts."""

    def __init__(self, config: AuthConfig, ring: KeyRing | None = None) -> None:
        self.config = config
        self.ring = ring or KeyRing()

    @property
    def required(self) -> bool:
        return self.config.mode == "keys"

    def caller(self, authorization: str | None) -> Caller | None:
        """The caller, None when auth is off; AuthenticationError when the key is bad."""
        if not self.required:
            return None
        if authorization is not None and len(authorization) > AUTHORIZATION_CHARS:
            raise AuthenticationError(INVALID_KEY)  # not parsed: no key is this long
        token = bearer_token(authorization)
        if token is None:
            raise AuthenticationError(
                "missing API key: send it as `Authorization: Bearer <key>` (the openai "
                "client's api_key); `switchyard keys create` makes one"
            )
        caller = self.ring.check(token) if len(token) <= TOKEN_CHARS else None
        if caller is None:
            raise AuthenticationError(INVALID_KEY)
        return caller


def authorization_header(scope: Scope) -> str | None:
    """The request's first `Authorization` header, straight from the ASGI scope; at most
    AUTHORIZATION_CHARS + 1 characters are decoded, so a huge value costs nothing."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            return bytes(value[: AUTHORIZATION_CHARS + 1]).decode("latin-1")
    return None


def authenticate(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> Caller | None:
    state = request.scope.get("state") or {}
    if CALLER_STATE in state:  # NOTE: the guard checked the key before reading the body
        return cast(Caller | None, state[CALLER_STATE])
    auth: Authenticator | None = getattr(request.app.state, "auth", None)
    if auth is None:  # NOTE: only before the ingress constructor ran: nothing is served
        raise EngineUnavailableError("the router is starting; retry shortly")
    return auth.caller(authorization)


Authenticated = Annotated[Caller | None, Depends(authenticate)]
