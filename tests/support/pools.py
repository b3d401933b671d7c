"""`PoolClient` over fake Ray Serve LLM engines, in-process: the serving logic without Ray.

The engines are the fake `FakeLLMEngine`, which speaks vLLM's OpenAI JSON and SSE. The
body is parsed by vLLM's request model and the items made plain exactly as a pool
replica does (`deployments.engine_requests`), then turned into what
`deployments.pool_client.HandlePoolClient` returns (the same `answer_of` and `refusal`),
so everything above the Serve boundary runs as it does in the app. It records every
call, and can hold a pool's calls until a test releases them (to interleave requests
deterministically).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from deployments.config import AppConfig
from deployments.engine_requests import parse, plain
from deployments.fake_engine import FakeLLMEngine
from deployments.fake_options import FakeEngineOptions
from deployments.llm_config import pool_llm_config
from deployments.pool_client import answer_of, refusal
from execution.executor import Answer

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
"""One tool, as the OpenAI API takes it: what the tool tests of every tier ask with."""


class InProcessPools:
    """PoolClient over fake engines, recording which pool got which request."""

    def __init__(self, config: AppConfig, fake: dict[str, FakeEngineOptions]) -> None:
        self.engines: dict[str, FakeLLMEngine] = {}
        for name, pool in config.pools.items():
            spec = config.model(pool.model)
            llm_config = pool_llm_config(name, pool, spec, spec.source_name, fake=True)
            self.engines[name] = FakeLLMEngine(
                llm_config, options=fake.get(name) or FakeEngineOptions(), pool=name
            )
        self.calls: list[tuple[str, Any]] = []
        self.woken: list[str] = []
        self.gates: dict[str, asyncio.Event] = {}  # pool -> calls wait until it is set

    def wake(self, pool: str) -> None:
        self.woken.append(pool)

    def requests(self, pool: str) -> list[Any]:
        return [request for name, request in self.calls if name == pool]

    async def _enter(self, pool: str, request: Any) -> None:
        self.calls.append((pool, request))
        gate = self.gates.get(pool)
        if gate is not None:
            await gate.wait()

    async def _start(self, pool: str, method: str, body: dict[str, Any]) -> Any:
        """The engine's items for `body`, parsed as a pool replica parses it."""
        await self._enter(pool, body)
        request, refused = parse(method, body)
        if refused is not None:
            raise refusal(pool, refused) or AssertionError(refused)
        return getattr(self.engines[pool], method)(request)

    async def generate(self, pool: str, method: str, body: dict[str, Any]) -> Answer:
        items = await self._start(pool, method, body)
        try:
            item = plain(await anext(items))
        finally:
            await items.aclose()
        error = refusal(pool, item)
        if error is not None:
            raise error
        return answer_of(item)

    async def stream(
        self, pool: str, method: str, body: dict[str, Any]
    ) -> AsyncIterator[list[str]]:
        items = await self._start(pool, method, body)
        try:
            async for item in items:
                item = plain(item)
                if not isinstance(item, str):
                    raise refusal(pool, item) or AssertionError(f"unexpected {item!r}")
                yield [item]
        finally:
            await items.aclose()
