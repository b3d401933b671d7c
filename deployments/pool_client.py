"""`PoolClient` over Serve deployment handles: the ingress's only way to reach a pool.

This is the Ray boundary: Ray's and Serve's exceptions are translated here into the
domain errors of `core.errors` (`raise ... from exc`), so nothing past it knows Ray and
no Ray message reaches a response.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from core.errors import (
    EngineError,
    EngineUnavailableError,
    PoolOverloadedError,
    PoolTimeoutError,
    SwitchyardError,
)
from models.engines.base import GenerationChunk, GenerationRequest, GenerationResult

logger = logging.getLogger(__name__)


def translate(pool: str, exc: BaseException) -> BaseException:
    """Turn a Ray/Serve exception from a pool call into a domain error."""
    if isinstance(exc, RayTaskError):
        cause = exc.cause
        if isinstance(cause, SwitchyardError):
            return cause  # raised by the replica's engine: already ours
        return EngineError(f"pool {pool!r} failed to serve the request")
    if isinstance(exc, BackPressureError):
        return PoolOverloadedError(pool)
    if isinstance(exc, RayActorError | DeploymentUnavailableError):
        return EngineUnavailableError(f"pool {pool!r} is unavailable; retry shortly")
    return exc


class HandlePoolClient:
    """`PoolClient` over Serve deployment handles, each call bounded by `timeout_s`."""

    def __init__(self, handles: dict[str, DeploymentHandle[Any]], timeout_s: float) -> None:
        self.handles = handles
        self.streams = {name: h.options(stream=True) for name, h in handles.items()}
        self.timeout_s = timeout_s
        self._waking: dict[str, asyncio.Future[None]] = {}

    def wake(self, pool: str) -> None:
        """Queue one cheap call on a pool at zero replicas: Serve scales it up to serve it."""
        pending = self._waking.get(pool)
        if pending is None or pending.done():
            self._waking[pool] = asyncio.ensure_future(self._wake(pool))

    async def _wake(self, pool: str) -> None:
        try:
            await self.handles[pool].stats.remote()
        except Exception as exc:  # noqa: BLE001 - the request that woke it reports errors
            logger.warning("waking pool %s failed: %r", pool, exc)

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
            raise PoolTimeoutError(pool, self.timeout_s) from exc
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
            raise PoolTimeoutError(pool, self.timeout_s) from exc
        except Exception as exc:
            raise translate(pool, exc) from exc
        finally:
            # Client gone, timeout or error: the replica's engine aborts the request.
            # NOTE: cancel() re-raises a failed assignment (back-pressure); that error was
            # already handled above.
            if chunks is not None:
                with contextlib.suppress(Exception):
                    chunks.cancel()  # type: ignore[no-untyped-call]
