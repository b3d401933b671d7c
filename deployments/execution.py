"""Carrying out a routing `Plan`: route, cascade, speculative, each with fallbacks.

Independent of Ray like `serving.py`: pools are reached through `PoolClient`. This is
where time passes and things fail, so it owns the per-pool circuit breakers and the
live pool view (load and latency) that the pure planner reads.

Failures that move a request to the next pool in its fallback chain: engine errors,
an unavailable pool, a timeout, back-pressure, an open circuit. Client errors (bad
prompt, too long) do not: another pool would refuse them too.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Protocol

from deployments.openai.errors import APIError
from models.engines.base import (
    EngineError,
    EngineStats,
    EngineUnavailableError,
    GenerationChunk,
    GenerationRequest,
    GenerationResult,
)
from routing.breaker import CircuitBreaker
from routing.confidence import confidence
from routing.config import ConfidenceRule, RoutingConfig
from routing.planner import Plan


class PoolClient(Protocol):
    """How execution reaches a pool; the ingress backs it with Serve handles."""

    async def generate(self, pool: str, request: GenerationRequest) -> GenerationResult: ...

    def stream(self, pool: str, request: GenerationRequest) -> AsyncIterator[GenerationChunk]: ...


class AllPoolsFailedError(EngineUnavailableError):
    def __init__(self, tried: list[str]) -> None:
        super().__init__(f"no pool could serve the request (tried: {', '.join(tried)})")


def is_pool_failure(exc: BaseException) -> bool:
    """Should the next pool be tried? Server-side failures yes, client errors no."""
    if isinstance(exc, APIError):
        return exc.status >= 500 or exc.status == 429
    return isinstance(exc, EngineError)


@dataclass
class Outcome:
    """What happened to one request, for the response and the counters."""

    result: GenerationResult
    pool: str
    strategy: str
    tried: list[str] = field(default_factory=list)
    escalated: bool = False
    confidence: float | None = None
    discarded_tokens: int = 0
    discarded_engine_s: float = 0.0
    winner: str | None = None  # speculative: "source" or "target"


@dataclass
class PoolLoad:
    """Live view of one pool, updated off the request path."""

    stats: EngineStats = field(default_factory=lambda: EngineStats(running=0, waiting=0))
    seconds_per_token: float | None = None  # EWMA over finished requests

    def observe(self, seconds: float, tokens: int, weight: float = 0.2) -> None:
        if tokens <= 0:
            return
        sample = seconds / tokens
        old = self.seconds_per_token
        self.seconds_per_token = sample if old is None else (1 - weight) * old + weight * sample


class Executor:
    def __init__(self, pools: PoolClient, config: RoutingConfig, pool_names: list[str]) -> None:
        self.pools = pools
        self.config = config
        fb = config.fallback
        self.breakers = {p: CircuitBreaker(fb.failure_threshold, fb.cooldown_s) for p in pool_names}
        self.load = {p: PoolLoad() for p in pool_names}

    # --- single calls -------------------------------------------------------------

    async def _call(
        self, pool: str, request: GenerationRequest, tried: list[str]
    ) -> GenerationResult:
        if not self.breakers[pool].allow():
            raise APIError(503, f"pool {pool!r} circuit is open", code="circuit_open")
        tried.append(pool)
        sub = replace(request, request_id=f"{request.request_id}-{pool}")
        async with self._guard(pool, GenerationResult("", 0, 0)) as acc:
            result = await self.pools.generate(pool, sub)
            acc.completion_tokens = result.completion_tokens
        return result

    @contextlib.asynccontextmanager
    async def _guard(self, pool: str, acc: GenerationResult) -> AsyncIterator[GenerationResult]:
        """Feed a pool call's outcome to its circuit breaker and its latency estimate."""
        started = time.monotonic()
        try:
            yield acc
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            if is_pool_failure(exc):
                self.breakers[pool].record_failure()
            raise
        self.breakers[pool].record_success()
        self.load[pool].observe(time.monotonic() - started, acc.completion_tokens)

    async def _with_fallback(
        self,
        chain: list[str],
        request: GenerationRequest,
        tried: list[str],
    ) -> tuple[str, GenerationResult]:
        last: BaseException | None = None
        for pool in chain:
            try:
                return pool, await self._call(pool, request, tried)
            except BaseException as exc:
                if not is_pool_failure(exc):
                    raise
                last = exc
        raise _exhausted(chain, tried, last)

    async def open_stream(
        self, plan: Plan, request: GenerationRequest
    ) -> tuple[str, GenerationChunk | None, AsyncIterator[GenerationChunk], list[str]]:
        """Start streaming from the plan's pool, falling back until a first chunk arrives.

        After the first chunk the client has seen output, so a later failure ends the
        stream with an error event instead of switching models mid-answer.
        """
        chain, tried = [plan.pool, *plan.fallbacks], []
        last: BaseException | None = None
        for pool in chain:
            if not self.breakers[pool].allow():
                last = APIError(503, f"pool {pool!r} circuit is open", code="circuit_open")
                continue
            tried.append(pool)
            chunks = self.pools.stream(
                pool, replace(request, request_id=f"{request.request_id}-{pool}")
            )
            try:
                first = await anext(chunks, None)
            except BaseException as exc:
                if not is_pool_failure(exc):
                    raise
                self.breakers[pool].record_failure()
                last = exc
                continue
            self.breakers[pool].record_success()
            return pool, first, chunks, tried
        raise _exhausted(chain, tried, last)

    # --- strategies -----------------------------------------------------------------

    async def execute(self, plan: Plan, request: GenerationRequest) -> Outcome:
        if plan.strategy == "cascade":
            return await self._cascade(plan, request)
        if plan.strategy == "speculative":
            return await self._speculative(plan, request)
        tried: list[str] = []
        pool, result = await self._with_fallback([plan.pool, *plan.fallbacks], request, tried)
        return Outcome(result, pool, "route", tried)

    def _confidence(self, rule: ConfidenceRule, result: GenerationResult) -> float:
        return confidence(result.logprobs, rule.method, rule.quantile)

    async def _cascade(self, plan: Plan, request: GenerationRequest) -> Outcome:
        assert plan.target is not None and plan.rule is not None
        tried: list[str] = []
        started = time.monotonic()
        try:
            source, first = await self._with_fallback([plan.pool], request, tried)
        except BaseException as exc:
            if not is_pool_failure(exc):
                raise
            pool, result = await self._with_fallback(
                [plan.target, *self._chain(plan.target)], request, tried
            )
            return Outcome(result, pool, "cascade", tried, escalated=True)
        score = self._confidence(plan.rule, first)
        if score >= plan.rule.threshold:
            return Outcome(first, source, "cascade", tried, confidence=score)
        spent = time.monotonic() - started
        pool, result = await self._with_fallback(
            [plan.target, *self._chain(plan.target)], request, tried
        )
        return Outcome(
            result, pool, "cascade", tried, escalated=True, confidence=score,
            discarded_tokens=first.completion_tokens, discarded_engine_s=round(spent, 4),
        )  # fmt: skip

    def _chain(self, pool: str) -> list[str]:
        return [p for p in self.config.fallback.chains.get(pool, []) if p in self.breakers]

    async def _speculative(self, plan: Plan, request: GenerationRequest) -> Outcome:
        """Race the cheap and the strong pool; keep the cheap answer only if confident."""
        assert plan.target is not None and plan.rule is not None
        source, target = plan.pool, plan.target
        tried = [source, target]
        started = time.monotonic()
        partial: dict[str, GenerationResult] = {}
        tasks = {
            source: asyncio.create_task(self._collect(source, request, partial)),
            target: asyncio.create_task(self._collect(target, request, partial)),
        }
        try:
            done, _ = await asyncio.wait(tasks.values(), return_when=asyncio.FIRST_COMPLETED)
            first_spent = time.monotonic() - started  # engine time of the first finisher
            first = next(p for p, t in tasks.items() if t in done)
            other = target if first == source else source
            first_result = _result_or_none(tasks[first])
            score = None
            if first == source and first_result is not None:
                score = self._confidence(plan.rule, first_result)
                if score >= plan.rule.threshold:
                    return await self._won(
                        first, other, first_result, tasks, partial, started, "source", score, tried
                    )
            elif first == target and first_result is not None:
                if tasks[source].done() and (src := _result_or_none(tasks[source])) is not None:
                    score = self._confidence(plan.rule, src)
                return await self._won(
                    first, other, first_result, tasks, partial, started, "target", score, tried
                )
            # The first finisher failed or is not confident: the other one decides.
            await asyncio.wait([tasks[other]])
            other_result = _result_or_none(tasks[other])
            if other_result is None:
                if first_result is not None:  # strong pool failed: a weak answer beats none
                    return Outcome(
                        first_result, first, "speculative", tried, confidence=score, winner="source"
                    )
                raise AllPoolsFailedError(tried) from tasks[other].exception()
            if other == source:
                score = self._confidence(plan.rule, other_result)
            discarded = first_result.completion_tokens if first_result is not None else 0
            return Outcome(
                other_result, other, "speculative", tried,
                escalated=other == target, confidence=score, discarded_tokens=discarded,
                discarded_engine_s=round(first_spent, 4) if discarded else 0.0,
                winner="target" if other == target else "source",
            )  # fmt: skip
        finally:
            for task in tasks.values():
                if not task.done():
                    task.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)

    async def _won(
        self,
        winner: str,
        loser: str,
        result: GenerationResult,
        tasks: dict[str, asyncio.Task[GenerationResult]],
        partial: dict[str, GenerationResult],
        started: float,
        which: str,
        score: float | None,
        tried: list[str],
    ) -> Outcome:
        """Abort the loser now (its engine frees the slot) and account for its work."""
        tasks[loser].cancel()
        with contextlib.suppress(BaseException):
            await tasks[loser]
        lost = partial.get(loser)
        return Outcome(
            result, winner, "speculative", tried,
            escalated=which == "target", confidence=score,
            discarded_tokens=lost.completion_tokens if lost else 0,
            discarded_engine_s=round(time.monotonic() - started, 4),
            winner=which,
        )  # fmt: skip

    async def _collect(
        self, pool: str, request: GenerationRequest, partial: dict[str, GenerationResult]
    ) -> GenerationResult:
        """Stream one pool's answer, keeping what arrived so far for loser accounting."""
        if not self.breakers[pool].allow():
            raise APIError(503, f"pool {pool!r} circuit is open", code="circuit_open")
        acc = partial[pool] = GenerationResult(text="", prompt_tokens=0, completion_tokens=0)
        sub = replace(request, request_id=f"{request.request_id}-{pool}")
        async with self._guard(pool, acc):
            async for chunk in self.pools.stream(pool, sub):
                acc.text += chunk.text
                acc.completion_tokens += len(chunk.token_ids)
                acc.logprobs.extend(chunk.logprobs)
                acc.prompt_tokens = chunk.prompt_tokens or acc.prompt_tokens
                acc.finish_reason = chunk.finish_reason or acc.finish_reason
        return acc


def _exhausted(chain: list[str], tried: list[str], last: BaseException | None) -> BaseException:
    """The error for a fallback chain where no pool answered."""
    if last is None:
        return AllPoolsFailedError(chain)
    if len(tried) <= 1:
        return last  # one pool tried (or all circuits open): its own error says most
    return AllPoolsFailedError(tried)


def _result_or_none(task: asyncio.Task[GenerationResult]) -> GenerationResult | None:
    if task.cancelled() or task.exception() is not None:
        return None
    return task.result()
