"""Coalescing a pool's SSE events into fewer Ray items before they cross processes.

Every item a pool replica yields is one Ray streaming item: serialized, sent to the
ingress, sent again to the proxy. That per-item cost, not the bytes, is what limits
streaming at high concurrency (ray-project/ray #52745), and on a small CPU machine it
is taken from the engine itself. Ray Serve LLM batches a stream's events on a timer for
that reason, but its timer also holds back the first token (up to the whole interval).

So after the first event a replica sends at most one batch per `interval_s`, carrying
every event produced meanwhile. Nothing waits that need not: the first event goes out
at once (time to first token is untouched), and so does the last batch of a stream, or
a batch of `max_items` events. Events and their order are exactly the engine's; only the
batch boundaries move.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import TypeVar

T = TypeVar("T")


async def coalesce(
    items: AsyncIterator[T], interval_s: float, max_items: int = 64
) -> AsyncIterator[list[T]]:
    """Yield `items` in batches so that at most one batch leaves per `interval_s`.

    Closing this generator (the consumer left, the call was cancelled) closes `items`,
    so the engine aborts the request as it would without coalescing.
    """
    if interval_s <= 0:
        try:
            async for item in items:
                yield [item]
        finally:
            close = getattr(items, "aclose", None)
            if close is not None:
                await close()
        return
    pending: list[T] = []
    arrived, urgent = asyncio.Event(), asyncio.Event()
    ended = False
    failure: BaseException | None = None

    async def produce() -> None:
        nonlocal ended, failure
        try:
            async for item in items:
                pending.append(item)
                arrived.set()
                if len(pending) >= max_items:
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
                batch = pending[:]
                pending.clear()
                arrived.clear()
                urgent.clear()
                last_sent = time.monotonic()
                yield batch
            if ended and not pending:
                if failure is not None:
                    raise failure
                return
    finally:
        producer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await producer
