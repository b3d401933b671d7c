"""Answers as clients see them: vLLM's responses with `switchyard` added, whole answers
released as the events vLLM streams, and a pool's stream relayed.

Each shape is read back with the official `openai` package, as a client would read it:
its models, its stream reader (`openai.Stream` over the raw bytes, which raises on an
error event) and its chat stream accumulator.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from ray.llm._internal.serve.core.configs.llm_config import LLMConfig
from ray.llm._internal.serve.core.configs.openai_api_models import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
)

from core.errors import EngineError, PoolTimeoutError
from deployments.engine_requests import plain
from deployments.fake_engine import FakeLLMEngine
from deployments.fake_options import FakeEngineOptions
from deployments.openai.errors import sse_error_event
from deployments.openai.protocol import RouteInfo
from deployments.openai.responses import (
    SSE_DONE,
    StreamUsage,
    relay,
    whole_as_events,
    whole_body,
)
from deployments.pool_client import answer_of

MODEL = "tiny-chat"
REPLY = "Paris is lovely"
MSG = [{"role": "user", "content": "hello there"}]
TOOL = {
    "type": "function",
    "function": {
        "name": "lookup",
        "parameters": {
            "type": "object",
            "properties": {"q": {"type": "string"}},
            "required": ["q"],
        },
    },
}
ROUTE = RouteInfo(pool="small", model=MODEL, reason="default", detail="no rule matched")
SHOWN_ROUTE = ROUTE.model_dump(mode="json")


def engine(**options: Any) -> FakeLLMEngine:
    config = LLMConfig(
        model_loading_config={"model_id": MODEL}, engine_kwargs={"max_model_len": 256}
    )
    return FakeLLMEngine(config, FakeEngineOptions(**{"reply": REPLY, **options}), pool="small")


async def items(stream: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in stream]


async def whole_chat(options: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """A whole chat answer as it leaves a pool replica: vLLM's response as plain data."""
    request = ChatCompletionRequest(model=MODEL, messages=MSG, **fields)
    (response,) = await items(engine(**(options or {})).chat(request))
    assert isinstance(response, ChatCompletionResponse)
    answer: dict[str, Any] = plain(response)
    assert answer == response.model_dump(mode="json")
    return answer


async def whole_completion(options: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    request = CompletionRequest(model=MODEL, prompt="Say it", **fields)
    (response,) = await items(engine(**(options or {})).completions(request))
    assert isinstance(response, CompletionResponse)
    answer: dict[str, Any] = plain(response)
    return answer


def read_stream(body: str, cast_to: type[Any]) -> list[Any]:
    """What the `openai` client yields for these SSE bytes (raises on an error event)."""
    client = openai.OpenAI(api_key="unused", base_url="http://switchyard.test/v1")
    raw = httpx.Response(
        200,
        headers={"content-type": "text/event-stream"},
        content=body.encode(),
        request=httpx.Request("POST", "http://switchyard.test/v1/chat/completions"),
    )
    return list(openai.Stream(cast_to=cast_to, response=raw, client=client))


def payloads(events: list[str]) -> list[dict[str, Any]]:
    assert events[-1] == SSE_DONE
    assert all(e.startswith("data: ") and e.endswith("\n\n") for e in events)
    return [json.loads(e.removeprefix("data: ")) for e in events[:-1]]


# --- a whole answer ------------------------------------------------------------------------


async def test_a_whole_chat_answer_is_vllms_with_switchyard_added() -> None:
    response = await whole_chat()
    body = json.loads(whole_body(response, ROUTE, keep_logprobs=False))
    assert body.pop("switchyard") == SHOWN_ROUTE
    assert body == response
    parsed = ChatCompletion.model_validate(json.loads(whole_body(response, ROUTE, False)))
    assert parsed.choices[0].message.content == REPLY
    assert parsed.model_extra is not None and parsed.model_extra["switchyard"]["pool"] == "small"


async def test_logprobs_only_a_strategy_asked_for_are_removed() -> None:
    response = await whole_chat(logprobs=True)
    assert response["choices"][0]["logprobs"] is not None
    hidden = json.loads(whole_body(response, ROUTE, keep_logprobs=False))
    assert [c["logprobs"] for c in hidden["choices"]] == [None]
    assert response["choices"][0]["logprobs"] is not None  # the answer itself is untouched
    shown = json.loads(whole_body(response, ROUTE, keep_logprobs=True))
    expected = response["choices"][0]["logprobs"]
    assert shown["choices"][0]["logprobs"] == expected
    assert [entry["token"] for entry in expected["content"]] == ["Paris", " is", " lovely"]


async def test_a_whole_completion_is_vllms_with_switchyard_added() -> None:
    response = await whole_completion(logprobs=1)
    body = json.loads(whole_body(response, ROUTE, keep_logprobs=True))
    assert body.pop("switchyard") == SHOWN_ROUTE
    assert body == response
    parsed = Completion.model_validate(json.loads(whole_body(response, ROUTE, False)))
    assert (parsed.choices[0].text, parsed.choices[0].logprobs) == (REPLY, None)


# --- a whole answer as the events vLLM streams -----------------------------------------------


def accumulate(events: list[str]) -> Any:
    """The `openai` package's own chat stream accumulator over the events."""
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
    for chunk in read_stream("".join(events), ChatCompletionChunk):
        state.handle_chunk(chunk)
    return state.get_final_completion()


async def test_a_whole_chat_answer_streams_as_vllm_would() -> None:
    response = await whole_chat()
    events = whole_as_events(response, ROUTE, include_usage=False, keep_logprobs=False)
    chunks = payloads(events)
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": ""},
        {"content": REPLY},
    ]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, "stop"]
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)
        assert (chunk["id"], chunk["created"], chunk["model"]) == (
            response["id"],
            response["created"],
            MODEL,
        )
        assert chunk["object"] == "chat.completion.chunk"
    assert chunks[0]["switchyard"] == SHOWN_ROUTE
    assert all("switchyard" not in c for c in chunks[1:])
    assert all("usage" not in c for c in chunks)
    final = accumulate(events)
    assert final.choices[0].message.content == REPLY
    assert final.choices[0].message.role == "assistant"
    assert final.choices[0].finish_reason == "stop"
    assert final.id == response["id"]


async def test_usage_closes_the_stream_only_when_asked() -> None:
    response = await whole_chat()
    events = whole_as_events(response, ROUTE, include_usage=True, keep_logprobs=False)
    *answer, usage = payloads(events)
    assert usage["choices"] == []
    assert usage["usage"] == response["usage"]
    assert usage["usage"]["completion_tokens"] == 3
    assert all("usage" not in c for c in answer)
    assert accumulate(events).usage.completion_tokens == 3


async def test_tool_calls_stream_whole_with_their_ids() -> None:
    response = await whole_chat(tools=[TOOL])
    (call,) = response["choices"][0]["message"]["tool_calls"]
    events = whole_as_events(response, ROUTE, include_usage=False, keep_logprobs=False)
    delta = payloads(events)[1]["choices"][0]["delta"]
    assert delta == {
        "tool_calls": [
            {
                "index": 0,
                "id": call["id"],
                "type": "function",
                "function": {"name": "lookup", "arguments": call["function"]["arguments"]},
            }
        ]
    }
    final = accumulate(events)
    (got,) = final.choices[0].message.tool_calls
    assert (got.id, got.function.name, got.function.arguments) == (
        call["id"],
        "lookup",
        call["function"]["arguments"],
    )
    assert json.loads(got.function.arguments) == {"q": "x"}
    assert final.choices[0].finish_reason == "tool_calls"


async def test_several_choices_stream_each_under_its_index() -> None:
    response = await whole_chat(n=2)
    events = whole_as_events(response, ROUTE, include_usage=False, keep_logprobs=False)
    chunks = payloads(events)
    assert [c["choices"][0]["index"] for c in chunks] == [0, 0, 1, 1]
    assert sum("switchyard" in c for c in chunks) == 1
    final = accumulate(events)
    assert [c.message.content for c in final.choices] == [REPLY, REPLY]


async def test_streamed_logprobs_only_when_the_client_asked() -> None:
    response = await whole_chat(logprobs=True, top_logprobs=0)
    expected = response["choices"][0]["logprobs"]
    shown = payloads(whole_as_events(response, ROUTE, False, keep_logprobs=True))
    assert [c["choices"][0]["logprobs"] for c in shown] == [None, expected]
    hidden = payloads(whole_as_events(response, ROUTE, False, keep_logprobs=False))
    assert [c["choices"][0]["logprobs"] for c in hidden] == [None, None]
    read = read_stream("".join(whole_as_events(response, ROUTE, False, True)), ChatCompletionChunk)
    assert [t.token for t in read[1].choices[0].logprobs.content] == ["Paris", " is", " lovely"]


async def test_a_whole_completion_streams_as_vllm_would() -> None:
    response = await whole_completion(n=2)
    events = whole_as_events(response, ROUTE, include_usage=True, keep_logprobs=False)
    *answer, usage = payloads(events)
    for chunk in [*answer, usage]:
        Completion.model_validate(chunk)
        assert (chunk["id"], chunk["object"]) == (response["id"], "text_completion")
    assert [(c["choices"][0]["index"], c["choices"][0]["text"]) for c in answer] == [
        (0, REPLY),
        (1, REPLY),
    ]
    assert [c["choices"][0]["finish_reason"] for c in answer] == ["stop", "stop"]
    assert answer[0]["switchyard"] == SHOWN_ROUTE and "switchyard" not in answer[1]
    assert usage["usage"] == response["usage"]
    read = read_stream("".join(events), Completion)
    assert "".join(c.choices[0].text for c in read if c.choices) == REPLY * 2


# --- relaying a pool's stream ------------------------------------------------------------


def chunk_event(text: str, **more: Any) -> str:
    choice = {"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": None}
    payload = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
               "model": MODEL, "choices": [{**choice, **more}]}  # fmt: skip
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


USAGE = (
    'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"tiny-chat",'
    '"choices":[],"usage":{"prompt_tokens":7,"total_tokens":10,"completion_tokens":3}}\n\n'
)
POOL_ERROR = 'data: {"error":{"message":"boom","type":"InternalServerError","code":500}}\n\n'


class Done:
    """The `done` callback: every call recorded."""

    def __init__(self) -> None:
        self.calls: list[StreamUsage] = []

    def __call__(self, usage: StreamUsage) -> None:
        self.calls.append(usage)

    @property
    def once(self) -> StreamUsage:
        (usage,) = self.calls
        return usage


async def batches(*pending: list[str], error: BaseException | None = None) -> Any:
    for batch in pending:
        yield batch
    if error is not None:
        raise error


async def test_a_relayed_stream_is_the_pools_with_the_route_on_its_first_event() -> None:
    first = [chunk_event("Paris"), chunk_event(" is")]
    rest = batches([chunk_event(" lovely", finish_reason="stop")], [USAGE, SSE_DONE])
    done = Done()
    out = await items(relay(first, rest, ROUTE, include_usage=False, done=done))
    assert len(out) == 3  # one write per batch
    events = [f"data: {e}" for e in "".join(out).split("data: ")[1:]]
    assert events[1:] == [
        chunk_event(" is"),
        chunk_event(" lovely", finish_reason="stop"),
        SSE_DONE,
    ]
    opened = json.loads(events[0].removeprefix("data: "))
    assert opened.pop("switchyard") == SHOWN_ROUTE
    assert opened == json.loads(chunk_event("Paris").removeprefix("data: "))
    usage = done.once
    assert (usage.prompt_tokens, usage.completion_tokens, usage.ended) == (7, 3, "ok")
    chunks = read_stream("".join(out), ChatCompletionChunk)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == REPLY
    assert all(c.usage is None for c in chunks)


async def test_the_usage_event_reaches_a_client_that_asked_for_it() -> None:
    done = Done()
    first = [chunk_event("Paris", finish_reason="stop")]
    out = "".join(await items(relay(first, batches([USAGE, SSE_DONE]), ROUTE, True, done)))
    assert out.endswith(USAGE + SSE_DONE)
    assert read_stream(out, ChatCompletionChunk)[-1].usage.prompt_tokens == 7
    assert (done.once.prompt_tokens, done.once.completion_tokens) == (7, 3)


async def test_a_stream_cut_before_its_usage_event_counts_nothing() -> None:
    done = Done()
    await items(relay([chunk_event("Paris")], batches([SSE_DONE]), ROUTE, False, done))
    assert (done.once.completion_tokens, done.once.ended) == (0, "ok")


async def test_an_error_event_of_the_pool_is_relayed_and_ends_it_as_an_error() -> None:
    done = Done()
    first = [chunk_event("Paris")]
    out = "".join(await items(relay(first, batches([POOL_ERROR, SSE_DONE]), ROUTE, False, done)))
    assert out.endswith(POOL_ERROR + SSE_DONE)
    assert done.once.ended == "error"
    with pytest.raises(openai.APIError, match="boom"):
        read_stream(out, ChatCompletionChunk)


async def test_an_error_event_first_is_relayed_unchanged() -> None:
    done = Done()
    out = await items(relay([POOL_ERROR, SSE_DONE], batches(), ROUTE, False, done))
    assert "".join(out) == POOL_ERROR + SSE_DONE
    assert done.once.ended == "error"


@pytest.mark.parametrize(
    ("error", "ended"), [(PoolTimeoutError("small", 5), "timeout"), (EngineError(), "error")]
)
async def test_a_failure_after_the_first_batch_ends_the_stream_with_an_error_event(
    error: BaseException, ended: str
) -> None:
    done = Done()
    rest = batches([chunk_event(" is")], error=error)
    out = await items(relay([chunk_event("Paris")], rest, ROUTE, False, done))
    assert out[-1] == sse_error_event(error) + SSE_DONE
    shown = json.loads(out[-1].split("\n\n")[0].removeprefix("data: "))
    assert (shown["error"]["code"], shown["error"]["type"]) == (
        error.code,  # type: ignore[attr-defined]
        "server_error",
    )
    assert done.once.ended == ended
    with pytest.raises(openai.APIError) as err:
        read_stream("".join(out), ChatCompletionChunk)
    assert err.value.message == error.message  # type: ignore[attr-defined]


async def test_a_failure_after_done_adds_nothing() -> None:
    done = Done()
    rest = batches([USAGE, SSE_DONE], error=EngineError())
    out = "".join(await items(relay([chunk_event("Paris")], rest, ROUTE, False, done)))
    assert out.count("[DONE]") == 1 and out.endswith(SSE_DONE)
    assert '"error"' not in out
    assert len(done.calls) == 1


async def test_done_is_called_once_when_the_client_leaves_early() -> None:
    done = Done()

    async def endless() -> Any:
        while True:
            yield [chunk_event(" more")]

    lines = relay([chunk_event("Paris")], endless(), ROUTE, False, done)
    assert json.loads((await anext(lines)).removeprefix("data: "))["switchyard"] == SHOWN_ROUTE
    await anext(lines)
    assert done.calls == []
    await lines.aclose()
    assert done.once.ended == "cancelled"


async def test_a_client_leaving_on_done_before_the_pool_closes_is_not_a_cancel() -> None:
    """Regression: the `openai` client closes the connection on `[DONE]`; the pool's
    stream had not ended yet, so a whole answer was counted `cancelled`."""
    done = Done()
    pool_closed = asyncio.Event()

    async def rest() -> Any:
        yield [USAGE, SSE_DONE]
        await pool_closed.wait()  # the pool's end of stream, still on its way

    lines = relay([chunk_event("Paris")], rest(), ROUTE, False, done)
    await anext(lines)
    assert (await anext(lines)).endswith(SSE_DONE)
    await lines.aclose()  # the client left
    assert (done.once.ended, done.once.prompt_tokens, done.once.completion_tokens) == ("ok", 7, 3)


async def test_a_real_pool_stream_relays_to_what_the_openai_client_reads() -> None:
    """The fake engine's SSE (vLLM's shapes), asked with include_usage as the serving
    layer always asks, relayed to a client that did not ask for usage."""
    request = ChatCompletionRequest(
        model=MODEL, messages=MSG, stream=True, stream_options={"include_usage": True}
    )
    pool = [[event] for event in await items(engine().chat(request))]
    done = Done()
    out = "".join(await items(relay(pool[0], batches(*pool[1:]), ROUTE, False, done)))
    chunks = read_stream(out, ChatCompletionChunk)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == REPLY
    assert all(c.usage is None for c in chunks)
    assert chunks[0].model_extra is not None and chunks[0].model_extra["switchyard"] == SHOWN_ROUTE
    assert (done.once.ended, done.once.completion_tokens) == ("ok", 3)


# --- what strategies read of a whole answer -------------------------------------------------


async def test_answer_of_reads_tokens_and_chat_logprobs() -> None:
    response = await whole_chat({"logprobs": [-0.5, -1.5]}, logprobs=True, top_logprobs=0)
    answer = answer_of(response)
    assert answer.body is response
    assert (answer.prompt_tokens, answer.completion_tokens) == (
        response["usage"]["prompt_tokens"],
        3,
    )
    assert answer.logprobs == [-0.5, -1.5, -0.5]


async def test_answer_of_reads_completion_logprobs() -> None:
    answer = answer_of(await whole_completion({"logprobs": [-2.0]}, logprobs=0))
    assert (answer.completion_tokens, answer.logprobs) == (3, [-2.0, -2.0, -2.0])


async def test_answer_of_an_answer_without_logprobs() -> None:
    answer = answer_of(await whole_chat())
    assert (answer.logprobs, answer.completion_tokens) == ([], 3)
