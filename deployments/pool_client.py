"""`PoolClient` over Serve deployment handles: the ingress's only way to reach a pool.

A pool is a Ray Serve LLM server: every call is `handle.options(stream=True).<method>
.remote(request)` with vLLM's request model, and yields either one whole response
(`chat.completion`, `text_completion`, embeddings), batches of ready-made SSE events,
or one `ErrorResponse` when vLLM's serving layer refused the request.

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
    """The domain error of a pool's `ErrorResponse` item (None: not an error)."""
    error = getattr(item, "error", None)
    if error is None or not hasattr(error, "code"):
        return None
    status = int(error.code or 500)
    if 400 <= status < 500:
        message = str(error.message)
        code = "context_length_exceeded" if "maximum context length" in message else None
        return EngineRefusedError(status, message, code=code, param=error.param)
    logger.warning("pool %s failed a request: %s", pool, str(error.message)[:300])
    return EngineError(f"pool {pool!r} failed to serve the request")


def answer_of(response: Any) -> Answer:
    """What strategies and accounting read of a whole OpenAI response."""
    usage = response.usage
    logprobs: list[float] = []
    if response.choices:
        shown = response.choices[0].logprobs
        if shown is not None:
            content = getattr(shown, "content", None)
            if content is not None:  # chat: one entry per token
                logprobs = [entry.logprob for entry in content]
            else:  # completions: OpenAI's legacy shape
                logprobs = [lp for lp in shown.token_logprobs or [] if lp is not None]
    return Answer(
        body=response,
        prompt_tokens=usage.prompt_tokens if usage else 0,
        completion_tokens=(usage.completion_tokens or 0) if usage else 0,
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
            items = getattr(self.streams[pool], method).remote(request)
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
            items = getattr(self.streams[pool], method).remote(request)
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
