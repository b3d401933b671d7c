"""OpenAI wire models: what clients send and what Switchyard answers.

A generation request is read here only where routing needs it (model, tokens, `n`,
tools, response format, the `switchyard` extension); the pool validates the whole of
it with vLLM's own request model, so what vLLM's server accepts is accepted with the
same meaning. Every field a client sends is honoured or refused with a 400 naming it,
never dropped: an unknown field is refused (`unsupported_parameter`) where vLLM's
server would log and ignore it, since a parameter silently ignored gives the client a
wrong answer without telling it. Responses are vLLM's too; only the `switchyard`
extension (`RouteInfo`) and the endpoints Switchyard adds (route, classify, feedback,
models, embeddings) are defined here.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Literal, Protocol

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from routing.config import Strategy
from routing.planner import AUTO_MODEL
from routing.validity import Expectation

# Sanity bounds on what a client sends: limits that depend on the model (max_tokens
# against its context) are checked once the pool is known; these only keep absurd values
# (10**30 tokens, a megabyte-long model name) from reaching routing, logs or an engine.
MAX_TOKENS_BOUND = 1_048_576
NAME_CHARS = 256
MAX_CHOICES = 16  # `n`: each choice is a whole generation
# vLLM request fields that are the operator's to set: the id (Switchyard sets it), the
# scheduling priority (a client may not pick its own), disaggregated-serving transfers.
RESERVED_FIELDS = ("request_id", "priority", "kv_transfer_params", "ec_transfer_params")


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class WireModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SwitchyardOptions(BaseModel):
    """The `switchyard` request extension: how the client wants its request routed.

    Strict, unlike the rest of the wire models: a misspelt wish is a 400, not ignored.
    """

    model_config = ConfigDict(extra="forbid")

    strategy: Strategy | None = None
    min_quality: float | None = Field(default=None, ge=0, le=1)
    max_cost_usd: float | None = Field(default=None, ge=0)
    latency_budget_ms: float | None = Field(default=None, gt=0)
    tier: str | None = Field(default=None, min_length=1, max_length=64)


class RoutingFields(Protocol):
    """What planning reads of a request body (generation, dry run or classify)."""

    @property
    def model(self) -> str | None: ...

    @property
    def requested_max_tokens(self) -> int | None: ...

    @property
    def min_tokens(self) -> int: ...

    @property
    def switchyard(self) -> SwitchyardOptions | None: ...


def _default_model(data: Any) -> Any:
    """An absent, null or empty `model` is `auto`, as OpenAI clients that omit it expect."""
    if isinstance(data, dict):
        model = data.get("model")
        if model is None or model == "":
            data = {**data, "model": AUTO_MODEL}
    return data


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool | None = False
    continuous_usage_stats: bool | None = False


class _Generation(BaseModel):
    """What routing reads of a generation request; every other field passes through.

    The pool validates the whole request with vLLM's own request model (strict: an
    unknown field is a 400 `unsupported_parameter` there, the allowed set being vLLM's
    fields), so everything vLLM's server accepts is accepted here with its meaning, and
    the ingress never imports vLLM. The fields routing reads are checked here first,
    bounded, since planning and the quota reservation use them before any pool call.
    """

    model_config = ConfigDict(extra="allow")

    model: str = Field(default=AUTO_MODEL, min_length=1, max_length=NAME_CHARS)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_BOUND)
    min_tokens: int = Field(default=0, ge=0, le=MAX_TOKENS_BOUND)
    n: int = Field(default=1, ge=1, le=MAX_CHOICES)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    response_format: dict[str, Any] | None = None
    structured_outputs: dict[str, Any] | None = None
    switchyard: SwitchyardOptions | None = None
    # vLLM's fields that are the operator's, not a client's: declared so that sending one
    # is a 400 naming it (the validator below runs only when the client sent the field).
    request_id: None = None
    priority: None = None
    kv_transfer_params: None = None
    ec_transfer_params: None = None

    @field_validator(*RESERVED_FIELDS, mode="before")
    @classmethod
    def _reserved(cls, value: Any) -> None:
        raise ValueError("set by Switchyard, not by clients")

    @model_validator(mode="before")
    @classmethod
    def _model(cls, data: Any) -> Any:
        return _default_model(data)

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def choices(self) -> int:
        """Answers the request asks for (`n`, times the prompts of a batched completion)."""
        return self.n

    def engine_body(self) -> dict[str, Any]:
        """The request as the client sent it, for vLLM (without Switchyard's extension)."""
        return self.model_dump(exclude_unset=True, exclude={"switchyard"}, mode="json")

    def _json_expected(self) -> tuple[dict[str, Any] | None, bool]:
        """(JSON schema, whether any JSON object will do) of a constrained request."""
        fmt = self.response_format or {}
        if fmt.get("type") == "json_schema":
            schema = (fmt.get("json_schema") or {}).get("schema")
            return (schema if isinstance(schema, dict) else {}), False
        if fmt.get("type") == "json_object":
            return None, True
        wanted = (self.structured_outputs or {}).get("json")
        if isinstance(wanted, str):
            try:
                wanted = json.loads(wanted)
            except ValueError:
                return None, False
        if isinstance(wanted, dict):
            return wanted, False
        return None, bool((self.structured_outputs or {}).get("json_object"))

    def _constrained(self) -> bool:
        kind = (self.response_format or {}).get("type")
        return kind in ("json_schema", "json_object", "structural_tag") or bool(
            self.structured_outputs
        )


class ChatRequest(_Generation):
    """`POST /v1/chat/completions`: vLLM's chat request, read where routing needs it."""

    messages: list[dict[str, Any]] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_BOUND)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    logprobs: bool | None = None

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def text(self) -> str:
        """The conversation's text, for routing (image and audio parts are not text)."""
        return "\n".join(_content_text(m.get("content")) for m in self.messages)

    @property
    def needs(self) -> frozenset[str]:
        """Model capabilities the request needs (`models.catalog.ModelSpec.capabilities`)."""
        needs = {"chat"}
        if self.tools and self.tool_choice != "none":
            needs.add("tools")
        if self._constrained():
            needs.add("structured_output")
        return frozenset(needs)

    @property
    def asked_logprobs(self) -> bool:
        return bool(self.logprobs)

    def expectation(self) -> Expectation:
        """What a usable answer must hold (routing/validity.py): the tools' parameters
        and which tool must be called, or the JSON schema."""
        tools: dict[str, Any] = {}
        choice = self.tool_choice
        if self.tools and choice != "none":
            for tool in self.tools:
                function = tool.get("function") if isinstance(tool, dict) else None
                if isinstance(function, dict) and isinstance(function.get("name"), str):
                    tools[function["name"]] = function.get("parameters") or {}
        named = "required" if choice == "required" else "auto"
        if isinstance(choice, dict):
            name = (choice.get("function") or {}).get("name")
            named = name if isinstance(name, str) else "auto"
        schema, json_object = self._json_expected()
        return Expectation(tools, named, schema, json_object)


class CompletionRequest(_Generation):
    """`POST /v1/completions`: vLLM's completion request, read where routing needs it."""

    prompt: str | list[str] | list[int] | list[list[int]] | None = None
    logprobs: int | None = None

    @property
    def prompts(self) -> int:
        prompt = self.prompt
        if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
            return len(prompt)
        return 1

    @property
    def choices(self) -> int:
        return self.n * self.prompts

    @property
    def text(self) -> str:
        """The prompt's text, for routing (a prompt of token ids has none)."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return prompt
        if isinstance(prompt, list):
            return "\n".join(p for p in prompt if isinstance(p, str))
        return ""

    @property
    def needs(self) -> frozenset[str]:
        needs = {"completion"}
        if self._constrained():
            needs.add("structured_output")
        return frozenset(needs)

    @property
    def asked_logprobs(self) -> bool:
        return self.logprobs is not None

    def expectation(self) -> Expectation:
        schema, json_object = self._json_expected()
        return Expectation(schema=schema, json_object=json_object)


GenerationRequest = ChatRequest | CompletionRequest


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))


class RouteRequest(BaseModel):
    """`POST /v1/route`: a chat or completion body; only what routing reads matters.

    A dry run takes either endpoint's body as is, so fields it does not read are ignored
    here (the real request refuses what it cannot honour).
    """

    model_config = ConfigDict(extra="ignore")

    model: str = Field(default=AUTO_MODEL, min_length=1, max_length=NAME_CHARS)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_BOUND)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_BOUND)
    min_tokens: int = Field(default=0, ge=0, le=MAX_TOKENS_BOUND)
    switchyard: SwitchyardOptions | None = None
    messages: list[dict[str, Any]] | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None
    prompt: str | list[str] | None = Field(default=None, validate_default=True)

    @field_validator("prompt")
    @classmethod
    def _has_text(cls, prompt: str | list[str] | None, info: ValidationInfo) -> Any:
        if not info.data.get("messages") and not prompt:
            raise ValueError("give messages or prompt")
        return prompt

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def needs(self) -> frozenset[str]:
        if not self.messages:
            return frozenset({"completion"})
        needs = {"chat"}
        if self.tools and self.tool_choice != "none":
            needs.add("tools")
        if (self.response_format or {}).get("type") in ("json_schema", "json_object"):
            needs.add("structured_output")
        return frozenset(needs)

    @property
    def text(self) -> str:
        if self.messages:
            return "\n".join(_content_text(m.get("content")) for m in self.messages)
        return self.prompt if isinstance(self.prompt, str) else "\n".join(self.prompt or [])


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
    invalid: str | None = Field(
        default=None, description="Why the cheap answer was unusable (validity cascade)."
    )
    judge_pool: str | None = Field(
        default=None, description="verify, ensemble by judge: who graded the answer."
    )
    judge_score: float | None = Field(
        default=None, description="verify, ensemble by judge: the judge's P(right) of it, 0..1."
    )
    votes: int | None = Field(
        default=None, description="ensemble: answers that agreed with the one kept."
    )
    answers: int | None = Field(
        default=None, description="ensemble: answers in when the pick was decided."
    )
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
    judge: str | None = Field(
        default=None, description="verify, ensemble by judge: the pool that grades."
    )
    members: list[str] = Field(
        default_factory=list, description="ensemble: one answer per entry, all at once."
    )
    stream_decide_tokens: int | None = Field(
        default=None,
        description="cascade: a stream is judged on this many first tokens (0: held whole).",
    )
    scores: dict[str, float]
    similarities: dict[str, float]
    notes: list[str]


class ClassifyRequest(ChatRequest):
    """`POST /v1/classify`: a chat completion's body, read as chat reads it; `model`
    defaults to `auto`. Nothing is generated, so fields routing does not read go unused
    (and unchecked: only a pool checks them, with vLLM's request model)."""


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
