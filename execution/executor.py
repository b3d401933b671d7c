"""Carrying out a routing `Plan`: route, cascade (whole or mid-stream), speculative,
verify and ensemble, each with fallbacks.

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
from dataclasses import dataclass, field, replace
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
from execution.sse import TokenReader
from routing.confidence import confidence
from routing.config import ConfidenceRule, EnsembleConfig, VerifierConfig
from routing.judge import answer_key, decided_majority, pick, verdict
from routing.planner import Plan

JUDGE_TOKENS = 1  # the judge answers one word; its logprobs are the verdict


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
    judge_score: float | None = None  # verify: the judge's P(right) of the last answer judged
    judge_pool: str | None = None
    votes: int | None = None  # ensemble: how many answers agreed with the one kept
    answers: int | None = None  # ensemble: how many answers were in when it was decided
    losers: list[tuple[str, int]] = field(default_factory=list)  # ensemble: (pool, tokens)
    streamed: bool = False  # a cascade decided on a stream's first tokens


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
    # `verify`: the judge pool's request grading an answer.
    judge: Callable[[str, Answer], Any] | None = None
    # Another sample of the same request from a pool (ensemble members that repeat a pool,
    # verify's retries): its own seed, and `temperature` when given.
    sample: Callable[[str, int, float | None], Any] | None = None
    prompt_estimate: int = 0  # the prompt's tokens, for a call cut off mid-stream

    def why_invalid(self, answer: Answer) -> str | None:
        return self.invalid(answer) if self.invalid is not None else None

    def call(self, pool: str, max_tokens: int | None = None) -> Call:
        made = Call(pool, self.max_tokens[pool] if max_tokens is None else max_tokens)
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
        self,
        pools: PoolClient,
        monitor: PoolMonitor,
        events: ExecutionEvents | None = None,
        verifier: VerifierConfig | None = None,
        ensemble: EnsembleConfig | None = None,
    ) -> None:
        self.pools = pools
        self.monitor = monitor
        self.events: ExecutionEvents = events or _NoEvents()
        self.verifier = verifier or VerifierConfig()
        self.ensemble = ensemble or EnsembleConfig()

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
        self,
        pool: str,
        job: Job,
        tried: list[str],
        can_fall_back: bool = False,
        request: Any = None,
        max_tokens: int | None = None,
        method: str | None = None,
    ) -> Answer:
        """One whole-answer call: the job's request for `pool`, or `request` (a judge's,
        a sample's) with its own `max_tokens` for the bill."""
        await self._enter(pool, can_fall_back)
        tried.append(pool)
        call = job.call(pool, max_tokens)
        started = time.monotonic()
        if request is None:
            request = job.for_pool(pool)
        try:
            result = await self.pools.generate(pool, method or job.method, request)
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
        if plan.strategy == "verify":
            return await self._verify(plan, job)
        if plan.strategy == "ensemble":
            return await self._ensemble(plan, job)
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

    async def _verify(self, plan: Plan, job: Job) -> Outcome:
        """The cheap pool answers; the judge grades it (`routing.judge`); a rejected
        answer is asked again (`verifier.retries`) or escalated. A judge that fails or
        says neither yes nor no rejects: an ungraded answer is not a checked one."""
        assert plan.target is not None and plan.judge is not None and job.judge is not None
        cfg = self.verifier
        tried: list[str] = []
        started = time.monotonic()
        forecast = self.monitor.forecast
        forecast.started(plan.target)
        escalated: bool | None = None
        score: float | None = None
        invalid: str | None = None
        notes: list[str] = []
        answer: Answer | None = None
        try:
            answer = await self._call(plan.pool, job, tried, True)
            for attempt in range(cfg.retries + 1):
                invalid = job.why_invalid(answer)
                score = None if invalid else await self._judged(plan.judge, job, answer, notes)
                if score is not None and score >= cfg.threshold:
                    escalated = False
                    return Outcome(
                        answer, plan.pool, "verify", tried, judge_score=score,
                        judge_pool=plan.judge, notes=notes,
                    )  # fmt: skip
                if attempt < cfg.retries:
                    assert job.sample is not None
                    again = job.sample(plan.pool, attempt + 1, cfg.retry_temperature)
                    answer = await self._call(plan.pool, job, tried, True, request=again)
            escalated = True
        except BaseException as exc:
            if not moves_on(exc):
                raise
            escalated = True
            self._fell_back(plan.pool, [plan.target], exc)
            if answer is None:
                pool, result = await self._with_fallback(
                    [plan.target, *plan.target_fallbacks], job, tried
                )
                return Outcome(result, pool, "verify", tried, escalated=True, notes=notes)
        finally:
            forecast.finished(plan.target, escalated)
        assert answer is not None
        if self.monitor.saturated(plan.target):
            self.events.downgraded("verify", "target_saturated")
            notes.append(f"escalation skipped: pool {plan.target!r} is saturated")
            return Outcome(
                answer, plan.pool, "verify", tried, judge_score=score, judge_pool=plan.judge,
                notes=notes, invalid=invalid,
            )  # fmt: skip
        spent = time.monotonic() - started
        pool, result = await self._with_fallback([plan.target, *plan.target_fallbacks], job, tried)
        return Outcome(
            result, pool, "verify", tried, escalated=True, judge_score=score,
            judge_pool=plan.judge, discarded_tokens=answer.completion_tokens,
            discarded_engine_s=round(spent, 4), discarded_pool=plan.pool, notes=notes,
            invalid=invalid,
        )  # fmt: skip

    async def _judged(self, judge: str, job: Job, answer: Answer, notes: list[str]) -> float | None:
        """The judge's P(the answer is right), None when it could not tell."""
        assert job.judge is not None
        try:
            graded = await self._call(
                judge, job, [], request=job.judge(judge, answer), max_tokens=JUDGE_TOKENS,
                method="chat",
            )  # fmt: skip
        except BaseException as exc:
            if not moves_on(exc):
                raise
            notes.append(f"judge {judge!r} failed: the answer counts as rejected")
            return None
        score = verdict(graded.body)
        if score is None:
            notes.append(f"judge {judge!r} said neither yes nor no: the answer counts as rejected")
        return score

    async def _ensemble(self, plan: Plan, job: Job) -> Outcome:
        """Every member answers at once; `majority` stops as soon as more than half agree
        (the rest are aborted: Serve cancels their calls, vLLM frees the slots), `logprob`
        waits for all and keeps the most confident, `judge` waits for all and keeps the
        one the judge grades best (each distinct answer judged once, all at once; no
        grade at all: the majority pick)."""
        members = plan.members
        by = self.ensemble.pick
        seen: dict[str, int] = {}
        tasks: dict[asyncio.Task[Answer], int] = {}
        for i, pool in enumerate(members):
            seen[pool] = seen.get(pool, 0) + 1
            request = None
            if seen[pool] > 1:  # a repeat of a pool: another sample, with its own seed
                assert job.sample is not None
                request = job.sample(pool, seen[pool] - 1, None)
            call = self._call(pool, job, [], can_fall_back=True, request=request)
            tasks[asyncio.create_task(call)] = i
        started = time.monotonic()
        results: dict[int, Answer] = {}
        keys: dict[int, str] = {}  # each answer's `answer_key`, read once
        failures: list[BaseException] = []
        pending = set(tasks)
        try:
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task.exception() is not None:
                        failures.append(task.exception())  # type: ignore[arg-type]
                    else:
                        i = tasks[task]
                        results[i] = task.result()
                        keys[i] = answer_key(results[i].body)
                if by == "majority" and decided_majority(list(keys.values()), len(members)):
                    break
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if not results:
            for failure in failures:
                if not moves_on(failure):
                    raise failure  # the request itself was refused (a 400)
            raise AllPoolsFailedError(list(members))
        order = sorted(results)
        ordered = [keys[i] for i in order]
        means = [_mean(results[i]) for i in order]
        notes: list[str] = []
        grades: list[float | None] = []
        if by == "judge":
            grades = await self._graded(plan, job, [results[i] for i in order], ordered, notes)
        if any(g is not None for g in grades):
            chosen = order[pick(ordered, grades, "logprob")]
        else:
            chosen = order[pick(ordered, means, "majority" if by == "judge" else by)]
        kept = results[chosen]
        key = keys[chosen]
        losers = [(members[i], results[i].completion_tokens) for i in order if i != chosen]
        losers += [(members[i], 0) for t, i in tasks.items() if i not in results]
        if len(results) < len(members):
            notes.append(f"{len(members) - len(results)} of {len(members)} answers not awaited")
        return Outcome(
            kept, members[chosen], "ensemble", list(members), confidence=_mean(kept),
            votes=sum(k == key for k in ordered) if key else 1, answers=len(results),
            discarded_tokens=sum(t for _, t in losers),
            discarded_engine_s=round(time.monotonic() - started, 4), losers=losers, notes=notes,
            judge_pool=plan.judge if grades else None,
            judge_score=grades[order.index(chosen)] if grades else None,
        )  # fmt: skip

    async def _graded(
        self, plan: Plan, job: Job, answers: list[Answer], keys: list[str], notes: list[str]
    ) -> list[float | None]:
        """The judge's grade of each answer; answers alike (same key) are judged once."""
        assert plan.judge is not None
        # An answer without a key (nothing comparable in it) is judged on its own.
        named = [key or f"#{i}" for i, key in enumerate(keys)]
        first: dict[str, int] = {}
        for i, key in enumerate(named):
            first.setdefault(key, i)
        said: list[str] = []
        judged = await asyncio.gather(
            *(self._judged(plan.judge, job, answers[i], said) for i in first.values())
        )
        notes.extend(dict.fromkeys(said))  # one note per kind of failure, in order
        grade = dict(zip(first, judged, strict=True))
        return [grade[key] for key in named]

    async def open_cascade_stream(
        self, plan: Plan, job: Job, decide_after: int
    ) -> tuple[str, list[str] | None, AsyncIterator[list[str]], list[str], Outcome]:
        """A streaming cascade that decides mid-stream: the cheap pool's first
        `decide_after` tokens are held back and judged by their logprobs; confident, they
        are released and the rest streams on; not, the cheap stream is aborted and the
        target's streams instead. The client's first token waits for those tokens only.

        Returns what `open_stream` does, and the decision as an `Outcome` (its `result`
        is empty: the answer is the stream)."""
        assert plan.target is not None and plan.rule is not None
        forecast = self.monitor.forecast
        forecast.started(plan.target)
        escalated: bool | None = None
        started = time.monotonic()
        reader = TokenReader()
        held: list[str] = []
        score: float | None = None
        tried: list[str] = []
        try:
            try:
                source = replace(plan, fallbacks=())
                pool, first, chunks, tried = await self.open_stream(source, job)
            except BaseException as exc:
                if not moves_on(exc):
                    raise
                escalated = True
                self._fell_back(plan.pool, [plan.target], exc)
                return await self._escalated_stream(plan, job, [plan.pool], None)
            try:
                batch = first
                while batch is not None:
                    held.extend(batch)
                    reader.read(batch)
                    if reader.ended or len(reader.logprobs) >= decide_after:
                        break
                    batch = await anext(chunks, None)
            except BaseException as exc:
                # The client left, or the cheap pool failed before the decision: its
                # stream is closed (vLLM aborts it); a pool failure escalates.
                await chunks.aclose()  # type: ignore[attr-defined]
                if not moves_on(exc):
                    raise
                reader.failed = True
            rule = plan.rule
            score = confidence(reader.logprobs[:decide_after], rule.method, rule.quantile)
            escalated = reader.failed or score < rule.threshold_for(streamed=True)
        finally:
            forecast.finished(plan.target, escalated)
        outcome = Outcome(
            Answer(None, 0, 0), pool, "cascade", tried, confidence=score, streamed=True
        )
        if not escalated:
            return pool, held, chunks, tried, outcome
        if self.monitor.saturated(plan.target) and not reader.failed:
            self.events.downgraded("cascade", "target_saturated")
            outcome.notes.append(f"escalation skipped: pool {plan.target!r} is saturated")
            return pool, held, chunks, tried, outcome
        # NOTE: closing the cheap stream cancels its call: vLLM aborts it in the engine
        # (closing it twice, after a failure above, is a no-op).
        await chunks.aclose()  # type: ignore[attr-defined]
        call = job.calls[-1]
        call.prompt_tokens, call.completion_tokens = job.prompt_estimate, len(reader.logprobs)
        spent = time.monotonic() - started
        cut = Outcome(
            Answer(None, 0, 0), pool, "cascade", tried, escalated=True, confidence=score,
            discarded_tokens=len(reader.logprobs), discarded_engine_s=round(spent, 4),
            discarded_pool=pool, streamed=True,
        )  # fmt: skip
        return await self._escalated_stream(plan, job, tried, cut)

    async def _escalated_stream(
        self, plan: Plan, job: Job, tried: list[str], cut: Outcome | None
    ) -> tuple[str, list[str] | None, AsyncIterator[list[str]], list[str], Outcome]:
        assert plan.target is not None
        target = replace(plan, pool=plan.target, fallbacks=plan.target_fallbacks)
        pool, first, chunks, more = await self.open_stream(target, job)
        tried = [*tried, *more]
        outcome = cut or Outcome(
            Answer(None, 0, 0), pool, "cascade", tried, escalated=True, streamed=True
        )
        outcome.pool, outcome.tried, outcome.escalated = pool, tried, True
        return pool, first, chunks, tried, outcome

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


def _mean(result: Answer) -> float | None:
    return result.mean_logprob


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
