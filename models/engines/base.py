"""The engine interface every pool replica talks to.

An engine turns one prompt into a stream of tokens with their logprobs, can abort a
request it is running, and reports its load. Two implementations exist: the vLLM adapter
(`models.engines.vllm_engine`) and a deterministic fake for tests
(`models.engines.fake`). The pool deployment only sees this interface, so which engine
runs is a config choice, never an import.

Engines raise the domain errors of `core.errors`: `PromptError` (with
`ContextLengthError`) when the request cannot be served as asked, `EngineError` and
`EngineUnavailableError` when the engine fails or is not running.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

from core.errors import ContextLengthError

FinishReason = Literal["stop", "length", "abort"]


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True)
class SamplingOptions:
    """The sampling knobs Switchyard passes through to every engine.

    Logprobs cost engine time (about a tenth of the throughput of a small model), so
    they are computed only when someone reads them: `logprobs` is what the client asked
    for (None: nothing; k: the chosen token and the k most likely), `confidence` says a
    strategy (cascade, speculative) scores the answer by its tokens' logprobs.
    """

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    top_k: int | None = None  # None: no top-k filtering
    min_tokens: int = 0
    repetition_penalty: float = 1.0
    ignore_eos: bool = False
    stop_token_ids: tuple[int, ...] = ()
    logprobs: int | None = None
    confidence: bool = False

    @property
    def engine_logprobs(self) -> int | None:
        """How many top logprobs the engine computes per token (None: none at all)."""
        if self.logprobs is not None:
            return self.logprobs
        return 0 if self.confidence else None


@dataclass(frozen=True)
class GenerationRequest:
    """One request to one engine: either chat `messages` or a plain `prompt`."""

    request_id: str
    sampling: SamplingOptions
    messages: tuple[ChatMessage, ...] | None = None
    prompt: str | None = None


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token as the client asked to see it: text, logprob, alternatives."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass
class GenerationChunk:
    """New output since the previous chunk of the same request.

    `logprobs` holds the chosen tokens' logprobs whenever the engine computed them;
    `tokens` is filled only when the client asked for logprobs (`SamplingOptions.logprobs`).
    """

    text: str
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    tokens: list[TokenLogprob] | None = None

    def extend(self, other: GenerationChunk) -> None:
        """Append a later chunk of the same request (coalescing keeps order and totals)."""
        self.text += other.text
        self.token_ids.extend(other.token_ids)
        self.logprobs.extend(other.logprobs)
        self.tokens = _joined(self.tokens, other.tokens)
        self.finish_reason = other.finish_reason or self.finish_reason
        self.prompt_tokens = other.prompt_tokens or self.prompt_tokens


def _joined(
    have: list[TokenLogprob] | None, more: list[TokenLogprob] | None
) -> list[TokenLogprob] | None:
    if more is None:
        return have
    if have is None:
        return list(more)
    have.extend(more)
    return have


@dataclass
class GenerationResult:
    """A whole answer, assembled from chunks."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[float] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    tokens: list[TokenLogprob] | None = None

    def add(self, chunk: GenerationChunk) -> None:
        self.text += chunk.text
        self.completion_tokens += len(chunk.token_ids)
        self.logprobs.extend(chunk.logprobs)
        self.tokens = _joined(self.tokens, chunk.tokens)
        self.prompt_tokens = chunk.prompt_tokens or self.prompt_tokens
        self.finish_reason = chunk.finish_reason or self.finish_reason

    def as_chunk(self) -> GenerationChunk:
        """The whole answer as one chunk (a held-back stream releases it at once)."""
        return GenerationChunk(
            self.text,
            list(range(self.completion_tokens)),
            list(self.logprobs),
            self.finish_reason,
            self.prompt_tokens,
            self.tokens,
        )

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
    result = GenerationResult(text="", prompt_tokens=0, completion_tokens=0)
    async for chunk in chunks:
        result.add(chunk)
    return result
