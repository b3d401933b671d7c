"""Coalescing a token stream into fewer, larger chunks before it crosses processes.

Every chunk a pool replica yields is one Ray streaming item: serialized, sent to the
ingress, turned into an SSE event, sent again to the proxy. That per-item cost, not the
bytes, is what limits streaming at high concurrency (Ray Serve LLM measured the same:
ray-project/ray #52745), and on a small CPU machine it is taken from the engine itself.

So after the first chunk a replica sends at most one chunk per `interval_s`, carrying
every token produced meanwhile. Unlike a batch timer, nothing waits that need not: the
first chunk goes out at once (time to first token is untouched), and a chunk that ends
the answer, or a buffer of `max_tokens` tokens, goes out at once too. Order, text,
token ids, logprobs, finish reason and usage are exactly those of the uncoalesced
stream; only the chunk boundaries move.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from models.engines.base import GenerationChunk


async def coalesce(
    chunks: AsyncIterator[GenerationChunk], interval_s: float, max_tokens: int = 64
) -> AsyncIterator[GenerationChunk]:
    """Yield `chunks` merged so that at most one chunk leaves per `interval_s`.

    Closing this generator (the consumer left, the call was cancelled) closes `chunks`,
    so the engine aborts the request as it would without coalescing.
    """
    if interval_s <= 0:
        async for chunk in chunks:
            yield chunk
        return
    pending: list[GenerationChunk] = []
    arrived, urgent = asyncio.Event(), asyncio.Event()
    ended = False
    failure: BaseException | None = None

    async def produce() -> None:
        nonlocal ended, failure
        tokens = 0
        try:
            async for chunk in chunks:
                pending.append(chunk)
                tokens = tokens + len(chunk.token_ids) if len(pending) > 1 else len(chunk.token_ids)
                arrived.set()
                if chunk.finish_reason is not None or tokens >= max_tokens:
                    urgent.set()
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, after what came before
            failure = exc
        finally:
            ended = True
            arrived.set()
            urgent.set()

    producer = asyncio.create_task(produce())
    last_sent = float("-inf")
    try:
        while True:
            await arrived.wait()
            wait = last_sent + interval_s - time.monotonic()
            if wait > 0 and not urgent.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await urgent.wait()
            if pending:
                merged = pending[0]
                for chunk in pending[1:]:
                    merged.extend(chunk)
                pending.clear()
                arrived.clear()
                urgent.clear()
                last_sent = time.monotonic()
                yield merged
            if ended and not pending:
                if failure is not None:
                    raise failure
                return
    finally:
        producer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await producer
