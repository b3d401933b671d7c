"""Serving logic of the OpenAI endpoints: profile, plan, execute, shape the answer.

Independent of Ray: pools are reached through `PoolClient`, which the ingress backs with
Serve handles and unit tests back with fake engines. A reader finds the request path
here: validate -> `Planning.plan` (planning.py: the `RequestProfile`, once, then
routing/planner.py, pure, then the adaptive router's pick) -> `Executor` (execution/,
pools) -> response.

Streaming: `route` streams tokens as the pool produces them (falling back to the next
pool only before the first token). `cascade` and `speculative` stream once an answer is
accepted: the client sees the role chunk at once, then the accepted answer; a cheap
answer that gets rejected is never shown.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Protocol

from pydantic import BaseModel

from core.errors import QuotaExceededError
from deployments.config import AppConfig, PoolConfig
from deployments.metrics import Finished, RequestMetrics
from deployments.openai.adaptive import AdaptiveRouting
from deployments.openai.errors import outcome_of
from deployments.openai.inflight import InFlight, ledger_entry
from deployments.openai.planning import Planning
from deployments.openai.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    ModelCard,
    ModelList,
    RouteInfo,
    RoutePlanResponse,
    SamplingFields,
    new_id,
)
from deployments.openai.responses import (
    ChunkShaper,
    StreamDone,
    chat_body,
    chat_shaper,
    completion_body,
    completion_shaper,
    no_more_chunks,
    sse_lines,
)
from execution.executor import Executor, Outcome, PoolClient
from execution.monitor import PoolLimits, PoolMonitor
from models.engines.base import (
    ChatMessage,
    GenerationRequest,
    SamplingOptions,
)
from routing.learned import LearnedRouter, PoolRouter
from routing.planner import AUTO_MODEL, Plan, Wishes
from routing.semantic import SemanticClassifier
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
    body: BaseModel | None = None
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
        self.executor = Executor(pools, self.monitor, self.metrics)
        large = config.pools.get(config.routing.rules.large_pool)
        self._large_model = config.model(large.model) if large else None

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

    async def dry_run(
        self, body: SamplingFields, text: str, wishes: Wishes, chat: bool
    ) -> RoutePlanResponse:
        """`POST /v1/route`: the decision for a request, without generating."""
        decided, profile = await self.planning.plan(body, text, wishes, chat)
        return self.planning.describe(decided, profile)

    def _sampling(self, body: SamplingFields, decided: Plan) -> SamplingOptions:
        """Sampling for the plan's first pool; the executor sets each pool's max_tokens."""
        spec = self._pool_specs[decided.pool]
        return SamplingOptions(
            max_tokens=decided.max_tokens[decided.pool],
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

    async def chat(
        self, body: ChatCompletionRequest, wishes: Wishes = NO_WISHES, key_id: str | None = None
    ) -> Routed:
        flight = self._arrived("chat", "chatcmpl", body, wishes, key_id)
        with self._failures(flight, wishes):
            wishes = self._frugal(flight, wishes)
            messages = tuple(ChatMessage(m.role, m.text()) for m in body.messages)
            text = "\n".join(m.content for m in messages)
            flight.prompt = text if self._keeps_prompts(flight.tenant) else None
            decided = await self._plan_and_reserve(flight, body, text, wishes, chat=True)
            sampling = self._sampling(body, decided)
            request = GenerationRequest(flight.id, sampling, messages=messages)
            return await self._serve(body, flight, request, chat_shaper, chat_body)

    async def completion(
        self, body: CompletionRequest, wishes: Wishes = NO_WISHES, key_id: str | None = None
    ) -> Routed:
        flight = self._arrived("completions", "cmpl", body, wishes, key_id)
        with self._failures(flight, wishes):
            wishes = self._frugal(flight, wishes)
            text = body.prompt_text
            flight.prompt = text if self._keeps_prompts(flight.tenant) else None
            decided = await self._plan_and_reserve(flight, body, text, wishes, chat=False)
            request = GenerationRequest(flight.id, self._sampling(body, decided), prompt=text)
            return await self._serve(body, flight, request, completion_shaper, completion_body)

    def _arrived(
        self, endpoint: str, prefix: str, body: SamplingFields, wishes: Wishes, key_id: str | None
    ) -> InFlight:
        return InFlight(new_id(prefix), endpoint, body.model, wishes.tenant, key_id)

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
        self, flight: InFlight, body: SamplingFields, text: str, wishes: Wishes, chat: bool
    ) -> Plan:
        """Plan, then reserve the plan's worst case. A budget too low for that worst case
        but not spent gets a frugal plan (one cheap pool) before it gets a 429: this
        replica's view of the budget may be a moment old, the keeper's answer is not."""
        flight.plan, profile = await self.planning.plan(body, text, wishes, chat, flight=flight)
        try:
            await self._reserve(flight, profile.prompt_tokens)
        except QuotaExceededError:
            if wishes.frugal is not None:
                raise
            frugal = replace(wishes, frugal="budget: too little left for this plan's worst case")
            flight.plan, profile = await self.planning.plan(body, text, frugal, chat, flight=flight)
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
        tokens, usd = self._worst_case(flight.plan, prompt_tokens)
        flight.reservation = await self.gate.reserve(flight.policies, tokens, usd)
        flight.headers = self.gate.headers(flight.policies)

    def _worst_case(self, plan: Plan, prompt_tokens: float) -> tuple[float, float]:
        def most(chain: list[str]) -> tuple[float, float]:
            costs = [self._price(pool, prompt_tokens, self._cap(plan, pool)) for pool in chain]
            return max(t for t, _ in costs), max(u for _, u in costs)

        tokens, usd = most([plan.pool, *plan.fallbacks])
        if plan.strategy != "route" and plan.target is not None:
            more_tokens, more_usd = most([plan.target, *plan.target_fallbacks])
            tokens, usd = tokens + more_tokens, usd + more_usd
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
                prompt, completion = flight.prompt_estimate, float(call.max_tokens)
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

    async def _serve(
        self,
        body: SamplingFields,
        flight: InFlight,
        request: GenerationRequest,
        shaper: Callable[[GenerationRequest, RouteInfo], ChunkShaper],
        whole: Callable[[GenerationRequest, RouteInfo, Outcome], BaseModel],
    ) -> Routed:
        decided = flight.plan
        assert decided is not None
        self.metrics.decided(decided.strategy, decided.pool, decided.reason)
        if decided.downgrade:
            self.metrics.downgraded(decided.downgrade[0], decided.downgrade[1])
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        if body.stream and decided.strategy == "route":
            pool, first, chunks, tried = await self.executor.open_stream(
                decided, request, flight.calls
            )
            flight.pool, flight.tried = pool, tried
            flight.ttft_s = time.monotonic() - flight.started
            route = self._route_info(decided, pool, tried)
            done = partial(self._stream_ended, flight)
            lines = sse_lines(first, chunks, shaper(request, route), include_usage, done)
            return Routed(
                route, stream=_settled_if_dropped(lines, done), extra_headers=flight.headers
            )
        outcome = await self.executor.execute(decided, request, flight.calls)
        self.metrics.answered(outcome)
        flight.pool, flight.tried, flight.outcome = outcome.pool, outcome.tried, outcome
        route = self._route_info(decided, outcome.pool, outcome.tried, outcome)
        result = outcome.result
        if body.stream:
            flight.ttft_s = time.monotonic() - flight.started
            done = partial(self._finished, flight)
            lines = sse_lines(
                result.as_chunk(), no_more_chunks(), shaper(request, route), include_usage, done
            )
            return Routed(
                route, stream=_settled_if_dropped(lines, done), extra_headers=flight.headers
            )
        self._finished(flight, "ok", result.prompt_tokens, result.completion_tokens)
        return Routed(route, body=whole(request, route, outcome), extra_headers=flight.headers)

    def _stream_ended(
        self, flight: InFlight, ended: str, prompt_tokens: int, completion_tokens: int
    ) -> None:
        """A `route` stream ended (or its client left): its call's tokens are what was
        streamed. Once only: a stream dropped before it started ends here too."""
        if flight.ended:
            return
        if flight.calls:
            call = flight.calls[-1]
            call.prompt_tokens, call.completion_tokens = prompt_tokens, completion_tokens
        self._finished(flight, ended, prompt_tokens, completion_tokens)

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


REFUSED = frozenset({"client_error", "rejected", "unauthorized"})


def _settled_if_dropped(lines: AsyncIterator[str], done: StreamDone) -> AsyncIterator[str]:
    """`lines`, ending its request when the generator is dropped without ever being
    started (the client left before the response began): its `finally` would not run."""
    weakref.finalize(lines, done, "cancelled", 0, 0)
    return lines


def _limits(pool: PoolConfig) -> PoolLimits:
    scaling = pool.autoscaling_config
    return PoolLimits(
        max_ongoing=pool.max_ongoing_requests,
        cold_start_timeout_s=pool.cold_start_timeout_s,
        may_scale_to_zero=scaling is not None and scaling.min_replicas == 0,
    )
