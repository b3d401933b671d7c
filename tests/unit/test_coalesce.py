"""Coalescing a stream's items into batches: the first never waits, nothing is lost or
reordered, a closed consumer closes the source, and a failure comes after what came first.

Timing is measured, never slept for: a source is driven by events the test sets, and an
interval far longer than the test may take shows whether anything waited for it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from deployments.coalesce import coalesce

LONG_S = 30.0  # an interval no assertion below may wait for


class Source:
    """An async generator the test steers: it yields `items`, waiting for `release` before
    the one at index `hold_at` (`len(items)`: before it ends), then raises `error` if any.
    Records what it produced and whether it was closed before its end."""

    def __init__(
        self,
        items: list[int],
        *,
        hold_at: int | None = None,
        error: BaseException | None = None,
        pause_s: float = 0.0,
    ) -> None:
        self.items, self.hold_at, self.error, self.pause_s = items, hold_at, error, pause_s
        self.release = asyncio.Event()
        self.produced: list[int] = []
        self.closed = False
        self.finished = False

    async def run(self) -> AsyncIterator[int]:
        try:
            for index, item in enumerate(self.items):
                if index == self.hold_at:
                    await self.release.wait()
                # NOTE: an engine suspends between outputs; so does this source.
                await asyncio.sleep(self.pause_s)
                self.produced.append(item)
                yield item
            if self.hold_at == len(self.items):
                await self.release.wait()
            if self.error is not None:
                raise self.error
            self.finished = True
        finally:
            if not self.finished:
                self.closed = True


async def timed(batches: AsyncIterator[list[int]]) -> tuple[list[int], float]:
    start = time.monotonic()
    batch = await asyncio.wait_for(anext(batches), timeout=LONG_S)
    return batch, time.monotonic() - start


async def test_the_first_item_goes_out_at_once_whatever_the_interval() -> None:
    source = Source([1, 2], hold_at=2)
    batches = coalesce(source.run(), interval_s=LONG_S)
    first, waited = await timed(batches)
    assert first == [1]
    assert waited < LONG_S / 10  # it did not wait for the interval
    await batches.aclose()


async def test_the_last_batch_goes_out_at_once_when_the_source_ends() -> None:
    source = Source([1, 2, 3], hold_at=1)
    batches = coalesce(source.run(), interval_s=LONG_S)
    assert (await timed(batches))[0] == [1]
    # 2 and 3 arrive inside the interval, then the source ends: they go out together,
    # without waiting for the interval to pass.
    source.release.set()
    rest, waited = await timed(batches)
    assert rest == [2, 3]
    assert waited < LONG_S / 10
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(anext(batches), timeout=LONG_S)
    assert source.finished


async def test_a_full_batch_goes_out_without_waiting_for_the_interval() -> None:
    source = Source(list(range(7)), hold_at=7)
    batches = coalesce(source.run(), interval_s=LONG_S, max_items=3)
    got = [await timed(batches) for _ in range(3)]
    assert [batch for batch, _ in got] == [[0], [1, 2, 3], [4, 5, 6]]
    assert max(waited for _, waited in got) < LONG_S / 10
    source.release.set()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(anext(batches), timeout=LONG_S)


async def test_batches_are_fewer_than_items_in_order_at_most_one_per_interval() -> None:
    interval = 0.1
    items = list(range(40))
    source = Source(items, pause_s=0.005)  # ~0.2 s of items: a few intervals
    sent: list[tuple[float, list[int]]] = []
    async for batch in coalesce(source.run(), interval_s=interval):
        sent.append((time.monotonic(), batch))
    batches = [batch for _, batch in sent]
    assert [item for batch in batches for item in batch] == items  # none lost or reordered
    assert all(batches)
    assert 2 <= len(batches) < len(items)
    assert batches[0] == [0]
    # Between two batches at least one interval passed, except before the last one
    # (the source ended: what is left goes at once).
    gaps = [later - earlier for (earlier, _), (later, _) in zip(sent, sent[1:-1], strict=False)]
    assert all(gap >= interval * 0.9 for gap in gaps), gaps


async def test_without_an_interval_every_item_is_its_own_batch() -> None:
    source = Source([1, 2, 3])
    assert [batch async for batch in coalesce(source.run(), interval_s=0)] == [[1], [2], [3]]


async def test_closing_the_batches_closes_the_source() -> None:
    """The consumer left (client gone, call cancelled): the engine must abort."""
    source = Source([1, 2], hold_at=2)
    batches = coalesce(source.run(), interval_s=LONG_S)
    assert (await timed(batches))[0] == [1]
    assert not source.closed
    await batches.aclose()
    assert source.closed
    assert source.produced == [1, 2]  # nothing more was asked of it


async def test_closing_the_batches_closes_the_source_also_without_an_interval() -> None:
    source = Source([1, 2], hold_at=2)
    batches = coalesce(source.run(), interval_s=0)
    assert await anext(batches) == [1]
    await batches.aclose()
    assert source.closed


async def test_a_cancelled_consumer_closes_the_source() -> None:
    source = Source([1], hold_at=1)
    batches = coalesce(source.run(), interval_s=LONG_S)
    assert (await timed(batches))[0] == [1]
    waiting = asyncio.ensure_future(anext(batches))  # waits for the held source
    await asyncio.sleep(0)  # let it start waiting
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert source.closed


async def test_a_failure_comes_after_the_items_before_it() -> None:
    boom = RuntimeError("engine died")
    source = Source([1, 2, 3], error=boom)
    batches = coalesce(source.run(), interval_s=LONG_S)
    got: list[int] = []
    with pytest.raises(RuntimeError) as err:
        async for batch in batches:
            got.extend(batch)
    assert err.value is boom
    assert got == [1, 2, 3]


async def test_a_failure_before_any_item_is_raised_at_once() -> None:
    boom = ValueError("refused")
    batches = coalesce(Source([], error=boom).run(), interval_s=LONG_S)
    start = time.monotonic()
    with pytest.raises(ValueError) as err:
        await asyncio.wait_for(anext(batches), timeout=LONG_S)
    assert err.value is boom
    assert time.monotonic() - start < LONG_S / 10
