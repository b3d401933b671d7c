"""The ingress deployment: the OpenAI HTTP API in front of the pools.

HTTP only: FastAPI routes parse the body into wire models and hand it to
`OpenAIServing`; every exception goes through the one error mapper. Pools are reached
through Serve handles, wrapped so that Ray's exceptions are translated into ours at this
boundary (`raise ... from exc`) and never leak into a response.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Annotated, Any

from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployments.config import AppConfig
from deployments.metrics import Finished, RequestMetrics, outcome_of
from deployments.openai.errors import APIError, create_error_response, to_api_error
from deployments.openai.guard import GuardMiddleware, RequestGuard
from deployments.openai.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ModelList,
    RoutePlanResponse,
    RouteRequest,
    SamplingFields,
    SwitchyardOptions,
)
from deployments.openai.schema import (
    GENERATION_ERRORS,
    READ_ERRORS,
    ROUTE_ERRORS,
    openapi_with_errors,
    responses,
)
from deployments.openai.serving import OpenAIServing, Routed, is_counted
from models.engines.base import (
    EngineError,
    EngineStats,
    EngineUnavailableError,
    GenerationChunk,
    GenerationRequest,
    GenerationResult,
    PromptError,
)
from routing.config import STRATEGIES, RoutingConfig
from routing.planner import PoolNotAllowedError, Wishes
from routing.policy import UnknownModelError
from routing.semantic import SemanticClassifier
from routing.tiers import TierNotAllowedError, UnknownTierError, apply_tier

Hdr = Annotated[str | None, Header()]

api = FastAPI(title="Switchyard", description="OpenAI-compatible multi-model LLM router")
api.add_middleware(GuardMiddleware)
api.openapi = lambda: openapi_with_errors(api)  # type: ignore[method-assign]


GENERATION_PATHS = ("/v1/chat/completions", "/v1/completions")


async def _on_error(request: Request, exc: Exception) -> Response:
    """Map every error to the OpenAI shape; count refused generation requests.

    Requests refused before `OpenAIServing` saw them (a body that fails validation, a
    bad header) are counted here, so `/v1/metrics` sees every request it answered.
    """
    err = to_api_error(exc)
    metrics: RequestMetrics | None = getattr(request.app.state, "metrics", None)
    generation = request.url.path.endswith(GENERATION_PATHS)  # under any route prefix
    if metrics is not None and generation and not is_counted(exc):
        metrics.finished(Finished("none", outcome_of(err), 0.0))
    return create_error_response(err)


# NOTE: expected errors get their own handlers; Starlette re-raises (and logs a traceback
# for) whatever only the catch-all `Exception` handler catches.
for _expected in (
    StarletteHTTPException,
    RequestValidationError,
    APIError,
    PromptError,
    UnknownModelError,
    PoolNotAllowedError,
    UnknownTierError,
    TierNotAllowedError,
    EngineError,
):
    api.add_exception_handler(_expected, _on_error)
api.add_exception_handler(Exception, _on_error)


def translate(pool: str, exc: BaseException) -> BaseException:
    """Turn a Ray/Serve exception from a pool call into one the error mapper knows."""
    if isinstance(exc, RayTaskError):
        cause = exc.cause
        if isinstance(cause, PromptError | EngineError | APIError):
            return cause
        return EngineError(f"pool {pool!r} failed to serve the request")
    if isinstance(exc, BackPressureError):
        return APIError(
            429,
            f"pool {pool!r} is at capacity; retry shortly",
            code="pool_overloaded",
            headers={"retry-after": "1"},
        )
    if isinstance(exc, RayActorError | DeploymentUnavailableError):
        return EngineUnavailableError(f"pool {pool!r} is unavailable; retry shortly")
    return exc


def _timeout_error(pool: str, timeout_s: float) -> APIError:
    return APIError(504, f"pool {pool!r} did not finish within {timeout_s:g} s", code="timeout")


class HandlePoolClient:
    """`PoolClient` over Serve deployment handles."""

    def __init__(self, handles: dict[str, DeploymentHandle[Any]], timeout_s: float) -> None:
        self.handles = handles
        self.streams = {name: h.options(stream=True) for name, h in handles.items()}
        self.timeout_s = timeout_s
        self._waking: dict[str, Any] = {}

    def wake(self, pool: str) -> None:
        """Queue one cheap call on a pool at zero replicas: Serve scales it up to serve it."""
        pending = self._waking.get(pool)
        if pending is None or pending.done():
            self._waking[pool] = asyncio.ensure_future(self._wake(pool))

    async def _wake(self, pool: str) -> None:
        with contextlib.suppress(Exception):
            await self.handles[pool].stats.remote()

    async def generate(self, pool: str, request: GenerationRequest) -> GenerationResult:
        response = None
        try:
            # NOTE: `.remote()` itself may raise back-pressure: it belongs inside the `try`.
            response = self.handles[pool].generate.remote(request)
            async with asyncio.timeout(self.timeout_s):
                result: GenerationResult = await response
        except TimeoutError as exc:
            # NOTE: cancelling the call makes the replica's engine abort the request.
            if response is not None:
                with contextlib.suppress(Exception):
                    response.cancel()  # type: ignore[no-untyped-call]
            raise _timeout_error(pool, self.timeout_s) from exc
        except Exception as exc:
            raise translate(pool, exc) from exc
        return result

    async def stream(self, pool: str, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        chunks: DeploymentResponseGenerator[GenerationChunk] | None = None
        try:
            # NOTE: `.remote()` itself may raise back-pressure: it belongs inside the `try`.
            chunks = self.streams[pool].generate_stream.remote(request)  # type: ignore[assignment]
            assert chunks is not None
            while True:
                # NOTE: never `yield` inside the timeout: it would cancel the consumer.
                # For streams the limit is on the wait for each next chunk.
                async with asyncio.timeout(self.timeout_s):
                    chunk = await anext(chunks, None)
                if chunk is None:
                    return
                yield chunk
        except TimeoutError as exc:
            raise _timeout_error(pool, self.timeout_s) from exc
        except Exception as exc:
            raise translate(pool, exc) from exc
        finally:
            # Client gone, timeout or error: the replica's engine aborts the request.
            # NOTE: cancel() re-raises a failed assignment (back-pressure); that error was
            # already handled above.
            if chunks is not None:
                with contextlib.suppress(Exception):
                    chunks.cancel()  # type: ignore[no-untyped-call]


def _respond(routed: Routed) -> Response:
    if routed.stream is not None:
        return StreamingResponse(
            routed.stream, media_type="text/event-stream", headers=routed.headers()
        )
    assert routed.body is not None
    return Response(
        routed.body.model_dump_json(), media_type="application/json", headers=routed.headers()
    )


def wishes(
    body: SamplingFields,
    config: RoutingConfig,
    strategy_header: str | None,
    tenant: str | None = None,
    tier_header: str | None = None,
) -> Wishes:
    """Routing wishes from the `switchyard` body field and the `x-switchyard-*` headers,
    completed by the client's tier (routing/tiers.py says what is trusted)."""
    opts = body.switchyard or SwitchyardOptions()
    strategy = opts.strategy
    if strategy is None and strategy_header:
        if strategy_header not in STRATEGIES:
            raise APIError(
                400,
                f"x-switchyard-strategy must be one of {', '.join(STRATEGIES)}",
                param="x-switchyard-strategy",
            )
        strategy = strategy_header
    if tenant is not None and not config.trust_tenant_header:
        raise APIError(
            400,
            "x-switchyard-tenant is not accepted from clients here: tenants are set by the "
            "operator's gateway (routing.trust_tenant_header)",
            param="x-switchyard-tenant",
        )
    for name, value in (("x-switchyard-tenant", tenant), ("x-switchyard-tier", tier_header)):
        if value is not None and not 0 < len(value) <= HEADER_VALUE_CHARS:
            raise APIError(400, f"{name} must be 1 to {HEADER_VALUE_CHARS} characters", param=name)
    asked = Wishes(
        strategy=strategy,
        min_quality=opts.min_quality,
        max_cost_usd=opts.max_cost_usd,
        latency_budget_s=opts.latency_budget_ms / 1000 if opts.latency_budget_ms else None,
    )
    return apply_tier(config, asked, tenant, opts.tier or tier_header)


HEADER_VALUE_CHARS = 64
STATS_PERIOD_S = 1.0
REPLICAS_PERIOD_S = 2.0
HINT_PERIOD_S = 5.0  # re-send an unchanged escalation forecast this often (pools drop at 15 s)


@serve.deployment(name="ingress")
@serve.ingress(api)
class Ingress:
    async def __init__(  # type: ignore[misc]  # Serve awaits async constructors
        self, config: AppConfig, pools: dict[str, DeploymentHandle[Any]]
    ) -> None:
        self.config = config
        self.pools = pools
        semantic = learned = None
        routing = config.routing
        if routing.semantic.enabled or routing.learned is not None:
            from routing.embedding import MiniLMEmbedder
            from routing.learned import LearnedRouter

            embedder = MiniLMEmbedder()  # one model shared by both classifiers
            if routing.semantic.enabled:
                semantic = await asyncio.to_thread(
                    SemanticClassifier, embedder, routing.semantic.examples
                )
            if routing.learned is not None:
                learned = LearnedRouter.load(routing.learned.path, embedder=embedder)
        # NOTE: the guard must be in place before the first request: the middleware
        # passes everything through while `api.state` has none.
        self.guard = RequestGuard(config.api)
        api.state.guard = self.guard
        client = HandlePoolClient(pools, config.request_timeout_s)
        self.metrics = RequestMetrics()
        api.state.metrics = self.metrics
        self.serving = OpenAIServing(config, client, semantic, learned, self.metrics)
        context = serve.get_replica_context()
        self._app, self._me = context.app_name, context.replica_tag
        self._sent: dict[str, tuple[float, float]] = {}  # pool -> (forecast, when sent)
        # NOTE: pool load reaches the planner through these background loops, never
        # through a call on the request path.
        loop = asyncio.get_running_loop()
        self._loops = [
            loop.create_task(self._poll_stats()),
            loop.create_task(self._poll_replicas()),
        ]

    async def _poll_stats(self) -> None:
        """Every second, each pool's engine stats (all pools at once, each call bounded).

        The only place pools are asked for stats: routing and `/health` read the result.
        """
        executor = self.serving.executor
        while True:
            # NOTE: a call to a pool scaled to zero would wake it, and one to a pool whose
            # replica count is not known yet may be such a call: both are skipped.
            awake = [name for name, load in executor.load.items() if load.replicas]
            await asyncio.gather(*(self._poll_pool(name) for name in awake))
            for name, load in executor.load.items():
                self.metrics.pool_state(
                    name,
                    executor.breakers[name].state,
                    load.stats.running,
                    load.stats.waiting,
                    load.replicas,
                )
            with contextlib.suppress(Exception):
                await self._send_forecast()
            known = any(load.replicas is not None for load in executor.load.values())
            await asyncio.sleep(STATS_PERIOD_S if known else 0.1)  # first sample soon

    def _may_sleep(self, name: str) -> bool:
        """Whether the pool may be at zero replicas while its count is not known yet."""
        scaling = self.config.pools[name].autoscaling_config
        known = self.serving.executor.load[name].replicas is not None
        return not known and scaling is not None and scaling.min_replicas == 0

    async def _poll_pool(self, name: str) -> None:
        load = self.serving.executor.load[name]
        try:
            async with asyncio.timeout(STATS_PERIOD_S):
                stats: EngineStats = await self.pools[name].stats.remote()
        except (TimeoutError, BackPressureError):
            load.polled = "busy"  # its replicas' slots are full: the call waited in line
        except Exception:  # noqa: BLE001 - dead replica, unavailable deployment
            load.polled = "failed"
        else:
            load.stats, load.stats_at, load.polled = stats, time.monotonic(), "ok"

    async def _send_forecast(self) -> None:
        """Tell escalation targets how many escalations to expect (their autoscaler reads it)."""
        now = time.monotonic()
        forecast = self.serving.executor.forecast.expected()
        for pool in set(forecast) | set(self._sent):
            value = forecast.get(pool, 0.0)
            last, when = self._sent.get(pool, (0.0, 0.0))
            if abs(value - last) >= 0.5 or (value > 0 and now - when >= HINT_PERIOD_S):
                await self.pools[pool].broadcast("anticipate", self._me, value).results_async()
                self._sent[pool] = (value, now)

    async def _poll_replicas(self) -> None:
        """Running replicas per pool, from Serve's controller (0 = scaled to zero).

        While a deployment is being (re)deployed its replicas are starting, not scaled
        to zero: the count stays unknown (None) so requests wait for them instead of
        falling back.
        """
        while True:
            with contextlib.suppress(Exception):
                status = await asyncio.to_thread(serve.status)
                deployments = status.applications[self._app].deployments
                for name, load in self.serving.executor.load.items():
                    pool = deployments[f"pool-{name}"]
                    running = int(pool.replica_states.get("RUNNING", 0))  # type: ignore[call-overload]
                    updating = running == 0 and str(pool.status).endswith("UPDATING")
                    load.replicas = None if updating else running
            await asyncio.sleep(REPLICAS_PERIOD_S)

    def _wishes(
        self, body: SamplingFields, strategy: str | None, tenant: str | None, tier: str | None
    ) -> Wishes:
        return wishes(body, self.config.routing, strategy, tenant, tier)

    @api.get("/v1/models", responses=responses(ModelList, READ_ERRORS))
    async def models(self) -> Response:
        return Response(self.serving.models().model_dump_json(), media_type="application/json")

    @api.post(
        "/v1/chat/completions",
        responses=responses(ChatCompletionResponse, GENERATION_ERRORS, stream=True),
    )
    async def chat_completions(
        self,
        body: ChatCompletionRequest,
        x_switchyard_strategy: Hdr = None,
        x_switchyard_tenant: Hdr = None,
        x_switchyard_tier: Hdr = None,
    ) -> Response:
        asked = self._wishes(body, x_switchyard_strategy, x_switchyard_tenant, x_switchyard_tier)
        return _respond(await self.serving.chat(body, asked))

    @api.post(
        "/v1/completions", responses=responses(CompletionResponse, GENERATION_ERRORS, stream=True)
    )
    async def completions(
        self,
        body: CompletionRequest,
        x_switchyard_strategy: Hdr = None,
        x_switchyard_tenant: Hdr = None,
        x_switchyard_tier: Hdr = None,
    ) -> Response:
        asked = self._wishes(body, x_switchyard_strategy, x_switchyard_tenant, x_switchyard_tier)
        return _respond(await self.serving.completion(body, asked))

    @api.post("/v1/route", responses=responses(RoutePlanResponse, ROUTE_ERRORS))
    async def route(
        self,
        body: RouteRequest,
        x_switchyard_strategy: Hdr = None,
        x_switchyard_tenant: Hdr = None,
        x_switchyard_tier: Hdr = None,
    ) -> Response:
        asked = self._wishes(body, x_switchyard_strategy, x_switchyard_tenant, x_switchyard_tier)
        decided = await self.serving.dry_run(body, body.text, asked)
        return Response(decided.model_dump_json(), media_type="application/json")

    @api.get("/v1/metrics", responses=responses(None, READ_ERRORS))
    async def metrics_summary(self) -> JSONResponse:
        """JSON summary of this ingress replica; Prometheus metrics are on Ray's metrics port."""
        return JSONResponse(self.metrics.summary())

    @api.get("/health", responses=responses(None, (503,)))
    async def health(self) -> JSONResponse:
        """Pool health from what the stats poller last saw: never queues behind requests.

        A pool is healthy when its last stats call answered, or found every slot busy
        while Serve runs a replica of it (busy, not dead), or when it is scaled to zero
        on purpose. Stats are at most about a second old (`stats_age_s`); only a pool
        not sampled yet (just after start) is asked here, bounded like every poll.
        """
        executor = self.serving.executor
        # NOTE: right after start the poller may not have sampled a pool yet: sample it
        # here once (bounded like every poll), unless that call could wake a pool that
        # may be scaled to zero.
        unsampled = [
            name
            for name, load in executor.load.items()
            if load.polled == "pending" and load.replicas != 0 and not self._may_sleep(name)
        ]
        await asyncio.gather(*(self._poll_pool(name) for name in unsampled))
        now = time.monotonic()
        status: dict[str, Any] = {}
        for name, load in executor.load.items():
            entry: dict[str, Any]
            if load.replicas == 0:
                entry = {"ok": True, "state": "scaled_to_zero"}
            else:
                ok = load.polled == "ok" or (load.polled == "busy" and bool(load.replicas))
                entry = {"ok": ok, "state": load.polled, **asdict(load.stats)}
                if load.stats_at is not None:
                    entry["stats_age_s"] = round(now - load.stats_at, 2)
            entry["replicas"] = load.replicas
            entry["circuit"] = executor.breakers[name].state
            status[name] = entry
        healthy = all(s["ok"] for s in status.values())
        body: dict[str, Any] = {"ok": healthy, "pools": status}
        body["counters"] = dict(self.serving.counters)
        body["active_requests"] = self.guard.active
        if self.guard.refused:
            body["refused"] = {str(k): v for k, v in sorted(self.guard.refused.items())}
        return JSONResponse(body, status_code=200 if healthy else 503)
