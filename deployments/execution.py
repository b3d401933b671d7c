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
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Protocol

from deployments.metrics import RequestMetrics, outcome_of
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

    def wake(self, pool: str) -> None:
        """Make a pool that is scaled to zero start a replica; returns at once."""


class AllPoolsFailedError(EngineUnavailableError):
    def __init__(self, tried: list[str]) -> None:
        super().__init__(f"no pool could serve the request (tried: {', '.join(tried)})")


def counts_against_circuit(exc: BaseException) -> bool:
    """Errors open a pool's circuit; being full (429) or starting from zero does not."""
    if isinstance(exc, APIError) and (exc.status == 429 or exc.code == "cold_start"):
        return False
    return is_pool_failure(exc)


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
    discarded_pool: str | None = None  # whose tokens were thrown away
    winner: str | None = None  # speculative: "source" or "target"
    notes: list[str] = field(default_factory=list)


@dataclass
class PoolLoad:
    """Live view of one pool, updated off the request path."""

    stats: EngineStats = field(default_factory=lambda: EngineStats(running=0, waiting=0))
    seconds_per_token: float | None = None  # EWMA over finished requests
    replicas: int | None = None  # running replicas; None until Serve's status is read
    stats_at: float | None = None  # monotonic time of the last stats sample
    polled: str = "pending"  # last stats call: "ok", "busy" (no answer in time), "failed"

    def observe(self, seconds: float, tokens: int, weight: float = 0.2) -> None:
        if tokens <= 0:
            return
        sample = seconds / tokens
        old = self.seconds_per_token
        self.seconds_per_token = sample if old is None else (1 - weight) * old + weight * sample


class EscalationForecast:
    """Escalations a pool should expect soon, for its autoscaler.

    Cascades still running on their cheap pool will escalate to their target with the
    recently observed share; their sum is what the target pool will receive in seconds.
    """

    def __init__(self, prior_share: float = 0.5, weight: float = 0.1) -> None:
        self.running: Counter[str] = Counter()  # target pool -> cascades on the cheap pool
        self.share: dict[str, float] = {}  # target pool -> EWMA of escalated (1) or not (0)
        self.prior_share = prior_share
        self.weight = weight

    def started(self, target: str) -> None:
        self.running[target] += 1

    def finished(self, target: str, escalated: bool | None) -> None:
        """`escalated` None: the cheap pool failed, no verdict to learn from."""
        self.running[target] -= 1
        if escalated is not None:
            old = self.share.get(target, self.prior_share)
            self.share[target] = (1 - self.weight) * old + self.weight * float(escalated)

    def expected(self) -> dict[str, float]:
        return {
            target: round(n * self.share.get(target, self.prior_share), 3)
            for target, n in self.running.items()
        }


@dataclass(frozen=True)
class PoolLimits:
    max_ongoing: int  # requests one replica runs at once
    cold_start_timeout_s: float = 60.0  # longest wait for a pool at zero with no fallback


class Executor:
    def __init__(
        self,
        pools: PoolClient,
        config: RoutingConfig,
        limits: dict[str, PoolLimits],
        metrics: RequestMetrics | None = None,
    ) -> None:
        self.pools = pools
        self.config = config
        self.limits = limits
        self.metrics = metrics or RequestMetrics(export=False)
        fb = config.fallback
        self.breakers = {p: CircuitBreaker(fb.failure_threshold, fb.cooldown_s) for p in limits}
        self.load = {p: PoolLoad() for p in limits}
        self.forecast = EscalationForecast()

    def saturated(self, pool: str) -> bool:
        """No free slot in the last stats sample: more requests would only queue."""
        stats = self.load[pool].stats
        return stats.running + stats.waiting >= self.limits[pool].max_ongoing

    async def _warm(self, pool: str, can_fall_back: bool) -> None:
        """A pool scaled to zero: wake it, then fall back at once or wait a bounded time.

        Starting a replica takes from seconds (fake engine) to minutes (a GPU model load),
        so a request with somewhere else to go does not wait for it.
        """
        load = self.load[pool]
        if load.replicas != 0:
            return
        self.pools.wake(pool)
        if not can_fall_back:
            deadline = time.monotonic() + self.limits[pool].cold_start_timeout_s
            while load.replicas == 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            if load.replicas != 0:
                return
        raise APIError(
            503,
            f"pool {pool!r} is scaled to zero and starting a replica; retry shortly",
            code="cold_start",
            headers={"retry-after": "30"},
        )

    # --- single calls -------------------------------------------------------------

    async def _call(
        self, pool: str, request: GenerationRequest, tried: list[str], can_fall_back: bool = False
    ) -> GenerationResult:
        if not self.breakers[pool].allow():
            raise APIError(503, f"pool {pool!r} circuit is open", code="circuit_open")
        await self._warm(pool, can_fall_back)
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
            if counts_against_circuit(exc):
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
        for i, pool in enumerate(chain):
            try:
                return pool, await self._call(pool, request, tried, i + 1 < len(chain))
            except BaseException as exc:
                if not is_pool_failure(exc):
                    raise
                last = exc
                self._fell_back(pool, chain[i + 1 : i + 2], exc)
        raise _exhausted(chain, tried, last)

    def _fell_back(self, pool: str, following: list[str], exc: BaseException) -> None:
        if following:
            self.metrics.fell_back(pool, following[0], failure_reason(exc))

    async def open_stream(
        self, plan: Plan, request: GenerationRequest
    ) -> tuple[str, GenerationChunk | None, AsyncIterator[GenerationChunk], list[str]]:
        """Start streaming from the plan's pool, falling back until a first chunk arrives.

        After the first chunk the client has seen output, so a later failure ends the
        stream with an error event instead of switching models mid-answer.
        """
        chain, tried = [plan.pool, *plan.fallbacks], []
        last: BaseException | None = None
        for i, pool in enumerate(chain):
            if not self.breakers[pool].allow():
                last = APIError(503, f"pool {pool!r} circuit is open", code="circuit_open")
                self._fell_back(pool, chain[i + 1 : i + 2], last)
                continue
            try:
                await self._warm(pool, i + 1 < len(chain))
            except APIError as exc:
                last = exc
                self._fell_back(pool, chain[i + 1 : i + 2], exc)
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
                if counts_against_circuit(exc):
                    self.breakers[pool].record_failure()
                last = exc
                self._fell_back(pool, chain[i + 1 : i + 2], exc)
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
        verdict: bool | None = None
        self.forecast.started(plan.target)
        try:
            source, first = plan.pool, await self._call(plan.pool, request, tried, True)
            score = self._confidence(plan.rule, first)
            verdict = score < plan.rule.threshold
        except BaseException as exc:
            if not is_pool_failure(exc):
                raise
            self._fell_back(plan.pool, [plan.target], exc)
            pool, result = await self._with_fallback(
                [plan.target, *plan.target_fallbacks], request, tried
            )
            return Outcome(result, pool, "cascade", tried, escalated=True)
        finally:
            self.forecast.finished(plan.target, verdict)
        if not verdict:
            return Outcome(first, source, "cascade", tried, confidence=score)
        if self.saturated(plan.target):
            # Shedding quality, not requests: the unsure answer beats queueing on a full pool.
            self.metrics.downgraded("cascade", "target_saturated")
            note = f"escalation skipped: pool {plan.target!r} is saturated"
            return Outcome(first, source, "cascade", tried, confidence=score, notes=[note])
        spent = time.monotonic() - started
        pool, result = await self._with_fallback(
            [plan.target, *plan.target_fallbacks], request, tried
        )
        return Outcome(
            result, pool, "cascade", tried, escalated=True, confidence=score,
            discarded_tokens=first.completion_tokens, discarded_engine_s=round(spent, 4),
            discarded_pool=source,
        )  # fmt: skip

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
                discarded_pool=first if discarded else None,
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
            discarded_pool=loser,
            winner=which,
        )  # fmt: skip

    async def _collect(
        self, pool: str, request: GenerationRequest, partial: dict[str, GenerationResult]
    ) -> GenerationResult:
        """Stream one pool's answer, keeping what arrived so far for loser accounting."""
        if not self.breakers[pool].allow():
            raise APIError(503, f"pool {pool!r} circuit is open", code="circuit_open")
        await self._warm(pool, can_fall_back=True)  # the other racer answers meanwhile
        acc = partial[pool] = GenerationResult(text="", prompt_tokens=0, completion_tokens=0)
        sub = replace(request, request_id=f"{request.request_id}-{pool}")
        async with self._guard(pool, acc):
            async for chunk in self.pools.stream(pool, sub):
                acc.add(chunk)
        return acc


def failure_reason(exc: BaseException) -> str:
    """The `reason` label of a fallback."""
    if isinstance(exc, APIError) and exc.code in ("circuit_open", "cold_start"):
        return exc.code
    return outcome_of(exc)


def _exhausted(chain: list[str], tried: list[str], last: BaseException | None) -> BaseException:
    """The error for a fallback chain where no pool answered."""
    if last is None:
        return AllPoolsFailedError(chain)
    if isinstance(last, APIError) and last.status == 429:
        return last  # every pool tried was full: the client should retry, not give up
    if len(tried) <= 1:
        return last  # one pool tried (or all circuits open): its own error says most
    return AllPoolsFailedError(tried)


def _result_or_none(task: asyncio.Task[GenerationResult]) -> GenerationResult | None:
    if task.cancelled() or task.exception() is not None:
        return None
    return task.result()
