"""A deterministic engine for tests: set its latency, answer, logprobs and failures.

Like httpx's `MockTransport`, it lets every layer above the engine be tested exactly:
the answer is known word for word, so tests assert text, token counts and logprobs
instead of "something came back". It is never what a user runs.

Tokens are whitespace-separated words; a chat prompt is rendered as `role: content` lines.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from pydantic import Field

from core.config import StrictConfig
from core.errors import EngineError
from models.engines.base import (
    Engine,
    EngineStats,
    FinishReason,
    GenerationChunk,
    GenerationRequest,
    TokenLogprob,
    check_context_length,
)


class FakeEngineOptions(StrictConfig):
    """Behaviour of the fake engine of one pool."""

    reply: str = Field(
        default="This is a fake answer.",
        description="Answer text; its words are the tokens. `{pool}`/`{model}` are filled in.",
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
        default=None, ge=0, description="Fail mid-stream after this many tokens."
    )


class FakeEngine(Engine):
    def __init__(
        self, options: FakeEngineOptions, *, max_model_len: int, pool: str = "", model: str = ""
    ) -> None:
        self.options = options
        self.max_model_len = max_model_len
        self.reply = options.reply.format(pool=pool, model=model)
        self.aborted: list[str] = []
        self._cancelled: set[str] = set()
        self._running: set[str] = set()

    async def start(self) -> None:
        return None

    @staticmethod
    def render(request: GenerationRequest) -> str:
        if request.messages is not None:
            return "\n".join(f"{m.role}: {m.content}" for m in request.messages)
        return request.prompt or ""

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        opts = self.options
        if opts.fail_requests:
            raise EngineError("fake engine failure")
        sampling = request.sampling
        prompt_tokens = len(self.render(request).split())
        limit = sampling.max_tokens
        check_context_length(prompt_tokens, limit, self.max_model_len)
        words = self.reply.split() or [""]
        # The reply ends where a model would emit EOS; like vLLM, `ignore_eos` and
        # `min_tokens` keep going (here: the reply again).
        wanted = limit + 1 if sampling.ignore_eos else max(len(words), sampling.min_tokens)
        words = [words[i % len(words)] for i in range(min(wanted, limit + 1))]
        self._running.add(request.request_id)
        finished = False
        try:
            await asyncio.sleep(opts.first_token_latency_s)
            for i, word in enumerate(words[:limit]):
                if request.request_id in self._cancelled:
                    finished = True
                    yield GenerationChunk("", [], [], "abort", prompt_tokens)
                    return
                if opts.fail_after_tokens is not None and i >= opts.fail_after_tokens:
                    raise EngineError("fake engine failure mid-stream")
                if i:
                    await asyncio.sleep(opts.token_latency_s)
                last = i == min(len(words), limit) - 1
                finish: FinishReason | None = None
                if last:
                    finish = "stop" if len(words) <= limit else "length"
                    finished = True
                text = word if i == 0 else " " + word
                logprob = opts.logprobs[i % len(opts.logprobs)]
                shown = sampling.logprobs
                yield GenerationChunk(
                    text=text,
                    token_ids=[i],
                    logprobs=[logprob] if sampling.engine_logprobs is not None else [],
                    finish_reason=finish,
                    prompt_tokens=prompt_tokens,
                    tokens=None if shown is None else [_token(text, logprob, shown)],
                )
        finally:
            self._running.discard(request.request_id)
            self._cancelled.discard(request.request_id)
            if not finished:  # the consumer left early, as the vLLM adapter counts it
                self.aborted.append(request.request_id)

    async def abort(self, request_id: str) -> None:
        if request_id in self._running:
            self.aborted.append(request_id)
            self._cancelled.add(request_id)

    def stats(self) -> EngineStats:
        return EngineStats(running=len(self._running), waiting=0, aborted=len(self.aborted))

    async def check_health(self) -> None:
        return None


def _token(text: str, logprob: float, top: int) -> TokenLogprob:
    """The chosen word first, then made-up, less likely alternatives."""
    alternatives = [(text, logprob)] + [(f"{text}~{k}", logprob - k) for k in range(1, top)]
    return TokenLogprob(text, logprob, tuple(alternatives[:top]))
