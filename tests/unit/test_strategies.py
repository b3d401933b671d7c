"""Cascade, speculative and fallback through OpenAIServing, on in-process fake engines;
the validity cascade (a cheap answer that is confident but unusable escalates)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from core.errors import EngineRefusedError
from deployments.openai.errors import to_api_error
from execution.monitor import EngineStats
from routing.planner import Wishes
from tests.conftest import fake_app_args
from tests.unit.test_serving import WEATHER, body, chat, events, serving, text_of, tool_args

CONFIDENT = {"logprobs": [-0.1]}
UNSURE = {"logprobs": [-2.0]}
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}
AS_PERSON = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
CASCADE = Wishes(strategy="cascade")
SPECULATIVE = Wishes(strategy="speculative")


def info(routed: Any) -> dict[str, Any]:
    return body(routed)["switchyard"]  # type: ignore[no-any-return]


async def test_cascade_accepts_a_confident_small_answer() -> None:
    svc, pools = serving(small=CONFIDENT)
    routed = await svc.generate(chat(), CASCADE)
    answer = body(routed)
    info = answer["switchyard"]
    assert (info["pool"], info["strategy"], info["escalated"]) == ("small", "cascade", False)
    assert info["confidence"] == -0.1
    assert (info["confidence_method"], info["threshold"]) == ("mean_logprob", -0.6)
    assert (info["invalid"], info["discarded_tokens"]) == (None, 0)
    assert [p for p, _ in pools.calls] == ["small"]
    assert answer["choices"][0]["message"]["content"] == "small answer from tiny-chat"


async def test_cascade_escalates_exactly_below_threshold() -> None:
    for logprob, escalates in [(-0.59, False), (-0.6, False), (-0.61, True)]:
        svc, pools = serving(small={"logprobs": [logprob]})
        got = info(await svc.generate(chat(), CASCADE))
        assert got["escalated"] is escalates, logprob
        assert got["pool"] == ("large" if escalates else "small")
        assert [p for p, _ in pools.calls] == got["pools_tried"]
    assert got["pools_tried"] == ["small", "large"]
    assert got["discarded_tokens"] == 4  # the rejected small answer
    assert got["invalid"] is None  # unsure, not unusable
    answer = body(await svc.generate(chat(), CASCADE))
    assert answer["choices"][0]["message"]["content"] == "large answer from big-chat"


async def test_cascade_escalates_code_to_the_code_pool() -> None:
    svc, pools = serving(small=UNSURE)
    got = info(await svc.generate(chat(text="fix this python bug"), CASCADE))
    assert got["pool"] == "code"
    assert [p for p, _ in pools.calls] == ["small", "code"]


async def test_cascade_source_failure_goes_to_target() -> None:
    svc, _ = serving(small={"fail_requests": True})
    got = info(await svc.generate(chat(), CASCADE))
    assert (got["pool"], got["pools_tried"], got["escalated"]) == (
        "large",
        ["small", "large"],
        True,
    )


async def test_speculative_small_wins_and_large_is_aborted() -> None:
    svc, pools = serving(small=CONFIDENT, large={"token_latency_s": 0.05})
    got = info(await svc.generate(chat(), SPECULATIVE))
    assert (got["pool"], got["speculative_winner"], got["escalated"]) == (
        "small",
        "source",
        False,
    )
    assert got["discarded_engine_s"] > 0
    # the loser was cancelled before the answer returned: vLLM aborted it mid-answer
    (large,) = pools.requests("large")
    assert pools.engines["large"].aborted == [large["request_id"]]
    assert pools.engines["large"].finished == []
    assert pools.engines["small"].finished == [pools.requests("small")[0]["request_id"]]


async def test_speculative_unsure_small_waits_for_large() -> None:
    svc, pools = serving(small=UNSURE, large={"token_latency_s": 0.01})
    got = info(await svc.generate(chat(), SPECULATIVE))
    assert (got["pool"], got["speculative_winner"], got["escalated"]) == (
        "large",
        "target",
        True,
    )
    assert got["confidence"] == -2.0
    assert got["discarded_tokens"] == 4
    assert pools.engines["large"].aborted == []
    assert len(pools.engines["large"].finished) == 1


async def test_speculative_large_first_aborts_small() -> None:
    svc, pools = serving(small={"first_token_latency_s": 0.5})
    got = info(await svc.generate(chat(), SPECULATIVE))
    assert (got["pool"], got["speculative_winner"]) == ("large", "target")
    (small,) = pools.requests("small")
    assert pools.engines["small"].aborted == [small["request_id"]]


async def test_speculative_strong_failure_keeps_the_weak_answer() -> None:
    svc, _ = serving(small=UNSURE, large={"fail_requests": True})
    got = info(await svc.generate(chat(), SPECULATIVE))
    assert (got["pool"], got["speculative_winner"]) == ("small", "source")


async def test_a_request_the_cascades_source_refuses_is_the_clients_400() -> None:
    """A client's error is not an unsure answer: no escalation, vLLM's 400 as it is."""
    svc, pools = serving()
    with pytest.raises(EngineRefusedError) as err:
        await svc.generate(chat(temprature=0.5), CASCADE)
    api = to_api_error(err.value)
    assert (api.status, api.code, api.param) == (400, "unsupported_parameter", "temprature")
    assert [p for p, _ in pools.calls] == ["small"]
    assert svc.metrics.summary()["outcomes"] == {"client_error": 1}


async def test_a_request_both_racers_refuse_is_the_clients_400() -> None:
    svc, pools = serving()
    with pytest.raises(EngineRefusedError) as err:
        await svc.generate(chat(temprature=0.5), SPECULATIVE)
    api = to_api_error(err.value)
    assert (api.status, api.code, api.param) == (400, "unsupported_parameter", "temprature")
    assert svc.metrics.summary()["outcomes"] == {"client_error": 1}


async def test_fallback_opens_the_breaker_then_skips_the_pool() -> None:
    svc, pools = serving(small={"fail_requests": True})
    for _ in range(3):
        got = info(await svc.generate(chat()))
        assert (got["pool"], got["pools_tried"], got["fallback"]) == (
            "large",
            ["small", "large"],
            True,
        )
    assert svc.monitor.circuit("small") == "open"
    got = info(await svc.generate(chat()))
    # the open circuit is seen by the planner: small is not eligible any more
    assert got["pools_tried"] == ["large"]
    assert sum(1 for p, _ in pools.calls if p == "small") == 3


async def test_cascade_stream_shows_only_the_accepted_answer() -> None:
    svc, _ = serving(small=UNSURE)
    routed = await svc.generate(chat(stream=True), CASCADE)
    chunks = await events(routed)
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)  # the official client's chunk model
    assert chunks[0]["switchyard"]["escalated"] is True
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert text_of(chunks) == "large answer from big-chat"
    assert "small" not in json.dumps(chunks[1:])  # the rejected answer is never shown
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(c["choices"] and c.get("usage") is None for c in chunks)  # not asked for
    assert {c["id"] for c in chunks} == {routed_id(chunks)}
    assert all(c["choices"][0]["logprobs"] is None for c in chunks)  # the strategy's


async def test_cascade_stream_with_usage_ends_with_the_accepted_answers_usage() -> None:
    svc, _ = serving(small=UNSURE)
    routed = await svc.generate(chat(stream=True, stream_options={"include_usage": True}), CASCADE)
    chunks = await events(routed)
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)
    assert text_of(chunks) == "large answer from big-chat"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 4


def routed_id(chunks: list[dict[str, Any]]) -> str:
    first: str = chunks[0]["id"]
    assert first.startswith("chatcmpl-")
    return first


async def test_streamed_cascade_tool_call_is_released_as_valid_chunks() -> None:
    svc, _ = serving(tool_args(small={"tool_calls": "text"}))
    routed = await svc.generate(chat(tools=[WEATHER], stream=True), CASCADE)
    chunks = await events(routed)
    parsed = [ChatCompletionChunk.model_validate(chunk) for chunk in chunks]
    assert chunks[0]["switchyard"]["invalid"] == (
        "a tool call was written as text, not as tool_calls"
    )
    calls = [call for chunk in parsed for call in chunk.choices[0].delta.tool_calls or []]
    assert [(c.index, c.function.name) for c in calls] == [(0, "get_weather")]  # type: ignore[union-attr]
    assert json.loads(calls[0].function.arguments) == {"city": "x"}  # type: ignore[union-attr,arg-type]
    assert parsed[-1].choices[0].finish_reason == "tool_calls"
    assert all(chunk.usage is None for chunk in parsed)  # not asked for


async def test_dry_run_returns_the_plan_without_generating() -> None:
    svc, pools = serving()
    request = chat(text="write python code")
    decided = await svc.dry_run(request, "write python code", SPECULATIVE, request.needs)
    assert (decided.strategy, decided.pool, decided.target) == ("speculative", "small", "code")
    assert pools.calls == []


# --- logprobs a strategy asked for ------------------------------------------------


async def test_logprobs_only_the_cascade_asked_for_are_stripped() -> None:
    svc, pools = serving(small=CONFIDENT)
    answer = body(await svc.generate(chat(), CASCADE))
    assert pools.calls[0][1]["logprobs"] is True  # the cascade judged the answer by them
    assert answer["choices"][0]["logprobs"] is None
    assert answer["switchyard"]["mean_logprob"] == pytest.approx(-0.1)
    ChatCompletion.model_validate(answer)
    # asked for by the client too: kept, as the pool wrote them
    answer = body(await svc.generate(chat(logprobs=True, top_logprobs=1), CASCADE))
    assert (pools.calls[1][1]["logprobs"], pools.calls[1][1]["top_logprobs"]) == (True, 1)
    content = answer["choices"][0]["logprobs"]["content"]
    assert [t["token"] for t in content] == ["small", " answer", " from", " tiny-chat"]
    streamed = await events(
        await svc.generate(chat(logprobs=True, top_logprobs=1, stream=True), CASCADE)
    )
    tokens = [t["token"] for c in streamed if c["choices"][0]["logprobs"] for t in
              c["choices"][0]["logprobs"]["content"]]  # fmt: skip
    assert tokens == ["small", " answer", " from", " tiny-chat"]


# --- the validity cascade ---------------------------------------------------------


async def test_cascade_escalates_a_confident_answer_that_is_not_valid_json() -> None:
    svc, pools = serving(small={**CONFIDENT, "json": "invalid"})
    answer = body(await svc.generate(chat(response_format=AS_PERSON), CASCADE))
    got = answer["switchyard"]
    assert (got["pool"], got["escalated"], got["pools_tried"]) == (
        "large",
        True,
        ["small", "large"],
    )
    assert got["confidence"] == pytest.approx(-0.1)  # confident: escalated for validity
    assert got["invalid"] == "the answer is not valid JSON"
    assert got["detail"].endswith("; the cheap answer was unusable: the answer is not valid JSON")
    assert got["discarded_tokens"] == 8  # 'Here is the JSON: {"name": "x", "age": 1}'
    assert json.loads(answer["choices"][0]["message"]["content"]) == {"name": "x", "age": 1}
    assert [p for p, _ in pools.calls] == ["small", "large"]


async def test_cascade_keeps_a_valid_json_answer() -> None:
    svc, pools = serving(small=CONFIDENT)
    answer = body(await svc.generate(chat(response_format=AS_PERSON), CASCADE))
    got = answer["switchyard"]
    assert (got["pool"], got["escalated"], got["invalid"]) == ("small", False, None)
    assert "unusable" not in got["detail"]
    assert json.loads(answer["choices"][0]["message"]["content"]) == {"name": "x", "age": 1}
    assert [p for p, _ in pools.calls] == ["small"]


async def test_cascade_escalates_a_tool_call_written_as_text() -> None:
    svc, pools = serving(tool_args(small={**CONFIDENT, "tool_calls": "text"}))
    answer = body(await svc.generate(chat(text="Weather in Paris?", tools=[WEATHER]), CASCADE))
    got = answer["switchyard"]
    assert (got["pool"], got["escalated"]) == ("large", True)
    assert got["invalid"] == "a tool call was written as text, not as tool_calls"
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "x"}
    assert [p for p, _ in pools.calls] == ["small", "large"]


async def test_cascade_escalates_a_tool_call_whose_arguments_are_not_json() -> None:
    svc, _ = serving(tool_args(small={**CONFIDENT, "tool_calls": "invalid"}))
    got = info(await svc.generate(chat(tools=[WEATHER], tool_choice="required"), CASCADE))
    assert (got["pool"], got["invalid"]) == (
        "large",
        "the arguments of 'get_weather' are not valid JSON",
    )


async def test_cascade_keeps_a_valid_tool_call() -> None:
    svc, pools = serving(tool_args(small=CONFIDENT))
    answer = body(await svc.generate(chat(tools=[WEATHER]), CASCADE))
    got = answer["switchyard"]
    assert (got["pool"], got["escalated"], got["invalid"]) == ("small", False, None)
    assert answer["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert [p for p, _ in pools.calls] == ["small"]


async def test_speculative_does_not_accept_a_confident_but_invalid_answer() -> None:
    svc, pools = serving(small={**CONFIDENT, "json": "invalid"}, large={"token_latency_s": 0.01})
    answer = body(await svc.generate(chat(response_format=AS_PERSON), SPECULATIVE))
    got = answer["switchyard"]
    assert (got["pool"], got["speculative_winner"], got["escalated"]) == ("large", "target", True)
    assert got["invalid"] == "the answer is not valid JSON"
    assert json.loads(answer["choices"][0]["message"]["content"]) == {"name": "x", "age": 1}
    assert pools.engines["large"].aborted == []  # it was waited for, not cancelled


async def test_the_validity_check_can_be_turned_off() -> None:
    args = fake_app_args(small={**CONFIDENT, "json": "invalid"})
    args["routing"] = {"cascade": {"check_validity": False}}
    svc, pools = serving(args)
    answer = body(await svc.generate(chat(response_format=AS_PERSON), CASCADE))
    got = answer["switchyard"]
    assert (got["pool"], got["escalated"], got["invalid"]) == ("small", False, None)
    assert answer["choices"][0]["message"]["content"].startswith("Here is the JSON: ")
    assert [p for p, _ in pools.calls] == ["small"]


async def test_route_never_judges_validity() -> None:
    """Only strategies with a second pool escalate; a routed answer is the pool's."""
    svc, pools = serving(small={"json": "invalid"})
    answer = body(await svc.generate(chat(response_format=AS_PERSON)))
    assert answer["switchyard"]["invalid"] is None
    assert answer["choices"][0]["message"]["content"].startswith("Here is the JSON: ")
    assert [p for p, _ in pools.calls] == ["small"]


async def test_an_unusable_answer_is_kept_with_its_reason_when_the_target_is_saturated() -> None:
    svc, _ = serving(small={**CONFIDENT, "json": "invalid"})
    svc.monitor.record_stats("large", EngineStats(running=32, waiting=3))
    got = info(await svc.generate(chat(response_format=AS_PERSON), CASCADE))
    assert (got["pool"], got["escalated"], got["invalid"]) == (
        "small",
        False,
        "the answer is not valid JSON",
    )
    assert "escalation skipped: pool 'large' is saturated" in got["notes"]


async def test_a_speculative_race_interleaves_on_the_engines() -> None:
    """Both racers run at once: the strong pool starts before the cheap one is done."""
    svc, pools = serving(small={**UNSURE, "token_latency_s": 0.01}, large={"token_latency_s": 0.01})
    gate = pools.gates["small"] = asyncio.Event()
    task = asyncio.create_task(svc.generate(chat(), SPECULATIVE))
    for _ in range(100):  # until both calls were made, while small is held back
        if len(pools.calls) == 2:
            break
        await asyncio.sleep(0)
    assert sorted(p for p, _ in pools.calls) == ["large", "small"]
    gate.set()
    got = info(await task)
    assert (got["pool"], got["speculative_winner"]) == ("large", "target")
