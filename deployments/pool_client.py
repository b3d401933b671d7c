"""`PoolClient` over Serve deployment handles: the ingress's only way to reach a pool.

A pool is a Ray Serve LLM server: every call is `handle.options(stream=True).generate
.remote(method, body)` (`deployments/pool.py`) with the client's body, and yields, as
plain data, either one whole response (`chat.completion`, `text_completion`), batches
of ready-made SSE events, or one error body when vLLM refused the request.

This is the Ray boundary: Ray's and Serve's exceptions, and vLLM's error responses, are
translated here into the domain errors of `core.errors` (`raise ... from exc`), so
nothing past it knows Ray and no Ray message reaches a response.
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
    EngineRefusedError,
    EngineUnavailableError,
    PoolOverloadedError,
    PoolTimeoutError,
    SwitchyardError,
)
from deployments.engine_requests import UNSUPPORTED
from execution.executor import Answer

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


def refusal(pool: str, item: Any) -> SwitchyardError | None:
    """The domain error of a pool's error body (None: not an error)."""
    error = item.get("error") if isinstance(item, dict) else None
    if not isinstance(error, dict):
        return None
    status = int(error.get("code") or 500)
    message = str(error.get("message") or "")
    if 400 <= status < 500:
        code = None
        if error.get("type") == UNSUPPORTED:
            code = UNSUPPORTED
        elif "maximum context length" in message:
            code = "context_length_exceeded"
        return EngineRefusedError(status, message, code=code, param=error.get("param"))
    logger.warning("pool %s failed a request: %s", pool, message[:300])
    return EngineError(f"pool {pool!r} failed to serve the request")


def answer_of(response: dict[str, Any]) -> Answer:
    """What strategies and accounting read of a whole OpenAI response."""
    usage = response.get("usage") or {}
    choices = response.get("choices") or []
    logprobs: list[float] = []
    shown = choices[0].get("logprobs") if choices else None
    if shown:
        if shown.get("content") is not None:  # chat: one entry per token
            logprobs = [entry["logprob"] for entry in shown["content"]]
        else:  # completions: OpenAI's legacy shape
            logprobs = [lp for lp in shown.get("token_logprobs") or [] if lp is not None]
    return Answer(
        body=response,
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        logprobs=logprobs,
    )


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

    async def generate(self, pool: str, method: str, request: Any) -> Answer:
        """A whole answer (`request.stream` is false)."""
        items: DeploymentResponseGenerator[Any] | None = None
        try:
            # NOTE: `.remote()` itself may raise back-pressure: it belongs inside the `try`.
            items = self.streams[pool].generate.remote(method, request)  # type: ignore[assignment]
            assert items is not None
            async with asyncio.timeout(self.timeout_s):
                item = await anext(items)
        except TimeoutError as exc:
            raise PoolTimeoutError(pool, self.timeout_s) from exc
        except Exception as exc:
            raise translate(pool, exc) from exc
        finally:
            # NOTE: cancelling the call makes vLLM abort the request (timeout, client gone).
            if items is not None:
                with contextlib.suppress(Exception):
                    items.cancel()  # type: ignore[no-untyped-call]
        refused = refusal(pool, item)
        if refused is not None:
            raise refused
        return answer_of(item)

    async def stream(self, pool: str, method: str, request: Any) -> AsyncIterator[list[str]]:
        """Batches of SSE events (`request.stream` is true); a refusal raises before any."""
        items: DeploymentResponseGenerator[Any] | None = None
        try:
            items = self.streams[pool].generate.remote(method, request)  # type: ignore[assignment]
            assert items is not None
            while True:
                # NOTE: never `yield` inside the timeout: it would cancel the consumer.
                # For streams the limit is on the wait for each next batch.
                async with asyncio.timeout(self.timeout_s):
                    batch = await anext(items, None)
                if batch is None:
                    return
                # NOTE: a refusal arrives as one ErrorResponse, in a batch of its own.
                first = batch[0] if isinstance(batch, list) and batch else batch
                if not isinstance(first, str):
                    refused = refusal(pool, first)
                    raise refused or EngineError(f"pool {pool!r} answered a stream with one object")
                yield batch
        except TimeoutError as exc:
            raise PoolTimeoutError(pool, self.timeout_s) from exc
        except SwitchyardError:
            raise
        except Exception as exc:
            raise translate(pool, exc) from exc
        finally:
            # Client gone, timeout or error: vLLM aborts the request in the engine.
            # NOTE: cancel() re-raises a failed assignment (back-pressure); that error was
            # already handled above.
            if items is not None:
                with contextlib.suppress(Exception):
                    items.cancel()  # type: ignore[no-untyped-call]
