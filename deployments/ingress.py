"""The ingress deployment: the OpenAI HTTP API in front of the pools.

HTTP only: FastAPI routes parse the body into wire models and hand it to
`OpenAIServing`; every exception goes through the one error mapper. Pools are reached
through Serve handles, wrapped so that Ray's exceptions are translated into ours at this
boundary (`raise ... from exc`) and never leak into a response.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from deployments.config import AppConfig
from deployments.openai.errors import APIError, create_error_response
from deployments.openai.protocol import ChatCompletionRequest, CompletionRequest
from deployments.openai.serving import OpenAIServing, Routed
from models.engines.base import (
    EngineError,
    EngineUnavailableError,
    GenerationChunk,
    GenerationRequest,
    GenerationResult,
    PromptError,
)
from routing.policy import UnknownModelError

api = FastAPI(title="Switchyard", description="OpenAI-compatible multi-model LLM router")


async def _on_error(_: Request, exc: Exception) -> Response:
    return create_error_response(exc)


# NOTE: expected errors get their own handlers; Starlette re-raises (and logs a traceback
# for) whatever only the catch-all `Exception` handler catches.
for _expected in (RequestValidationError, APIError, PromptError, UnknownModelError, EngineError):
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

    async def generate(self, pool: str, request: GenerationRequest) -> GenerationResult:
        response = self.handles[pool].generate.remote(request)
        try:
            async with asyncio.timeout(self.timeout_s):
                result: GenerationResult = await response
        except TimeoutError as exc:
            # NOTE: cancelling the call makes the replica's engine abort the request.
            response.cancel()  # type: ignore[no-untyped-call]
            raise _timeout_error(pool, self.timeout_s) from exc
        except Exception as exc:
            raise translate(pool, exc) from exc
        return result

    async def stream(self, pool: str, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        chunks: DeploymentResponseGenerator[GenerationChunk]
        chunks = self.streams[pool].generate_stream.remote(request)  # type: ignore[assignment]
        try:
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


@serve.deployment(name="ingress")
@serve.ingress(api)
class Ingress:
    def __init__(self, config: AppConfig, pools: dict[str, DeploymentHandle[Any]]) -> None:
        self.config = config
        self.pools = pools
        self.serving = OpenAIServing(config, HandlePoolClient(pools, config.request_timeout_s))

    @api.get("/v1/models")
    async def models(self) -> Response:
        return Response(self.serving.models().model_dump_json(), media_type="application/json")

    @api.post("/v1/chat/completions")
    async def chat_completions(self, body: ChatCompletionRequest) -> Response:
        return _respond(await self.serving.chat(body))

    @api.post("/v1/completions")
    async def completions(self, body: CompletionRequest) -> Response:
        return _respond(await self.serving.completion(body))

    @api.get("/health")
    async def health(self) -> JSONResponse:
        status: dict[str, Any] = {}
        for name, handle in self.pools.items():
            try:
                stats = await handle.stats.remote()
                status[name] = {"ok": True, **asdict(stats)}
            except Exception:  # noqa: BLE001 - any failure means the pool is not healthy
                status[name] = {"ok": False}
        healthy = all(s["ok"] for s in status.values())
        return JSONResponse({"ok": healthy, "pools": status}, status_code=200 if healthy else 503)
