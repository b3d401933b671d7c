"""What a request needs of a model (chat, tools, structured output) decides which pools
may serve it: the others are unservable, with the 400 naming the field that needs it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from core.errors import PromptError
from deployments.openai.errors import to_api_error
from deployments.openai.protocol import ChatRequest, CompletionRequest, RouteRequest
from deployments.openai.serving import OpenAIServing
from models.catalog import ModelSpec
from routing.planner import Wishes
from routing.profile import CAPABILITY_CODE, Refusal, profile_request
from tests.conftest import fake_app, fake_app_args
from tests.support.pools import InProcessPools

MSG = [{"role": "user", "content": "hello there"}]
TOOL = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
SCHEMA = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}


def spec(id: str = "m", **fields: Any) -> ModelSpec:
    return ModelSpec.model_validate({"id": id, "source": "path://m", **fields})


# --- the catalog: what a model can do ---------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "capabilities"),
    [
        ({}, {"chat", "completion", "structured_output"}),
        ({"tool_call_parser": "hermes"}, {"chat", "completion", "structured_output", "tools"}),
        ({"chat": False}, {"completion", "structured_output"}),
        ({"chat": False, "tool_call_parser": "hermes"}, {"completion", "structured_output"}),
        ({"structured_output": False}, {"chat", "completion"}),
        (
            {"structured_output": False, "chat": False, "tool_call_parser": "hermes"},
            {"completion"},
        ),
    ],
)
def test_a_models_capabilities_follow_its_catalog_entry(
    fields: dict[str, Any], capabilities: set[str]
) -> None:
    assert spec(**fields).capabilities() == frozenset(capabilities)


# --- the profile: which pools can serve what --------------------------------------------

MODELS = {
    "base": spec("base-lm", chat=False),
    "chat": spec("tiny-chat"),
    "tools": spec("qwen", tool_call_parser="hermes"),
    "plain": spec("rigid", structured_output=False, tool_call_parser="hermes"),
}


def unservable(needs: set[str], **kw: Any) -> dict[str, Refusal]:
    profile = profile_request(
        "auto", "hi", needs=frozenset(needs), requested_max_tokens=kw.get("max_tokens"),
        min_tokens=0, pool_models=MODELS, chars_per_token=4.0,
    )  # fmt: skip
    assert set(profile.max_tokens) == set(MODELS)
    return dict(profile.unservable)


def test_chat_is_refused_by_completion_only_models_naming_model() -> None:
    assert unservable({"chat"}) == {
        "base": Refusal(
            "model",
            "model 'base-lm' (pool 'base') is completion-only; use /v1/completions",
            CAPABILITY_CODE,
        )
    }


def test_completion_is_served_by_every_model() -> None:
    assert unservable({"completion"}) == {}


def test_tools_need_a_tool_call_parser_naming_tools() -> None:
    assert unservable({"chat", "tools"}) == {
        "base": Refusal(
            "model",
            "model 'base-lm' (pool 'base') is completion-only; use /v1/completions",
            CAPABILITY_CODE,
        ),
        "chat": Refusal(
            "tools", "model 'tiny-chat' (pool 'chat') does not support tools", CAPABILITY_CODE
        ),
    }


def test_structured_output_is_refused_naming_response_format() -> None:
    assert unservable({"completion", "structured_output"}) == {
        "plain": Refusal(
            "response_format",
            "model 'rigid' (pool 'plain') does not support structured output",
            CAPABILITY_CODE,
        )
    }
    both = unservable({"chat", "tools", "structured_output"})
    assert set(both) == {"base", "chat", "plain"}
    assert both["plain"].param == "response_format"
    assert both["chat"].param == "tools"


def test_a_missing_capability_is_said_before_a_token_limit() -> None:
    over = unservable({"chat", "tools"}, max_tokens=10_000)
    assert over["chat"].param == "tools"  # it cannot serve it at any max_tokens
    assert over["tools"].param == "max_tokens"


# --- what a request needs ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "needs"),
    [
        ({}, {"chat"}),
        ({"tools": [TOOL]}, {"chat", "tools"}),
        ({"tools": [TOOL], "tool_choice": "none"}, {"chat"}),
        ({"tools": [TOOL], "tool_choice": "required"}, {"chat", "tools"}),
        ({"response_format": SCHEMA}, {"chat", "structured_output"}),
        ({"response_format": {"type": "json_object"}}, {"chat", "structured_output"}),
        ({"response_format": {"type": "text"}}, {"chat"}),
        ({"structured_outputs": {"regex": "[a-z]+"}}, {"chat", "structured_output"}),
        ({"tools": [TOOL], "response_format": SCHEMA}, {"chat", "tools", "structured_output"}),
    ],
)
def test_what_a_chat_request_needs(extra: dict[str, Any], needs: set[str]) -> None:
    assert ChatRequest.model_validate({"messages": MSG, **extra}).needs == frozenset(needs)


def test_what_a_completion_request_needs() -> None:
    plain = CompletionRequest.model_validate({"prompt": "x"})
    assert plain.needs == frozenset({"completion"})
    constrained = CompletionRequest.model_validate(
        {"prompt": "x", "response_format": {"type": "json_object"}}
    )
    assert constrained.needs == frozenset({"completion", "structured_output"})
    guided = CompletionRequest.model_validate(
        {"prompt": "x", "structured_outputs": {"choice": ["a"]}}
    )
    assert guided.needs == frozenset({"completion", "structured_output"})


@pytest.mark.parametrize(
    ("body", "needs"),
    [
        ({"prompt": "x"}, {"completion"}),
        ({"prompt": "x", "response_format": {"type": "json_object"}}, {"completion"}),
        ({"messages": MSG}, {"chat"}),
        ({"messages": MSG, "tools": [TOOL]}, {"chat", "tools"}),
        ({"messages": MSG, "tools": [TOOL], "tool_choice": "none"}, {"chat"}),
        ({"messages": MSG, "response_format": SCHEMA}, {"chat", "structured_output"}),
        ({"messages": MSG, "response_format": {"type": "text"}}, {"chat"}),
    ],
)
def test_what_a_dry_run_needs(body: dict[str, Any], needs: set[str]) -> None:
    assert RouteRequest.model_validate(body).needs == frozenset(needs)


# --- planning and serving: only capable pools ---------------------------------------------


def tool_app(**fakes: dict[str, Any]) -> tuple[OpenAIServing, InProcessPools]:
    """The fake app where only `coder` (the code pool's model) has a tool-call parser."""
    args = fake_app_args(**fakes)
    coder = next(m for m in args["models"] if m["id"] == "coder")
    coder["tool_call_parser"] = "hermes"
    args["models"].append({"id": "rigid-lm", "source": "path://rigid", "structured_output": False})
    args["pools"]["rigid"] = {"model": "rigid-lm"}
    config, fake = fake_app(args)
    pools = InProcessPools(config, fake)
    return OpenAIServing(config, pools), pools


def chat(**fields: Any) -> ChatRequest:
    return ChatRequest.model_validate({"model": "auto", "messages": MSG, **fields})


async def test_auto_sends_a_request_with_tools_only_to_a_pool_that_can_call_them() -> None:
    svc, pools = tool_app()
    plain = await svc.generate(chat())
    assert plain.route.pool == "small"  # what the rules pick for this text
    routed = await svc.generate(chat(tools=[TOOL]), Wishes(strategy="route"))
    assert routed.route.pool == "code"
    assert routed.body is not None
    message = json.loads(routed.body)["choices"][0]["message"]
    assert [c["function"]["name"] for c in message["tool_calls"]] == ["lookup"]
    assert [pool for pool, _ in pools.calls] == ["small", "code"]


async def test_fallbacks_and_escalation_targets_can_serve_the_request_too() -> None:
    svc, _ = tool_app()
    for strategy in ("route", "cascade", "speculative"):
        decided, _ = await svc.planning.plan(
            chat(tools=[TOOL]),
            "hello there",
            Wishes(strategy=strategy),
            frozenset({"chat", "tools"}),
        )
        used = {decided.pool, *decided.fallbacks, *decided.target_fallbacks}
        if decided.target is not None:
            used.add(decided.target)
        assert used == {"code"}, (strategy, decided)


async def test_a_pinned_pool_without_tools_is_a_400_naming_tools() -> None:
    svc, pools = tool_app()
    with pytest.raises(PromptError) as err:
        await svc.generate(chat(model="small", tools=[TOOL]))
    api = to_api_error(err.value)
    assert (api.status, api.param, api.type) == (400, "tools", "invalid_request_error")
    assert api.message == "model 'tiny-chat' (pool 'small') does not support tools"
    assert pools.calls == []
    # tool_choice none asks for no tool call: the same pool serves it.
    served = await svc.generate(chat(model="small", tools=[TOOL], tool_choice="none"))
    assert served.route.pool == "small"


async def test_a_pinned_pool_without_structured_output_is_a_400_naming_response_format() -> None:
    svc, pools = tool_app()
    with pytest.raises(PromptError) as err:
        await svc.generate(chat(model="rigid", response_format={"type": "json_object"}))
    api = to_api_error(err.value)
    assert (api.status, api.param) == (400, "response_format")
    assert api.message == "model 'rigid-lm' (pool 'rigid') does not support structured output"
    assert pools.calls == []
    routed = await svc.generate(
        chat(response_format={"type": "json_object"}), Wishes(strategy="route")
    )
    assert routed.route.pool != "rigid"


async def test_chat_pinned_to_a_completion_only_model_is_a_400_naming_model() -> None:
    args = fake_app_args()
    args["pools"]["base"] = {"model": "base-lm"}
    config, fake = fake_app(args)
    svc = OpenAIServing(config, InProcessPools(config, fake))
    with pytest.raises(PromptError) as err:
        await svc.generate(chat(model="base"))
    api = to_api_error(err.value)
    assert (api.status, api.param) == (400, "model")
    assert "completion-only" in api.message
    completion = CompletionRequest.model_validate({"model": "base", "prompt": "Once upon"})
    assert (await svc.generate(completion)).route.pool == "base"


async def test_with_no_capable_pool_at_all_auto_is_a_400() -> None:
    svc, pools = serving_without_tools()
    with pytest.raises(PromptError) as err:
        await svc.generate(chat(tools=[TOOL]))
    assert to_api_error(err.value).param == "tools"
    assert pools.calls == []


def serving_without_tools() -> tuple[OpenAIServing, InProcessPools]:
    config, fake = fake_app()
    pools = InProcessPools(config, fake)
    return OpenAIServing(config, pools), pools


async def test_the_dry_run_plans_as_the_request_would_be_served() -> None:
    svc, _ = tool_app()
    body = RouteRequest.model_validate({"messages": MSG, "tools": [TOOL]})
    decided = await svc.dry_run(body, body.text, Wishes(strategy="route"), body.needs)
    assert (decided.pool, decided.fallbacks) == ("code", [])


def test_the_model_list_shows_what_each_pool_and_model_can_do() -> None:
    svc, _ = tool_app()
    cards = {card.id: card.switchyard for card in svc.models().data}
    assert cards["code"]["capabilities"] == ["chat", "completion", "structured_output", "tools"]
    assert cards["small"]["capabilities"] == ["chat", "completion", "structured_output"]
    assert cards["rigid"]["capabilities"] == ["chat", "completion"]
    assert cards["coder"]["capabilities"] == cards["code"]["capabilities"]
