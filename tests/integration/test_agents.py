"""Clients and agent frameworks against Switchyard on fake engines: the official `openai`
client, LangChain's `ChatOpenAI`, a LangGraph ReAct agent and instructor.

One app: `large` and `code` serve models with vLLM's `hermes` tool parser, `small` has
none. The fake engine's answers are known word for word (tests/conftest.py), so every
assertion is exact: a tool call's arguments are the smallest instance of the tool's
schema (`{"city": "x"}`), a JSON schema answer its smallest instance
(`{"name": "x", "age": 1}`), a `json_object` answer `{"answer": <the pool's reply>}`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import instructor
import numpy as np
import openai
import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from langgraph.prebuilt import create_react_agent
from pydantic import BaseModel

from tests.conftest import client, delete_app, fake_app_args, run_app
from tests.support.pools import WEATHER

APP = "agents"
LARGE = "large answer from big-chat"  # the `large` pool's reply: 4 tokens
TOOL_PARSER_MODELS = ("big-chat", "coder")  # the models of `large` and `code`

CLOCK = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Current time in a time zone",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string"}},
            "required": ["zone"],
        },
    },
}
ASK_WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]
CITY = {"city": "x"}  # the fake's call: the smallest instance of the tool's parameters
CALL_ID = "chatcmpl-tool-"  # vLLM's tool call ids: this, then 16 hex digits


class Person(BaseModel):
    name: str
    age: int


class Reply(BaseModel):
    """What a `json_object` answer of the fake engine holds."""

    answer: str


PERSON = Person(name="x", age=1)  # the smallest instance of Person's schema


@pytest.fixture(scope="module")
def base_url(serve_port: int) -> Iterator[str]:
    args = fake_app_args()
    for model in args["models"]:
        if model["id"] in TOOL_PARSER_MODELS:
            model["tool_call_parser"] = "hermes"
    run_app(args, APP)
    yield f"http://127.0.0.1:{serve_port}/{APP}/v1"
    delete_app(APP)


@pytest.fixture(scope="module")
def api(base_url: str, serve_port: int) -> openai.OpenAI:
    return client(serve_port, APP)


@pytest.fixture(scope="module")
def http(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=60) as c:
        yield c


def chat_model(base_url: str, model: str, **kw: Any) -> ChatOpenAI:
    return ChatOpenAI(base_url=base_url, api_key="unused", model=model, max_retries=0, **kw)


def route(resp: Any) -> dict[str, Any]:
    info: dict[str, Any] = resp.model_extra["switchyard"]
    return info


def is_call_id(call_id: str | None) -> bool:
    return (
        call_id is not None
        and call_id.startswith(CALL_ID)
        and len(call_id) == len(CALL_ID) + 16
        and all(c in "0123456789abcdef" for c in call_id[len(CALL_ID) :])
    )


# -- the official openai client ---------------------------------------------------------


def test_chat_and_stream(api: openai.OpenAI) -> None:
    resp = api.chat.completions.create(model="large", messages=ASK_WEATHER)
    assert resp.choices[0].message.content == LARGE
    assert (resp.model, resp.choices[0].finish_reason) == ("big-chat", "stop")
    assert resp.usage is not None and resp.usage.completion_tokens == 4
    assert (route(resp)["pool"], route(resp)["reason"]) == ("large", "pinned_pool")

    chunks = list(
        api.chat.completions.create(
            model="large", messages=ASK_WEATHER, stream=True, stream_options={"include_usage": True}
        )
    )
    assert route(chunks[0])["pool"] == "large"  # on the first chunk
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == LARGE
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4


@pytest.mark.parametrize("choice", ["required", "named"])
def test_tool_call(api: openai.OpenAI, choice: str) -> None:
    named = {"type": "function", "function": {"name": "get_time"}}
    resp = api.chat.completions.create(
        model="large",
        messages=ASK_WEATHER,
        tools=[WEATHER, CLOCK],  # type: ignore[list-item]
        tool_choice="required" if choice == "required" else named,  # type: ignore[arg-type]
    )
    message = resp.choices[0].message
    assert message.content == ""  # a forced call, as vLLM answers it
    assert message.tool_calls is not None and len(message.tool_calls) == 1
    call = message.tool_calls[0]
    assert is_call_id(call.id) and call.type == "function"
    # required: the first tool; named: that one; arguments fit its parameters
    if choice == "required":
        assert (call.function.name, call.function.arguments) == ("get_weather", '{"city": "x"}')
        assert resp.choices[0].finish_reason == "tool_calls"
    else:
        assert (call.function.name, call.function.arguments) == ("get_time", '{"zone": "x"}')
        assert resp.choices[0].finish_reason == "stop"  # vLLM's, for a named tool


@pytest.mark.parametrize("choice", ["required", "named"])
def test_streamed_tool_call_deltas_reassemble(api: openai.OpenAI, choice: str) -> None:
    named = {"type": "function", "function": {"name": "get_weather"}}
    kw: Any = {
        "model": "large",
        "messages": ASK_WEATHER,
        "tools": [WEATHER, CLOCK],
        "tool_choice": "required" if choice == "required" else named,
    }
    calls: dict[int, dict[str, str]] = {}
    finish = []
    for chunk in api.chat.completions.create(stream=True, **kw):
        for choice_delta in chunk.choices:
            finish.append(choice_delta.finish_reason)
            for delta in choice_delta.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += delta.id or ""
                call["name"] += delta.function.name or "" if delta.function else ""
                call["arguments"] += delta.function.arguments or "" if delta.function else ""
    assert list(calls) == [0]
    assert (calls[0]["name"], calls[0]["arguments"]) == ("get_weather", '{"city": "x"}')
    assert is_call_id(calls[0]["id"])
    assert [f for f in finish if f] == ["tool_calls" if choice == "required" else "stop"]
    # the client's own accumulator reassembles them too
    with api.chat.completions.stream(**kw) as stream:
        final = stream.get_final_completion()
    (call,) = final.choices[0].message.tool_calls or []
    assert (call.function.name, call.function.arguments) == ("get_weather", '{"city": "x"}')


def test_response_format_json_schema(api: openai.OpenAI) -> None:
    parsed = api.chat.completions.parse(
        model="large", messages=[{"role": "user", "content": "Make up a person."}],
        response_format=Person,
    )  # fmt: skip
    assert parsed.choices[0].message.parsed == PERSON
    schema = {"name": "person", "schema": Person.model_json_schema()}
    resp = api.chat.completions.create(
        model="large", messages=[{"role": "user", "content": "Make up a person."}],
        response_format={"type": "json_schema", "json_schema": schema},  # type: ignore[typeddict-item]
    )  # fmt: skip
    assert resp.choices[0].message.content == '{"name": "x", "age": 1}'


def test_n_two(api: openai.OpenAI) -> None:
    resp = api.chat.completions.create(model="large", messages=ASK_WEATHER, n=2)
    assert [(c.index, c.message.content) for c in resp.choices] == [(0, LARGE), (1, LARGE)]
    assert resp.usage is not None and resp.usage.completion_tokens == 8
    texts = ["", ""]
    for chunk in api.chat.completions.create(model="large", messages=ASK_WEATHER, n=2, stream=True):
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
    assert texts == [LARGE, LARGE]


def test_embeddings(api: openai.OpenAI) -> None:
    from routing.embedding import MiniLMEmbedder

    texts = ["a cat", "a kitten", "tax law"]
    resp = api.embeddings.create(model="all-minilm-l6-v2", input=texts)
    assert (resp.model, [d.index for d in resp.data]) == ("all-minilm-l6-v2", [0, 1, 2])
    vectors = np.array([d.embedding for d in resp.data])
    assert vectors.shape == (3, 384)
    local = MiniLMEmbedder()  # the ingress's embedder, here: the same vectors
    np.testing.assert_allclose(vectors, local.encode(texts), atol=1e-5)
    assert resp.usage.prompt_tokens == resp.usage.total_tokens == local.count_tokens(texts)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
    with pytest.raises(openai.BadRequestError) as err:
        api.embeddings.create(model="large", input="a cat")
    assert (err.value.body["code"], err.value.body["param"]) == ("model_not_found", "model")  # type: ignore[index]


def test_models_retrieve(api: openai.OpenAI) -> None:
    large = api.models.retrieve("large")
    assert (large.id, large.object) == ("large", "model")
    assert large.model_extra == {
        "switchyard": {
            "pool": "large",
            "model": "big-chat",
            "capabilities": ["chat", "completion", "structured_output", "tools"],
        }
    }
    small = api.models.retrieve("small").model_extra
    assert small is not None
    assert small["switchyard"]["capabilities"] == ["chat", "completion", "structured_output"]
    assert api.models.retrieve("coder").model_extra["switchyard"]["pools"] == ["code"]  # type: ignore[index]
    with pytest.raises(openai.NotFoundError) as err:
        api.models.retrieve("gpt-17")
    assert err.value.body["code"] == "model_not_found"  # type: ignore[index]
    assert err.value.body["type"] == "not_found_error"  # type: ignore[index]


# -- LangChain --------------------------------------------------------------------------


@tool
def get_weather(city: str) -> str:
    """Current weather in a city."""
    return f"Sunny in {city}"


def test_langchain_bind_tools_on_a_pinned_pool(base_url: str) -> None:
    llm = chat_model(base_url, "large")
    for choice in ("get_weather", "any"):  # named; "any" is OpenAI's "required"
        msg = llm.bind_tools([get_weather], tool_choice=choice).invoke("Weather in Paris?")
        assert isinstance(msg, AIMessage)
        (call,) = msg.tool_calls
        assert (call["name"], call["args"], call["type"]) == ("get_weather", CITY, "tool_call")
        assert is_call_id(call["id"])
        assert msg.response_metadata["model_name"] == "big-chat"
    # streamed: LangChain joins the tool-call deltas into the same call
    chunks = list(llm.bind_tools([get_weather], tool_choice="any").stream("Weather in Paris?"))
    joined = chunks[0]
    for chunk in chunks[1:]:
        joined += chunk
    (call,) = joined.tool_calls  # type: ignore[attr-defined]
    assert (call["name"], call["args"]) == ("get_weather", CITY)


def test_langchain_bind_tools_with_auto_never_lands_on_small(base_url: str) -> None:
    llm = chat_model(base_url, "auto", include_response_headers=True)
    plain = llm.invoke("What is the capital of France?")  # without tools: the small pool
    assert plain.response_metadata["headers"]["x-switchyard-pool"] == "small"
    assert plain.content == "small answer from tiny-chat"
    msg = llm.bind_tools([get_weather]).invoke("What is the capital of France?")
    assert isinstance(msg, AIMessage)
    (call,) = msg.tool_calls
    assert (call["name"], call["args"]) == ("get_weather", CITY)
    headers = msg.response_metadata["headers"]
    assert headers["x-switchyard-pool"] != "small"
    assert (headers["x-switchyard-pool"], msg.response_metadata["model_name"]) == (
        "large",
        "big-chat",
    )
    assert msg.response_metadata["finish_reason"] == "tool_calls"


@pytest.mark.parametrize(
    ("method", "schema", "expected"),
    [
        ("function_calling", Person, PERSON),
        ("json_schema", Person, PERSON),
        # json_object: the fake answers {"answer": <reply>}
        ("json_mode", Reply, Reply(answer=LARGE)),
    ],
)
def test_langchain_with_structured_output(
    base_url: str, method: str, schema: type[BaseModel], expected: BaseModel
) -> None:
    llm = chat_model(base_url, "large")
    structured = llm.with_structured_output(schema, method=method)  # type: ignore[arg-type]
    assert structured.invoke("Bob is 30. Answer in JSON.") == expected


# -- a LangGraph ReAct agent ------------------------------------------------------------


def weather_tool(calls: list[str]) -> Any:
    @tool
    def get_weather(city: str) -> str:
        """Current weather in a city."""
        calls.append(city)
        return f"Sunny in {city}"

    return get_weather


def test_react_agent_calls_the_tool_then_answers(base_url: str) -> None:
    """LangGraph's prebuilt loop, unchanged (`tool_choice` auto): the model calls the
    tool, gets its result in the next request and answers it in text (the fake, like a
    model, answers a tool's result rather than calling again), so the agent ends."""
    calls: list[str] = []
    agent = create_react_agent(chat_model(base_url, "large"), [weather_tool(calls)])
    result = agent.invoke(
        {"messages": [("user", "What is the weather in Paris?")]}, {"recursion_limit": 6}
    )
    messages = result["messages"]
    assert calls == ["x"]
    assert [type(m) for m in messages] == [HumanMessage, AIMessage, ToolMessage, AIMessage]
    assert messages[1].tool_calls[0]["name"] == "get_weather"
    assert messages[2].content == "Sunny in x"
    assert (messages[-1].content, messages[-1].tool_calls) == (LARGE, [])


def test_react_agent_with_forced_tool_then_none_moves_pools(base_url: str) -> None:
    """The agent's model must call the tool first, and may not once it has its result:
    `auto` routes the call to a pool with a tool parser and the last turn as plain chat."""
    calls: list[str] = []
    weather = weather_tool(calls)
    llm = chat_model(base_url, "auto", include_response_headers=True)

    def model(state: dict[str, Any], runtime: Any) -> Any:
        answered = any(isinstance(m, ToolMessage) for m in state["messages"])
        return llm.bind_tools([weather], tool_choice="none" if answered else "any")

    agent = create_react_agent(model, [weather])
    result = agent.invoke({"messages": [("user", "What is the weather in Paris?")]})
    messages = result["messages"]
    assert calls == ["x"]
    assert [type(m) for m in messages] == [HumanMessage, AIMessage, ToolMessage, AIMessage]
    assert messages[1].tool_calls[0]["name"] == "get_weather"
    assert messages[1].response_metadata["headers"]["x-switchyard-pool"] == "large"
    assert messages[2].content == "Sunny in x"
    # tool_choice none needs no tool parser: `auto` routes the last turn as a plain chat
    assert messages[-1].response_metadata["headers"]["x-switchyard-pool"] == "small"
    assert (messages[-1].content, messages[-1].tool_calls) == ("small answer from tiny-chat", [])


# -- instructor -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "schema", "expected"),
    [
        (instructor.Mode.TOOLS, Person, PERSON),
        (instructor.Mode.JSON, Reply, Reply(answer=LARGE)),  # json_object
    ],
)
def test_instructor(
    api: openai.OpenAI, mode: instructor.Mode, schema: type[BaseModel], expected: BaseModel
) -> None:
    patched = instructor.from_openai(api, mode=mode)
    got = patched.chat.completions.create(
        model="large",
        response_model=schema,
        messages=[{"role": "user", "content": "Bob is 30."}],
        max_retries=1,
    )
    # (instructor answers with a subclass of the model, the raw response kept in a
    # private attribute: compare the fields)
    assert isinstance(got, schema) and got.model_dump() == expected.model_dump()


# -- errors before any answer byte ------------------------------------------------------

ERRORS = {
    "unknown field": (
        {"model": "large", "messages": ASK_WEATHER, "bogus_knob": 1},
        "unsupported_parameter",
        "bogus_knob",
        ["bogus_knob: unsupported parameter: vLLM does not know it (refused, not ignored)"],
    ),
    "tools without a tool parser": (
        {"model": "small", "messages": ASK_WEATHER, "tools": [WEATHER]},
        "capability_not_supported",
        "tools",
        ["model 'tiny-chat' (pool 'small') does not support tools"],
    ),
    "prompt longer than the context": (
        # the fake's tokens are words: "user:" and 200 words
        {"model": "small", "messages": [{"role": "user", "content": "word " * 200}]},
        "context_length_exceeded",
        "input_tokens",  # vLLM's
        ["maximum context length is 128 tokens", "your prompt contains 201 input tokens"],
    ),
}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("case", list(ERRORS))
def test_errors_are_openai_shaped_before_any_answer(
    api: openai.OpenAI, http: httpx.Client, case: str, stream: bool
) -> None:
    body, code, param, said = ERRORS[case]
    with http.stream("POST", "/chat/completions", json={**body, "stream": stream}) as resp:
        raw = resp.read()
        assert resp.status_code == 400, raw
        assert resp.headers["content-type"].startswith("application/json")
    error = json.loads(raw)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", code, param)
    if len(said) == 1:
        assert error["message"] == said[0]
    else:
        assert all(part in error["message"] for part in said), error["message"]
    assert b"data:" not in raw
    # the openai client raises it at the call, streamed or not
    rest = {k: v for k, v in body.items() if k not in ("model", "messages")}
    with pytest.raises(openai.BadRequestError) as err:
        api.chat.completions.create(
            model=body["model"], messages=body["messages"], stream=stream, extra_body=rest
        )
    assert err.value.body == error
