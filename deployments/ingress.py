"""The ingress deployment: the OpenAI HTTP API in front of the pools.

HTTP only: FastAPI routes parse the body into wire models and hand it to
`OpenAIServing`; every exception goes through the one error mapper. Pools are reached
through Serve handles, wrapped so that Ray's exceptions are translated into ours at this
boundary (`raise ... from exc`) and never leak into a response.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.errors import (
    FeedbackWindowClosedError,
    ForeignResponseError,
    SwitchyardError,
    UnknownModelError,
    UnknownResponseError,
)
from deployments.config import AppConfig
from deployments.metrics import RequestMetrics
from deployments.openai.adaptive import AdaptiveRouting, Pick
from deployments.openai.auth import Authenticated, Authenticator
from deployments.openai.classify import classify_request
from deployments.openai.embeddings import Embeddings, EmbeddingsRequest
from deployments.openai.errors import APIError, create_error_response, outcome_of, to_api_error
from deployments.openai.guard import GuardMiddleware, RequestGuard
from deployments.openai.protocol import (
    ChatRequest,
    ClassifyRequest,
    ClassifyResponse,
    CompletionRequest,
    FeedbackRequest,
    FeedbackResponse,
    ModelCard,
    ModelList,
    RoutePlanResponse,
    RouteRequest,
    RoutingFields,
)
from deployments.openai.schema import (
    CLASSIFY_ERRORS,
    FEEDBACK_ERRORS,
    GENERATION_ERRORS,
    READ_ERRORS,
    ROUTE_ERRORS,
    openapi_with_errors,
    responses,
)
from deployments.openai.serving import OpenAIServing, Routed, is_counted
from deployments.openai.wishes import Headers, KnownTenants, RoutingHeaders, wishes
from deployments.pool_client import HandlePoolClient
from deployments.quota import KeeperClient
from deployments.router_reload import WatchedRouterFile
from execution.monitor import EngineStats
from routing.bandit import ThompsonRouter
from routing.embedding import MiniLMEmbedder
from routing.learned import LearnedRouter, PoolRouter, load_serving_router
from routing.planner import Wishes
from routing.semantic import SemanticClassifier
from routing.tiers import tier_of
from tenancy.bandit import BanditStore, SharedBandit
from tenancy.db import connect, database_url
from tenancy.gate import QuotaGate
from tenancy.keys import Caller, KeyStore
from tenancy.ledger import LedgerWriter, add_feedback, feedback_target
from tenancy.ledger import summary as ledger_summary
from tenancy.side import SideCalls

logger = logging.getLogger(__name__)


api = FastAPI(title="Switchyard", description="OpenAI-compatible multi-model LLM router")
api.add_middleware(GuardMiddleware)
api.openapi = lambda: openapi_with_errors(api)  # type: ignore[method-assign]


GENERATION_PATHS = ("/v1/chat/completions", "/v1/completions")


async def _on_error(request: Request, exc: Exception) -> Response:
    """Map every error to the OpenAI shape; count refused generation requests.

    Requests refused before `OpenAIServing` saw them (a body that fails validation, a
    bad header) are counted in the metrics here (`RequestMetrics.refused`), never written
    to the ledger: a refusal costs its sender nothing, so it must not cost a database
    row. (A missing or bad API key is refused earlier still, by the request guard.)
    """
    err = to_api_error(exc)
    generation = request.url.path.endswith(GENERATION_PATHS)  # under any route prefix
    if generation and not is_counted(exc):
        metrics: RequestMetrics | None = getattr(request.app.state, "metrics", None)
        if metrics is not None:
            metrics.refused(outcome_of(err))
    return create_error_response(err)


# NOTE: expected errors get their own handlers; Starlette re-raises (and logs a traceback
# for) whatever only the catch-all `Exception` handler catches.
for _expected in (StarletteHTTPException, RequestValidationError, APIError, SwitchyardError):
    api.add_exception_handler(_expected, _on_error)
api.add_exception_handler(Exception, _on_error)


class FailureLog:
    """Log a background loop's failures without flooding: at most one line per period."""

    def __init__(self, what: str, period_s: float = 60.0) -> None:
        self.what, self.period_s = what, period_s
        self._last = -period_s
        self._suppressed = 0

    def failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last < self.period_s:
            self._suppressed += 1
            return
        more = f" ({self._suppressed} more since the last report)" if self._suppressed else ""
        logger.warning("%s failed: %r%s", self.what, exc, more)
        self._last, self._suppressed = now, 0


def _respond(routed: Routed) -> Response:
    if routed.stream is not None:
        return StreamingResponse(
            routed.stream, media_type="text/event-stream", headers=routed.headers()
        )
    assert routed.body is not None
    return Response(routed.body, media_type="application/json", headers=routed.headers())


STATS_PERIOD_S = 1.0
REPLICAS_PERIOD_S = 2.0
SPEND_REPORT_S = 0.5  # how often spend and idle allowances reach the quota keeper
HEALTH_FIRST_SAMPLE_S = 3.0  # longest /health waits for the first stats round after start
HINT_PERIOD_S = 5.0  # re-send an unchanged escalation forecast this often (pools drop at 15 s)


@serve.deployment(name="ingress")
@serve.ingress(api)
class Ingress:
    async def __init__(  # type: ignore[misc]  # Serve awaits async constructors
        self,
        config: AppConfig,
        pools: dict[str, DeploymentHandle[Any]],
        quota: DeploymentHandle[Any] | None = None,
    ) -> None:
        self.config = config
        self.pools = pools
        semantic = learned = None
        self.router_file: WatchedRouterFile[LearnedRouter | PoolRouter] | None = None
        routing = config.routing
        embedder = MiniLMEmbedder()  # one model: both classifiers and /v1/embeddings
        self.embedder = Embeddings(embedder)
        if routing.semantic.enabled or routing.learned is not None:
            if routing.semantic.enabled:
                semantic = await asyncio.to_thread(
                    SemanticClassifier, embedder, routing.semantic.examples
                )
            if routing.learned is not None:
                served = list(config.pools)
                self.router_file = WatchedRouterFile(
                    routing.learned.path,
                    lambda path: load_serving_router(path, served, embedder=embedder),
                )
                learned = self.router_file.load()
                # Loaded here, not by the first requests (semantic's examples load it).
                await asyncio.to_thread(embedder.load)
        # NOTE: the guard must be in place before the first request: the middleware
        # passes everything through while `api.state` has none.
        self.guard = RequestGuard(config.api)
        api.state.guard = self.guard
        self.db = connect(database_url(config.database.url))
        self.keys = KeyStore(self.db)
        self.ledger = LedgerWriter(self.db, config.database.flush_interval_s)
        self.ledger.start()
        self.auth = Authenticator(config.auth)
        if config.auth.mode == "keys":
            self.auth.ring.replace(await asyncio.to_thread(self.keys.all))
            logger.info("API keys required; %d active keys", len(self.auth.ring))
        else:
            logger.warning(
                "authentication is OFF (auth.mode: off): anyone who reaches this port is "
                "served; keep it on 127.0.0.1 or set auth.mode: keys"
            )
        api.state.auth = self.auth
        # Tenant names a gateway may send (others become `other`): config and key ring.
        self.tenants = KnownTenants([*config.tenants, *routing.tenants], self.auth.ring)
        client = HandlePoolClient(pools, config.request_timeout_s)
        self.metrics = RequestMetrics()
        api.state.metrics = self.metrics
        context = serve.get_replica_context()
        self.gate = (
            QuotaGate(
                config.quotas(),
                KeeperClient(quota),
                holder=context.replica_tag,
                fail_mode=config.accounting.fail_mode,
                local_share=config.local_share(),
            )
            if quota
            else None
        )
        self.side = SideCalls(config.accounting.side_requests_per_minute)
        self.bandit: SharedBandit | None = None
        adaptive = None
        if routing.adaptive.enabled:
            # Evidence shared by every replica through the database; a thread syncs it.
            self.bandit = SharedBandit(
                BanditStore(self.db, routing.adaptive.half_life_s),
                ThompsonRouter.from_config(routing.adaptive),
                routing.adaptive.refresh_s,
            )
            await asyncio.to_thread(self.bandit.sync)
            self.bandit.start()
            adaptive = AdaptiveRouting(routing.adaptive, self.bandit)
        self.serving = OpenAIServing(
            config, client, semantic, learned, self.metrics, ledger=self.ledger, gate=self.gate,
            adaptive=adaptive,
        )  # fmt: skip
        self.monitor = self.serving.monitor
        self._app, self._me = context.app_name, context.replica_tag
        self._sent: dict[str, tuple[float, float]] = {}  # pool -> (forecast, when sent)
        self._sampled = asyncio.Event()  # set once every awake pool has been asked
        self._stats_log = FailureLog("pool stats poll")
        self._replicas_log = FailureLog("reading replica counts from Serve")
        self._forecast_log = FailureLog("sending the escalation forecast")
        self._keys_log = FailureLog("reloading API keys")
        self._router_log = FailureLog("checking the learned router file")
        # NOTE: pool load reaches the monitor through these background loops, never
        # through a call on the request path.
        loop = asyncio.get_running_loop()
        self._loops = [
            loop.create_task(self._poll_stats()),
            loop.create_task(self._poll_replicas()),
        ]
        if config.auth.mode == "keys":
            self._loops.append(loop.create_task(self._reload_keys()))
        if self.gate is not None:
            self._loops.append(loop.create_task(self._report_spend()))
        if self.router_file is not None and routing.learned and routing.learned.reload_s > 0:
            self._loops.append(loop.create_task(self._reload_router(routing.learned.reload_s)))

    async def _poll_stats(self) -> None:
        """Every second, each awake pool's engine stats (all at once, each call bounded).

        The only place pools are asked for stats: routing and `/health` read the monitor.
        """
        monitor = self.monitor
        while True:
            # NOTE: a call to a pool scaled to zero would wake it: the monitor lists only
            # pools known to run a replica.
            known = monitor.known()  # NOTE: before the round, so the round covered it
            await asyncio.gather(*(self._poll_pool(name) for name in monitor.pools_to_poll()))
            if known:
                self._sampled.set()
            for name in monitor.pools:
                state = monitor.state(name)
                self.metrics.pool_state(
                    name,
                    monitor.circuit(name),
                    state.stats.running,
                    state.stats.waiting,
                    state.replicas,
                )
            try:
                await self._send_forecast()
            except Exception as exc:  # noqa: BLE001 - retried next period
                self._forecast_log.failed(exc)
            await asyncio.sleep(STATS_PERIOD_S if known else 0.1)  # the first round soon

    async def _poll_pool(self, name: str) -> None:
        try:
            async with asyncio.timeout(STATS_PERIOD_S):
                stats: EngineStats = await self.pools[name].stats.remote()
        except (TimeoutError, BackPressureError):
            self.monitor.record_poll_failure(name, busy=True)  # slots full: waited in line
        except Exception as exc:  # noqa: BLE001 - dead replica, unavailable deployment
            self.monitor.record_poll_failure(name, busy=False)
            self._stats_log.failed(exc)
        else:
            self.monitor.record_stats(name, stats)

    async def _send_forecast(self) -> None:
        """Tell escalation targets how many escalations to expect (their autoscaler reads it)."""
        now = time.monotonic()
        forecast = self.monitor.forecast.expected()
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
            try:
                status = await asyncio.to_thread(serve.status)
                deployments = status.applications[self._app].deployments
                for name in self.monitor.pools:
                    pool = deployments[f"pool-{name}"]
                    running = int(pool.replica_states.get("RUNNING", 0))  # type: ignore[call-overload]
                    updating = running == 0 and str(pool.status).endswith("UPDATING")
                    self.monitor.record_replicas(name, None if updating else running)
            except Exception as exc:  # noqa: BLE001 - retried next period
                self._replicas_log.failed(exc)
            await asyncio.sleep(REPLICAS_PERIOD_S)

    async def _reload_keys(self) -> None:
        """Keys from the database every `auth.key_refresh_s`: revocations take effect."""
        while True:
            await asyncio.sleep(self.config.auth.key_refresh_s)
            try:
                self.auth.ring.replace(await asyncio.to_thread(self.keys.all))
            except Exception as exc:  # noqa: BLE001 - the last good keys stay in force
                self._keys_log.failed(exc)

    async def _reload_router(self, period_s: float) -> None:
        """A new learned router file every `routing.learned.reload_s` (router_reload.py):
        loaded and validated in a thread, then swapped in; a bad file keeps the old one."""
        assert self.router_file is not None
        while True:
            await asyncio.sleep(period_s)
            try:
                router = await asyncio.to_thread(self.router_file.poll)
            except Exception as exc:  # noqa: BLE001 - the router in use stays
                self._router_log.failed(exc)
                continue
            if router is not None:
                self.serving.planning.use_learned(router)

    async def _report_spend(self) -> None:
        """What this replica's requests spent, to the quota keeper, twice a second."""
        assert self.gate is not None
        while True:
            await asyncio.sleep(SPEND_REPORT_S)
            await self.gate.flush()  # NOTE: logs and keeps the batch when the keeper is down
            self.metrics.quota_mode(self.gate.mode)

    def _wishes(
        self, body: RoutingFields, headers: RoutingHeaders, caller: Caller | None
    ) -> Wishes:
        return wishes(body, self.config.routing, headers, caller, self.tenants)

    @api.get("/v1/models", responses=responses(ModelList, READ_ERRORS))
    async def models(self, _caller: Authenticated) -> Response:
        return Response(self.serving.models().model_dump_json(), media_type="application/json")

    @api.get("/v1/models/{model_id:path}", responses=responses(ModelCard, READ_ERRORS))
    async def model(self, model_id: str, _caller: Authenticated) -> Response:
        """One entry of `/v1/models`: `auto`, a pool or a model id (404 when unknown)."""
        card = next((c for c in self.serving.models().data if c.id == model_id), None)
        if card is None:
            raise UnknownModelError(model_id[:256], [c.id for c in self.serving.models().data])
        return Response(card.model_dump_json(), media_type="application/json")

    @api.post(
        "/v1/chat/completions",
        responses=responses(None, GENERATION_ERRORS, stream=True),
    )
    async def chat_completions(
        self,
        body: ChatRequest,
        headers: Headers,
        caller: Authenticated,
    ) -> Response:
        asked = self._wishes(body, headers, caller)
        return _respond(await self.serving.generate(body, asked, caller.key_id if caller else None))

    @api.post(
        "/v1/completions",
        responses=responses(None, GENERATION_ERRORS, stream=True),
    )
    async def completions(
        self,
        body: CompletionRequest,
        headers: Headers,
        caller: Authenticated,
    ) -> Response:
        asked = self._wishes(body, headers, caller)
        return _respond(await self.serving.generate(body, asked, caller.key_id if caller else None))

    @api.post("/v1/embeddings", responses=responses(None, ROUTE_ERRORS))
    async def embeddings(self, body: EmbeddingsRequest, caller: Authenticated) -> JSONResponse:
        """Vectors of up to 256 texts from the bundled all-MiniLM-L6-v2 (384 dimensions),
        computed in this replica; metered like the other endpoints that generate nothing."""
        self.side.take(caller.tenant if caller is not None else None)
        return JSONResponse(await self.embedder.create(body))

    @api.post("/v1/route", responses=responses(RoutePlanResponse, ROUTE_ERRORS))
    async def route(
        self,
        body: RouteRequest,
        headers: Headers,
        caller: Authenticated,
    ) -> Response:
        asked = self._wishes(body, headers, caller)
        self.side.take(asked.tenant)
        decided = await self.serving.dry_run(body, body.text, asked, body.needs)
        return Response(decided.model_dump_json(), media_type="application/json")

    @api.post("/v1/classify", responses=responses(ClassifyResponse, CLASSIFY_ERRORS))
    async def classify(
        self,
        body: ClassifyRequest,
        headers: Headers,
        caller: Authenticated,
    ) -> Response:
        """Task type, complexity, rule features, classifier readings and the route decision
        for a chat body, without generating (deployments/openai/classify.py)."""
        asked = self._wishes(body, headers, caller)
        self.side.take(asked.tenant)
        key_id = caller.key_id if caller else None
        answer, limits = await classify_request(self.serving, body, asked, key_id)
        return Response(
            answer.model_dump_json(), media_type="application/json", headers=dict(limits)
        )

    @api.get("/v1/metrics", responses=responses(None, READ_ERRORS))
    async def metrics_summary(self, caller: Authenticated) -> JSONResponse:
        """Traffic, cost and model mix from the ledger: every replica's requests, across
        restarts (this replica's written first; others' up to `database.flush_interval_s`
        late). A tenant key sees its own tenant; a gateway key, or no auth, sees
        everything. Prometheus metrics are on Ray's metrics port."""
        self.side.take(caller.tenant if caller is not None else None)
        tenant = caller.tenant if caller is not None and caller.role == "tenant" else None
        await asyncio.to_thread(self.ledger.flush)
        body = await asyncio.to_thread(ledger_summary, self.db, tenant)
        return JSONResponse(body)

    @api.get("/v1/budget", responses=responses(None, READ_ERRORS))
    async def budget(self, caller: Authenticated) -> JSONResponse:
        """The caller's own accounts (its tenant, its key): limits, use per window,
        remaining, reset times. Nobody can read another tenant's."""
        self.side.take(caller.tenant if caller is not None else None)
        if caller is None or self.gate is None:
            return JSONResponse({"object": "budget", "tenant": None, "limited": False})
        tier = tier_of(self.config.routing, caller.tenant, None, caller.tier)
        mine = self.gate.accounts(caller.tenant, tier, caller.key_id, None)
        accounts = await self.gate.budget(mine)
        return JSONResponse(
            {"object": "budget", "tenant": caller.tenant, "limited": bool(accounts),
             "accounts": accounts, "mode": self.gate.mode}
        )  # fmt: skip

    @api.post("/v1/feedback", responses=responses(FeedbackResponse, FEEDBACK_ERRORS))
    async def feedback(self, body: FeedbackRequest, caller: Authenticated) -> Response:
        """A verdict on one of the caller's own responses, kept with its ledger record:
        one per response (a later one replaces it), within `feedback.window_s` of it.

        Only the first verdict on a response is evidence for the adaptive router: the
        bandit's counts are sums without a record of who added what, so a changed mind
        cannot be taken back out of them, and counting every change would let one
        response weigh as much as its owner cares to post. The stored row (training data,
        the export) always holds the latest.
        """
        self.side.take(caller.tenant if caller is not None else None)
        queued, _ = self.ledger.queued_tenant(body.id)
        if queued:  # answered here moments ago: write it now rather than wait
            await asyncio.to_thread(self.ledger.flush)
        # NOTE: one look, no waiting: a response another replica has not written yet
        # (up to `database.flush_interval_s` old) is a 404 the client retries (README).
        target = await asyncio.to_thread(feedback_target, self.db, body.id)
        if target is None:
            raise UnknownResponseError(body.id)
        if caller is not None and caller.role == "tenant" and target.tenant != caller.tenant:
            raise ForeignResponseError()
        window_s = self.config.feedback.window_s
        if target.closed(time.time(), window_s):
            raise FeedbackWindowClosedError(window_s)
        tenant = caller.tenant if caller is not None else target.tenant
        verdict = await asyncio.to_thread(
            add_feedback, self.db, body.id, tenant, body.score, body.label, body.comment
        )
        adaptive, arm = self.serving.adaptive, target.arm
        if adaptive is not None and arm is not None and not verdict.replaced:
            # Evidence for the pool that answered, in the overlay of the request's tenant.
            adaptive.feedback(Pick(*arm), body.score, tenant=target.tenant)
        answer = FeedbackResponse(id=verdict.id, request_id=body.id, replaced=verdict.replaced)
        return Response(answer.model_dump_json(), media_type="application/json")

    async def __del__(self) -> None:
        """Serve calls this on a graceful replica stop: queued ledger records are written."""
        await asyncio.to_thread(self.ledger.close)
        if self.bandit is not None:
            await asyncio.to_thread(self.bandit.close)

    @api.get("/health", responses=responses(None, (503,)))
    async def health(self) -> JSONResponse:
        """Pool health from what the stats poller last saw (`PoolMonitor.health`).

        Never calls a pool, so it cannot wake one scaled to zero or queue behind
        requests. Just after start it waits up to HEALTH_FIRST_SAMPLE_S for the poller's
        first round instead of calling a pool not sampled yet unhealthy.
        """
        if not self._sampled.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(HEALTH_FIRST_SAMPLE_S):
                    await self._sampled.wait()
        status = self.monitor.health()
        healthy = all(s["ok"] for s in status.values())
        body: dict[str, Any] = {"ok": healthy, "pools": status}
        body["counters"] = dict(self.metrics.counts)
        if self.gate is not None:
            body["quota"] = {"mode": self.gate.mode, "accounts": self.gate.tracked()}
        body["active_requests"] = self.guard.active
        if self.guard.refused:
            body["refused"] = {str(k): v for k, v in sorted(self.guard.refused.items())}
        return JSONResponse(body, status_code=200 if healthy else 503)
