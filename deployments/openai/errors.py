"""The one error mapper: every failure becomes an OpenAI-shaped error response.

    {"error": {"message": ..., "type": ..., "param": ..., "code": ...}}

Client mistakes get a 4xx that says what to fix. Server-side failures get a 5xx whose
message is fixed text chosen here or by a domain error: exception strings from engines
or Ray carry tracebacks and internal paths and never reach a client (they are logged).

What the mapper knows (raised anywhere on the request path):

    Starlette's HTTPException                 unknown path, wrong method, body
                                              FastAPI could not parse           -> its status
    RequestValidationError / ValidationError  malformed or wrong-typed body   -> 400
    APIError(status, ...)                     refusals of the HTTP layer itself
                                              (limits, headers)                 -> status
    core.errors domain errors                 the table `_STATUS` below         -> 400..504
    NotImplementedError                       a feature we do not have          -> 501
    anything else                             sanitized                         -> 500

`outcome_of` gives the metrics label of any of these, from the same classification.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from core.errors import (
    AccountingUnavailableError,
    AuthenticationError,
    CircuitOpenError,
    ClientError,
    ColdStartError,
    ConflictError,
    EngineUnavailableError,
    NotAllowedError,
    NotFoundError,
    PoolOverloadedError,
    PoolTimeoutError,
    QuotaExceededError,
    RateLimitedError,
    SwitchyardError,
)

logger = logging.getLogger(__name__)

MESSAGE_CHARS = 1024  # longer messages are cut: they may quote what the client sent

# On a 429 that says the router or a pool is full (not a tenant's own limit): the proxy
# edge learns its admission limit from these only (`deployments/admission.py`).
CAPACITY_HEADER = "x-switchyard-capacity"
CAPACITY_FULL = "full"


class APIError(Exception):
    """An error the ingress raises on purpose, with its status and OpenAI fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        if len(message) > MESSAGE_CHARS:
            message = message[: MESSAGE_CHARS - 1] + "…"
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or _default_type(status)
        self.param = param
        self.code = code
        self.headers = headers


def _default_type(status: int) -> str:
    if status == 403:
        return "permission_error"
    if status == 404:
        return "not_found_error"
    if status == 429:
        return "rate_limit_error"
    if status < 500:
        return "invalid_request_error"
    return "server_error"


def _validation_api_error(errors: list[Any]) -> APIError:
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body",)]
    param = ".".join(loc) or None
    msg = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
    if first.get("type") == "json_invalid":
        return APIError(400, "request body is not valid JSON", code="invalid_json")
    if not loc and first.get("type") == "missing":
        return APIError(400, "request body is missing: send a JSON object", code="invalid_json")
    if not loc and first.get("type") == "model_attributes_type":
        return APIError(400, "request body must be a JSON object", code="invalid_json")
    if first.get("type") == "extra_forbidden":
        msg = (
            "unsupported parameter: Switchyard does not implement it, so it is refused, not ignored"
        )
        return APIError(400, f"{param}: {msg}", param=param, code="unsupported_parameter")
    message = f"{param}: {msg}" if param else msg
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return APIError(400, message, param=param)


def _http_api_error(exc: HTTPException) -> APIError:
    """Starlette/FastAPI's own refusals (routing, method, body parsing) in our shape."""
    if exc.status_code == 400:  # FastAPI: not UTF-8, nested too deep, ...
        return APIError(400, "request body is not valid JSON", code="invalid_json")
    if exc.status_code == 404:
        return APIError(404, "no such endpoint", code="not_found")
    if exc.status_code == 405:
        return APIError(
            405, "method not allowed", code="method_not_allowed", headers=dict(exc.headers or {})
        )
    return APIError(exc.status_code, str(exc.detail), headers=dict(exc.headers or {}))


# Most specific first: the first class an error is an instance of gives its status.
_STATUS: tuple[tuple[type[SwitchyardError], int], ...] = (
    (NotFoundError, 404),
    (AuthenticationError, 401),
    (RateLimitedError, 429),
    (QuotaExceededError, 429),
    (NotAllowedError, 403),
    (ConflictError, 409),
    (ClientError, 400),
    (PoolOverloadedError, 429),
    (PoolTimeoutError, 504),
    (EngineUnavailableError, 503),
    (ColdStartError, 503),
    (CircuitOpenError, 503),
    (AccountingUnavailableError, 503),
    (SwitchyardError, 500),
)


def _domain_api_error(exc: SwitchyardError) -> APIError:
    status = getattr(exc, "status", None) or next(
        code for cls, code in _STATUS if isinstance(exc, cls)
    )
    if status == 500:
        logger.error("engine error: %r", exc.__cause__ or exc)
    headers = dict(exc.headers)
    if exc.retry_after_s:
        headers["retry-after"] = str(exc.retry_after_s)
    if status == 401:
        headers["www-authenticate"] = "Bearer"
    if isinstance(exc, PoolOverloadedError):
        headers[CAPACITY_HEADER] = CAPACITY_FULL
    return APIError(
        status, exc.message, type=exc.error_type, param=exc.param, code=exc.code,
        headers=headers or None,
    )  # fmt: skip


def to_api_error(exc: BaseException) -> APIError:
    """Translate any exception into the APIError the client will see."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, SwitchyardError):
        return _domain_api_error(exc)
    if isinstance(exc, HTTPException):
        return _http_api_error(exc)
    if isinstance(exc, RequestValidationError | ValidationError):
        return _validation_api_error(list(exc.errors()))
    if isinstance(exc, NotImplementedError):
        return APIError(501, "this feature is not implemented", type="not_implemented")
    logger.exception("unexpected error on the request path", exc_info=exc)
    return APIError(500, "internal server error", code="internal_error")


def outcome_of(exc: BaseException | None) -> str:
    """The `outcome` label of a request that ended with `exc` (None: success)."""
    if exc is None:
        return "ok"
    if isinstance(exc, SwitchyardError):
        return exc.outcome
    status = to_api_error(exc).status
    if status == 401:
        return "unauthorized"
    if status == 429:
        return "rejected"
    if status == 503:
        return "unavailable"
    if status == 504:
        return "timeout"
    return "client_error" if status < 500 else "error"


def error_body(err: APIError) -> dict[str, Any]:
    return {
        "error": {"message": err.message, "type": err.type, "param": err.param, "code": err.code}
    }


def create_error_response(exc: BaseException) -> JSONResponse:
    err = to_api_error(exc)
    return JSONResponse(error_body(err), status_code=err.status, headers=err.headers)


def sse_error_event(exc: BaseException) -> str:
    """An error after streaming began: one SSE event the `openai` client raises on."""
    return f"data: {json.dumps(error_body(to_api_error(exc)))}\n\n"
