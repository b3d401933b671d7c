"""Answers as clients see them: vLLM's own responses, plus the `switchyard` extension.

A pool's server (vLLM's OpenAI layer) shapes every answer; Switchyard adds its route
info and otherwise leaves the bytes alone:

- a whole answer is vLLM's response object with `switchyard` added (`whole_body`);
- a `route` stream is relayed event by event (`relay`): the first event gets
  `switchyard`, the usage event Switchyard asked for is read for the bill and dropped
  unless the client asked for it too, and a failure after the first event ends the
  stream with an OpenAI error event and `[DONE]`;
- a cascade or speculative answer, accepted only once whole, is released to a streaming
  client as the events vLLM would have streamed for it (`whole_as_events`);
- a cascade decided on its first tokens is relayed like a `route` stream, its events
  re-encoded without the logprobs the cascade asked for (`without_logprobs`).

Logprobs that only a strategy asked for (to judge the cheap answer) are removed first.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from deployments.openai.errors import outcome_of, sse_error_event
from deployments.openai.protocol import RouteInfo

logger = logging.getLogger(__name__)

SSE_DONE = "data: [DONE]\n\n"
DATA = "data: "
ERROR_EVENT = 'data: {"error"'
USAGE_EVENT = '"choices":[]'  # vLLM's closing usage event (it dumps without spaces)


def _event(payload: dict[str, Any]) -> str:
    return f"{DATA}{json.dumps(payload, separators=(',', ':'))}\n\n"


def whole_body(response: dict[str, Any], route: RouteInfo, keep_logprobs: bool) -> str:
    """A whole answer's JSON: vLLM's response with `switchyard` added."""
    body = dict(response)
    if not keep_logprobs:
        body["choices"] = [{**c, "logprobs": None} for c in body.get("choices") or []]
    body["switchyard"] = route.model_dump(mode="json")
    return json.dumps(body, separators=(",", ":"))


def without_logprobs(events: list[str] | None) -> list[str] | None:
    """Stream events with every choice's logprobs set to None (one parse per event that
    has any)."""
    if events is None:
        return None
    out = []
    for event in events:
        if '"logprobs":{' in event and event.startswith(DATA) and not event.startswith(SSE_DONE):
            payload = json.loads(event[len(DATA) :])
            for choice in payload.get("choices") or []:
                choice["logprobs"] = None
            event = _event(payload)
        out.append(event)
    return out


def whole_as_events(
    body: dict[str, Any], route: RouteInfo, include_usage: bool, keep_logprobs: bool
) -> list[str]:
    """The SSE events of a whole answer, as vLLM streams them (chat or completion):
    for chat the role first, then each choice's content or tool calls with its finish
    reason; usage last when asked; then `[DONE]`."""
    chat = body.get("object") == "chat.completion"
    head = {
        "id": body["id"],
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": body["created"],
        "model": body["model"],
    }
    events = []
    first = True
    for choice in body.get("choices") or []:
        logprobs = choice.get("logprobs") if keep_logprobs else None
        if chat:
            message = choice.get("message") or {}
            opening = {"index": choice["index"], "delta": {"role": "assistant", "content": ""}}
            delta: dict[str, Any] = {}
            if message.get("content") is not None:
                delta["content"] = message["content"]
            if message.get("reasoning") is not None:
                delta["reasoning"] = message["reasoning"]
            calls = message.get("tool_calls") or []
            if calls:
                delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(calls)]
            steps = [
                {**opening, "logprobs": None, "finish_reason": None},
                {
                    "index": choice["index"],
                    "delta": delta,
                    "logprobs": logprobs,
                    "finish_reason": choice.get("finish_reason"),
                },
            ]
        else:
            steps = [
                {
                    "index": choice["index"],
                    "text": choice.get("text", ""),
                    "logprobs": logprobs,
                    "finish_reason": choice.get("finish_reason"),
                }
            ]
        for step in steps:
            event = {**head, "choices": [step]}
            if first:
                event["switchyard"] = route.model_dump(mode="json")
                first = False
            events.append(_event(event))
    if include_usage:
        events.append(_event({**head, "choices": [], "usage": body.get("usage")}))
    events.append(SSE_DONE)
    return events


@dataclass
class StreamUsage:
    """What a relayed stream produced, for the bill and the counters."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    ended: str = "cancelled"  # unless the stream finishes or fails: the client left


StreamDone = Callable[[StreamUsage], None]


def _with_route(event: str, route: RouteInfo) -> str:
    """The first event with `switchyard` added (one parse per stream)."""
    if not event.startswith(DATA) or event.startswith(ERROR_EVENT):
        return event
    payload = json.loads(event[len(DATA) :])
    payload["switchyard"] = route.model_dump(mode="json")
    return _event(payload)


def _read_usage(event: str, usage: StreamUsage) -> None:
    try:
        counted = json.loads(event[len(DATA) :]).get("usage") or {}
    except ValueError:
        logger.warning("a pool's usage event was not JSON")
        return
    usage.prompt_tokens = int(counted.get("prompt_tokens") or 0)
    usage.completion_tokens = int(counted.get("completion_tokens") or 0)


async def relay(
    first: list[str] | None,
    batches: AsyncIterator[list[str]],
    route: RouteInfo,
    include_usage: bool,
    done: StreamDone,
) -> AsyncIterator[str]:
    """A pool's stream as the client gets it; `done(usage)` once it ends (see module)."""
    usage = StreamUsage()
    finished = False
    try:
        batch = first
        opened = False
        while batch is not None:
            out = []
            for event in batch:
                if not opened:
                    event, opened = _with_route(event, route), True
                if USAGE_EVENT in event and event.startswith('data: {"id"'):
                    _read_usage(event, usage)
                    if not include_usage:
                        continue
                elif event.startswith(ERROR_EVENT):
                    usage.ended = "error"
                elif event == SSE_DONE:
                    # NOTE: the answer is whole now: a client that leaves on reading
                    # `[DONE]`, before the pool's stream has closed, did not cancel it.
                    finished = True
                    if usage.ended == "cancelled":
                        usage.ended = "ok"
                out.append(event)
            if out:
                yield "".join(out)
            batch = await anext(batches, None)
        if usage.ended == "cancelled":
            usage.ended = "ok"
    except Exception as exc:  # noqa: BLE001 - every failure becomes an error event
        usage.ended = outcome_of(exc)
        if not finished:
            yield sse_error_event(exc) + SSE_DONE
    finally:
        # NOTE: also runs when the client leaves early (the generator is closed): the
        # pool's stream is closed now, so its call is cancelled and vLLM aborts.
        close = getattr(batches, "aclose", None)
        if close is not None:
            with contextlib.suppress(Exception):
                await close()
        done(usage)
