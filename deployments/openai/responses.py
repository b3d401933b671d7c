"""Shaping answers in OpenAI's wire format: whole responses and SSE event streams.

What `OpenAIServing` hands back is engine output plus route info; this module turns it
into `chat.completion` / `text_completion` bodies and `chunk` events (with logprobs in
OpenAI's shape when asked), and ends every stream with `data: [DONE]`, after an error
event if it failed.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from functools import partial

from pydantic import BaseModel

from deployments.openai.errors import outcome_of, sse_error_event
from deployments.openai.protocol import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionResponse,
    ChatDelta,
    ChatLogprobs,
    ChatMessageOut,
    ChatTokenLogprob,
    CompletionChoice,
    CompletionLogprobs,
    CompletionResponse,
    RouteInfo,
    TopLogprob,
    Usage,
)
from execution.executor import Outcome
from models.engines.base import GenerationChunk, GenerationRequest, TokenLogprob

SSE_DONE = "data: [DONE]\n\n"


def sse_event(payload: BaseModel) -> str:
    return f"data: {payload.model_dump_json()}\n\n"


def usage(prompt_tokens: int, completion_tokens: int) -> Usage:
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )


async def no_more_chunks() -> AsyncIterator[GenerationChunk]:
    return
    yield  # pragma: no cover - makes this an async generator


ChunkShaper = Callable[[GenerationChunk | None, Usage | None], BaseModel]


StreamDone = Callable[[str, int, int], None]


async def sse_lines(
    first: GenerationChunk | None,
    chunks: AsyncIterator[GenerationChunk],
    shape: ChunkShaper,
    include_usage: bool,
    done: StreamDone,
) -> AsyncIterator[str]:
    """The SSE lines of an answer; `done(outcome, prompt_tokens, completion_tokens)` at the end."""
    prompt_tokens = completion_tokens = 0
    ended = "cancelled"  # unless the loop finishes or fails: the client left
    try:
        yield sse_event(shape(None, None))
        chunk = first
        while chunk is not None:
            prompt_tokens = chunk.prompt_tokens or prompt_tokens
            completion_tokens += len(chunk.token_ids)
            yield sse_event(shape(chunk, None))
            chunk = await anext(chunks, None)
        if include_usage:
            yield sse_event(shape(None, usage(prompt_tokens, completion_tokens)))
        ended = "ok"
    except Exception as exc:  # noqa: BLE001 - every failure becomes an error event
        ended = outcome_of(exc)
        yield sse_error_event(exc)
    finally:
        # NOTE: also runs when the client leaves early (the generator is closed).
        done(ended, prompt_tokens, completion_tokens)
    yield SSE_DONE


def _chat_logprobs(tokens: list[TokenLogprob] | None) -> ChatLogprobs | None:
    if tokens is None:
        return None
    return ChatLogprobs(
        content=[
            ChatTokenLogprob(
                token=t.token,
                logprob=t.logprob,
                bytes=list(t.token.encode()),
                top_logprobs=[
                    TopLogprob(token=tok, logprob=lp, bytes=list(tok.encode())) for tok, lp in t.top
                ],
            )
            for t in tokens
        ]
    )


def _completion_logprobs(
    tokens: list[TokenLogprob] | None, offset: int = 0
) -> CompletionLogprobs | None:
    """`offset`: characters of the answer before these tokens (a stream's earlier chunks)."""
    if tokens is None:
        return None
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += len(t.token)
    return CompletionLogprobs(
        tokens=[t.token for t in tokens],
        token_logprobs=[t.logprob for t in tokens],
        top_logprobs=[dict(t.top) for t in tokens],
        text_offset=offsets,
    )


def chat_body(request: GenerationRequest, route: RouteInfo, outcome: Outcome) -> BaseModel:
    result = outcome.result
    return ChatCompletionResponse(
        id=request.request_id,
        model=route.model,
        choices=[
            ChatChoice(
                message=ChatMessageOut(content=result.text),
                finish_reason=result.finish_reason,
                logprobs=_chat_logprobs(result.tokens),
            )
        ],
        usage=usage(result.prompt_tokens, result.completion_tokens),
        switchyard=route,
    )


def completion_body(request: GenerationRequest, route: RouteInfo, outcome: Outcome) -> BaseModel:
    result = outcome.result
    return CompletionResponse(
        id=request.request_id,
        model=route.model,
        choices=[
            CompletionChoice(
                text=result.text,
                finish_reason=result.finish_reason,
                logprobs=_completion_logprobs(result.tokens),
            )
        ],
        usage=usage(result.prompt_tokens, result.completion_tokens),
        switchyard=route,
    )


def chat_shaper(request: GenerationRequest, route: RouteInfo) -> ChunkShaper:
    make = partial(
        ChatCompletionChunk, id=request.request_id, created=int(time.time()), model=route.model
    )

    def shape(chunk: GenerationChunk | None, final_usage: Usage | None) -> BaseModel:
        if final_usage is not None:
            return make(choices=[], usage=final_usage)
        if chunk is None:  # opening chunk: the role, and who serves the request
            delta = ChatDelta(role="assistant", content="")
            return make(choices=[ChatChunkChoice(delta=delta)], switchyard=route)
        choice = ChatChunkChoice(
            delta=ChatDelta(content=chunk.text),
            finish_reason=chunk.finish_reason,
            logprobs=_chat_logprobs(chunk.tokens),
        )
        return make(choices=[choice])

    return shape


def completion_shaper(request: GenerationRequest, route: RouteInfo) -> ChunkShaper:
    make = partial(
        CompletionResponse, id=request.request_id, created=int(time.time()), model=route.model
    )
    sent = 0  # characters streamed so far: where the next chunk's text_offset starts

    def shape(chunk: GenerationChunk | None, final_usage: Usage | None) -> BaseModel:
        nonlocal sent
        if final_usage is not None:
            return make(choices=[], usage=final_usage)
        if chunk is None:
            return make(choices=[CompletionChoice(text="", finish_reason=None)], switchyard=route)
        logprobs = _completion_logprobs(chunk.tokens, sent)
        sent += len(chunk.text)
        choice = CompletionChoice(
            text=chunk.text, finish_reason=chunk.finish_reason, logprobs=logprobs
        )
        return make(choices=[choice])

    return shape
