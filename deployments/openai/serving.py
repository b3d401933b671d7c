"""Serving logic of the OpenAI endpoints: plan, execute, shape the answer.

Independent of Ray: pools are reached through `PoolClient`, which the ingress backs with
Serve handles and unit tests back with fake engines. A reader finds the request path
here: validate -> `plan` (routing/planner.py, pure) -> `Executor` (pools) -> response.

Streaming: `route` streams tokens as the pool produces them (falling back to the next
pool only before the first token). `cascade` and `speculative` stream once an answer is
accepted: the client sees the role chunk at once, then the accepted answer; a cheap
answer that gets rejected is never shown.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from functools import partial

from pydantic import BaseModel

from deployments.config import AppConfig
from deployments.execution import Executor, Outcome, PoolClient, PoolLimits
from deployments.metrics import Finished, RequestMetrics, outcome_of
from deployments.openai.errors import APIError, sse_error_event
from deployments.openai.protocol import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    ChatLogprobs,
    ChatMessageOut,
    ChatTokenLogprob,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelList,
    RouteInfo,
    RoutePlanResponse,
    SamplingFields,
    TopLogprob,
    Usage,
    new_id,
)
from models.catalog import ModelSpec
from models.engines.base import (
    ChatMessage,
    GenerationChunk,
    GenerationRequest,
    SamplingOptions,
    TokenLogprob,
)
from routing.learned import LearnedRouter
from routing.planner import Plan, PoolView, Wishes, plan
from routing.policy import AUTO_MODEL
from routing.semantic import SemanticClassifier

SSE_DONE = "data: [DONE]\n\n"
NO_WISHES = Wishes()

__all__ = ["SSE_DONE", "OpenAIServing", "PoolClient", "Routed", "sse_event"]


COUNTED = "_switchyard_counted"


def mark_counted(exc: BaseException) -> None:
    """The request's metrics already hold this failure (the ingress counts the others)."""
    setattr(exc, COUNTED, True)


def is_counted(exc: BaseException) -> bool:
    return bool(getattr(exc, COUNTED, False))


def sse_event(payload: BaseModel) -> str:
    return f"data: {payload.model_dump_json()}\n\n"


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
    def __init__(
        self,
        config: AppConfig,
        pools: PoolClient,
        semantic: SemanticClassifier | None = None,
        learned: LearnedRouter | None = None,
        metrics: RequestMetrics | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics or RequestMetrics(export=False)
        self.pools = pools
        self.semantic = semantic
        self.learned = learned
        # Config overrides the router file's calibrated threshold; 0.5 if neither has one.
        cfg = config.routing.learned
        chosen = [cfg.threshold if cfg else None, learned.threshold if learned else None]
        self._learned_threshold = next((t for t in chosen if t is not None), 0.5)
        self._pool_models = config.pool_models()
        limits = {
            name: PoolLimits(pool.max_ongoing_requests, pool.cold_start_timeout_s)
            for name, pool in config.pools.items()
        }
        self.executor = Executor(pools, config.routing, limits, self.metrics)
        large = config.pools.get(config.routing.rules.large_pool)
        self._large_model = config.model(large.model) if large else None
        self.counters: Counter[str] = Counter()

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

    # --- planning -----------------------------------------------------------------

    def views(self, prompt_chars: int, max_tokens: int) -> dict[str, PoolView]:
        """Pool views for the planner, from config and live load; never blocks."""
        prompt_tokens = prompt_chars / self.config.routing.rules.chars_per_token
        views = {}
        for name, pool in self.config.pools.items():
            cost = self.config.model(pool.model).cost
            load = self.executor.load[name]
            per_token = load.seconds_per_token or 1.0 / pool.tokens_per_s
            queued = load.stats.running + load.stats.waiting
            views[name] = PoolView(
                name=name,
                quality=pool.quality,
                cost_per_request=cost.of(prompt_tokens, max_tokens),
                expected_latency_s=per_token
                * max_tokens
                * (1 + queued / pool.max_ongoing_requests),
                saturated=self.executor.saturated(name),
                available=self.executor.breakers[name].state != "open",
            )
        return views

    async def plan(
        self, body: SamplingFields, text: str, wishes: Wishes, max_tokens: int
    ) -> tuple[Plan, dict[str, float]]:
        similarities: dict[str, float] = {}
        if self.semantic is not None and body.model == AUTO_MODEL:
            # NOTE: embedding takes ~10 ms of CPU; keep it off the event loop.
            similarities = await asyncio.to_thread(self.semantic.similarities, text)
        learned = None
        if self.learned is not None and body.model == AUTO_MODEL:
            score = float((await asyncio.to_thread(self.learned.score, [text]))[0])
            learned = (score, self._learned_threshold)
        views = self.views(len(text), max_tokens)
        decided = plan(
            body.model,
            text,
            views,
            self._pool_models,
            self.config.routing,
            wishes,
            similarities,
            learned,
        )
        return decided, similarities

    async def dry_run(self, body: SamplingFields, text: str, wishes: Wishes) -> RoutePlanResponse:
        """`POST /v1/route`: the decision for a request, without generating."""
        max_tokens = body.requested_max_tokens or 256
        decided, similarities = await self.plan(body, text, wishes, max_tokens)
        self._sampling(body, decided, body.requested_max_tokens)  # refused as chat would be
        return RoutePlanResponse(
            strategy=decided.strategy,
            pool=decided.pool,
            model=self._pool_models[decided.pool],
            target=decided.target,
            reason=decided.reason,
            detail=decided.detail,
            confidence_method=decided.rule.method if decided.rule else None,
            threshold=decided.rule.threshold if decided.rule else None,
            fallbacks=list(decided.fallbacks),
            scores=decided.scores,
            similarities=similarities,
            notes=list(decided.notes),
        )

    def _sampling(
        self, body: SamplingFields, decided: Plan, requested: int | None
    ) -> tuple[ModelSpec, SamplingOptions]:
        pools = [decided.pool, *([decided.target] if decided.target else [])]
        specs = [self.config.model(self._pool_models[p]) for p in pools]
        spec = specs[0]
        max_tokens = requested if requested is not None else spec.default_max_tokens
        for s in specs:
            if max_tokens > s.max_tokens:
                raise APIError(
                    400,
                    f"max_tokens={max_tokens} exceeds the limit of {s.max_tokens} for model "
                    f"{s.id!r}",
                    param="max_tokens",
                )
        if body.min_tokens > max_tokens:
            raise APIError(
                400, f"min_tokens={body.min_tokens} exceeds max_tokens={max_tokens}",
                param="min_tokens",
            )  # fmt: skip
        return spec, SamplingOptions(
            max_tokens=max_tokens,
            temperature=body.temperature if body.temperature is not None else spec.temperature,
            top_p=body.top_p if body.top_p is not None else spec.top_p,
            stop=body.stop_list(),
            seed=body.seed,
            presence_penalty=body.presence_penalty,
            frequency_penalty=body.frequency_penalty,
            top_k=body.top_k if body.top_k not in (None, -1, 0) else None,
            min_tokens=body.min_tokens,
            repetition_penalty=body.repetition_penalty,
            ignore_eos=body.ignore_eos,
            stop_token_ids=tuple(body.stop_token_ids or ()),
            logprobs=body.requested_logprobs,
            # Cascade and speculative judge the cheap answer by its tokens' logprobs.
            confidence=decided.strategy != "route",
        )

    # --- endpoints ----------------------------------------------------------------

    async def chat(self, body: ChatCompletionRequest, wishes: Wishes = NO_WISHES) -> Routed:
        with self._failures(wishes):
            return await self._chat(body, wishes)

    async def completion(self, body: CompletionRequest, wishes: Wishes = NO_WISHES) -> Routed:
        with self._failures(wishes):
            return await self._completion(body, wishes)

    @contextlib.contextmanager
    def _failures(self, wishes: Wishes) -> Iterator[None]:
        """Count a request that fails before its answer starts (successes count at the end)."""
        started = time.monotonic()
        try:
            yield
        except Exception as exc:
            strategy = wishes.strategy or self.config.routing.default_strategy
            self.metrics.finished(Finished(strategy, outcome_of(exc), time.monotonic() - started))
            mark_counted(exc)
            raise

    async def _chat(self, body: ChatCompletionRequest, wishes: Wishes) -> Routed:
        messages = tuple(ChatMessage(m.role, m.text()) for m in body.messages)
        text = "\n".join(m.content for m in messages)
        decided, _ = await self.plan(body, text, wishes, body.requested_max_tokens or 256)
        spec, sampling = self._sampling(body, decided, body.requested_max_tokens)
        for pool in (decided.pool, decided.target):
            if pool and not self.config.model(self._pool_models[pool]).chat:
                raise APIError(
                    400,
                    f"model {self._pool_models[pool]!r} (pool {pool!r}) is completion-only; "
                    "use /v1/completions",
                    param="model",
                )
        request = GenerationRequest(new_id("chatcmpl"), sampling, messages=messages)
        return await self._serve(body, decided, request, _chat_shaper, _chat_body)

    async def _completion(self, body: CompletionRequest, wishes: Wishes) -> Routed:
        text = body.prompt_text
        decided, _ = await self.plan(body, text, wishes, body.requested_max_tokens or 16)
        _, sampling = self._sampling(body, decided, body.requested_max_tokens)
        request = GenerationRequest(new_id("cmpl"), sampling, prompt=text)
        return await self._serve(body, decided, request, _completion_shaper, _completion_body)

    async def _serve(
        self,
        body: SamplingFields,
        decided: Plan,
        request: GenerationRequest,
        shaper: Callable[[GenerationRequest, RouteInfo], ChunkShaper],
        whole: Callable[[GenerationRequest, RouteInfo, Outcome], BaseModel],
    ) -> Routed:
        started = time.monotonic()
        self.counters[f"strategy.{decided.strategy}"] += 1
        self.metrics.decided(decided.pool, decided.reason)
        if decided.downgrade:
            self.metrics.downgraded(decided.downgrade[0], decided.downgrade[1])
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        if body.stream and decided.strategy == "route":
            pool, first, chunks, tried = await self.executor.open_stream(decided, request)
            ttft = time.monotonic() - started
            route = self._route_info(decided, pool, tried)
            done = partial(self._finished, decided.strategy, pool, started, ttft, None)
            lines = _sse_lines(first, chunks, shaper(request, route), include_usage, done)
            return Routed(route, stream=lines)
        outcome = await self.executor.execute(decided, request)
        self._count(outcome)
        route = self._route_info(decided, outcome.pool, outcome.tried, outcome)
        result = outcome.result
        if body.stream:
            chunk = result.as_chunk()
            ttft = time.monotonic() - started
            done = partial(self._finished, decided.strategy, outcome.pool, started, ttft, outcome)
            lines = _sse_lines(chunk, _empty(), shaper(request, route), include_usage, done)
            return Routed(route, stream=lines)
        self._finished(
            decided.strategy, outcome.pool, started, None, outcome,
            "ok", result.prompt_tokens, result.completion_tokens,
        )  # fmt: skip
        return Routed(route, body=whole(request, route, outcome))

    def _finished(
        self,
        strategy: str,
        pool: str,
        started: float,
        ttft_s: float | None,
        outcome: Outcome | None,
        ended: str,
        prompt_tokens: int,
        completion_tokens: int,
    ) -> None:
        """Count a request whose answer started: at its end, or when its stream ended."""
        spec = self.config.model(self._pool_models[pool])
        cost = spec.cost.of(prompt_tokens, completion_tokens)
        if outcome is not None and outcome.discarded_pool is not None:
            lost = self.config.model(self._pool_models[outcome.discarded_pool])
            cost += lost.cost.of(0, outcome.discarded_tokens)
        large = (
            self._large_model.cost.of(prompt_tokens, completion_tokens)
            if self._large_model
            else cost
        )
        self.metrics.finished(
            Finished(
                strategy=strategy,
                outcome=ended,
                latency_s=time.monotonic() - started,
                pool=pool,
                model=spec.id,
                ttft_s=ttft_s,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                cost_usd=cost,
                large_cost_usd=large,
            )
        )

    def _count(self, outcome: Outcome) -> None:
        c = self.counters
        c[f"served.{outcome.pool}"] += 1
        c["escalations"] += outcome.escalated
        c["fallbacks"] += len(outcome.tried) > 1 and outcome.strategy == "route"
        if outcome.winner:
            c[f"speculative.{outcome.winner}_won"] += 1
            self.metrics.speculated(outcome.winner)
        c["discarded_tokens"] += outcome.discarded_tokens
        if outcome.escalated and outcome.strategy == "cascade":
            self.metrics.escalated(outcome.tried[0], outcome.pool)
        if outcome.discarded_pool is not None:
            self.metrics.discarded(
                outcome.discarded_pool,
                outcome.strategy,
                outcome.discarded_tokens,
                outcome.discarded_engine_s,
            )

    def _route_info(
        self, decided: Plan, pool: str, tried: list[str], outcome: Outcome | None = None
    ) -> RouteInfo:
        rule = decided.rule
        return RouteInfo(
            pool=pool,
            model=self._pool_models[pool],
            strategy=decided.strategy,
            reason=decided.reason,
            detail=decided.detail,
            pools_tried=tried,
            fallback=pool not in (decided.pool, decided.target),
            escalated=outcome.escalated if outcome else False,
            confidence=outcome.confidence if outcome else None,
            confidence_method=rule.method if rule else None,
            threshold=rule.threshold if rule else None,
            mean_logprob=outcome.result.mean_logprob if outcome else None,
            discarded_tokens=outcome.discarded_tokens if outcome else 0,
            discarded_engine_s=outcome.discarded_engine_s if outcome else 0.0,
            speculative_winner=outcome.winner if outcome else None,
            notes=[*decided.notes, *(outcome.notes if outcome else [])],
        )


async def _empty() -> AsyncIterator[GenerationChunk]:
    return
    yield  # pragma: no cover - makes this an async generator


ChunkShaper = Callable[[GenerationChunk | None, Usage | None], BaseModel]


StreamDone = Callable[[str, int, int], None]


async def _sse_lines(
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


def _chat_body(request: GenerationRequest, route: RouteInfo, outcome: Outcome) -> BaseModel:
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


def _completion_body(request: GenerationRequest, route: RouteInfo, outcome: Outcome) -> BaseModel:
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


def _chat_shaper(request: GenerationRequest, route: RouteInfo) -> ChunkShaper:
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


def _completion_shaper(request: GenerationRequest, route: RouteInfo) -> ChunkShaper:
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
