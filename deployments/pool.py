"""The pool deployment: one class for every pool, configured per pool.

A replica owns one engine. It adds what a replica needs around it: start-up, the two
call shapes the ingress uses (whole answer, token stream), abort, load stats and the
health check Serve calls to replace a dead replica.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

from ray import serve

from deployments.autoscaling import ANTICIPATED, ENGINE_WAITING
from models.catalog import ModelSpec
from models.engines import create_engine
from models.engines.base import (
    EngineStats,
    GenerationChunk,
    GenerationRequest,
    GenerationResult,
    collect,
)
from models.engines.coalesce import coalesce
from models.engines.fake import FakeEngineOptions

logger = logging.getLogger(__name__)

# An ingress re-sends its estimate every few seconds; one it stopped sending is dropped.
HINT_TTL_S = 15.0


@serve.deployment(health_check_period_s=10, health_check_timeout_s=30)
class PoolServer:
    async def __init__(  # type: ignore[misc]  # Serve awaits async constructors
        self,
        pool: str,
        spec: ModelSpec,
        engine: str,
        stream_interval_ms: float = 0.0,
        fake: FakeEngineOptions | None = None,
    ) -> None:
        """`fake`: the fake engine's behaviour (`engine == "fake"`, tests only)."""
        self.pool = pool
        self.spec = spec
        self.stream_interval_s = stream_interval_ms / 1000
        self.engine = create_engine(engine, spec, pool=pool, fake=fake)
        self._hints: dict[str, tuple[float, float]] = {}  # ingress id -> (requests, when)
        await self.engine.start()
        logger.info("pool %s serving %s with the %s engine", pool, spec.id, engine)

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        return await collect(self.engine.generate(request))

    async def generate_stream(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Token chunks, coalesced (models/engines/coalesce.py): fewer items cross Ray."""
        async for chunk in coalesce(self.engine.generate(request), self.stream_interval_s):
            yield chunk

    async def abort(self, request_id: str) -> None:
        await self.engine.abort(request_id)

    def stats(self) -> EngineStats:
        return self.engine.stats()

    def anticipate(self, sender: str, requests: float) -> None:
        """An ingress expects `requests` to arrive soon (escalations of running cascades).

        Broadcast to every replica, so each reports the pool-wide expectation.
        """
        self._hints[sender] = (requests, time.monotonic())

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Custom metrics for `deployments.autoscaling`; Serve calls this periodically."""
        now = time.monotonic()
        self._hints = {k: v for k, v in self._hints.items() if now - v[1] <= HINT_TTL_S}
        return {
            ENGINE_WAITING: float(self.engine.stats().waiting),
            ANTICIPATED: float(sum(requests for requests, _ in self._hints.values())),
        }

    async def check_health(self) -> None:
        await self.engine.check_health()

    async def __del__(self) -> None:
        await self.engine.shutdown()
