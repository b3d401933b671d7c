"""What `/openapi.json` declares: every status a client can get, with its body.

FastAPI documents only the 200 and a 422 we never send. Clients and fuzzers that read
the schema need the real answers: the error shape for each refusal (400, 401, 403, 404,
408, 409, 413, 429, 431, 5xx) and the event stream a `stream: true` request gets.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from deployments.openai.protocol import ErrorResponse

_WHY = {
    400: "Invalid request: the message says what to fix, `param` names the field.",
    401: "No API key, or an unknown, revoked or malformed one (`invalid_api_key`).",
    403: "Not allowed for this client (a pool or tier outside its tier, another "
    "tenant's response).",
    404: "Unknown model or response id, or an endpoint that does not exist or is off.",
    408: "The request body did not arrive within the body timeout.",
    409: "No longer possible: feedback after its window closed (`feedback_window_closed`).",
    413: "The request body is larger than the configured limit.",
    429: "The router or every pool tried is at capacity; see Retry-After.",
    431: "The request headers are larger than the configured limit.",
    500: "Engine failure (a fixed message, never internals).",
    503: "Pool unavailable or starting (cold start); see Retry-After when given.",
    504: "No answer within the request timeout.",
}
_REFUSALS = (401, 404, 408, 413, 429, 431)  # the guard's and auth's, on every /v1 endpoint
GENERATION_ERRORS = (400, 403, *_REFUSALS, 500, 503, 504)
ROUTE_ERRORS = (400, 403, *_REFUSALS)
CLASSIFY_ERRORS = ROUTE_ERRORS  # a dry run too: nothing reaches a pool
READ_ERRORS = _REFUSALS
FEEDBACK_ERRORS = (400, 403, 409, *_REFUSALS)


def responses(ok: type[BaseModel] | None, errors: tuple[int, ...], stream: bool = False) -> Any:
    """The `responses=` of a route: its 200 body (and event stream) and its errors."""
    declared: dict[int | str, dict[str, Any]] = {
        status: {"model": ErrorResponse, "description": _WHY[status]}
        for status in sorted(set(errors))
    }
    if ok is not None:
        declared[200] = {"model": ok, "description": "Success."}
    if stream:
        # The body is vLLM's (its own response models), so it is declared as an object.
        declared[200] = {
            "description": "The answer, or with `stream: true` an event stream.",
            "content": {
                "application/json": {"schema": {"type": "object"}},
                "text/event-stream": {"schema": {"type": "string"}},
            },
        }
    return declared


def openapi_with_errors(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema without the 422 it adds to every route with a body (we answer 400)."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                operation.get("responses", {}).pop("422", None)
        schemas = schema.get("components", {}).get("schemas", {})
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        app.openapi_schema = schema
    return app.openapi_schema
