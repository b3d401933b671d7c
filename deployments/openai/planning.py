"""How one request's plan is made: its profile, the pools' views, the planner, the
adaptive router's pick. `OpenAIServing` owns one `Planning` and asks it for every plan;
`/v1/route` and `/v1/classify` use the same one, so a dry run and a served request are
decided alike.

It is the one owner of the classifiers' live state: the semantic classifier, and the
learned router, which the ingress swaps when its file changes (`use_learned`). Pool
stats are read from the executor's `PoolMonitor`, never written here.
"""

from __future__ import annotations

import asyncio

from deployments.config import AppConfig
from deployments.openai.adaptive import AdaptiveRouting
from deployments.openai.inflight import InFlight
from deployments.openai.protocol import RoutePlanResponse, RoutingFields
from execution.monitor import PoolMonitor
from routing.choice import LearnedScores
from routing.learned import LearnedRouter, PoolRouter
from routing.planner import AUTO_MODEL, Plan, PoolView, Wishes, plan
from routing.profile import RequestProfile, profile_request
from routing.semantic import SemanticClassifier
from routing.taxonomy import classify

__all__ = ["Planning"]


class Planning:
    def __init__(
        self,
        config: AppConfig,
        monitor: PoolMonitor,
        semantic: SemanticClassifier | None = None,
        learned: LearnedRouter | PoolRouter | None = None,
        adaptive: AdaptiveRouting | None = None,
    ) -> None:
        self.config = config
        self.monitor = monitor
        self.semantic = semantic
        self.adaptive = adaptive
        # The router and the threshold it is held to, swapped together in one assignment.
        self._learned: tuple[LearnedRouter | PoolRouter, float] | None = None
        if learned is not None:
            self.use_learned(learned)
        self._pool_models = config.pool_models()
        self._pool_specs = {name: config.model(model) for name, model in self._pool_models.items()}

    def use_learned(self, router: LearnedRouter | PoolRouter) -> None:
        """Serve `router` from the next request on (at start, and for a new router file,
        see `deployments.router_reload`). A binary router is held to the config's
        threshold, else its file's calibrated one, else 0.5; an N-pool router carries
        its own choice rule.

        A request being classified in a thread at that moment finishes with the router
        and threshold it started with: both are read from one tuple.
        """
        cfg = self.config.routing.learned
        filed = router.threshold if isinstance(router, LearnedRouter) else None
        chosen = [cfg.threshold if cfg else None, filed]
        self._learned = (router, next((t for t in chosen if t is not None), 0.5))

    @property
    def learned(self) -> LearnedRouter | PoolRouter | None:
        return self._learned[0] if self._learned else None

    @property
    def learned_threshold(self) -> float | None:
        """What a binary router's score is held to (None: no binary router)."""
        held = self._learned
        return held[1] if held and isinstance(held[0], LearnedRouter) else None

    async def profile(
        self, body: RoutingFields, text: str, needs: frozenset[str]
    ) -> RequestProfile:
        """The request's facts, once: tokens per pool, what cannot serve it, its embedding."""
        similarities: dict[str, float] = {}
        learned = None
        if body.model == AUTO_MODEL and (self.semantic or self._learned):
            # NOTE: embedding costs a few ms of CPU: off the event loop, and only once.
            similarities, learned = await asyncio.to_thread(self._classify, text)
        return profile_request(
            body.model or AUTO_MODEL,
            text,
            needs=needs,
            requested_max_tokens=body.requested_max_tokens,
            min_tokens=body.min_tokens,
            pool_models=self._pool_specs,
            chars_per_token=self.config.routing.rules.chars_per_token,
            similarities=similarities,
            learned=learned,
        )

    def _classify(self, text: str) -> tuple[dict[str, float], LearnedScores | None]:
        """Embed the request once; both classifiers read the same vector."""
        held = self._learned
        model = self.semantic or (held[0] if held else None)
        assert model is not None
        vectors = model.embedder.encode([text])
        similarities = self.semantic.similarities_of(vectors[0]) if self.semantic else {}
        if held is None:
            return similarities, None
        router, threshold = held
        if isinstance(router, LearnedRouter):
            cfg = self.config.routing.learned
            strong = cfg.strong_pool if cfg else self.config.routing.rules.large_pool
            return similarities, router.read(vectors[0], threshold, strong)
        return similarities, router.read(vectors[0])

    def views(self, profile: RequestProfile) -> dict[str, PoolView]:
        """Pool views for the planner, from config and live load; never blocks."""
        monitor = self.monitor
        views = {}
        for name, pool in self.config.pools.items():
            state = monitor.state(name)
            tokens = profile.max_tokens[name]
            per_token = state.seconds_per_token or 1.0 / pool.tokens_per_s
            queued = state.stats.running + state.stats.waiting
            views[name] = PoolView(
                name=name,
                quality=pool.quality,
                cost_per_request=self._pool_specs[name].cost.of(profile.prompt_tokens, tokens),
                expected_latency_s=per_token * tokens * (1 + queued / pool.max_ongoing_requests),
                saturated=monitor.saturated(name),
                available=monitor.available(name),
            )
        return views

    async def plan(
        self,
        body: RoutingFields,
        text: str,
        wishes: Wishes,
        needs: frozenset[str],
        flight: InFlight | None = None,
        task: str | None = None,
    ) -> tuple[Plan, RequestProfile]:
        """The plan (the adaptive router's pick included) and the profile it came from;
        the request's `flight` keeps the pick, so its end and its feedback teach it.

        Without a `flight` this is a dry run (`/v1/route`, `/v1/classify`): it shows what
        the adaptive router knows best and never explores, so asking spends none of the
        exploration credit that served requests get. `task`: the taxonomy's task type,
        when the caller has already read it.
        """
        profile = await self.profile(body, text, needs)
        views = self.views(profile)
        routing = self.config.routing
        decided = plan(profile, views, self._pool_models, routing, wishes)
        if self.adaptive is not None:
            task = task or classify(text, routing.rules).task
            context = self.adaptive.context(task, profile.model, wishes)
            if context is not None:
                decided, pick = self.adaptive.choose(
                    decided, context, views, routing, wishes, explore=flight is not None
                )
                if flight is not None:
                    flight.pick = pick
        return decided, profile

    def describe(self, decided: Plan, profile: RequestProfile) -> RoutePlanResponse:
        """A plan as `POST /v1/route` shows it (also part of `POST /v1/classify`)."""
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
            judge=decided.judge,
            members=list(decided.members),
            stream_decide_tokens=(
                self.config.routing.cascade.stream_decide_tokens
                if decided.strategy == "cascade"
                else None
            ),
            scores=decided.scores,
            similarities=dict(profile.similarities),
            notes=list(decided.notes),
        )
