"""OpenAI wire models: what clients send and what Switchyard answers.

Requests are lenient the way OpenAI's own server is: unknown fields are accepted and
logged, so a newer client never breaks; fields we know but cannot honour (tools, n > 1,
images) are refused with a 400 naming the field. Limits that depend on the model (like
`max_tokens` against its context) are checked later, once the pool is known.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class WireModel(BaseModel):
    model_config = ConfigDict(extra="allow")


class TextPart(WireModel):
    type: Literal["text"]
    text: str


class ChatMessageIn(WireModel):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(WireModel):
    include_usage: bool = False


class SwitchyardOptions(BaseModel):
    """The `switchyard` request extension: how the client wants its request routed.

    Strict, unlike the rest of the wire models: a misspelt wish is a 400, not ignored.
    """

    model_config = ConfigDict(extra="forbid")

    strategy: Literal["route", "cascade", "speculative"] | None = None
    min_quality: float | None = Field(default=None, ge=0, le=1)
    max_cost_usd: float | None = Field(default=None, ge=0)
    latency_budget_ms: float | None = Field(default=None, gt=0)
    tier: str | None = Field(default=None, min_length=1, max_length=64)


class SamplingFields(WireModel):
    """Fields shared by chat and text completions."""

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int = Field(default=1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float = Field(default=0.0, ge=-2, le=2)
    frequency_penalty: float = Field(default=0.0, ge=-2, le=2)
    user: str | None = None
    switchyard: SwitchyardOptions | None = None

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    @model_validator(mode="after")
    def _only_one_choice(self) -> SamplingFields:
        if self.n != 1:
            raise ValueError("only n=1 is supported")
        if isinstance(self.stop, list) and len(self.stop) > 4:
            raise ValueError("stop accepts at most 4 sequences")
        return self

    def stop_list(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: list[Any] | None = None
    logprobs: bool | None = None

    @model_validator(mode="after")
    def _supported(self) -> ChatCompletionRequest:
        if self.tools:
            raise ValueError("tools are not supported")
        if self.logprobs:
            raise ValueError("logprobs are not supported yet")
        return self

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class RouteRequest(SamplingFields):
    """`POST /v1/route`: a chat or completion body; only what routing reads matters."""

    messages: list[ChatMessageIn] | None = None
    prompt: str | list[str] | None = None

    @model_validator(mode="after")
    def _has_text(self) -> RouteRequest:
        if not self.messages and not self.prompt:
            raise ValueError("give messages or prompt")
        return self

    @property
    def text(self) -> str:
        if self.messages:
            return "\n".join(m.text() for m in self.messages)
        return self.prompt if isinstance(self.prompt, str) else "\n".join(self.prompt or [])


class CompletionRequest(SamplingFields):
    prompt: str | list[str]
    echo: bool = False
    suffix: str | None = None
    logprobs: int | None = None
    max_tokens: int | None = Field(default=16, ge=1)

    @model_validator(mode="after")
    def _supported(self) -> CompletionRequest:
        if isinstance(self.prompt, list) and len(self.prompt) != 1:
            raise ValueError("prompt must be one string (batched prompts are not supported)")
        if self.echo or self.suffix or self.logprobs:
            raise ValueError("echo, suffix and logprobs are not supported")
        return self

    @property
    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class RouteInfo(BaseModel):
    """The `switchyard` response extension: who served the request, how and why."""

    pool: str
    model: str
    strategy: str = "route"
    reason: str
    detail: str
    pools_tried: list[str] = Field(default_factory=list)
    fallback: bool = False
    escalated: bool = False
    confidence: float | None = None
    confidence_method: str | None = None
    threshold: float | None = None
    mean_logprob: float | None = None
    discarded_tokens: int = 0
    discarded_engine_s: float = 0.0
    speculative_winner: str | None = None
    notes: list[str] = Field(default_factory=list)


class RoutePlanResponse(BaseModel):
    """The decision `POST /v1/route` returns, without generating anything."""

    object: Literal["switchyard.route"] = "switchyard.route"
    strategy: str
    pool: str
    model: str
    target: str | None
    reason: str
    detail: str
    confidence_method: str | None
    threshold: float | None
    fallbacks: list[str]
    scores: dict[str, float]
    similarities: dict[str, float]
    notes: list[str]


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatMessageOut
    finish_reason: str | None
    logprobs: None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: Usage
    switchyard: RouteInfo


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDelta
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    switchyard: RouteInfo | None = None


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: str | None
    logprobs: None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    switchyard: RouteInfo | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "switchyard"
    switchyard: dict[str, Any] = Field(default_factory=dict)


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
