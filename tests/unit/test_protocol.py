"""The request models: the ingress reads and bounds what routing needs and passes every
other field to the pool, where vLLM's own request model validates the whole body
(`deployments/engine_requests.py`), strictly."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from deployments.engine_requests import UNSUPPORTED, parse
from deployments.openai.protocol import (
    MAX_CHOICES,
    MAX_TOKENS_BOUND,
    NAME_CHARS,
    RESERVED_FIELDS,
    ChatRequest,
    ClassifyRequest,
    CompletionRequest,
    RouteRequest,
)
from routing.validity import Expectation

MSG = [{"role": "user", "content": "hi"}]
TOOL_F = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
TOOL_G = {"type": "function", "function": {"name": "g"}}


def chat(**fields: Any) -> ChatRequest:
    return ChatRequest.model_validate({"messages": MSG, **fields})


def completion(**fields: Any) -> CompletionRequest:
    return CompletionRequest.model_validate({"prompt": "x", **fields})


def pool_parse(method: str, body: dict[str, Any]) -> tuple[Any, dict[str, Any] | None]:
    """What a pool makes of the body the ingress forwards (its model set, as serving does)."""
    return parse(method, {**body, "model": "tiny-chat"})


# --- unknown fields: passed on, then refused by vLLM's model -----------------------------------


def test_unknown_fields_are_passed_to_the_pool_never_dropped() -> None:
    body = chat(foo=1, logit_bias={"1": 5}, switchyard={"strategy": "route"}).engine_body()
    assert body == {"model": "auto", "messages": MSG, "foo": 1, "logit_bias": {"1": 5}}
    assert completion(bar=[1], echo=True).engine_body() == {
        "model": "auto", "prompt": "x", "bar": [1], "echo": True
    }  # fmt: skip


def test_the_engine_body_is_what_the_client_set_and_nothing_more() -> None:
    assert chat().engine_body() == {"model": "auto", "messages": MSG}
    sent = chat(model="small", max_tokens=5, stream=True, stream_options={"include_usage": True})
    assert sent.engine_body() == {
        "model": "small",
        "messages": MSG,
        "max_tokens": 5,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


@pytest.mark.parametrize(
    ("method", "body", "param"),
    [
        ("chat", {"messages": MSG, "foo": 1}, "foo"),
        ("chat", {"messages": MSG, "best_of": 2}, "best_of"),  # a completions-only field
        ("chat", {"messages": MSG, "store": True}, "store"),  # OpenAI's, not vLLM's
        ("completions", {"prompt": "x", "foo": 1}, "foo"),
        ("completions", {"prompt": "x", "tools": []}, "tools"),  # a chat-only field
    ],
)
def test_the_pool_refuses_unknown_fields_by_name(
    method: str, body: dict[str, Any], param: str
) -> None:
    request, refused = pool_parse(method, body)
    assert request is None and refused is not None
    assert refused["error"]["type"] == UNSUPPORTED
    assert (refused["error"]["param"], refused["error"]["code"]) == (param, 400)
    assert refused["error"]["message"].startswith(f"{param}: unsupported parameter")


def test_the_pool_refuses_unknown_fields_inside_messages() -> None:
    bad = [{"role": "user", "content": "hi", "foo": 1}]
    request, refused = pool_parse("chat", {"messages": bad})
    assert request is None and refused is not None
    assert refused["error"]["code"] == 400


@pytest.mark.parametrize(
    ("content", "param"),
    [
        (["hi"], "messages.0.content.0"),
        ([5], "messages.0.content.0"),
        ([{"type": "text"}], "messages.0.content.0.text"),
        ([{"type": "text", "text": "ok"}, {"type": "text"}], "messages.0.content.1.text"),
    ],
)
def test_the_pool_validates_content_parts_before_the_engine(content: Any, param: str) -> None:
    # vLLM's model validates parts lazily, when the template is rendered; the pool does
    # it at once, so a bad part is a 400 naming it and never an engine failure.
    request, refused = pool_parse("chat", {"messages": [{"role": "user", "content": content}]})
    assert request is None and refused is not None
    assert refused["error"]["param"] == param
    assert refused["error"]["code"] == 400


def test_validated_content_parts_reach_the_engine_as_lists() -> None:
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    request, refused = pool_parse("chat", {"messages": [{"role": "user", "content": parts}]})
    assert refused is None
    assert request.messages[0]["content"] == parts  # a list: read twice, same parts
    assert request.messages[0]["content"] == parts


def test_the_pool_reads_vllms_sampling_extensions() -> None:
    sent = completion(
        ignore_eos=True, min_tokens=3, top_k=5, repetition_penalty=1.1, stop_token_ids=[2],
        logprobs=2,
    )  # fmt: skip
    assert sent.asked_logprobs and sent.min_tokens == 3
    request, refused = pool_parse("completions", sent.engine_body())
    assert refused is None
    assert (request.ignore_eos, request.min_tokens, request.top_k) == (True, 3, 5)
    assert (request.repetition_penalty, request.stop_token_ids, request.logprobs) == (1.1, [2], 2)


# --- what the ingress refuses itself ------------------------------------------------------


@pytest.mark.parametrize("name", RESERVED_FIELDS)
def test_operator_fields_are_refused(name: str) -> None:
    value: Any = {} if name.endswith("_params") else "x" if name == "request_id" else 5
    for model, base in (
        (ChatRequest, {"messages": MSG}),
        (CompletionRequest, {"prompt": "x"}),
        (ClassifyRequest, {"messages": MSG}),
    ):
        with pytest.raises(ValidationError, match="set by Switchyard, not by clients") as info:
            model.model_validate({**base, name: value})
        assert info.value.errors()[0]["loc"] == (name,)  # the 400 names the field


def test_the_reserved_fields_are_fields_vllm_has() -> None:
    assert RESERVED_FIELDS == ("request_id", "priority", "kv_transfer_params", "ec_transfer_params")
    for name in RESERVED_FIELDS:  # refused here because vLLM would honour them
        value: Any = {} if name.endswith("_params") else "x" if name == "request_id" else 1
        assert pool_parse("chat", {"messages": MSG, name: value})[1] is None


def test_n_is_bounded() -> None:
    assert MAX_CHOICES == 16
    assert chat(n=MAX_CHOICES).n == MAX_CHOICES
    for n in (0, MAX_CHOICES + 1, -1):
        for make in (chat, completion):
            with pytest.raises(ValidationError) as err:
                make(n=n)
            assert err.value.errors()[0]["loc"] == ("n",)


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
@pytest.mark.parametrize("value", [0, -1, MAX_TOKENS_BOUND + 1, 10**30])
def test_max_tokens_is_bounded(field: str, value: int) -> None:
    with pytest.raises(ValidationError) as err:
        chat(**{field: value})
    assert err.value.errors()[0]["loc"] == (field,)
    if field == "max_tokens":
        with pytest.raises(ValidationError):
            completion(max_tokens=value)


def test_min_tokens_is_bounded() -> None:
    assert chat(min_tokens=3).min_tokens == 3
    for value in (-1, MAX_TOKENS_BOUND + 1):
        with pytest.raises(ValidationError):
            chat(min_tokens=value)


def test_model_defaults_to_auto_and_is_bounded() -> None:
    for given in ({}, {"model": None}, {"model": ""}):
        assert chat(**given).model == "auto"
        assert completion(**given).model == "auto"
    assert chat(model="small").model == "small"
    with pytest.raises(ValidationError) as err:
        chat(model="m" * (NAME_CHARS + 1))
    assert err.value.errors()[0]["loc"] == ("model",)


def test_a_chat_needs_messages() -> None:
    for messages in ([], "hi", ["hi"], None):
        with pytest.raises(ValidationError) as err:
            ChatRequest.model_validate({"messages": messages})
        assert err.value.errors()[0]["loc"][0] == "messages"
    with pytest.raises(ValidationError):
        ChatRequest.model_validate({"model": "auto"})


def test_wrong_types_of_routed_fields_are_refused_at_once() -> None:
    for fields in ({"temperature": "hot"}, {"stream": "sometimes"}, {"tools": "all"}):
        with pytest.raises(ValidationError) as err:
            chat(**fields)
        assert err.value.errors()[0]["loc"][0] == next(iter(fields))


def test_a_misspelt_switchyard_wish_is_refused_and_a_good_one_read() -> None:
    options = chat(switchyard={"strategy": "cascade", "min_quality": 0.5}).switchyard
    assert options is not None and (options.strategy, options.min_quality) == ("cascade", 0.5)
    for wrong in (
        {"stratgy": "cascade"},
        {"strategy": "fastest"},
        {"min_quality": 2},
        {"tier": ""},
    ):
        with pytest.raises(ValidationError) as err:
            chat(switchyard=wrong)
        assert err.value.errors()[0]["loc"][0] == "switchyard"


def test_classify_takes_a_chat_body() -> None:
    assert ClassifyRequest.model_validate({"messages": MSG}).model == "auto"
    for extra in ({"n": 99}, {"messages": []}, {"max_tokens": 0}):
        with pytest.raises(ValidationError):
            ClassifyRequest.model_validate({"messages": MSG, **extra})


# --- what routing reads ----------------------------------------------------------------------


def test_asked_logprobs() -> None:
    assert not chat().asked_logprobs
    assert not chat(logprobs=False).asked_logprobs
    assert chat(logprobs=True).asked_logprobs
    assert not completion().asked_logprobs
    assert completion(logprobs=0).asked_logprobs  # the chosen token's logprob only


def test_max_completion_tokens_wins() -> None:
    assert chat(max_tokens=5, max_completion_tokens=9).requested_max_tokens == 9
    assert chat(max_tokens=5).requested_max_tokens == 5
    assert chat().requested_max_tokens is None  # the catalog's default_max_tokens applies
    assert completion(max_tokens=7).requested_max_tokens == 7
    assert completion().requested_max_tokens is None  # not vLLM's default of 16


def test_chat_text_joins_the_messages_text_parts_only() -> None:
    req = ChatRequest.model_validate(
        {
            "messages": [
                {"role": "system", "content": "be brief"},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "a"},
                        {"type": "image_url", "image_url": {"url": "http://img.test/x.png"}},
                        {"type": "text", "text": "b"},
                    ],
                },
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "1",
                            "type": "function",
                            "function": {"name": "f", "arguments": "{}"},
                        }
                    ],
                },
                {"role": "user", "content": {"odd": "shape"}},  # vLLM refuses it, not routing
            ]
        }
    )
    assert req.text == "be brief\nab\n\n"


def test_completion_text() -> None:
    assert completion(prompt="Once upon").text == "Once upon"
    assert completion(prompt=["a", "b"]).text == "a\nb"
    assert completion(prompt=[1, 2, 3]).text == ""  # token ids are no text
    assert CompletionRequest.model_validate({}).text == ""


def test_choices_are_n_times_the_prompts() -> None:
    assert chat().choices == 1
    assert chat(n=3).choices == 3
    assert completion(prompt=["a", "b", "c"], n=2).choices == 6
    assert completion(prompt=[1, 2, 3], n=3).choices == 3  # one prompt of token ids
    assert completion(prompt=[[1, 2], [3]], n=2).choices == 4  # two of them


def test_include_usage_only_when_the_client_asked() -> None:
    assert not chat().include_usage
    assert not chat(stream=True).include_usage
    assert chat(stream=True, stream_options={"include_usage": True}).include_usage
    assert not chat(stream=True, stream_options={"include_usage": False}).include_usage
    assert completion(stream=True, stream_options={"include_usage": True}).include_usage


SCHEMA = {"type": "object", "required": ["a"]}
JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "n", "schema": SCHEMA}}


@pytest.mark.parametrize(
    ("fields", "needs", "expected"),
    [
        ({}, {"chat"}, Expectation()),
        (
            {"tools": [TOOL_F, TOOL_G]},
            {"chat", "tools"},
            Expectation(tools={"f": {"type": "object"}, "g": {}}),
        ),
        (
            {"tools": [TOOL_F], "tool_choice": "auto"},
            {"chat", "tools"},
            Expectation(tools={"f": {"type": "object"}}),
        ),
        ({"tools": [TOOL_F], "tool_choice": "none"}, {"chat"}, Expectation()),
        (
            {"tools": [TOOL_F], "tool_choice": "required"},
            {"chat", "tools"},
            Expectation(tools={"f": {"type": "object"}}, tool_choice="required"),
        ),
        (
            {
                "tools": [TOOL_F, TOOL_G],
                "tool_choice": {"type": "function", "function": {"name": "g"}},
            },
            {"chat", "tools"},
            Expectation(tools={"f": {"type": "object"}, "g": {}}, tool_choice="g"),
        ),
        (
            {"response_format": JSON_SCHEMA},
            {"chat", "structured_output"},
            Expectation(schema=SCHEMA),
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "n"}}},
            {"chat", "structured_output"},
            Expectation(schema={}),
        ),
        (
            {"response_format": {"type": "json_object"}},
            {"chat", "structured_output"},
            Expectation(json_object=True),
        ),
        ({"response_format": {"type": "text"}}, {"chat"}, Expectation()),
        (
            {"structured_outputs": {"json": SCHEMA}},
            {"chat", "structured_output"},
            Expectation(schema=SCHEMA),
        ),
        (
            {"structured_outputs": {"json": '{"type": "object", "required": ["a"]}'}},
            {"chat", "structured_output"},
            Expectation(schema=SCHEMA),
        ),
        (
            {"structured_outputs": {"json": "{not json"}},
            {"chat", "structured_output"},
            Expectation(),
        ),
        (
            {"structured_outputs": {"json_object": True}},
            {"chat", "structured_output"},
            Expectation(json_object=True),
        ),
        ({"structured_outputs": {"regex": "[a-z]+"}}, {"chat", "structured_output"}, Expectation()),
        (
            {"tools": [TOOL_F], "response_format": {"type": "json_object"}},
            {"chat", "tools", "structured_output"},
            Expectation(tools={"f": {"type": "object"}}, json_object=True),
        ),
    ],
)
def test_what_a_chat_request_needs_and_expects(
    fields: dict[str, Any], needs: set[str], expected: Expectation
) -> None:
    request = chat(**fields)
    assert request.needs == frozenset(needs)
    assert request.expectation() == expected


def test_what_a_completion_request_needs_and_expects() -> None:
    assert (completion().needs, completion().expectation()) == (
        frozenset({"completion"}),
        Expectation(),
    )
    constrained = completion(response_format={"type": "json_object"})
    assert constrained.needs == frozenset({"completion", "structured_output"})
    assert constrained.expectation() == Expectation(json_object=True)
    assert completion(structured_outputs={"json": SCHEMA}).expectation() == Expectation(
        schema=SCHEMA
    )


# --- the dry run's lenient body ----------------------------------------------------------------


def test_a_dry_run_takes_either_body_and_ignores_what_it_does_not_read() -> None:
    body = RouteRequest.model_validate({"messages": MSG, "n": 3, "foo": 1, "logit_bias": {}})
    assert (body.model, body.text, body.requested_max_tokens, body.min_tokens) == (
        "auto", "hi", None, 0
    )  # fmt: skip
    assert RouteRequest.model_validate({"prompt": ["a", "b"]}).text == "a\nb"
    route = RouteRequest.model_validate(
        {"prompt": "x", "max_tokens": 5, "max_completion_tokens": 9}
    )
    assert route.requested_max_tokens == 9


@pytest.mark.parametrize(
    ("body", "loc", "message"),
    [
        ({}, "prompt", "give messages or prompt"),
        ({"messages": []}, "prompt", "give messages or prompt"),
        ({"prompt": ""}, "prompt", "give messages or prompt"),
        ({"messages": MSG, "max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
        ({"messages": MSG, "max_tokens": MAX_TOKENS_BOUND + 1}, "max_tokens", "less than or equal"),
        ({"messages": MSG, "model": "m" * (NAME_CHARS + 1)}, "model", "at most 256 characters"),
        ({"messages": MSG, "min_tokens": -1}, "min_tokens", "greater than or equal to 0"),
        ({"messages": MSG, "switchyard": {"strategy": "x"}}, "switchyard", "Input should be"),
    ],
)
def test_a_dry_run_still_bounds_what_it_reads(body: dict[str, Any], loc: str, message: str) -> None:
    with pytest.raises(ValidationError) as err:
        RouteRequest.model_validate(body)
    first = err.value.errors()[0]
    assert first["loc"][0] == loc
    assert message in first["msg"]
