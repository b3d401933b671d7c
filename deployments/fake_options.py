"""The fake engine's behaviour per pool (tests only), apart from the engine itself so
that configs can name it without importing vLLM (`deployments.fake_engine`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from core.config import StrictConfig


class FakeEngineOptions(StrictConfig):
    """Behaviour of the fake engine of one pool."""

    reply: str = Field(
        default="This is a fake answer.",
        description="Answer text; its words are the tokens. `{pool}`/`{model}` are filled in.",
    )
    replies: dict[str, str] = Field(
        default_factory=dict,
        max_length=16,
        description="Answers by what the chat asks: the first key that the last message "
        "contains gives the reply (e.g. a judge that accepts one answer and not another).",
    )
    first_token_latency_s: float = Field(default=0.0, ge=0, description="Delay before token 1.")
    token_latency_s: float = Field(default=0.0, ge=0, description="Delay between tokens.")
    logprobs: list[float] = Field(
        default_factory=lambda: [-0.1],
        min_length=1,
        description="Logprob of each token, cycled when the answer is longer.",
    )
    fail_requests: bool = Field(default=False, description="Every request fails at once.")
    fail_after_tokens: int | None = Field(
        default=None, ge=0, description="Fail after this many tokens (a stream: mid-stream)."
    )
    tool_calls: Literal["call", "text", "invalid"] = Field(
        default="call",
        description="Given tools (tool_choice not none): `call` the named, else the first, "
        "tool with arguments valid against its schema; write that call as JSON `text` in "
        "the content (a model without its parser's tags); or call it with `invalid` JSON.",
    )
    # `json` is the key; the attribute has another name, as BaseModel.json is a method.
    json_output: Literal["valid", "invalid"] = Field(
        default="valid",
        alias="json",
        description="Given a JSON response_format or structured_outputs: answer the "
        'smallest valid instance (json_object: {"answer": reply}), or text that is not JSON.',
    )
    embedding_dim: int = Field(default=8, ge=1, description="Length of embedding vectors.")
