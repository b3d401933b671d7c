"""Carrying out a routing `Plan`: route, cascade, speculative, each with fallbacks.

Pools are reached through `PoolClient` (the ingress backs it with Serve handles, tests
with fake engines). Live pool state is read from and reported to the `PoolMonitor`.

Which failures move a request to the next pool of its fallback chain is decided by the
error itself (`core.errors`: `retryable`, `counts_against_circuit`): an engine failure,
an unavailable or full pool, a timeout, an open circuit, a cold start move on; a client
error (a prompt too long) does not, since another pool would refuse it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from core.errors import (
    AllPoolsFailedError,
    CircuitOpenError,
    ColdStartError,
    EngineError,
    EngineUnavailableError,
    PoolOverloadedError,
    PoolTimeoutError,
    SwitchyardError,
)
from execution.monitor import PoolMonitor
from routing.confidence import confidence
from routing.config import ConfidenceRule
from routing.planner import Plan


@dataclass
class Answer:
    """A pool's whole answer: the engine's OpenAI response (`body`), and what strategies
    and the bill read of it."""

    body: Any
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[float] = field(default_factory=list)  # chosen tokens', first choice

    @property
    def mean_logprob(self) -> float | None:
        return sum(self.logprobs) / len(self.logprobs) if self.logprobs else None


class PoolClient(Protocol):
    """How execution reaches a pool; the ingress backs it with Serve handles.

    `method` is the pool server's (`chat`, `completions`); `request` is vLLM's request
    model for it, opaque here."""

    async def generate(self, pool: str, method: str, request: Any) -> Answer: ...

    def stream(self, pool: str, method: str, request: Any) -> AsyncIterator[list[str]]:
        """Batches of SSE events; raises before the first when the pool refuses."""

    def wake(self, pool: str) -> None:
        """Make a pool that is scaled to zero start a replica; returns at once."""


class ExecutionEvents(Protocol):
    """What execution reports as it goes (the ingress's metrics implement it)."""

    def fell_back(self, from_pool: str, to_pool: str, reason: str) -> None: ...

    def downgraded(self, strategy: str, reason: str) -> None: ...


class _NoEvents:
    def fell_back(self, from_pool: str, to_pool: str, reason: str) -> None:
        pass

    def downgraded(self, strategy: str, reason: str) -> None:
        pass


def moves_on(exc: BaseException) -> bool:
    """Should the next pool be tried? Pool failures yes, client errors and bugs no."""
    return isinstance(exc, SwitchyardError) and exc.retryable


def counts_against_circuit(exc: BaseException) -> bool:
    return isinstance(exc, SwitchyardError) and exc.counts_against_circuit


@dataclass
class Outcome:
    """What happened to one request, for the response and the counters."""

    result: Answer
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
    invalid: str | None = None  # why the cheap answer was unusable (it escalated)


@dataclass
class Call:
    """One call of a request to a pool, as the tenant's bill needs it: what it did, or,
    when that is unknown (a timeout, an engine failure mid-answer, a client that left a
    whole-answer call), that the engine may have worked up to `max_tokens`."""

    pool: str
    max_tokens: int
    prompt_tokens: int = 0
    completion_tokens: int | None = None  # None: unknown
    ran: bool = True  # False: refused before any engine work (no charge)

    def ended(self, exc: BaseException) -> None:
        """A call that raised: did the engine possibly work on it? Not when the pool was
        unavailable or full, nor for a client error refused before generating."""
        worked = isinstance(exc, asyncio.CancelledError | PoolTimeoutError | EngineError)
        self.ran = worked and not isinstance(exc, EngineUnavailableError)


@dataclass(frozen=True)
class Job:
    """One request: the pool server's `method`, and `for_pool`, which makes the request
    a pool is sent (its model, its `max_tokens`); `calls` is the caller's list, so what
    ran is known even when the request fails."""

    method: str
    for_pool: Callable[[str], Any]
    max_tokens: Mapping[str, int]
    calls: list[Call] = field(default_factory=list)
    # Why an answer is unusable as asked (routing/validity.py), None when it is usable;
    # set when the request carries tools or a JSON schema.
    invalid: Callable[[Answer], str | None] | None = None

    def why_invalid(self, answer: Answer) -> str | None:
        return self.invalid(answer) if self.invalid is not None else None

    def call(self, pool: str) -> Call:
        made = Call(pool, self.max_tokens[pool])
        self.calls.append(made)
        return made


@dataclass
class _Race:
    """One speculative request: two pools at once, and what each produced so far."""

    source: str
    target: str
    rule: ConfidenceRule
    job: Job
    started: float = field(default_factory=time.monotonic)
    tasks: dict[str, asyncio.Task[Answer]] = field(default_factory=dict)

    @property
    def tried(self) -> list[str]:
        return [self.source, self.target]

    def which(self, pool: str) -> str:
        return "source" if pool == self.source else "target"


class Executor:
    def __init__(
        self, pools: PoolClient, monitor: PoolMonitor, events: ExecutionEvents | None = None
    ) -> None:
        self.pools = pools
        self.monitor = monitor
        self.events: ExecutionEvents = events or _NoEvents()

    async def _warm(self, pool: str, can_fall_back: bool) -> None:
        """A pool scaled to zero: wake it, then fall back at once or wait a bounded time.

        Starting a replica takes from seconds (fake engine) to minutes (a GPU model load),
        so a request with somewhere else to go does not wait for it.
        """
        monitor = self.monitor
        if not monitor.scaled_to_zero(pool):
            return
        self.pools.wake(pool)
        if not can_fall_back:
            deadline = time.monotonic() + monitor.limits[pool].cold_start_timeout_s
            while monitor.scaled_to_zero(pool) and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            if not monitor.scaled_to_zero(pool):
                return
        raise ColdStartError(pool)

    async def _enter(self, pool: str, can_fall_back: bool) -> None:
        """Before calling a pool: its circuit must admit the request, and it must be up."""
        if not self.monitor.admit(pool):
            raise CircuitOpenError(pool, self.monitor.retry_after_s(pool))
        await self._warm(pool, can_fall_back)

    # --- single calls -------------------------------------------------------------

    async def _call(
        self, pool: str, job: Job, tried: list[str], can_fall_back: bool = False
    ) -> Answer:
        await self._enter(pool, can_fall_back)
        tried.append(pool)
        call = job.call(pool)
        started = time.monotonic()
        try:
            result = await self.pools.generate(pool, job.method, job.for_pool(pool))
        except BaseException as exc:
            call.ended(exc)
            if not isinstance(exc, asyncio.CancelledError) and counts_against_circuit(exc):
                self.monitor.record_failure(pool)
            raise
        call.prompt_tokens, call.completion_tokens = result.prompt_tokens, result.completion_tokens
        self.monitor.record_success(pool, time.monotonic() - started, result.completion_tokens)
        return result

    async def _with_fallback(
        self, chain: list[str], job: Job, tried: list[str]
    ) -> tuple[str, Answer]:
        last: BaseException | None = None
        for i, pool in enumerate(chain):
            try:
                return pool, await self._call(pool, job, tried, i + 1 < len(chain))
            except BaseException as exc:
                if not moves_on(exc):
                    raise
                last = exc
                self._fell_back(pool, chain[i + 1 : i + 2], exc)
        raise _exhausted(chain, tried, last)

    def _fell_back(self, pool: str, following: list[str], exc: BaseException) -> None:
        if following and isinstance(exc, SwitchyardError):
            self.events.fell_back(pool, following[0], exc.reason)

    async def open_stream(
        self, plan: Plan, job: Job
    ) -> tuple[str, list[str] | None, AsyncIterator[list[str]], list[str]]:
        """Start streaming from the plan's pool, falling back until a first batch arrives.

        After the first batch the client has seen output, so a later failure ends the
        stream with an error event instead of switching models mid-answer. The last of
        `job.calls` is the stream's: its tokens are counted by whoever reads the stream.
        """
        chain: list[str] = [plan.pool, *plan.fallbacks]
        tried: list[str] = []
        last: BaseException | None = None
        for i, pool in enumerate(chain):
            call: Call | None = None
            try:
                await self._enter(pool, i + 1 < len(chain))
                tried.append(pool)
                call = job.call(pool)
                chunks = self.pools.stream(pool, job.method, job.for_pool(pool))
                first = await anext(chunks, None)
            except BaseException as exc:
                if call is not None:
                    call.ended(exc)
                if not moves_on(exc):
                    raise
                if counts_against_circuit(exc):
                    self.monitor.record_failure(pool)
                last = exc
                self._fell_back(pool, chain[i + 1 : i + 2], exc)
                continue
            self.monitor.record_success(pool, 0.0, 0)
            return pool, first, chunks, tried
        raise _exhausted(chain, tried, last)

    # --- strategies -----------------------------------------------------------------

    async def execute(self, plan: Plan, job: Job) -> Outcome:
        """Run the plan; every pool call it makes is appended to `job.calls` (the bill)."""
        if plan.strategy == "cascade":
            return await self._cascade(plan, job)
        if plan.strategy == "speculative":
            return await self._speculative(plan, job)
        tried: list[str] = []
        pool, result = await self._with_fallback([plan.pool, *plan.fallbacks], job, tried)
        return Outcome(result, pool, "route", tried)

    async def _cascade(self, plan: Plan, job: Job) -> Outcome:
        assert plan.target is not None and plan.rule is not None
        tried: list[str] = []
        started = time.monotonic()
        verdict: bool | None = None
        forecast = self.monitor.forecast
        forecast.started(plan.target)
        escalation = [plan.target, *plan.target_fallbacks]
        invalid: str | None = None
        try:
            source, first = plan.pool, await self._call(plan.pool, job, tried, True)
            score = _confidence(plan.rule, first)
            invalid = job.why_invalid(first)
            verdict = score < plan.rule.threshold or invalid is not None
        except BaseException as exc:
            if not moves_on(exc):
                raise
            self._fell_back(plan.pool, [plan.target], exc)
            pool, result = await self._with_fallback(escalation, job, tried)
            return Outcome(result, pool, "cascade", tried, escalated=True)
        finally:
            forecast.finished(plan.target, verdict)
        if not verdict:
            return Outcome(first, source, "cascade", tried, confidence=score)
        if self.monitor.saturated(plan.target):
            # Shedding quality, not requests: the unsure answer beats queueing on a full pool.
            self.events.downgraded("cascade", "target_saturated")
            note = f"escalation skipped: pool {plan.target!r} is saturated"
            return Outcome(
                first, source, "cascade", tried, confidence=score, notes=[note], invalid=invalid
            )
        spent = time.monotonic() - started
        pool, result = await self._with_fallback(escalation, job, tried)
        return Outcome(
            result, pool, "cascade", tried, escalated=True, confidence=score,
            discarded_tokens=first.completion_tokens, discarded_engine_s=round(spent, 4),
            discarded_pool=source, invalid=invalid,
        )  # fmt: skip

    async def _speculative(self, plan: Plan, job: Job) -> Outcome:
        """Race the cheap and the strong pool; keep the cheap answer only if confident
        (and usable, when the request has tools or a schema)."""
        assert plan.target is not None and plan.rule is not None
        race = _Race(plan.pool, plan.target, plan.rule, job)
        for pool in race.tried:
            # NOTE: the other racer answers meanwhile: neither waits for a cold start.
            race.tasks[pool] = asyncio.create_task(self._call(pool, job, [], can_fall_back=True))
        try:
            return await self._decide(race)
        finally:
            for task in race.tasks.values():
                if not task.done():
                    task.cancel()
            await asyncio.gather(*race.tasks.values(), return_exceptions=True)

    async def _decide(self, race: _Race) -> Outcome:
        source, target, tasks = race.source, race.target, race.tasks
        done, _ = await asyncio.wait(tasks.values(), return_when=asyncio.FIRST_COMPLETED)
        first_spent = time.monotonic() - race.started  # engine time of the first finisher
        first = next(p for p, t in tasks.items() if t in done)
        other = target if first == source else source
        first_result = _result_or_none(tasks[first])
        score = None
        invalid = None
        if first == source and first_result is not None:
            score = _confidence(race.rule, first_result)
            invalid = race.job.why_invalid(first_result)
            if score >= race.rule.threshold and invalid is None:
                return await self._won(race, first, first_result, score)
        elif first == target and first_result is not None:
            if tasks[source].done() and (src := _result_or_none(tasks[source])) is not None:
                score = _confidence(race.rule, src)
            return await self._won(race, first, first_result, score)
        # The first finisher failed or is not confident: the other one decides.
        await asyncio.wait([tasks[other]])
        other_result = _result_or_none(tasks[other])
        if other_result is None:
            if first_result is not None:  # strong pool failed: a weak answer beats none
                return Outcome(
                    first_result, first, "speculative", race.tried, confidence=score,
                    winner="source",
                )  # fmt: skip
            failure = tasks[other].exception()
            if failure is not None and not moves_on(failure):
                raise failure  # both refused the request itself (a 400): not a pool's fault
            raise AllPoolsFailedError(race.tried) from failure
        if other == source:
            score = _confidence(race.rule, other_result)
        discarded = first_result.completion_tokens if first_result is not None else 0
        return Outcome(
            other_result, other, "speculative", race.tried,
            escalated=other == target, confidence=score, discarded_tokens=discarded,
            discarded_engine_s=round(first_spent, 4) if discarded else 0.0,
            discarded_pool=first if discarded else None, winner=race.which(other),
            invalid=invalid,
        )  # fmt: skip

    async def _won(self, race: _Race, winner: str, result: Answer, score: float | None) -> Outcome:
        """Abort the loser now: Serve cancels its call and vLLM frees the engine slot.

        What the loser generated before it was stopped is not known (a whole-answer call
        reports nothing until it ends): its bill is its worst case (`Call`)."""
        loser = race.target if winner == race.source else race.source
        race.tasks[loser].cancel()
        with contextlib.suppress(BaseException):
            await race.tasks[loser]
        return Outcome(
            result, winner, "speculative", race.tried,
            escalated=winner == race.target, confidence=score,
            discarded_engine_s=round(time.monotonic() - race.started, 4),
            discarded_pool=loser, winner=race.which(winner),
        )  # fmt: skip


def _confidence(rule: ConfidenceRule, result: Answer) -> float:
    return confidence(result.logprobs, rule.method, rule.quantile)


def _exhausted(chain: list[str], tried: list[str], last: BaseException | None) -> BaseException:
    """The error for a fallback chain where no pool answered."""
    if last is None:
        return AllPoolsFailedError(chain)
    if isinstance(last, PoolOverloadedError):
        return last  # every pool tried was full: the client should retry, not give up
    if len(tried) <= 1:
        return last  # one pool tried (or all circuits open): its own error says most
    return AllPoolsFailedError(tried)


def _result_or_none(task: asyncio.Task[Answer]) -> Answer | None:
    if task.cancelled() or task.exception() is not None:
        return None
    return task.result()
