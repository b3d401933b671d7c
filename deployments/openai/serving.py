"""Serving logic of the OpenAI endpoints: route, call a pool, shape the answer.

Independent of Ray: pools are reached through the small `PoolClient` interface, which
the ingress implements with Serve handles and unit tests implement with a fake engine.
A reader finds the whole request path here: validate -> `choose_pool` -> pool -> response.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import partial
from typing import Protocol

from pydantic import BaseModel

from deployments.config import AppConfig
from deployments.openai.errors import APIError, sse_error_event
from deployments.openai.protocol import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    ChatMessageOut,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelList,
    RouteInfo,
    SamplingFields,
    Usage,
    new_id,
)
from models.catalog import ModelSpec
from models.engines.base import (
    ChatMessage,
    GenerationChunk,
    GenerationRequest,
    GenerationResult,
    SamplingOptions,
)
from routing.policy import AUTO_MODEL, choose_pool

SSE_DONE = "data: [DONE]\n\n"


def sse_event(payload: BaseModel) -> str:
    return f"data: {payload.model_dump_json()}\n\n"


class PoolClient(Protocol):
    """How serving reaches a pool; the ingress backs it with Serve handles."""

    async def generate(self, pool: str, request: GenerationRequest) -> GenerationResult: ...

    def stream(self, pool: str, request: GenerationRequest) -> AsyncIterator[GenerationChunk]: ...


@dataclass
class Routed:
    """A routed answer: route info for headers, and either a body or an SSE stream."""

    route: RouteInfo
    body: BaseModel | None = None
    stream: AsyncIterator[str] | None = None

    def headers(self) -> dict[str, str]:
        return {
            "x-switchyard-pool": self.route.pool,
            "x-switchyard-model": self.route.model,
            "x-switchyard-route": self.route.reason,
            "x-switchyard-strategy": self.route.strategy,
        }


def usage(prompt_tokens: int, completion_tokens: int) -> Usage:
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )


class OpenAIServing:
    def __init__(self, config: AppConfig, pools: PoolClient) -> None:
        self.config = config
        self.pools = pools
        self._pool_models = config.pool_models()

    def models(self) -> ModelList:
        now = int(time.time())
        cards = [
            ModelCard(id=AUTO_MODEL, created=now, switchyard={"pools": list(self._pool_models)})
        ]
        cards += [
            ModelCard(id=pool, created=now, switchyard={"pool": pool, "model": model})
            for pool, model in self._pool_models.items()
        ]
        for spec in self.config.models:
            pools = [p for p, m in self._pool_models.items() if m == spec.id]
            if pools:
                info = {"pools": pools, "chat": spec.chat, "max_tokens": spec.max_tokens}
                cards.append(ModelCard(id=spec.id, created=now, switchyard=info))
        return ModelList(data=cards)

    def _route(self, body: SamplingFields, text: str) -> tuple[RouteInfo, ModelSpec]:
        decision = choose_pool(body.model, text, self._pool_models, self.config.routing)
        spec = self.config.model(self._pool_models[decision.pool])
        route = RouteInfo(
            pool=decision.pool, model=spec.id, reason=decision.reason, detail=decision.detail
        )
        return route, spec

    @staticmethod
    def _sampling(body: SamplingFields, spec: ModelSpec, requested: int | None) -> SamplingOptions:
        max_tokens = requested if requested is not None else spec.default_max_tokens
        if max_tokens > spec.max_tokens:
            raise APIError(
                400,
                f"max_tokens={max_tokens} exceeds the limit of {spec.max_tokens} for model "
                f"{spec.id!r}",
                param="max_tokens",
            )
        return SamplingOptions(
            max_tokens=max_tokens,
            temperature=body.temperature if body.temperature is not None else spec.temperature,
            top_p=body.top_p if body.top_p is not None else spec.top_p,
            stop=body.stop_list(),
            seed=body.seed,
            presence_penalty=body.presence_penalty,
            frequency_penalty=body.frequency_penalty,
        )

    async def chat(self, body: ChatCompletionRequest) -> Routed:
        messages = tuple(ChatMessage(m.role, m.text()) for m in body.messages)
        route, spec = self._route(body, "\n".join(m.content for m in messages))
        if not spec.chat:
            raise APIError(
                400,
                f"model {spec.id!r} (pool {route.pool!r}) is completion-only; use /v1/completions",
                param="model",
            )
        request = GenerationRequest(
            request_id=new_id("chatcmpl"),
            sampling=self._sampling(body, spec, body.requested_max_tokens),
            messages=messages,
        )
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            stream = await self._sse(route, request, include_usage, _chat_chunks(request, route))
            return Routed(route, stream=stream)
        result = await self.pools.generate(route.pool, request)
        route.mean_logprob = result.mean_logprob
        return Routed(
            route,
            body=ChatCompletionResponse(
                id=request.request_id,
                model=spec.id,
                choices=[
                    ChatChoice(
                        message=ChatMessageOut(content=result.text),
                        finish_reason=result.finish_reason,
                    )
                ],
                usage=usage(result.prompt_tokens, result.completion_tokens),
                switchyard=route,
            ),
        )

    async def completion(self, body: CompletionRequest) -> Routed:
        route, spec = self._route(body, body.prompt_text)
        request = GenerationRequest(
            request_id=new_id("cmpl"),
            sampling=self._sampling(body, spec, body.requested_max_tokens),
            prompt=body.prompt_text,
        )
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            stream = await self._sse(
                route, request, include_usage, _completion_chunks(request, route)
            )
            return Routed(route, stream=stream)
        result = await self.pools.generate(route.pool, request)
        route.mean_logprob = result.mean_logprob
        return Routed(
            route,
            body=CompletionResponse(
                id=request.request_id,
                model=spec.id,
                choices=[CompletionChoice(text=result.text, finish_reason=result.finish_reason)],
                usage=usage(result.prompt_tokens, result.completion_tokens),
                switchyard=route,
            ),
        )

    async def _sse(
        self,
        route: RouteInfo,
        request: GenerationRequest,
        include_usage: bool,
        shape: ChunkShaper,
    ) -> AsyncIterator[str]:
        """Start the pool stream and wait for its first chunk before answering.

        Errors before the first token (bad prompt, dead pool) thus become ordinary HTTP
        errors with a status code; errors after it end the stream with an error event.
        """
        chunks = self.pools.stream(route.pool, request)
        first = await anext(chunks, None)
        return _sse_lines(first, chunks, shape, include_usage)


ChunkShaper = Callable[[GenerationChunk | None, Usage | None], BaseModel]


async def _sse_lines(
    first: GenerationChunk | None,
    chunks: AsyncIterator[GenerationChunk],
    shape: ChunkShaper,
    include_usage: bool,
) -> AsyncIterator[str]:
    prompt_tokens = completion_tokens = 0
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
    except Exception as exc:  # noqa: BLE001 - every failure becomes an error event
        yield sse_error_event(exc)
    yield SSE_DONE


def _chat_chunks(request: GenerationRequest, route: RouteInfo) -> ChunkShaper:
    created = int(time.time())

    make = partial(ChatCompletionChunk, id=request.request_id, created=created, model=route.model)

    def shape(chunk: GenerationChunk | None, final_usage: Usage | None) -> BaseModel:
        if final_usage is not None:
            return make(choices=[], usage=final_usage)
        if chunk is None:  # opening chunk: the role, and who serves the request
            delta = ChatDelta(role="assistant", content="")
            return make(choices=[ChatChunkChoice(delta=delta)], switchyard=route)
        choice = ChatChunkChoice(
            delta=ChatDelta(content=chunk.text), finish_reason=chunk.finish_reason
        )
        return make(choices=[choice])

    return shape


def _completion_chunks(request: GenerationRequest, route: RouteInfo) -> ChunkShaper:
    created = int(time.time())

    make = partial(CompletionResponse, id=request.request_id, created=created, model=route.model)

    def shape(chunk: GenerationChunk | None, final_usage: Usage | None) -> BaseModel:
        if final_usage is not None:
            return make(choices=[], usage=final_usage)
        if chunk is None:
            return make(choices=[CompletionChoice(text="", finish_reason=None)], switchyard=route)
        choice = CompletionChoice(text=chunk.text, finish_reason=chunk.finish_reason)
        return make(choices=[choice])

    return shape
