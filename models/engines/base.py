"""The engine interface every pool replica talks to.

An engine turns one prompt into a stream of tokens with their logprobs, can abort a
request it is running, and reports its load. Two implementations exist: the vLLM adapter
(`models.engines.vllm_engine`) and a deterministic fake for tests
(`models.engines.fake`). The pool deployment only sees this interface, so which engine
runs is a config choice, never an import.

Exceptions raised by engines:

    EngineError                 the engine failed while serving a request (5xx)
    ├── EngineUnavailableError  the engine is dead or not started (503)
    PromptError                 the request cannot be served as asked (4xx)
    └── ContextLengthError      prompt + max_tokens exceed the context window (400)

They carry a client-safe `message`; the original exception stays in `__cause__` for logs.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

FinishReason = Literal["stop", "length", "abort"]


class EngineError(Exception):
    """An engine failed; `message` is safe to show to clients."""

    def __init__(self, message: str = "the model engine failed to serve the request") -> None:
        super().__init__(message)
        self.message = message


class EngineUnavailableError(EngineError):
    """The engine is not running (dead, starting or shut down)."""

    def __init__(self, message: str = "the model engine is not available") -> None:
        super().__init__(message)


class PromptError(Exception):
    """The request cannot be served as asked; maps to a 400 with `param`."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def __reduce__(self) -> tuple[object, ...]:
        # NOTE: exceptions cross the replica -> ingress boundary by pickle; keep all fields.
        return (type(self), (self.message, self.param, self.code))


class ContextLengthError(PromptError):
    def __init__(self, message: str, param: str | None = "messages", code: str | None = None):
        super().__init__(message, param, code or "context_length_exceeded")


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True)
class SamplingOptions:
    """The sampling knobs Switchyard passes through to every engine."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0


@dataclass(frozen=True)
class GenerationRequest:
    """One request to one engine: either chat `messages` or a plain `prompt`."""

    request_id: str
    sampling: SamplingOptions
    messages: tuple[ChatMessage, ...] | None = None
    prompt: str | None = None


@dataclass
class GenerationChunk:
    """New output since the previous chunk of the same request."""

    text: str
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0


@dataclass
class GenerationResult:
    """A whole answer, assembled from chunks."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[float] = field(default_factory=list)
    finish_reason: FinishReason | None = None

    @property
    def mean_logprob(self) -> float | None:
        return sum(self.logprobs) / len(self.logprobs) if self.logprobs else None


@dataclass(frozen=True)
class EngineStats:
    """Load of one engine: what routing and autoscaling read."""

    running: int
    waiting: int
    aborted: int = 0  # requests stopped before they finished, since start


class Engine(abc.ABC):
    """What a pool replica needs from an LLM engine."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Load the model; called once before any request."""

    @abc.abstractmethod
    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Stream the answer; the last chunk has a `finish_reason`.

        Raises ContextLengthError before the first chunk when the rendered prompt plus
        `max_tokens` does not fit the context window.
        """

    @abc.abstractmethod
    async def abort(self, request_id: str) -> None:
        """Stop a running request and free its slot; unknown ids are ignored."""

    @abc.abstractmethod
    def stats(self) -> EngineStats:
        """Current load, without blocking."""

    @abc.abstractmethod
    async def check_health(self) -> None:
        """Raise EngineUnavailableError when the engine cannot serve."""

    async def shutdown(self) -> None:  # noqa: B027 - optional hook
        """Release engine resources."""


def check_context_length(prompt_tokens: int, max_tokens: int, max_model_len: int) -> None:
    """Refuse a request whose prompt plus requested output exceeds the context window."""
    if prompt_tokens + max_tokens > max_model_len:
        raise ContextLengthError(
            f"this model's context window is {max_model_len} tokens; the prompt has "
            f"{prompt_tokens} tokens and max_tokens asks for {max_tokens} more. Shorten the "
            "prompt or lower max_tokens."
        )


async def collect(chunks: AsyncIterator[GenerationChunk]) -> GenerationResult:
    """Drain a chunk stream into one result."""
    parts: list[str] = []
    result = GenerationResult(text="", prompt_tokens=0, completion_tokens=0)
    async for chunk in chunks:
        parts.append(chunk.text)
        result.completion_tokens += len(chunk.token_ids)
        result.logprobs.extend(chunk.logprobs)
        result.prompt_tokens = chunk.prompt_tokens or result.prompt_tokens
        if chunk.finish_reason is not None:
            result.finish_reason = chunk.finish_reason
    result.text = "".join(parts)
    return result
