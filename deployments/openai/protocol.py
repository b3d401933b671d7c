"""OpenAI wire models: what clients send and what Switchyard answers.

Every field a client sends is honoured or refused with a 400 naming it, never dropped:
an unknown field is refused too (`unsupported_parameter`), since a parameter that is
silently ignored (say `ignore_eos` in a benchmark) gives the client a wrong answer
without telling it. Fields we know but cannot honour (tools, n > 1, echo) are refused
the same way. Limits that depend on the model (like
`max_tokens` against its context) are checked later, once the pool is known.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

# Sanity bounds on what a client sends: limits that depend on the model (max_tokens
# against its context) are checked once the pool is known; these only keep absurd values
# (10**30 tokens, a megabyte-long model name) from reaching routing, logs or an engine.
MAX_TOKENS_BOUND = 1_048_576
NAME_CHARS = 256
MAX_STOP = 4
STOP_CHARS = 256
MAX_STOP_TOKEN_IDS = 64
MAX_TOP_LOGPROBS = 20  # OpenAI's chat limit; vLLM's default limit too


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class WireModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


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

    model: str = Field(min_length=1, max_length=NAME_CHARS)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_BOUND)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**64)
    presence_penalty: float = Field(default=0.0, ge=-2, le=2)
    frequency_penalty: float = Field(default=0.0, ge=-2, le=2)
    user: str | None = Field(default=None, max_length=NAME_CHARS)
    switchyard: SwitchyardOptions | None = None
    # vLLM's sampling extensions (what `vllm bench serve` and vLLM users send).
    top_k: int | None = Field(default=None, ge=-1, le=MAX_TOKENS_BOUND)
    min_tokens: int = Field(default=0, ge=0, le=MAX_TOKENS_BOUND)
    repetition_penalty: float = Field(default=1.0, gt=0, le=2)
    ignore_eos: bool = False
    stop_token_ids: list[int] | None = Field(default=None, max_length=MAX_STOP_TOKEN_IDS)

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    @property
    def requested_logprobs(self) -> int | None:
        """Top alternatives per token the client wants back (None: no logprobs)."""
        return None

    @field_validator("stop_token_ids")
    @classmethod
    def _token_ids(cls, ids: list[int] | None) -> list[int] | None:
        if ids and any(not 0 <= i < 2**31 for i in ids):
            raise ValueError("token ids must be between 0 and 2**31 - 1")
        return ids

    @field_validator("n")
    @classmethod
    def _only_one_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError("only n=1 is supported")
        return n

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > MAX_STOP:
            raise ValueError(f"stop accepts at most {MAX_STOP} sequences")
        if any(len(s) > STOP_CHARS for s in stops):
            raise ValueError(f"a stop sequence may have at most {STOP_CHARS} characters")
        return stop

    def stop_list(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_BOUND)
    tools: list[Any] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)

    @field_validator("tools")
    @classmethod
    def _no_tools(cls, tools: list[Any] | None) -> list[Any] | None:
        if tools:
            raise ValueError("tools are not supported")
        return tools

    @field_validator("top_logprobs")
    @classmethod
    def _top_needs_logprobs(cls, top: int | None, info: ValidationInfo) -> int | None:
        if top is not None and not info.data.get("logprobs"):
            raise ValueError("top_logprobs requires logprobs: true")
        return top

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def requested_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


class RouteRequest(SamplingFields):
    """`POST /v1/route`: a chat or completion body; only what routing reads matters.

    A dry run takes either endpoint's body as is, so fields it does not read are ignored
    here (the real request refuses what it cannot honour).
    """

    model_config = ConfigDict(extra="ignore")

    messages: list[ChatMessageIn] | None = None
    prompt: str | list[str] | None = Field(default=None, validate_default=True)

    @field_validator("prompt")
    @classmethod
    def _has_text(cls, prompt: str | list[str] | None, info: ValidationInfo) -> Any:
        if not info.data.get("messages") and not prompt:
            raise ValueError("give messages or prompt")
        return prompt

    @property
    def text(self) -> str:
        if self.messages:
            return "\n".join(m.text() for m in self.messages)
        return self.prompt if isinstance(self.prompt, str) else "\n".join(self.prompt or [])


class CompletionRequest(SamplingFields):
    prompt: str | list[str]
    echo: bool = False
    suffix: str | None = None
    logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt: str | list[str]) -> str | list[str]:
        if isinstance(prompt, list) and len(prompt) != 1:
            raise ValueError("prompt must be one string (batched prompts are not supported)")
        return prompt

    @field_validator("echo", "suffix")
    @classmethod
    def _unsupported(cls, value: Any, info: ValidationInfo) -> Any:
        if value:
            raise ValueError(f"{info.field_name} is not supported")
        return value

    @property
    def requested_logprobs(self) -> int | None:
        return self.logprobs

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


class ClassifyRequest(ChatCompletionRequest):
    """`POST /v1/classify`: a chat completion's body, refused where chat refuses it;
    `model` defaults to `auto`. Nothing is generated, so sampling fields go unused."""

    model: str = Field(default="auto", min_length=1, max_length=NAME_CHARS)


class TaskReading(BaseModel):
    type: str = Field(description="A task type of `routing.taxonomy`, or `other`.")
    confidence: float = Field(description="0..1; 0 for `other` (no evidence).")
    evidence: list[str] = Field(description="The markers that matched, strongest first.")
    scores: dict[str, float] = Field(description="Weighted evidence of every task type.")


class ComplexityReading(BaseModel):
    level: str = Field(description="simple, moderate, complex or expert.")
    confidence: float = Field(description="0.5 on a level boundary, 1 far from both.")
    score: float = Field(description="The additive score the level is read from.")
    evidence: list[str] = Field(description="Length and the markers that matched.")


class RuleFeatures(BaseModel):
    """What the rules measured (`routing.rules.extract_features`)."""

    approx_tokens: int
    code_markers: list[str]
    complex_markers: list[str]


class RuleReading(BaseModel):
    """The pool the rules alone choose, before classifiers, constraints and the score."""

    pool: str
    reason: str
    detail: str


class SemanticReading(BaseModel):
    similarities: dict[str, float] = Field(description="Best cosine per pool's examples.")
    min_similarity: float
    pool: str | None = Field(description="Most similar pool at or above min_similarity.")
    confidence: float = Field(description="Softmax share of `pool` (or of no match).")


class LearnedReading(BaseModel):
    rule: Literal["threshold", "quality_target", "tradeoff"] = Field(
        description="`threshold`: a binary router; the others: an N-pool router's rule."
    )
    scores: dict[str, float] = Field(
        description="Binary: P(strong needed) and P(weak will do); N-pool: P(correct) per pool."
    )
    threshold: float | None = Field(default=None, description="Score threshold or quality target.")
    lam: float | None = Field(default=None, description="`tradeoff`: the weight of cost.")
    pool: str | None = Field(description="What the learned router alone would choose.")
    confidence: float = Field(description="How far the choice is from flipping, 0..1.")


class ClassifyResponse(BaseModel):
    """What routing reads in a request and what it decides, without generating."""

    object: Literal["switchyard.classification"] = "switchyard.classification"
    task: TaskReading
    complexity: ComplexityReading
    features: RuleFeatures
    rules: RuleReading
    semantic: SemanticReading | None = Field(description="With `routing.semantic` on.")
    learned: LearnedReading | None = Field(description="With `routing.learned` set.")
    route: RoutePlanResponse = Field(description="The decision, as `POST /v1/route` gives it.")


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    """OpenAI's chat `logprobs`: one entry per generated token."""

    content: list[ChatTokenLogprob]
    refusal: None = None


class CompletionLogprobs(BaseModel):
    """OpenAI's (legacy) completions `logprobs`."""

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatMessageOut
    finish_reason: str | None
    logprobs: ChatLogprobs | None = None


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
    logprobs: ChatLogprobs | None = None


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
    logprobs: CompletionLogprobs | None = None


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


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class FeedbackRequest(WireModel):
    """`POST /v1/feedback`: a caller's verdict on one of its own responses."""

    id: str = Field(min_length=1, max_length=64, description="The response's `id`.")
    score: float = Field(ge=0, le=1, description="0 (bad) to 1 (good).")
    label: str | None = Field(default=None, max_length=64, description="e.g. `wrong`.")
    comment: str | None = Field(default=None, max_length=4096)


class FeedbackResponse(BaseModel):
    object: Literal["feedback"] = "feedback"
    id: int
    request_id: str
    replaced: bool = Field(
        default=False, description="This verdict replaced an earlier one on the response."
    )


class ErrorResponse(BaseModel):
    """Every non-2xx answer: `{"error": {"message", "type", "param", "code"}}`."""

    error: ErrorDetail
