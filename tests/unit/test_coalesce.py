"""Chunk coalescing: fewer chunks, the same answer, nothing held back that need not be."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from models.engines.base import GenerationChunk, TokenLogprob, collect
from models.engines.coalesce import coalesce


def chunk(i: int, finish: str | None = None) -> GenerationChunk:
    return GenerationChunk(
        text=f" t{i}",
        token_ids=[i],
        logprobs=[-i / 10],
        finish_reason=finish,  # type: ignore[arg-type]
        prompt_tokens=5,
        tokens=[TokenLogprob(f" t{i}", -i / 10)],
    )


async def engine(
    n: int, gap_s: float, log: list[str] | None = None
) -> AsyncIterator[GenerationChunk]:
    try:
        for i in range(n):
            if i:
                await asyncio.sleep(gap_s)
            yield chunk(i, "length" if i == n - 1 else None)
    finally:
        if log is not None:
            log.append("closed")


async def test_same_answer_fewer_chunks() -> None:
    plain = await collect(engine(40, 0.002))
    merged = [c async for c in coalesce(engine(40, 0.002), interval_s=0.03)]
    assert 2 <= len(merged) < 20
    whole = await collect(_iter(merged))
    assert (whole.text, whole.logprobs, whole.finish_reason) == (
        plain.text, plain.logprobs, plain.finish_reason,
    )  # fmt: skip
    assert whole.completion_tokens == plain.completion_tokens == 40
    assert whole.prompt_tokens == 5
    assert [t.token for t in whole.tokens or []] == [f" t{i}" for i in range(40)]
    assert [c.finish_reason for c in merged][-1] == "length"
    assert all(c.finish_reason is None for c in merged[:-1])


async def test_first_chunk_never_waits() -> None:
    started = time.monotonic()
    stream = coalesce(engine(3, 0.2), interval_s=5.0)
    first = await anext(stream)
    assert first.token_ids == [0]
    assert time.monotonic() - started < 1.0  # generous: the interval is 5 s
    await stream.aclose()


async def test_last_chunk_is_sent_when_it_arrives_not_at_the_interval() -> None:
    stream = coalesce(engine(2, 0.05), interval_s=5.0)
    await anext(stream)
    started = time.monotonic()
    last = await anext(stream)
    assert last.finish_reason == "length"
    assert time.monotonic() - started < 2.0  # it did not wait the 5 s interval


async def test_size_bound_flushes_early() -> None:
    merged = [c async for c in coalesce(engine(30, 0.0), interval_s=10.0, max_tokens=8)]
    assert all(len(c.token_ids) <= 8 for c in merged[1:])
    assert sum(len(c.token_ids) for c in merged) == 30


async def test_zero_interval_passes_every_chunk_through() -> None:
    merged = [c async for c in coalesce(engine(5, 0.0), interval_s=0)]
    assert [c.token_ids for c in merged] == [[0], [1], [2], [3], [4]]


async def test_closing_the_stream_closes_the_engine_stream() -> None:
    log: list[str] = []
    stream = coalesce(engine(100, 0.01, log), interval_s=0.02)
    await anext(stream)
    await anext(stream)
    await stream.aclose()
    assert log == ["closed"]  # the vLLM adapter aborts the request here


async def test_cancelling_the_consumer_closes_the_engine_stream() -> None:
    log: list[str] = []

    async def consume() -> None:
        async for _ in coalesce(engine(1000, 0.01, log), interval_s=0.02):
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert log == ["closed"]


async def test_errors_arrive_after_the_chunks_before_them() -> None:
    async def failing() -> AsyncIterator[GenerationChunk]:
        yield chunk(0)
        yield chunk(1)
        raise RuntimeError("engine died")

    got: list[GenerationChunk] = []
    with pytest.raises(RuntimeError, match="engine died"):
        async for c in coalesce(failing(), interval_s=0.05):
            got.append(c)
    assert sum(len(c.token_ids) for c in got) == 2


async def test_error_before_the_first_chunk_is_raised() -> None:
    async def refused() -> AsyncIterator[GenerationChunk]:
        raise ValueError("prompt too long")
        yield  # pragma: no cover

    with pytest.raises(ValueError, match="too long"):
        await anext(coalesce(refused(), interval_s=0.05))


async def _iter(chunks: list[GenerationChunk]) -> AsyncIterator[GenerationChunk]:
    for c in chunks:
        yield c
