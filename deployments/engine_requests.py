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
from collections.abc import Iterator
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
    """(vLLM's request, None), or (None, an OpenAI error body) when it does not validate.

    vLLM's own validators raise `VLLMValidationError` (not wrapped by pydantic, as
    vLLM's server expects): it is a client's error too."""
    from vllm.exceptions import VLLMValidationError

    try:
        request = strict_model(method).model_validate(body)
    except ValidationError as exc:
        return None, _refusal(exc.errors())
    except VLLMValidationError as exc:
        message = str(exc.args[0] if exc.args else exc)
        return None, _error(message, "BadRequestError", exc.parameter)
    errors = _lazy_part_errors(request)
    return (None, _refusal(errors)) if errors else (request, None)


def _lazy_part_errors(request: Any) -> list[Any]:
    """Validate the message fields vLLM's model leaves lazy, here and once; their errors.

    vLLM types `content` parts as an `Iterable`, which pydantic validates only when the
    chat template is rendered (where vLLM turns a bad part into a 400 without naming it).
    They are made lists now, so a bad part is a 400 naming `messages.<i>.content.<j>`
    before the engine sees the request.
    """
    for index, message in enumerate(getattr(request, "messages", None) or ()):
        if not isinstance(message, dict):
            continue
        for key, value in message.items():
            if isinstance(value, Iterator):  # pydantic's lazy validator of an Iterable
                try:
                    message[key] = list(value)
                except ValidationError as exc:
                    where = ("messages", index, key)
                    return [{**e, "loc": (*where, *e["loc"])} for e in exc.errors()]
    return []


def _error(message: str, kind: str, param: str | None) -> dict[str, Any]:
    return {"error": {"message": message[:1000], "type": kind, "param": param, "code": 400}}


# Names pydantic puts in an error's location for the member of a union it tried.
_MEMBER_NAMES = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


def _refusal(errors: list[Any]) -> dict[str, Any]:
    """The error of the first field that failed, as the client named it: for a union
    (`stop`, `messages`), the member's complaint that is about the value, not the one
    that only says it is another type, and no member names in `param`."""
    field = errors[0]["loc"][:1]
    members: dict[tuple[Any, ...], list[Any]] = {}
    for error in (e for e in errors if e["loc"][:1] == field):
        loc = error["loc"]
        cut = next((i for i, p in enumerate(loc) if not _client_named(p)), len(loc))
        members.setdefault(tuple(loc[: cut + 1]), []).append(error)

    def fit(group: list[Any]) -> tuple[int, int]:
        # the member the client meant: fewest complaints, and not only "another type"
        return len(group), sum(str(e["type"]).endswith("_type") for e in group)

    group = min(members.values(), key=fit)
    first = next((e for e in group if not str(e["type"]).endswith("_type")), group[0])
    parts = [str(p) for p in first["loc"] if _client_named(p)]
    param = ".".join(parts) or None
    if first["type"] == "extra_forbidden":
        message = f"{param}: unsupported parameter: vLLM does not know it (refused, not ignored)"
        kind = UNSUPPORTED
    else:
        reason = str(first["msg"]).removeprefix("Value error, ")
        message = f"{param}: {reason}" if param else reason
        kind = "BadRequestError"
    return _error(message, kind, param)


def plain(item: Any) -> Any:
    """An item of a pool's answer as JSON-ready data: SSE strings stay as they are."""
    if isinstance(item, str | dict):
        return item
    if isinstance(item, list):
        return [plain(x) for x in item]
    return item.model_dump(mode="json")


def _client_named(part: Any) -> bool:
    if isinstance(part, int):
        return True
    text = str(part)
    return text.isidentifier() and text.islower() and text not in _MEMBER_NAMES
