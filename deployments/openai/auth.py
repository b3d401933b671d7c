"""Authentication of API requests: `Authorization: Bearer <key>` -> the `Caller`.

One FastAPI dependency (`Authenticated`) on every `/v1` endpoint; `/health` stays open
for probes. The check is a dictionary lookup and one SHA-256 against the ingress's
in-memory `KeyRing` (tenancy/keys.py), which a background loop reloads from the
database: no request waits on the database, and keys never reach a log.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from core.errors import AuthenticationError, EngineUnavailableError
from tenancy.config import AuthConfig
from tenancy.keys import Caller, KeyRing, bearer_token

TOKEN_CHARS = 256  # longer is not one of our keys; refuse before hashing


class Authenticator:
    """The ingress's auth state: the mode, and the keys it currently accepts."""

    def __init__(self, config: AuthConfig, ring: KeyRing | None = None) -> None:
        self.config = config
        self.ring = ring or KeyRing()

    def caller(self, authorization: str | None) -> Caller | None:
        """The caller, None when auth is off; AuthenticationError when the key is bad."""
        if self.config.mode == "off":
            return None
        token = bearer_token(authorization)
        if token is None:
            raise AuthenticationError(
                "missing API key: send it as `Authorization: Bearer <key>` (the openai "
                "client's api_key); `switchyard keys create` makes one"
            )
        caller = self.ring.check(token) if len(token) <= TOKEN_CHARS else None
        if caller is None:
            raise AuthenticationError("invalid API key (unknown, revoked or malformed)")
        return caller


def authenticate(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> Caller | None:
    auth: Authenticator | None = getattr(request.app.state, "auth", None)
    if auth is None:  # NOTE: only before the ingress constructor ran: nothing is served
        raise EngineUnavailableError("the router is starting; retry shortly")
    return auth.caller(authorization)


Authenticated = Annotated[Caller | None, Depends(authenticate)]
