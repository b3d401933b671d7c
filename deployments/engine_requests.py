"""A pool's side of a request: vLLM's own request model parses the client's body, and
answers leave the replica as plain data.

The ingress reads only what routing needs and forwards the body as the client sent it
(plus the pool's model, limits and the request id). Here, inside the pool replica,
vLLM's request model validates all of it, strictly: an unknown field is a 400
`unsupported_parameter`, so the allowed set is exactly vLLM's. Answers (vLLM's response
objects, error responses) are turned into JSON-ready dicts before they cross Ray, so
the ingress never needs vLLM's classes (nor vLLM's import time and memory).
"""

from __future__ import annotations

import functools
from typing import Any

from pydantic import ConfigDict, ValidationError

UNSUPPORTED = "unsupported_parameter"  # the `type` of a refusal the ingress maps to a code


@functools.cache
def strict_model(method: str) -> Any:
    """vLLM's request model of `method` (`chat`, `completions`), refusing unknown fields."""
    from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest

    base = {"chat": ChatCompletionRequest, "completions": CompletionRequest}[method]
    return type(
        f"Strict{base.__name__}",
        (base,),
        {"model_config": ConfigDict(extra="forbid", arbitrary_types_allowed=True)},
    )


def parse(method: str, body: dict[str, Any]) -> tuple[Any, dict[str, Any] | None]:
    """(vLLM's request, None), or (None, an OpenAI error body) when it does not validate."""
    try:
        return strict_model(method).model_validate(body), None
    except ValidationError as exc:
        return None, _refusal(exc)


def _refusal(exc: ValidationError) -> dict[str, Any]:
    errors = exc.errors()
    first = errors[0]
    param = ".".join(str(p) for p in first["loc"]) or None
    if first["type"] == "extra_forbidden":
        message = f"{param}: unsupported parameter: vLLM does not know it (refused, not ignored)"
        kind = UNSUPPORTED
    else:
        reason = str(first["msg"]).removeprefix("Value error, ")
        message = f"{param}: {reason}" if param else reason
        kind = "BadRequestError"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more)"
    return {"error": {"message": message[:1000], "type": kind, "param": param, "code": 400}}


def plain(item: Any) -> Any:
    """An item of a pool's answer as JSON-ready data: SSE strings stay as they are."""
    if isinstance(item, str | dict):
        return item
    if isinstance(item, list):
        return [plain(x) for x in item]
    return item.model_dump(mode="json")
