"""Serving logic of the OpenAI endpoints: profile, plan, execute, relay the answer.

Independent of Ray: pools are reached through `PoolClient`, which the ingress backs with
Serve handles and unit tests back with fake engines. A reader finds the request path
here: validate -> `Planning.plan` (planning.py: the `RequestProfile`, once, then
routing/planner.py, pure, then the adaptive router's pick) -> `Executor` (execution/,
pools) -> response.

Pools are Ray Serve LLM servers: a request is vLLM's own request model, sent to each
pool with that pool's model and limits, and the answer is vLLM's (responses.py adds the
`switchyard` route info). Streaming: `route` relays the pool's events as they come
(falling back to the next pool only before the first); `speculative`, `verify`,
`ensemble` and a `cascade` that holds back stream once an answer is accepted, as the
events of that whole answer; a cheap answer that gets rejected is never shown. A
`cascade` with `stream_decide_tokens` judges the cheap stream's first tokens, then relays
it or the target's stream (`Executor.open_cascade_stream`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Protocol

from core.errors import PromptError, QuotaExceededError
from deployments.config import AppConfig, PoolConfig
from deployments.metrics import Finished, RequestMetrics
from deployments.openai.adaptive import AdaptiveRouting
from deployments.openai.embeddings import EMBEDDING_MODEL
from deployments.openai.errors import outcome_of
from deployments.openai.inflight import InFlight, ledger_entry
from deployments.openai.planning import Planning
from deployments.openai.protocol import (
    ChatRequest,
    GenerationRequest,
    ModelCard,
    ModelList,
    RouteInfo,
    RoutePlanResponse,
    RoutingFields,
    new_id,
)
from deployments.openai.responses import (
    StreamDone,
    StreamUsage,
    relay,
    whole_as_events,
    whole_body,
    without_logprobs,
)
from execution.executor import JUDGE_TOKENS, Answer, Executor, Job, Outcome, PoolClient
from execution.monitor import PoolLimits, PoolMonitor
from routing.judge import answer_text, judge_messages
from routing.learned import LearnedRouter, PoolRouter
from routing.planner import AUTO_MODEL, Plan, Wishes
from routing.semantic import SemanticClassifier
from routing.validity import Expectation, ToolCall, why_invalid
from tenancy.gate import QuotaGate
from tenancy.ledger import LedgerEntry

NO_WISHES = Wishes()

__all__ = ["OpenAIServing", "PoolClient", "Routed"]


COUNTED = "_switchyard_counted"


def mark_counted(exc: BaseException) -> None:
    """The request's metrics already hold this failure (the ingress counts the others)."""
    setattr(exc, COUNTED, True)


def is_counted(exc: BaseException) -> bool:
    return bool(getattr(exc, COUNTED, False))


@dataclass
class Routed:
    """A routed answer: route info for headers, and either a body or an SSE stream."""

    route: RouteInfo
    body: str | None = None  # JSON
    stream: AsyncIterator[str] | None = None
    extra_headers: Mapping[str, str] = field(default_factory=dict)  # x-ratelimit-*

    def headers(self) -> dict[str, str]:
        return {
            "x-switchyard-pool": self.route.pool,
            "x-switchyard-model": self.route.model,
            "x-switchyard-route": self.route.reason,
            "x-switchyard-strategy": self.route.strategy,
            **self.extra_headers,
        }


class LedgerSink(Protocol):
    """Where finished requests are recorded (tenancy.ledger.LedgerWriter); never blocks."""

    def record(self, entry: LedgerEntry) -> None: ...


JUDGE_PROMPT_TOKENS = 200  # the judge's instruction, over the question and the answer
JUDGE_TOP_LOGPROBS = 5  # enough to find both "Yes" and "No" among the judge's candidates


class OpenAIServing:
    def __init__(
        self,
        config: AppConfig,
        pools: PoolClient,
        semantic: SemanticClassifier | None = None,
        learned: LearnedRouter | PoolRouter | None = None,
        metrics: RequestMetrics | None = None,
        ledger: LedgerSink | None = None,
        gate: QuotaGate | None = None,
        adaptive: AdaptiveRouting | None = None,
    ) -> None:
        self.config = config
        self.adaptive = adaptive
        self.metrics = metrics or RequestMetrics(export=False)
        self.ledger = ledger
        self.gate = gate
        self.pools = pools
        self._pool_models = config.pool_models()
        self._pool_specs = {name: config.model(model) for name, model in self._pool_models.items()}
        self.monitor = PoolMonitor(
            {name: _limits(pool) for name, pool in config.pools.items()},
            config.routing.fallback.failure_threshold,
            config.routing.fallback.cooldown_s,
        )
        self.planning = Planning(config, self.monitor, semantic, learned, adaptive)
        routing = config.routing
        self.executor = Executor(
            pools, self.monitor, self.metrics, routing.verifier, routing.ensemble
        )
        large = config.pools.get(config.routing.rules.large_pool)
        self._large_model = config.model(large.model) if large else None

    def models(self) -> ModelList:
        now = int(time.time())
        cards = [
            ModelCard(id=AUTO_MODEL, created=now, switchyard={"pools": list(self._pool_models)})
        ]
        for pool, model in self._pool_models.items():
            can = sorted(self._pool_specs[pool].capabilities())
            cards.append(
                ModelCard(
                    id=pool,
                    created=now,
                    switchyard={"pool": pool, "model": model, "capabilities": can},
                )
            )
        for spec in self.config.models:
            pools = [p for p, m in self._pool_models.items() if m == spec.id]
            if pools:
                info = {
                    "pools": pools,
                    "chat": spec.chat,
                    "capabilities": sorted(spec.capabilities()),
                    "max_tokens": spec.max_tokens,
                    "context_length": spec.engine.max_model_len,
                }
                cards.append(ModelCard(id=spec.id, created=now, switchyard=info))
        info = {"capabilities": ["embeddings"], "dimensions": 384, "served_by": "ingress"}
        cards.append(ModelCard(id=EMBEDDING_MODEL, created=now, switchyard=info))
        return ModelList(data=cards)

    # --- planning -----------------------------------------------------------------

    async def dry_run(
        self, body: RoutingFields, text: str, wishes: Wishes, needs: frozenset[str]
    ) -> RoutePlanResponse:
        """`POST /v1/route`: the decision for a request, without generating."""
        decided, profile = await self.planning.plan(body, text, wishes, needs)
        return self.planning.describe(decided, profile)

    # --- endpoints ----------------------------------------------------------------

    async def generate(
        self, body: GenerationRequest, wishes: Wishes = NO_WISHES, key_id: str | None = None
    ) -> Routed:
        """A chat or text completion: plan, reserve, run the plan on the pools, answer."""
        chat = isinstance(body, ChatRequest)
        endpoint, prefix = ("chat", "chatcmpl") if chat else ("completions", "cmpl")
        flight = self._arrived(endpoint, prefix, body, wishes, key_id)
        flight.choices = body.choices
        with self._failures(flight, wishes):
            wishes = self._frugal(flight, self._one_answer(body, wishes))
            text = body.text
            flight.prompt = text if self._keeps_prompts(flight.tenant) else None
            await self._plan_and_reserve(flight, body, text, wishes)
            return await self._serve(body, flight)

    def _one_answer(self, body: GenerationRequest, wishes: Wishes) -> Wishes:
        """Cascade and speculative judge one answer: a request for several (`n`, batched
        prompts) is refused when it asked for them, routed when they are only the
        default."""
        if body.choices == 1:
            return wishes
        if wishes.strategy not in (None, "route"):
            raise PromptError(
                f"strategy {wishes.strategy!r} judges one answer; with n > 1 or several "
                "prompts use strategy `route`",
                param="n",
            )
        return replace(wishes, strategy="route")

    def _arrived(
        self,
        endpoint: str,
        prefix: str,
        body: GenerationRequest,
        wishes: Wishes,
        key_id: str | None,
    ) -> InFlight:
        return InFlight(new_id(prefix), endpoint, body.model or AUTO_MODEL, wishes.tenant, key_id)

    def _frugal(self, flight: InFlight, wishes: Wishes) -> Wishes:
        """The request's quota accounts, and frugal routing when a budget nears its end
        (from the usage this replica last saw: no waiting)."""
        if self.gate is None:
            return wishes
        flight.policies = self.gate.accounts(
            flight.tenant, wishes.assigned_tier, flight.key_id, wishes.tier
        )
        frugal = self.gate.frugal(flight.policies)
        return replace(wishes, frugal=frugal) if frugal else wishes

    async def _plan_and_reserve(
        self, flight: InFlight, body: GenerationRequest, text: str, wishes: Wishes
    ) -> Plan:
        """Plan, then reserve the plan's worst case. A budget too low for that worst case
        but not spent gets a frugal plan (one cheap pool) before it gets a 429: this
        replica's view of the budget may be a moment old, the keeper's answer is not."""
        needs = body.needs
        flight.plan, profile = await self.planning.plan(body, text, wishes, needs, flight=flight)
        flight.prompt_estimate = profile.prompt_tokens
        try:
            await self._reserve(flight, profile.prompt_tokens)
        except QuotaExceededError:
            if wishes.frugal is not None:
                raise
            frugal = replace(wishes, frugal="budget: too little left for this plan's worst case")
            flight.plan, profile = await self.planning.plan(
                body, text, frugal, needs, flight=flight
            )
            await self._reserve(flight, profile.prompt_tokens)
        return flight.plan

    async def _reserve(self, flight: InFlight, prompt_tokens: float) -> None:
        """Reserve the plan's worst case on every account (tenancy/gate.py): the prompt
        plus `max_tokens` on each pool it may run — both, for cascade and speculative —
        or raise a 429 before any engine work."""
        if self.gate is None or not flight.policies:
            return
        assert flight.plan is not None
        flight.prompt_estimate = prompt_tokens
        tokens, usd = self._worst_case(flight.plan, prompt_tokens, flight.choices)
        flight.reservation = await self.gate.reserve(flight.policies, tokens, usd)
        flight.headers = self.gate.headers(flight.policies)

    def _worst_case(
        self, plan: Plan, prompt_tokens: float, choices: int = 1
    ) -> tuple[float, float]:
        """Tokens and USD of the plan's dearest path; `choices` answers on each call."""

        def most(chain: list[str]) -> tuple[float, float]:
            costs = [
                self._price(pool, prompt_tokens, self._cap(plan, pool) * choices) for pool in chain
            ]
            return max(t for t, _ in costs), max(u for _, u in costs)

        tokens = usd = 0.0
        for chain in plan.answer_chains():
            more_tokens, more_usd = most(list(chain))
            tokens, usd = tokens + more_tokens, usd + more_usd
        if plan.strategy == "verify" and plan.judge is not None:
            # Each answer of the cheap pool (the first and every retry) may be judged; a
            # retry answers up to max_tokens again. The judge reads the question and the
            # answer (both bounded) and writes one token.
            retries = self.config.routing.verifier.retries
            answer_cap = self._cap(plan, plan.pool) * choices
            more_tokens, more_usd = self._price(plan.pool, prompt_tokens, answer_cap)
            judged = self._price(plan.judge, prompt_tokens + answer_cap + JUDGE_PROMPT_TOKENS, 1)
            tokens += retries * more_tokens + (retries + 1) * judged[0]
            usd += retries * more_usd + (retries + 1) * judged[1]
        if plan.strategy == "ensemble" and plan.judge is not None:
            # Every answer may be distinct, so each may be judged once.
            for member in plan.members:
                answer_cap = self._cap(plan, member) * choices
                judged = self._price(
                    plan.judge, prompt_tokens + answer_cap + JUDGE_PROMPT_TOKENS, 1
                )
                tokens, usd = tokens + judged[0], usd + judged[1]
        return tokens, usd

    def _cap(self, plan: Plan, pool: str) -> int:
        return plan.max_tokens.get(pool) or self._pool_specs[pool].max_tokens

    def _price(self, pool: str, prompt: float, completion: float) -> tuple[float, float]:
        return prompt + completion, self._pool_specs[pool].cost.of(prompt, completion)

    def _bill(self, flight: InFlight) -> tuple[float, float]:
        """(tokens, USD) of every pool call the request made: what each produced, or its
        worst case when that is unknown (`execution.executor.Call`)."""
        tokens = usd = 0.0
        for call in flight.calls:
            if call.completion_tokens is None:
                if not call.ran:
                    continue
                prompt = flight.prompt_estimate
                completion = float(call.max_tokens * flight.choices)
            else:
                prompt, completion = float(call.prompt_tokens), float(call.completion_tokens)
            more_tokens, more_usd = self._price(call.pool, prompt, completion)
            tokens, usd = tokens + more_tokens, usd + more_usd
        return tokens, usd

    def _settle(self, flight: InFlight) -> float:
        """Charge the request's bill to its accounts (once); returns the USD charged."""
        tokens, usd = self._bill(flight)
        if self.gate is not None and flight.reservation is not None:
            self.gate.settle(flight.reservation, tokens, usd)
        return usd

    def _keeps_prompts(self, tenant: str | None) -> bool:
        policy = self.config.tenants.get(tenant) if tenant is not None else None
        return policy is not None and policy.store_prompts

    @contextlib.contextmanager
    def _failures(self, flight: InFlight, wishes: Wishes) -> Iterator[None]:
        """Count a request that fails before its answer starts (successes count at the end),
        and charge what its pools did, also when the client left (`CancelledError`).

        A request refused before any pool was called (a 400, a 429) leaves no ledger
        record: refusals are counted in metrics, so a flood of them writes nothing."""
        try:
            yield
        except BaseException as exc:
            cancelled = isinstance(exc, asyncio.CancelledError)
            if not cancelled and not isinstance(exc, Exception):
                raise
            strategy = wishes.strategy or self.config.routing.default_strategy
            latency = time.monotonic() - flight.started
            ended = "cancelled" if cancelled else outcome_of(exc)
            self.metrics.finished(Finished(strategy, ended, latency, tenant=flight.tenant or ""))
            flight.charged_usd = self._settle(flight)
            if flight.calls or ended not in REFUSED:
                self._record(flight, strategy, ended, latency)
            self._learn(flight, ended)
            if not cancelled:
                mark_counted(exc)
            raise

    def _job(self, body: GenerationRequest, flight: InFlight, stream: bool) -> Job:
        """The request as each pool is sent it: the client's body, with that pool's
        model, `max_tokens` and defaults, the request's id (vLLM's response id is built
        from it), and logprobs when a strategy judges the answer by them."""
        plan = flight.plan
        assert plan is not None
        chat = isinstance(body, ChatRequest)
        fixed = body.engine_body()
        fixed["request_id"] = flight.id.partition("-")[2]
        fixed["stream"] = stream
        if stream:
            # NOTE: the closing usage event is the stream's bill; dropped again (responses.py)
            # unless the client asked for it.
            asked = fixed.get("stream_options") or {}
            fixed["stream_options"] = {**asked, "include_usage": True}
        else:
            # A whole-answer call for a streaming client (cascade, speculative): vLLM
            # refuses stream options without a stream; the released events honour them.
            fixed.pop("stream_options", None)
        if plan.strategy != "route" and not body.asked_logprobs:
            fixed.update({"logprobs": True, "top_logprobs": 0} if chat else {"logprobs": 0})
        base_id = fixed["request_id"]

        def for_pool(pool: str) -> dict[str, Any]:
            spec = self._pool_specs[pool]
            request = dict(fixed, model=spec.id)
            tokens = plan.max_tokens[pool]
            if chat:
                request["max_completion_tokens"] = tokens
                request.pop("max_tokens", None)
            else:
                request["max_tokens"] = tokens
            if request.get("temperature") is None:
                request["temperature"] = spec.temperature
            if request.get("top_p") is None:
                request["top_p"] = spec.top_p
            return request

        def sample(pool: str, i: int, temperature: float | None) -> dict[str, Any]:
            # Another draw of the same request: its own id (vLLM's ids must differ) and
            # seed, so that a sampled answer differs from the first.
            request = for_pool(pool)
            request["request_id"] = f"{base_id}-s{i}"
            request["seed"] = (request.get("seed") or 0) + i
            if temperature is not None:
                request["temperature"] = temperature
            return request

        verifier = self.config.routing.verifier
        judged = 0

        def judge(pool: str, answer: Answer) -> dict[str, Any]:
            nonlocal judged
            judged += 1
            messages = judge_messages(
                verifier.prompt, body.text, answer_text(answer.body),
                verifier.max_question_chars, verifier.max_answer_chars,
            )  # fmt: skip
            return {
                "model": self._pool_specs[pool].id,
                "messages": messages,
                "request_id": f"{base_id}-j{judged}",
                "max_completion_tokens": JUDGE_TOKENS,
                "temperature": 0,
                "logprobs": True,
                "top_logprobs": JUDGE_TOP_LOGPROBS,
            }

        method = "chat" if chat else "completions"
        expected = body.expectation()
        invalid = None
        checks = self.config.routing.cascade.check_validity
        if plan.strategy != "route" and checks and expected.checks_anything:
            invalid = partial(_why_invalid, expected)
        return Job(
            method, for_pool, plan.max_tokens, flight.calls, invalid, judge=judge,
            sample=sample, prompt_estimate=round(flight.prompt_estimate),
        )  # fmt: skip

    async def _serve(self, body: GenerationRequest, flight: InFlight) -> Routed:
        decided = flight.plan
        assert decided is not None
        self.metrics.decided(decided.strategy, decided.pool, decided.reason)
        if decided.downgrade:
            self.metrics.downgraded(decided.downgrade[0], decided.downgrade[1])
        include_usage = body.include_usage
        decide_after = self.config.routing.cascade.stream_decide_tokens
        if body.stream and decided.strategy == "cascade" and decide_after:
            job = self._job(body, flight, stream=True)
            if job.invalid is None:  # tools or a schema: only a whole answer can be checked
                return await self._cascade_stream(body, flight, job, decide_after)
        if body.stream and decided.strategy == "route":
            job = self._job(body, flight, stream=True)
            pool, first, batches, tried = await self.executor.open_stream(decided, job)
            flight.pool, flight.tried = pool, tried
            flight.ttft_s = time.monotonic() - flight.started
            route = self._route_info(decided, pool, tried)
            done = partial(self._stream_ended, flight)
            lines = relay(first, batches, route, include_usage, done)
            return Routed(
                route, stream=_settled_if_dropped(lines, done), extra_headers=flight.headers
            )
        outcome = await self.executor.execute(decided, self._job(body, flight, stream=False))
        self.metrics.answered(outcome)
        flight.pool, flight.tried, flight.outcome = outcome.pool, outcome.tried, outcome
        route = self._route_info(decided, outcome.pool, outcome.tried, outcome)
        result = outcome.result
        shown = body.asked_logprobs
        if body.stream:
            flight.ttft_s = time.monotonic() - flight.started
            events = whole_as_events(result.body, route, include_usage, shown)
            done = partial(self._whole_streamed, flight)
            lines = _released(events, done)
            return Routed(
                route, stream=_settled_if_dropped(lines, done), extra_headers=flight.headers
            )
        self._finished(flight, "ok", result.prompt_tokens, result.completion_tokens)
        return Routed(
            route, body=whole_body(result.body, route, shown), extra_headers=flight.headers
        )

    async def _cascade_stream(
        self, body: GenerationRequest, flight: InFlight, job: Job, decide_after: int
    ) -> Routed:
        """A streaming cascade decided on its first tokens (`open_cascade_stream`): the
        chosen stream is relayed like a `route` stream, without the logprobs only the
        cascade asked for."""
        decided = flight.plan
        assert decided is not None
        pool, first, batches, tried, outcome = await self.executor.open_cascade_stream(
            decided, job, decide_after
        )
        self.metrics.answered(outcome)
        flight.pool, flight.tried, flight.outcome = pool, tried, outcome
        flight.ttft_s = time.monotonic() - flight.started
        route = self._route_info(decided, pool, tried, outcome)
        if not body.asked_logprobs:
            first, batches = without_logprobs(first), _without_logprobs(batches)
        done = partial(self._stream_ended, flight)
        lines = relay(first, batches, route, body.include_usage, done)
        return Routed(route, stream=_settled_if_dropped(lines, done), extra_headers=flight.headers)

    def _stream_ended(self, flight: InFlight, usage: StreamUsage) -> None:
        """A `route` stream ended (or its client left): its call's tokens are what the
        pool reported; unknown (the client left first) they stay its worst case. Once
        only: a stream dropped before it started ends here too."""
        if flight.ended:
            return
        if flight.calls and usage.ended != "cancelled":
            call = flight.calls[-1]
            call.prompt_tokens, call.completion_tokens = (
                usage.prompt_tokens,
                usage.completion_tokens,
            )
        self._finished(flight, usage.ended, usage.prompt_tokens, usage.completion_tokens)

    def _whole_streamed(self, flight: InFlight, usage: StreamUsage) -> None:
        """An accepted whole answer was released as a stream (its bill is known)."""
        result = flight.outcome.result if flight.outcome else None
        prompt, completion = (result.prompt_tokens, result.completion_tokens) if result else (0, 0)
        self._finished(flight, usage.ended, prompt, completion)

    def _finished(
        self, flight: InFlight, ended: str, prompt_tokens: int, completion_tokens: int
    ) -> None:
        """Count a request whose answer started: at its end, or when its stream ended."""
        assert flight.plan is not None and flight.pool is not None
        if flight.ended:
            return
        flight.ended = True
        spec = self._pool_specs[flight.pool]
        cost = self._settle(flight)
        large = self._large_model
        done = Finished(
            strategy=flight.plan.strategy,
            outcome=ended,
            latency_s=time.monotonic() - flight.started,
            pool=flight.pool,
            model=spec.id,
            ttft_s=flight.ttft_s,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cost_usd=cost,
            large_cost_usd=large.cost.of(prompt_tokens, completion_tokens) if large else cost,
            tenant=flight.tenant or "",
        )
        self.metrics.finished(done)
        self._record(flight, done.strategy, ended, done.latency_s, done)
        self._learn(flight, ended)

    def _learn(self, flight: InFlight, ended: str) -> None:
        """The end of a request the adaptive router routed is evidence about its pick; a
        cascade's verdict is evidence about the cheap pool it ran first."""
        if self.adaptive is None or flight.pick is None:
            return
        outcome = flight.outcome
        cascaded = flight.plan is not None and flight.plan.strategy == "cascade"
        escalated = outcome.escalated if outcome is not None and cascaded else None
        self.adaptive.finished(flight.pick, ended, escalated)

    def _record(
        self,
        flight: InFlight,
        strategy: str,
        ended: str,
        latency_s: float,
        done: Finished | None = None,
    ) -> None:
        """The request's ledger record (tenancy/ledger.py), queued without waiting."""
        if self.ledger is not None:
            self.ledger.record(ledger_entry(flight, strategy, ended, latency_s, done))

    def _route_info(
        self, decided: Plan, pool: str, tried: list[str], outcome: Outcome | None = None
    ) -> RouteInfo:
        rule = decided.rule
        streamed = outcome is not None and outcome.streamed
        detail = decided.detail
        if outcome is not None and outcome.invalid is not None:
            detail = f"{detail}; the cheap answer was unusable: {outcome.invalid}"
        return RouteInfo(
            pool=pool,
            model=self._pool_models[pool],
            strategy=decided.strategy,
            reason=decided.reason,
            detail=detail,
            invalid=outcome.invalid if outcome else None,
            pools_tried=tried,
            fallback=pool not in (decided.pool, decided.target),
            escalated=outcome.escalated if outcome else False,
            confidence=outcome.confidence if outcome else None,
            confidence_method=rule.method if rule else None,
            threshold=rule.threshold_for(streamed) if rule else None,
            mean_logprob=outcome.result.mean_logprob if outcome else None,
            discarded_tokens=outcome.discarded_tokens if outcome else 0,
            discarded_engine_s=outcome.discarded_engine_s if outcome else 0.0,
            speculative_winner=outcome.winner if outcome else None,
            judge_pool=outcome.judge_pool if outcome else None,
            judge_score=outcome.judge_score if outcome else None,
            votes=outcome.votes if outcome else None,
            answers=outcome.answers if outcome else None,
            notes=[*decided.notes, *(outcome.notes if outcome else [])],
        )


REFUSED = frozenset({"client_error", "rejected", "unauthorized"})


def _why_invalid(expected: Expectation, answer: Answer) -> str | None:
    """The validity check of a whole answer (vLLM's response, first choice)."""
    choices = answer.body.get("choices") or []
    if not choices:
        return "the answer has no choices"
    message = choices[0].get("message")
    if message is None:  # a text completion
        return why_invalid(expected, choices[0].get("text"), [])
    calls = [
        ToolCall(str(f.get("name")), str(f.get("arguments") or ""))
        for f in (c.get("function") or {} for c in message.get("tool_calls") or [])
    ]
    return why_invalid(expected, message.get("content"), calls)


async def _without_logprobs(batches: AsyncIterator[list[str]]) -> AsyncIterator[list[str]]:
    try:
        async for batch in batches:
            yield without_logprobs(batch) or []
    finally:
        close = getattr(batches, "aclose", None)
        if close is not None:
            await close()


def _settled_if_dropped(lines: AsyncIterator[str], done: StreamDone) -> AsyncIterator[str]:
    """`lines`, ending its request when the generator is dropped without ever being
    started (the client left before the response began): its `finally` would not run."""
    weakref.finalize(lines, done, StreamUsage())
    return lines


async def _released(events: list[str], done: StreamDone) -> AsyncIterator[str]:
    """An accepted whole answer's events; `done` once sent, or when the client left."""
    usage = StreamUsage(ended="ok")  # handed over whole: a client leaving now took it all
    try:
        yield "".join(events)
    finally:
        done(usage)


def _limits(pool: PoolConfig) -> PoolLimits:
    scaling = pool.autoscaling_config
    return PoolLimits(
        max_ongoing=pool.max_ongoing_requests,
        cold_start_timeout_s=pool.cold_start_timeout_s,
        may_scale_to_zero=scaling is not None and scaling.min_replicas == 0,
    )
