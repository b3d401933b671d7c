"""OpenAIServing without Ray: pools are fake Ray Serve LLM engines called in-process
(`tests.support.pools.InProcessPools`), so requests and answers are vLLM's own."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from core.errors import AllPoolsFailedError, EngineError, EngineRefusedError, PromptError
from deployments.engine_requests import strict_model
from deployments.openai.errors import to_api_error
from deployments.openai.protocol import ChatRequest, CompletionRequest
from deployments.openai.responses import SSE_DONE
from deployments.openai.serving import OpenAIServing, Routed
from routing.planner import Wishes
from tenancy.ledger import LedgerEntry
from tests.conftest import fake_app, fake_app_args
from tests.support.pools import WEATHER, InProcessPools

__all__ = ["InProcessPools", "body", "chat", "completion", "events", "serving"]

TOOL_MODELS = ("tiny-chat", "big-chat")  # `tool_args`: the models with a tool parser


def serving(
    args: dict[str, Any] | None = None, **fakes: dict[str, Any]
) -> tuple[OpenAIServing, InProcessPools]:
    """The serving logic over in-process fake engines; `args` replaces `fake_app_args()`."""
    config, fake = fake_app(args, **fakes)
    pools = InProcessPools(config, fake)
    return OpenAIServing(config, pools), pools


def tool_args(**fakes: dict[str, Any]) -> dict[str, Any]:
    """`fake_app_args` where the small and large pools' models have vLLM's `hermes` tool
    parser and the code pool's model has none (it is not offered tool calling)."""
    args = fake_app_args(**fakes)
    for model in args["models"]:
        if model["id"] in TOOL_MODELS:
            model["tool_call_parser"] = "hermes"
    return args


def chat(model: str = "auto", text: str = "hello there", **extra: Any) -> ChatRequest:
    return ChatRequest.model_validate(
        {"model": model, "messages": [{"role": "user", "content": text}], **extra}
    )


def completion(model: str = "auto", prompt: Any = "hi", **extra: Any) -> CompletionRequest:
    return CompletionRequest.model_validate({"model": model, "prompt": prompt, **extra})


def engine_request(method: str, sent: dict[str, Any]) -> Any:
    """A body a pool was sent, as the pool reads it: vLLM's own (strict) request model."""
    return strict_model(method).model_validate(sent)


def body(routed: Routed) -> dict[str, Any]:
    """A whole answer's JSON (vLLM's response with `switchyard` added)."""
    assert isinstance(routed.body, str), routed
    parsed: dict[str, Any] = json.loads(routed.body)
    return parsed


async def events(routed: Routed) -> list[Any]:
    """A stream's events as JSON, checked to be SSE `data:` events ending in `[DONE]`.
    One item of the stream may hold several events (the pool coalesces them)."""
    assert routed.stream is not None and routed.body is None
    items = [item async for item in routed.stream]
    assert items and all(item.endswith("\n\n") for item in items)
    raw = [f"{event}\n\n" for event in "".join(items).split("\n\n") if event]
    assert raw[-1] == SSE_DONE
    assert all(event.startswith("data: ") for event in raw)
    return [json.loads(event.removeprefix("data: ")) for event in raw[:-1]]


def text_of(chunks: list[dict[str, Any]], index: int = 0) -> str:
    """The content a chat stream's chunks add to choice `index`."""
    choices = [c for chunk in chunks for c in chunk.get("choices", []) if c["index"] == index]
    return "".join(c["delta"].get("content") or "" for c in choices)


class Sink:
    """A ledger that keeps what it is given."""

    def __init__(self) -> None:
        self.entries: list[LedgerEntry] = []

    def record(self, entry: LedgerEntry) -> None:
        self.entries.append(entry)


async def test_chat_answer_usage_and_route() -> None:
    svc, pools = serving()
    sink = svc.ledger = Sink()
    routed = await svc.generate(chat(text="What is the capital of France?"))
    answer = body(routed)
    ChatCompletion.model_validate(answer)  # what the official client reads
    message = answer["choices"][0]["message"]
    assert (message["role"], message["content"]) == ("assistant", "small answer from tiny-chat")
    assert message.get("tool_calls") is None
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert answer["model"] == "tiny-chat"
    # "user: What is the capital of France?" is 7 words in the fake's rendering
    usage = answer["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (7, 4, 11)
    assert answer["switchyard"]["reason"] == "default"
    # `route` never reads logprobs, so the engine was not asked for them.
    assert answer["switchyard"]["mean_logprob"] is None
    assert answer["choices"][0]["logprobs"] is None
    assert routed.headers()["x-switchyard-pool"] == "small"
    assert routed.headers()["x-switchyard-model"] == "tiny-chat"
    ((pool, sent),) = pools.calls
    assert (pool, sent["model"], sent["max_completion_tokens"]) == ("small", "tiny-chat", 64)
    assert "logprobs" not in sent and "max_tokens" not in sent
    # vLLM's response id is built from the request id Switchyard sends: it is the ledger's
    assert re.fullmatch(r"chatcmpl-[0-9a-f]{32}", answer["id"])
    assert answer["id"] == f"chatcmpl-{sent['request_id']}" == sink.entries[0].id
    assert (sink.entries[0].prompt_tokens, sink.entries[0].completion_tokens) == (7, 4)


async def test_auto_routes_code_to_code_pool() -> None:
    svc, pools = serving()
    routed = await svc.generate(chat(text="Write a python function to sort a list"))
    assert routed.route.pool == "code"
    assert routed.route.reason == "code_markers"
    assert [pool for pool, _ in pools.calls] == ["code"]
    assert body(routed)["choices"][0]["message"]["content"] == "def answer(): return 42"


async def test_model_id_pins_pool() -> None:
    svc, pools = serving()
    routed = await svc.generate(chat(model="big-chat", text="def f(): pass"))
    assert (routed.route.pool, routed.route.reason) == ("large", "pinned_model")
    assert [(pool, request["model"]) for pool, request in pools.calls] == [("large", "big-chat")]


async def test_sampling_defaults_and_overrides_reach_the_engine() -> None:
    args = fake_app_args()
    args["models"][1].update(temperature=0.3, top_p=0.9)  # big-chat's defaults
    svc, pools = serving(args)
    await svc.generate(chat(model="large", max_tokens=7, temperature=0, stop="END", seed=3))
    sent = pools.calls[0][1]
    # chat requests carry the pool's cap as `max_completion_tokens` (vLLM's current field)
    assert (sent["max_completion_tokens"], "max_tokens" in sent) == (7, False)
    sampling = engine_request("chat", sent).to_sampling_params(7, {})  # as the pool reads it
    assert (sampling.max_tokens, sampling.temperature, sampling.stop, sampling.seed) == (
        7,
        0.0,
        ["END"],
        3,
    )
    assert sent["top_p"] == 0.9  # not given: the catalog's default (greedy: vLLM ignores it)
    await svc.generate(chat(model="large"))
    sampling = engine_request("chat", pools.calls[1][1]).to_sampling_params(256, {})
    assert (sampling.temperature, sampling.top_p) == (0.3, 0.9)


async def test_max_tokens_truncates_with_length_finish() -> None:
    svc, _ = serving()
    answer = body(await svc.generate(chat(model="large", max_tokens=2)))
    assert answer["choices"][0]["message"]["content"] == "large answer"
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"]["completion_tokens"] == 2


async def test_max_tokens_above_model_cap_is_400() -> None:
    svc, pools = serving()
    with pytest.raises(PromptError) as err:
        await svc.generate(chat(model="small", max_tokens=65))
    api = to_api_error(err.value)
    assert (api.status, api.param) == (400, "max_tokens")
    assert "limit of 64 for model 'tiny-chat'" in api.message
    assert pools.calls == []


async def test_auto_routes_past_a_pool_whose_model_cannot_give_max_tokens() -> None:
    svc, pools = serving()
    routed = await svc.generate(chat(max_tokens=65))  # small's model stops at 64
    assert routed.route.pool != "small"
    assert [p for p, _ in pools.calls] == [routed.route.pool]


async def test_without_max_tokens_each_pool_uses_its_models_default() -> None:
    svc, pools = serving(small={"logprobs": [-3.0]})  # unsure: the cascade escalates
    await svc.generate(chat(), Wishes(strategy="cascade"))
    assert [(p, r["max_completion_tokens"]) for p, r in pools.calls] == [
        ("small", 64),
        ("large", 256),
    ]

    routed = await svc.generate(completion(model="small", prompt="hi", ignore_eos=True))
    assert pools.calls[-1][1]["max_tokens"] == 64  # the catalog default, not vLLM's 16
    assert body(routed)["usage"]["completion_tokens"] == 64


async def test_a_prompt_longer_than_the_context_is_refused_by_the_engine() -> None:
    """vLLM's check, as vLLM's server answers it: a prompt alone over the context is a 400
    with OpenAI's code; another pool would refuse it too, so none is tried."""
    svc, pools = serving()
    with pytest.raises(EngineRefusedError) as err:
        await svc.generate(chat(model="small", text="word " * 130))  # 131 tokens, context 128
    api = to_api_error(err.value)
    assert (api.status, api.code, api.param) == (400, "context_length_exceeded", "input_tokens")
    assert "maximum context length is 128 tokens" in api.message
    assert "your prompt contains 131 input tokens" in api.message
    assert [p for p, _ in pools.calls] == ["small"]
    assert svc.metrics.summary()["outcomes"] == {"client_error": 1}


async def test_max_tokens_beyond_what_the_context_leaves_is_shrunk_as_vllm_does() -> None:
    svc, _ = serving()
    # 101 prompt tokens in a context of 128: of the default 64, only 27 fit
    answer = body(await svc.generate(chat(model="small", text="word " * 100, ignore_eos=True)))
    assert answer["usage"]["completion_tokens"] == 27
    assert answer["choices"][0]["finish_reason"] == "length"


async def test_an_unknown_field_is_refused_by_the_pool_with_a_400_naming_it() -> None:
    """The pool parses the body with vLLM's request model, strictly: a misspelt field is
    refused, never ignored; another pool would refuse it too, so none is tried."""
    svc, pools = serving()
    sink = svc.ledger = Sink()
    with pytest.raises(EngineRefusedError) as err:
        await svc.generate(chat(temprature=0.5))
    api = to_api_error(err.value)
    assert (api.status, api.code, api.param) == (400, "unsupported_parameter", "temprature")
    assert [p for p, _ in pools.calls] == ["small"]
    assert pools.calls[0][1]["temprature"] == 0.5  # forwarded as the client sent it
    assert svc.monitor.circuit("small") == "closed"
    assert [(e.outcome, e.cost_usd) for e in sink.entries] == [("client_error", 0.0)]


async def test_a_body_vllms_validators_refuse_is_a_400_naming_the_parameter() -> None:
    """vLLM's own validators (not pydantic's) refuse some bodies: a client's error too,
    a 400 naming the parameter, with no fallback and nothing held against the pool."""
    svc, pools = serving()
    for _ in range(4):  # more than the failure threshold (3)
        with pytest.raises(EngineRefusedError) as err:
            await svc.generate(chat(top_logprobs=2))  # top_logprobs needs logprobs
        api = to_api_error(err.value)
        assert (api.status, api.param) == (400, "top_logprobs")
    assert [p for p, _ in pools.calls] == ["small"] * 4  # no fallback: a client error
    assert svc.monitor.circuit("small") == "closed"


async def test_chat_to_completion_only_model_is_400() -> None:
    args = fake_app_args()
    args["pools"]["small"]["model"] = "base-lm"
    svc, pools = serving(args)
    with pytest.raises(PromptError, match="completion-only") as err:
        await svc.generate(chat(model="small"))
    assert (to_api_error(err.value).status, err.value.param) == (400, "model")
    assert pools.calls == []
    routed = await svc.generate(chat())  # auto: the chat goes to a chat model
    assert routed.route.pool != "small"


async def test_stream_chunks_in_openai_format() -> None:
    svc, pools = serving()
    routed = await svc.generate(chat(stream=True, stream_options={"include_usage": True}))
    chunks = await events(routed)
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[0]["switchyard"]["pool"] == "small"
    assert all("switchyard" not in c for c in chunks[1:])
    assert text_of(chunks) == "small answer from tiny-chat"
    assert [c["delta"]["content"] for c in (ch["choices"][0] for ch in chunks[1:-1])] == [
        "small",
        " answer",
        " from",
        " tiny-chat",
    ]  # relayed event by event
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert {c["id"] for c in chunks} == {f"chatcmpl-{pools.calls[0][1]['request_id']}"}


async def test_stream_without_usage_has_no_usage_chunk_but_is_counted() -> None:
    svc, pools = serving()
    sink = svc.ledger = Sink()
    chunks = await events(await svc.generate(chat(stream=True)))
    assert all(c.get("usage") is None for c in chunks)
    assert all(c["choices"] for c in chunks)
    assert text_of(chunks) == "small answer from tiny-chat"
    # Switchyard asked the pool for the usage event (the bill), then dropped it
    assert pools.calls[0][1]["stream_options"]["include_usage"] is True
    (entry,) = sink.entries
    assert (entry.outcome, entry.prompt_tokens, entry.completion_tokens) == ("ok", 3, 4)


async def test_stream_falls_back_before_the_first_token() -> None:
    svc, _ = serving(small={"fail_requests": True})
    routed = await svc.generate(chat(stream=True))
    assert (routed.route.pool, routed.route.pools_tried, routed.route.fallback) == (
        "large",
        ["small", "large"],
        True,
    )
    chunks = await events(routed)
    assert text_of(chunks) == "large answer from big-chat"
    assert chunks[0]["switchyard"]["pools_tried"] == ["small", "large"]


async def test_failure_of_the_whole_chain_is_an_http_error() -> None:
    svc, _ = serving(small={"fail_requests": True}, large={"fail_requests": True})
    with pytest.raises(
        AllPoolsFailedError, match=r"no pool could serve the request \(tried: small, large\)"
    ):
        await svc.generate(chat(stream=True))
    with pytest.raises(EngineError, match="tried: small, large") as err:
        await svc.generate(chat())
    assert to_api_error(err.value).status == 503


async def test_failure_mid_stream_ends_with_the_pools_error_event() -> None:
    """After the first event there is no switching pools: the stream ends with the error
    event vLLM's server wrote (relayed as it is), then `[DONE]`."""
    svc, _ = serving(small={"fail_after_tokens": 2})
    chunks = await events(await svc.generate(chat(stream=True)))
    assert text_of(chunks[:-1]) == "small answer"
    assert chunks[-1] == {
        "error": {
            "message": "Internal server error",
            "type": "InternalServerError",
            "param": None,
            "code": 500,
        }
    }
    assert svc.metrics.summary()["outcomes"] == {"error": 1}


async def test_completion_and_stream() -> None:
    svc, _ = serving()
    answer = body(await svc.generate(completion(model="large", prompt="Once upon")))
    Completion.model_validate(answer)
    assert answer["object"] == "text_completion"
    assert re.fullmatch(r"cmpl-[0-9a-f]{32}", answer["id"])
    assert answer["choices"][0]["text"] == "large answer from big-chat"
    assert answer["usage"]["prompt_tokens"] == 2
    chunks = await events(
        await svc.generate(completion(model="large", prompt=["Once"], stream=True))
    )
    assert {c["object"] for c in chunks} == {"text_completion"}
    assert "".join(c["choices"][0]["text"] for c in chunks) == "large answer from big-chat"


def test_models_lists_auto_pools_served_models_and_their_capabilities() -> None:
    args = tool_args()
    args["models"][2]["structured_output"] = False  # coder
    svc, _ = serving(args)
    cards = {card.id: card for card in svc.models().data}
    assert list(cards) == [
        "auto", "small", "large", "code", "tiny-chat", "big-chat", "coder", "all-minilm-l6-v2",
    ]  # fmt: skip
    assert cards["auto"].switchyard == {"pools": ["small", "large", "code"]}
    every = ["chat", "completion", "structured_output", "tools"]
    assert cards["small"].switchyard == {
        "pool": "small",
        "model": "tiny-chat",
        "capabilities": every,
    }
    assert cards["large"].switchyard["capabilities"] == every
    assert cards["code"].switchyard["capabilities"] == ["chat", "completion"]
    assert cards["tiny-chat"].switchyard == {
        "pools": ["small"],
        "chat": True,
        "capabilities": every,
        "max_tokens": 64,
        "context_length": 128,
    }
    assert cards["coder"].switchyard["capabilities"] == ["chat", "completion"]
    assert cards["all-minilm-l6-v2"].switchyard["capabilities"] == ["embeddings"]
    assert "base-lm" not in cards  # no pool serves it


async def test_logprobs_the_client_asked_for_are_relayed_as_the_pool_wrote_them() -> None:
    """Their shape is vLLM's now (tests/unit/test_fake_engine.py covers the fake's); what
    Switchyard owns is that the client's parameters reach the pool and the answer's
    logprobs reach the client."""
    svc, pools = serving()
    routed = await svc.generate(chat(model="small", logprobs=True, top_logprobs=2))
    sent = pools.calls[-1][1]
    assert (sent["logprobs"], sent["top_logprobs"]) == (True, 2)
    content = body(routed)["choices"][0]["logprobs"]["content"]
    assert [t["token"] for t in content] == ["small", " answer", " from", " tiny-chat"]
    assert content[0]["logprob"] == pytest.approx(-0.1)
    assert [t["token"] for t in content[0]["top_logprobs"]] == ["small", "small~1"]

    routed = await svc.generate(completion(model="small", prompt="hi", logprobs=1))
    assert pools.calls[-1][1]["logprobs"] == 1
    lp = body(routed)["choices"][0]["logprobs"]
    assert lp["tokens"] == ["small", " answer", " from", " tiny-chat"]
    assert lp["token_logprobs"] == pytest.approx([-0.1] * 4)


async def test_cascade_asks_the_engine_for_logprobs_route_does_not() -> None:
    svc, pools = serving()
    await svc.generate(chat(model="small"))
    assert "logprobs" not in pools.calls[-1][1]
    routed = await svc.generate(chat(), Wishes(strategy="cascade"))
    assert routed.route.strategy == "cascade"
    assert [(p, r["logprobs"], r["top_logprobs"]) for p, r in pools.calls[1:]] == [
        ("small", True, 0)
    ]
    answer = body(routed)
    assert answer["switchyard"]["mean_logprob"] == pytest.approx(-0.1)
    assert answer["choices"][0]["logprobs"] is None  # only the strategy asked: stripped
    routed = await svc.generate(completion(prompt="hi"), Wishes(strategy="cascade"))
    assert pools.calls[-1][1]["logprobs"] == 0
    assert body(routed)["choices"][0]["logprobs"] is None


async def test_vllm_sampling_extensions_reach_the_engine() -> None:
    svc, pools = serving()
    routed = await svc.generate(
        completion(
            model="small", prompt="hi", max_tokens=10, ignore_eos=True, min_tokens=2,
            top_k=-1, repetition_penalty=1.2, stop_token_ids=[7],
        )
    )  # fmt: skip
    sent = pools.calls[-1][1]
    assert (sent["ignore_eos"], sent["min_tokens"], sent["top_k"]) == (True, 2, -1)
    assert (sent["repetition_penalty"], sent["stop_token_ids"]) == (1.2, [7])
    sampling = engine_request("completions", sent).to_sampling_params(10, {})  # vLLM's reading
    assert (sampling.ignore_eos, sampling.min_tokens, sampling.max_tokens) == (True, 2, 10)
    assert (sampling.repetition_penalty, sampling.stop_token_ids) == (1.2, [7])
    # the fake engine, like vLLM, keeps generating past its end of answer
    assert body(routed)["usage"]["completion_tokens"] == 10


async def test_min_tokens_above_max_tokens_is_refused() -> None:
    svc, pools = serving()
    with pytest.raises(PromptError) as err:
        await svc.generate(chat(model="small", max_tokens=4, min_tokens=5))
    assert (to_api_error(err.value).status, err.value.param) == (400, "min_tokens")
    assert pools.calls == []


# --- n: several answers -----------------------------------------------------------


async def test_n_choices_through_route() -> None:
    svc, pools = serving()
    sink = svc.ledger = Sink()
    answer = body(await svc.generate(chat(n=2)))
    assert [(c["index"], c["message"]["content"]) for c in answer["choices"]] == [
        (0, "small answer from tiny-chat"),
        (1, "small answer from tiny-chat"),
    ]
    assert (answer["usage"]["completion_tokens"], answer["usage"]["total_tokens"]) == (8, 11)
    assert [(p, r["n"]) for p, r in pools.calls] == [("small", 2)]  # one call, both answers
    assert sink.entries[0].completion_tokens == 8
    chunks = await events(await svc.generate(chat(n=2, stream=True)))
    assert text_of(chunks, 0) == text_of(chunks, 1) == "small answer from tiny-chat"


@pytest.mark.parametrize("strategy", ["cascade", "speculative"])
async def test_a_strategy_judging_one_answer_asked_for_n_2_is_400(strategy: str) -> None:
    svc, pools = serving()
    with pytest.raises(PromptError, match="judges one answer") as err:
        await svc.generate(chat(n=2), Wishes(strategy=strategy))  # type: ignore[arg-type]
    assert (to_api_error(err.value).status, err.value.param) == (400, "n")
    with pytest.raises(PromptError):  # two prompts are two answers too
        await svc.generate(completion(prompt=["a", "b"]), Wishes(strategy=strategy))  # type: ignore[arg-type]
    assert pools.calls == []


async def test_a_default_cascade_routes_a_request_for_n_2() -> None:
    args = fake_app_args(small={"logprobs": [-3.0]})  # a cascade would escalate
    args["routing"] = {"default_strategy": "cascade"}
    svc, pools = serving(args)
    assert (await svc.generate(chat())).route.strategy == "cascade"  # the default is in force
    assert [p for p, _ in pools.calls] == ["small", "large"]
    routed = await svc.generate(chat(n=2))
    assert (routed.route.strategy, routed.route.pool) == ("route", "small")
    assert len(body(routed)["choices"]) == 2
    routed = await svc.generate(completion(prompt=["a", "b"]))
    assert routed.route.strategy == "route"
    assert len(body(routed)["choices"]) == 2
    assert [p for p, _ in pools.calls[2:]] == ["small", "small"]


# --- capabilities: tools ---------------------------------------------------------


async def test_a_tools_request_is_never_planned_onto_a_pool_without_a_tool_parser() -> None:
    """The rules want `code` for this text, but its model has no tool parser: neither
    the route, nor a fallback, nor a cascade's escalation may use it."""
    code_text = "Write a python function to sort a list"
    svc, pools = serving(tool_args())
    assert (await svc.generate(chat(text=code_text))).route.pool == "code"  # without tools
    routed = await svc.generate(chat(text=code_text, tools=[WEATHER]))
    assert routed.route.pool == "small"
    assert "pool 'code' is not available to this request" in routed.route.detail
    call = body(routed)["choices"][0]["message"]["tool_calls"][0]
    assert (call["function"]["name"], json.loads(call["function"]["arguments"])) == (
        "get_weather",
        {"city": "x"},
    )
    plan = await svc.dry_run(
        chat(text=code_text, tools=[WEATHER]), code_text, Wishes(), frozenset({"chat", "tools"})
    )
    assert plan.pool == "small" and "code" not in plan.fallbacks
    cascade = await svc.dry_run(
        chat(text=code_text, tools=[WEATHER]),
        code_text,
        Wishes(strategy="cascade"),
        frozenset({"chat", "tools"}),
    )
    assert cascade.target != "code"

    svc, pools = serving(tool_args(small={"fail_requests": True}))
    routed = await svc.generate(chat(text=code_text, tools=[WEATHER]))
    assert (routed.route.pool, routed.route.pools_tried) == ("large", ["small", "large"])
    # tool_choice none needs no parser: the code pool serves it
    routed = await svc.generate(chat(text=code_text, tools=[WEATHER], tool_choice="none"))
    assert routed.route.pool == "code"
    assert [p for p, _ in pools.calls] == ["small", "large", "code"]


@pytest.mark.parametrize("model", ["code", "coder"])
async def test_tools_pinned_to_a_pool_without_a_tool_parser_is_400(model: str) -> None:
    svc, pools = serving(tool_args())
    with pytest.raises(PromptError) as err:
        await svc.generate(chat(model=model, tools=[WEATHER]))
    api = to_api_error(err.value)
    assert (api.status, api.param) == (400, "tools")
    assert api.message == "model 'coder' (pool 'code') does not support tools"
    assert pools.calls == []
    routed = await svc.generate(chat(model="small", tools=[WEATHER]))  # a model with a parser
    assert body(routed)["choices"][0]["finish_reason"] == "tool_calls"
