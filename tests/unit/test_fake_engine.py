"""The fake engine speaks vLLM's OpenAI JSON and SSE, with exact, known answers.

Driven directly, as `LLMServer` drives an engine; no Ray is started.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
from array import array
from collections.abc import AsyncIterator
from typing import Any, Literal

import jsonschema
import pytest
from openai.types import Completion, CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import BaseModel, Field
from ray.llm._internal.serve.core.configs.llm_config import LLMConfig
from ray.llm._internal.serve.core.configs.openai_api_models import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    EmbeddingCompletionRequest,
    EmbeddingResponse,
    ErrorResponse,
)

from deployments.fake_engine import INVALID_ARGUMENTS, FakeLLMEngine
from deployments.fake_options import FakeEngineOptions
from deployments.fake_schema import minimal_instance

MODEL = "small"
REPLY = "This is a fake answer."
WORDS = REPLY.split()
DONE = "data: [DONE]\n\n"


def engine(max_model_len: int = 256, **options: Any) -> FakeLLMEngine:
    config = LLMConfig(
        model_loading_config={"model_id": MODEL}, engine_kwargs={"max_model_len": max_model_len}
    )
    return FakeLLMEngine(config, FakeEngineOptions(**options), pool="small")


def chat(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest(
        **{"model": MODEL, "messages": [{"role": "user", "content": "hello there"}]} | fields
    )


def completion(**fields: Any) -> CompletionRequest:
    return CompletionRequest(**{"model": MODEL, "prompt": "Say it"} | fields)


async def run(stream: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in stream]


async def one(stream: AsyncIterator[Any]) -> Any:
    items = await run(stream)
    assert len(items) == 1
    return items[0]


async def events(stream: AsyncIterator[Any]) -> list[dict[str, Any]]:
    """The SSE events of a stream as JSON, checked to be well formed and to end in [DONE]."""
    items = await run(stream)
    assert items[-1] == DONE
    assert all(item.startswith("data: ") and item.endswith("\n\n") for item in items)
    return [json.loads(item.removeprefix("data: ")) for item in items[:-1]]


def content(chunks: list[dict[str, Any]], index: int = 0) -> str:
    """The text a stream's chunks add to choice `index` (a usage chunk has no choices)."""
    choices = [choice for chunk in chunks for choice in chunk.get("choices", [])]
    return "".join(c["delta"].get("content") or "" for c in choices if c["index"] == index)


WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 3},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 3, "maximum": 7},
        "hourly": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
        "where": {"$ref": "#/$defs/place"},
        "note": {"type": "string"},
    },
    "required": ["city", "unit", "days", "hourly", "tags", "where"],
    "$defs": {
        "place": {
            "type": "object",
            "properties": {"lat": {"type": "number", "exclusiveMinimum": 50}, "lon": {}},
        }
    },
}
TOOLS = [
    {"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}},
    {"type": "function", "function": {"name": "weather", "parameters": WEATHER}},
]


async def test_chat_answers_the_reply_word_for_word_with_usage() -> None:
    fake = engine(reply="{pool} model {model} says: " + REPLY)
    request = chat()
    response = await one(fake.chat(request))
    assert isinstance(response, ChatCompletionResponse)
    assert (response.id, response.model) == (f"chatcmpl-{request.request_id}", MODEL)
    assert response.choices[0].message.content == "small model small says: " + REPLY
    assert response.choices[0].finish_reason == "stop"
    usage = response.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (3, 9, 12)
    assert fake.finished == [request.request_id] and fake.aborted == []
    # what the official client reads
    parsed = ChatCompletion.model_validate_json(response.model_dump_json())
    assert parsed.choices[0].message.content == "small model small says: " + REPLY


async def test_a_stream_reassembles_into_the_same_answer_the_official_client_reads() -> None:
    request = chat(stream=True, stream_options={"include_usage": True})
    chunks = await events(engine().chat(request))
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)
        assert (chunk["id"], chunk["model"]) == (f"chatcmpl-{request.request_id}", MODEL)
    first, *tokens, usage = chunks
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"]["content"] for c in tokens] == [WORDS[0]] + [
        " " + word for word in WORDS[1:]
    ]
    assert content(chunks) == REPLY
    assert [c["choices"][0]["finish_reason"] for c in tokens] == [None] * 4 + ["stop"]
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}


async def test_continuous_usage_counts_the_tokens_so_far_in_every_chunk() -> None:
    options = {"include_usage": True, "continuous_usage_stats": True}
    chunks = await events(engine().chat(chat(stream=True, stream_options=options)))
    assert [c["usage"]["completion_tokens"] for c in chunks] == [0, 1, 2, 3, 4, 5, 5]
    assert {c["usage"]["prompt_tokens"] for c in chunks} == {3}


def arguments_of(message: Any) -> dict[str, Any]:
    (call,) = message.tool_calls
    assert call.type == "function" and call.id.startswith("chatcmpl-tool-")
    return dict(name=call.function.name, arguments=json.loads(call.function.arguments))


@pytest.mark.parametrize(
    ("tool_choice", "name", "finish", "content_"),
    [
        ("required", "search", "tool_calls", ""),
        ("auto", "search", "tool_calls", None),
        ({"type": "function", "function": {"name": "weather"}}, "weather", "stop", ""),
    ],
)
async def test_tool_calls_have_arguments_valid_against_the_tools_schema(
    tool_choice: Any, name: str, finish: str, content_: str | None
) -> None:
    """Like vLLM's: forced calls have empty content, automatic ones none; a named tool's
    call finishes with "stop", the others with "tool_calls"."""
    response = await one(engine().chat(chat(tools=TOOLS, tool_choice=tool_choice)))
    choice = response.choices[0]
    call = arguments_of(choice.message)
    assert call["name"] == name
    schema = next(t["function"]["parameters"] for t in TOOLS if t["function"]["name"] == name)
    jsonschema.validate(call["arguments"], schema)
    assert (choice.finish_reason, choice.message.content) == (finish, content_)
    parsed = ChatCompletion.model_validate_json(response.model_dump_json())
    assert parsed.choices[0].message.tool_calls[0].function.name == name


async def test_a_streamed_tool_call_sends_its_name_then_its_arguments() -> None:
    named = {"type": "function", "function": {"name": "weather"}}
    whole = await one(engine().chat(chat(tools=TOOLS, tool_choice=named)))
    chunks = await events(engine().chat(chat(tools=TOOLS, tool_choice="required", stream=True)))
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)
    calls = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks[1:]]
    head, *rest = calls
    assert head["id"].startswith("chatcmpl-tool-") and head["type"] == "function"
    assert head["function"] == {"name": "search", "arguments": ""}
    assert all(set(call) == {"index", "function"} for call in rest)
    assert json.loads("".join(call["function"]["arguments"] for call in rest)) == {}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    named_chunks = await events(engine().chat(chat(tools=TOOLS, tool_choice=named, stream=True)))
    streamed = "".join(
        c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"] for c in named_chunks[1:]
    )
    assert streamed == whole.choices[0].message.tool_calls[0].function.arguments
    jsonschema.validate(json.loads(streamed), WEATHER)


async def test_tool_choice_none_answers_in_text() -> None:
    response = await one(engine().chat(chat(tools=TOOLS, tool_choice="none")))
    assert response.choices[0].message.content == REPLY
    assert response.choices[0].message.tool_calls == []


async def test_a_model_without_its_tool_parser_writes_the_call_as_text() -> None:
    response = await one(engine(tool_calls="text").chat(chat(tools=TOOLS, tool_choice="required")))
    message = response.choices[0].message
    assert message.tool_calls == [] and response.choices[0].finish_reason == "stop"
    assert json.loads(message.content) == {"name": "search", "arguments": {}}


async def test_a_broken_tool_call_has_arguments_that_are_not_json() -> None:
    fake = engine(tool_calls="invalid")
    response = await one(fake.chat(chat(tools=TOOLS, tool_choice="auto")))
    (call,) = response.choices[0].message.tool_calls
    assert call.function.arguments == INVALID_ARGUMENTS
    with pytest.raises(json.JSONDecodeError):
        json.loads(call.function.arguments)


async def test_structured_outputs_answer_the_smallest_valid_json() -> None:
    fake = engine()
    schema_format = {"type": "json_schema", "json_schema": {"name": "w", "schema": WEATHER}}
    response = await one(fake.chat(chat(response_format=schema_format)))
    jsonschema.validate(json.loads(response.choices[0].message.content), WEATHER)
    response = await one(fake.chat(chat(structured_outputs={"json": WEATHER})))
    jsonschema.validate(json.loads(response.choices[0].message.content), WEATHER)
    response = await one(fake.chat(chat(response_format={"type": "json_object"})))
    assert json.loads(response.choices[0].message.content) == {"answer": REPLY}
    text = await one(fake.completions(completion(response_format=schema_format, max_tokens=50)))
    jsonschema.validate(json.loads(text.choices[0].text), WEATHER)
    broken = await one(engine(json="invalid").chat(chat(response_format=schema_format)))
    with pytest.raises(json.JSONDecodeError):
        json.loads(broken.choices[0].message.content)


def test_minimal_instances_validate_against_pydantic_schemas() -> None:
    class Place(BaseModel):
        name: str = Field(min_length=2, max_length=4)
        kind: Literal["city", "town"]
        when: str = Field(json_schema_extra={"format": "date-time"})

    class Trip(BaseModel):
        to: Place
        stops: list[Place] = Field(min_length=1)
        nights: int = Field(gt=2, le=9)
        budget: float | None = None
        rating: float = Field(ge=4.5)

    schema = Trip.model_json_schema()
    instance = minimal_instance(schema)
    jsonschema.validate(instance, schema)
    Trip.model_validate(instance)
    assert instance["nights"] == 3 and len(instance["stops"]) == 1
    merged = {"allOf": [{"$ref": "#/$defs/a"}, {"required": ["b"]}], "$defs": WEATHER["$defs"]}
    merged["$defs"]["a"] = {"type": "object", "properties": {"b": {"type": "boolean"}}}
    assert minimal_instance(merged) == {"b": True}
    assert minimal_instance({"anyOf": [{"type": "null"}, {"type": "string"}]}) is None


async def test_n_choices_are_the_same_answer() -> None:
    response = await one(engine().chat(chat(n=2)))
    assert [(c.index, c.message.content) for c in response.choices] == [(0, REPLY), (1, REPLY)]
    assert response.usage.completion_tokens == 10
    chunks = await events(engine().chat(chat(n=2, stream=True)))
    assert content(chunks, 0) == content(chunks, 1) == REPLY
    # vLLM's order: each step, one chunk per choice
    assert [c["choices"][0]["index"] for c in chunks[:4]] == [0, 1, 0, 1]


async def test_chat_logprobs_cycle_and_list_the_chosen_token_first() -> None:
    fake = engine(logprobs=[-0.5, -1.0])
    response = await one(fake.chat(chat(logprobs=True, top_logprobs=2)))
    content_ = response.choices[0].logprobs.content
    assert [t.token for t in content_] == [WORDS[0]] + [" " + w for w in WORDS[1:]]
    assert [t.logprob for t in content_] == [-0.5, -1.0, -0.5, -1.0, -0.5]
    second = content_[1]
    assert [(t.token, t.logprob) for t in second.top_logprobs] == [(" is", -1.0), (" is~1", -2.0)]
    assert second.bytes == list(b" is")
    ChatCompletion.model_validate_json(response.model_dump_json())
    chunks = await events(fake.chat(chat(logprobs=True, top_logprobs=2, stream=True)))
    streamed = [t for c in chunks[1:] for t in c["choices"][0]["logprobs"]["content"]]
    assert streamed == [t.model_dump() for t in content_]
    plain = await one(fake.chat(chat()))
    assert plain.choices[0].logprobs is None


async def test_completion_logprobs_have_the_legacy_shape() -> None:
    fake = engine(logprobs=[-0.5])
    response = await one(fake.completions(completion(logprobs=2)))
    assert isinstance(response, CompletionResponse)
    assert response.id == f"cmpl-{response.id.removeprefix('cmpl-')}"
    logprobs = response.choices[0].logprobs
    assert logprobs.tokens == [WORDS[0]] + [" " + w for w in WORDS[1:]]
    assert logprobs.token_logprobs == [-0.5] * 5
    assert logprobs.text_offset == [0, 4, 7, 9, 14]
    assert logprobs.top_logprobs[0] == {"This": -0.5, "This~1": -1.5}
    Completion.model_validate_json(response.model_dump_json())
    # (the official client reads stream chunks without validating: before the last,
    # finish_reason is null, which its `Completion` type does not allow)
    chunks = await events(fake.completions(completion(logprobs=2, stream=True)))
    assert [o for c in chunks for o in c["choices"][0]["logprobs"]["text_offset"]] == [
        0, 4, 7, 9, 14
    ]  # fmt: skip


async def test_completion_echo_prepends_the_prompt() -> None:
    request = completion(echo=True, logprobs=0)
    response = await one(engine().completions(request))
    choice = response.choices[0]
    assert choice.text == "Say it" + REPLY  # as vLLM: the prompt, then the answer's text
    assert choice.logprobs.tokens[:3] == ["Say", " it", "This"]
    assert choice.logprobs.token_logprobs[0] is None and choice.logprobs.top_logprobs[0] is None
    assert response.usage.prompt_tokens == 2 and response.usage.completion_tokens == 5
    assert response.id == f"cmpl-{request.request_id}"
    chunks = await events(engine().completions(completion(echo=True, stream=True)))
    assert "".join(c["choices"][0]["text"] for c in chunks) == "Say it" + REPLY


@pytest.mark.parametrize("stream", [False, True])
async def test_a_prompt_over_the_context_is_refused_before_anything_is_streamed(
    stream: bool,
) -> None:
    fake = engine(max_model_len=8)
    (error,) = await run(
        fake.chat(chat(messages=[{"role": "user", "content": "w " * 8}], stream=stream))
    )
    assert isinstance(error, ErrorResponse)
    assert (error.error.code, error.error.type, error.error.param) == (
        400, "BadRequestError", "input_tokens"
    )  # fmt: skip
    assert error.error.message.startswith("This model's maximum context length is 8 tokens.")
    assert "your prompt contains 9 input tokens" in error.error.message
    (error,) = await run(fake.completions(completion(prompt="w " * 8, max_tokens=4, stream=stream)))
    assert (error.error.code, error.error.param) == (400, "max_tokens")  # no room to answer
    assert error.error.message.startswith("max_tokens must be at least 1, got 0.")
    (error,) = await run(fake.chat(chat(max_completion_tokens=9, stream=stream)))
    assert error.error.param == "max_completion_tokens"
    assert fake.finished == fake.aborted == []


async def test_max_tokens_cuts_the_answer_and_is_reduced_to_fit_the_context() -> None:
    response = await one(engine().chat(chat(max_completion_tokens=3)))
    assert response.choices[0].message.content == "This is a"
    assert response.choices[0].finish_reason == "length"
    fits = await one(engine(max_model_len=6).chat(chat(max_tokens=6, ignore_eos=True)))
    assert fits.usage.completion_tokens == 3 and fits.choices[0].finish_reason == "length"
    text = await one(engine().completions(completion(max_tokens=None, ignore_eos=True)))
    assert text.usage.completion_tokens == 16  # vLLM's default for completions


async def test_ignore_eos_and_min_tokens_say_the_reply_again() -> None:
    fake = engine()
    response = await one(fake.chat(chat(max_tokens=8, ignore_eos=True)))
    assert response.choices[0].message.content == REPLY + " This is a"
    assert response.choices[0].finish_reason == "length"
    response = await one(fake.chat(chat(max_tokens=8, min_tokens=7)))
    assert response.choices[0].message.content == REPLY + " This is"
    assert response.choices[0].finish_reason == "stop"


async def test_stop_strings_cut_the_text() -> None:
    fake = engine()
    response = await one(fake.chat(chat(stop=["answer", "fake"])))
    choice = response.choices[0]
    assert (choice.message.content, choice.finish_reason, choice.stop_reason) == (
        "This is a ", "stop", "fake"
    )  # fmt: skip
    assert response.usage.completion_tokens == 4
    kept = await one(fake.completions(completion(stop="is a", include_stop_str_in_output=True)))
    assert kept.choices[0].text == "This is a"
    chunks = await events(fake.chat(chat(stop="fake", stream=True)))
    assert content(chunks) == "This is a "


async def test_a_failure_mid_stream_is_an_error_event_then_done() -> None:
    fake = engine(fail_after_tokens=2)
    request = chat(stream=True)
    items = await run(fake.chat(request))
    assert items[-1] == DONE
    chunks = [json.loads(item.removeprefix("data: ")) for item in items[:-1]]
    assert content(chunks[:-1]) == "This is"
    assert chunks[-1] == {
        "error": {
            "message": "Internal server error", "type": "InternalServerError", "param": None,
            "code": 500,
        }
    }  # fmt: skip
    error = await one(fake.chat(chat()))
    assert isinstance(error, ErrorResponse) and error.error.code == 500
    whole = await one(engine(fail_after_tokens=5).chat(chat()))  # answered before failing
    assert whole.choices[0].message.content == REPLY
    assert request.request_id not in fake.finished + fake.aborted


async def test_failing_requests_and_unknown_models_are_refused() -> None:
    error = await one(engine(fail_requests=True).chat(chat(stream=True)))
    assert (error.error.code, error.error.type) == (500, "InternalServerError")
    error = await one(engine().completions(completion(model="big")))
    assert (error.error.code, error.error.param) == (404, "model")
    assert error.error.message.startswith("The model `big` does not exist.")
    error = await one(engine().transcriptions(None))
    assert error.error.code == 400


@pytest.mark.parametrize("stream", [False, True])
async def test_an_empty_prompt_list_is_vllms_400_not_a_failure(stream: bool) -> None:
    """vLLM's renderer refuses `prompt: []` ("You must pass at least one prompt"); the
    fake once failed on it, and a fuzzer's few such requests opened a pool's circuit."""
    error = await one(engine().completions(completion(prompt=[], stream=stream)))
    assert (error.error.code, error.error.message) == (400, "You must pass at least one prompt")
    request = EmbeddingCompletionRequest(model=MODEL, input=[])
    error = await one(engine().embeddings(request))
    assert error.error.code == 400


async def test_a_stream_closed_early_is_aborted() -> None:
    fake = engine()
    request = chat(stream=True)
    stream = fake.chat(request)
    assert (await anext(stream)).startswith("data: ")
    await anext(stream)
    await stream.aclose()
    assert fake.aborted == [request.request_id] and fake.finished == []
    whole = chat(stream=True)
    await run(fake.chat(whole))
    assert fake.finished == [whole.request_id]


async def test_concurrent_streams_interleave() -> None:
    fake = engine(reply="one two three four five six")
    order: list[str] = []

    async def consume(name: str) -> None:
        async for _ in fake.chat(chat(stream=True)):
            order.append(name)

    await asyncio.gather(consume("a"), consume("b"))
    assert order.count("a") == order.count("b") == 8  # the role, 6 tokens, [DONE]
    last = {name: len(order) - 1 - order[::-1].index(name) for name in "ab"}
    assert order.index("b") < last["a"] and order.index("a") < last["b"]


async def test_latencies_are_really_waited() -> None:
    fake = engine(first_token_latency_s=0.05, token_latency_s=0.01)
    loop = asyncio.get_running_loop()
    start = loop.time()
    arrivals = [loop.time() - start async for _ in fake.chat(chat(stream=True))]
    assert arrivals[0] >= 0.05
    assert arrivals[-1] >= 0.05 + 4 * 0.01


async def test_embeddings_are_deterministic_unit_vectors() -> None:
    request = EmbeddingCompletionRequest(model=MODEL, input=["a b c", "d"])
    response = await one(engine(embedding_dim=4).embeddings(request))
    assert isinstance(response, EmbeddingResponse)
    assert response.id == f"embd-{request.request_id}"
    vectors = [item.embedding for item in response.data]
    assert [item.index for item in response.data] == [0, 1]
    assert all(len(v) == 4 and math.isclose(sum(x * x for x in v), 1.0) for v in vectors)
    assert vectors[0] != vectors[1]
    assert (response.usage.prompt_tokens, response.usage.total_tokens) == (4, 4)
    again = await one(engine(embedding_dim=4).embeddings(request))
    assert [item.embedding for item in again.data] == vectors
    CreateEmbeddingResponse.model_validate_json(response.model_dump_json())
    encoded = EmbeddingCompletionRequest(model=MODEL, input="a b c", encoding_format="base64")
    packed = (await one(engine(embedding_dim=4).embeddings(encoded))).data[0].embedding
    floats = array("f", base64.b64decode(packed)).tolist()
    assert all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(floats, vectors[0], strict=True))
