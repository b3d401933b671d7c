"""The one error mapper: every failure becomes an OpenAI-shaped error response.

    {"error": {"message": ..., "type": ..., "param": ..., "code": ...}}

Client mistakes get a 4xx that says what to fix. Server-side failures get a 5xx whose
message is fixed text chosen here: exception strings from engines or Ray carry
tracebacks and internal paths and never reach a client (they are logged instead).

Exceptions the mapper knows (raised anywhere on the request path):

    RequestValidationError / ValidationError  malformed or wrong-typed body   -> 400
    APIError(status, ...)                     raised by the ingress itself     -> status
    PromptError (ContextLengthError)          request cannot be served as asked -> 400
    PoolNotAllowedError                       pool outside the client's tier    -> 403
    UnknownModelError                         no such model or pool             -> 404
    NotImplementedError                       a feature we do not have          -> 501
    EngineUnavailableError                    pool down, dead or not prepared   -> 503
    EngineError / anything else               sanitized                         -> 500
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from models.engines.base import EngineError, EngineUnavailableError, PromptError
from routing.planner import PoolNotAllowedError
from routing.policy import UnknownModelError

logger = logging.getLogger(__name__)


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
    msg = str(first.get("msg", "invalid request"))
    if first.get("type") == "json_invalid":
        return APIError(400, "request body is not valid JSON", code="invalid_json")
    message = f"{param}: {msg}" if param else msg
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return APIError(400, message, param=param)


def to_api_error(exc: BaseException) -> APIError:
    """Translate any exception into the APIError the client will see."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, RequestValidationError):
        return _validation_api_error(list(exc.errors()))
    if isinstance(exc, ValidationError):
        return _validation_api_error(list(exc.errors()))
    if isinstance(exc, PromptError):
        return APIError(400, exc.message, param=exc.param, code=exc.code)
    if isinstance(exc, PoolNotAllowedError):
        return APIError(403, str(exc), param="model", code="pool_not_allowed")
    if isinstance(exc, UnknownModelError):
        return APIError(404, str(exc), param="model", code="model_not_found")
    if isinstance(exc, NotImplementedError):
        return APIError(501, "this feature is not implemented", type="not_implemented")
    if isinstance(exc, EngineUnavailableError):
        return APIError(503, exc.message, code="pool_unavailable")
    if isinstance(exc, EngineError):
        logger.error("engine error: %r", exc.__cause__ or exc)
        return APIError(500, exc.message, code="engine_error")
    logger.exception("unexpected error on the request path", exc_info=exc)
    return APIError(500, "internal server error", code="internal_error")


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
