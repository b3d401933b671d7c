"""The pool deployment: Ray Serve LLM's `LLMServer`, plus what Switchyard's routing reads.

A pool replica is an `LLMServer`: it hosts vLLM's own OpenAI serving layer, so a
request is validated, templated, sampled, parsed (tool calls, structured output) and
shaped exactly as vLLM's server would. This subclass adds only what routing, admission
and autoscaling need from a replica:

- load stats (`stats`): requests in flight, split into running and waiting by the
  engine's batch size (`max_num_seqs`), requests abandoned before they finished, and
  the engine time spent (busy seconds; request-seconds): what a benchmark charges a
  pool for the answers it gave;
- the escalation forecast an ingress broadcasts (`anticipate`), reported with the
  engine queue as custom autoscaling metrics (`deployments/autoscaling.py`);
- stream batching whose first event never waits (`deployments/coalesce.py`).

A request whose consumer goes away (client disconnect, lost race, timeout) is cancelled
by Serve; vLLM aborts it in the engine, freeing its slot and KV cache at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from functools import partial
from typing import Any

from ray.serve.llm import LLMConfig, LLMServer

from deployments.autoscaling import ANTICIPATED, ENGINE_WAITING
from deployments.coalesce import coalesce
from deployments.engine_requests import parse, plain
from deployments.fake_options import FakeEngineOptions
from execution.monitor import EngineStats

logger = logging.getLogger(__name__)

# An ingress re-sends its estimate every few seconds; one it stopped sending is dropped.
HINT_TTL_S = 15.0


class PoolServer(LLMServer):
    async def __init__(  # type: ignore[misc]  # Serve awaits async constructors
        self,
        llm_config: LLMConfig,
        *,
        pool: str,
        fake: FakeEngineOptions | None = None,
    ) -> None:
        """`fake`: run the fake engine with this behaviour (tests only)."""
        self.pool = pool
        self._in_flight = 0
        self._aborted = 0
        self._busy_s = self._request_s = 0.0
        self._busy_since = 0.0  # when `_in_flight` last went from 0 to 1
        self._batch = int(llm_config.engine_kwargs.get("max_num_seqs") or 256)
        self._interval_s = float(
            llm_config.experimental_configs.get("stream_batching_interval_ms", 50.0) / 1000
        )
        self._hints: dict[str, tuple[float, float]] = {}  # ingress id -> (requests, when)
        engine: Callable[[LLMConfig], Any] | None = None
        if fake is not None:
            from deployments.fake_engine import FakeLLMEngine

            engine = partial(FakeLLMEngine, options=fake, pool=pool)
        await super().__init__(llm_config, engine_cls=engine)  # type: ignore[arg-type]
        logger.info("pool %s serving %s", pool, llm_config.model_id)

    async def generate(self, method: str, body: dict[str, Any]) -> AsyncIterator[Any]:
        """The ingress's one call: the client's body (plus the pool's fields), parsed by
        vLLM's request model here (`engine_requests.parse`), run by `chat` or
        `completions`, the answer's items as plain data (`engine_requests.plain`)."""
        request, refused = parse(method, body)
        if refused is not None:
            yield refused
            return
        items = await getattr(self, method)(request)
        async for item in items:
            yield plain(item)

    def _batch_output_stream(self, generator: AsyncGenerator[Any, None]) -> Any:
        return coalesce(generator, self._interval_s)

    async def _run_request(self, request: Any, **kwargs: Any) -> Any:
        """Every request the engine runs, counted while it is in flight."""
        stream = await super()._run_request(request, **kwargs)
        return self._counted(stream)

    async def _counted(self, stream: AsyncIterator[Any]) -> AsyncIterator[Any]:
        started = time.monotonic()
        if self._in_flight == 0:
            self._busy_since = started
        self._in_flight += 1
        finished = False
        try:
            async for item in stream:
                yield item
            finished = True
        finally:
            self._in_flight -= 1
            now = time.monotonic()
            self._request_s += now - started
            if self._in_flight == 0:
                self._busy_s += now - self._busy_since
            # NOTE: vLLM answers a cancelled whole-answer request with an error response
            # instead of raising (it aborts the engine request either way): the task
            # still says it was cancelled.
            task = asyncio.current_task()
            if not finished or (task is not None and task.cancelling()):
                self._aborted += 1

    def stats(self) -> EngineStats:
        """Load as routing reads it. vLLM runs up to `max_num_seqs` requests at once;
        the rest wait in its scheduler (a full KV cache makes more wait: not seen here)."""
        running = min(self._in_flight, self._batch)
        busy_s = self._busy_s
        if self._in_flight:
            busy_s += time.monotonic() - self._busy_since
        return EngineStats(
            running, self._in_flight - running, self._aborted, busy_s, self._request_s
        )

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
            ENGINE_WAITING: float(self.stats().waiting),
            ANTICIPATED: float(sum(requests for requests, _ in self._hints.values())),
        }
