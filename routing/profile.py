"""What routing knows about one request, computed once before planning.

The ingress builds a `RequestProfile` from the request (its text, what it needs of a
model: chat, tools, structured output; the tokens it asks for) and the models the pools
serve: the effective `max_tokens` on each pool (the client's, or that model's default),
the pools that cannot serve it and why, and the classifier's readings of its one
embedding. The planner
reads only this, so the cost and latency it weighs are those of the request that will
run, and it never picks a pool (or a fallback) that would then have to refuse it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from routing.choice import LearnedScores


class ModelLimits(Protocol):
    """What the profile reads from a catalog entry (`models.catalog.ModelSpec`)."""

    @property
    def id(self) -> str: ...

    def capabilities(self) -> frozenset[str]: ...

    @property
    def max_tokens(self) -> int: ...

    @property
    def default_max_tokens(self) -> int: ...


class Refusal(NamedTuple):
    """Why a pool cannot serve the request, as the 400 would say it."""

    param: str
    message: str
    code: str | None = None  # `capability_not_supported` when the model cannot do it


@dataclass(frozen=True)
class RequestProfile:
    model: str  # what the client asked for: `auto`, a pool name or a model id
    text: str  # the text routing reads (chat messages joined)
    prompt_tokens: float  # estimated from characters
    max_tokens: Mapping[str, int]  # pool -> tokens it would generate at most
    unservable: Mapping[str, Refusal] = field(default_factory=dict)  # pool -> why not
    similarities: Mapping[str, float] = field(default_factory=dict)  # semantic classifier
    learned: LearnedScores | None = None  # the learned router's reading (routing.choice)

    def servable(self, pool: str) -> bool:
        return pool not in self.unservable


def profile_request(
    model: str,
    text: str,
    *,
    needs: frozenset[str],
    requested_max_tokens: int | None,
    min_tokens: int,
    pool_models: Mapping[str, ModelLimits],
    chars_per_token: float,
    similarities: Mapping[str, float] | None = None,
    learned: LearnedScores | None = None,
) -> RequestProfile:
    """The profile of one request against the pools' models (`pool_models`: pool -> spec)."""
    max_tokens: dict[str, int] = {}
    unservable: dict[str, Refusal] = {}
    for pool, spec in pool_models.items():
        tokens = requested_max_tokens or spec.default_max_tokens
        max_tokens[pool] = tokens
        missing = needs - spec.capabilities()
        if missing:
            unservable[pool] = _incapable(pool, spec.id, min(missing))
        elif tokens > spec.max_tokens:
            message = f"max_tokens={tokens} exceeds the limit of {spec.max_tokens} for model "
            unservable[pool] = Refusal("max_tokens", message + repr(spec.id))
        elif min_tokens > tokens:
            message = f"min_tokens={min_tokens} exceeds max_tokens={tokens}"
            unservable[pool] = Refusal("min_tokens", message)
    return RequestProfile(
        model=model,
        text=text,
        prompt_tokens=len(text) / chars_per_token,
        max_tokens=max_tokens,
        unservable=unservable,
        similarities=dict(similarities or {}),
        learned=learned,
    )


CAPABILITY_CODE = "capability_not_supported"
# What a request that needs a capability sent to need it: the field a refusal names.
CAPABILITY_FIELDS = {
    "chat": "model",
    "completion": "model",
    "tools": "tools",
    "structured_output": "response_format",
}


def _incapable(pool: str, model: str, capability: str) -> Refusal:
    if capability == "chat":
        message = f"model {model!r} (pool {pool!r}) is completion-only; use /v1/completions"
    else:
        what = capability.replace("_", " ")
        message = f"model {model!r} (pool {pool!r}) does not support {what}"
    return Refusal(CAPABILITY_FIELDS.get(capability, "model"), message, CAPABILITY_CODE)
