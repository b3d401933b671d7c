"""OpenAIServing without Ray: pools are fake engines called in-process."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from core.errors import ContextLengthError, EngineError, PromptError
from deployments.config import AppConfig
from deployments.openai.errors import to_api_error
from deployments.openai.protocol import ChatCompletionRequest, CompletionRequest
from deployments.openai.responses import SSE_DONE
from deployments.openai.serving import OpenAIServing, Routed
from models.engines import create_engine
from models.engines.base import GenerationChunk, GenerationRequest, GenerationResult, collect
from models.engines.fake import FakeEngineOptions
from routing.planner import Wishes
from tests.conftest import fake_app, fake_app_args


class InProcessPools:
    """PoolClient over fake engines, recording which pool got which request."""

    def __init__(self, config: AppConfig, fake: dict[str, FakeEngineOptions]) -> None:
        self.engines = {
            name: create_engine("fake", config.model(p.model), pool=name, fake=fake.get(name))
            for name, p in config.pools.items()
        }
        self.calls: list[tuple[str, GenerationRequest]] = []
        self.woken: list[str] = []

    def wake(self, pool: str) -> None:
        self.woken.append(pool)

    async def generate(self, pool: str, request: GenerationRequest) -> GenerationResult:
        self.calls.append((pool, request))
        return await collect(self.engines[pool].generate(request))

    async def stream(self, pool: str, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        self.calls.append((pool, request))
        async for chunk in self.engines[pool].generate(request):
            yield chunk


def serving(
    args: dict[str, Any] | None = None, **fakes: dict[str, Any]
) -> tuple[OpenAIServing, InProcessPools]:
    """The serving logic over in-process fake engines; `args` replaces `fake_app_args()`."""
    config, fake = fake_app(args, **fakes)
    pools = InProcessPools(config, fake)
    return OpenAIServing(config, pools), pools


def chat(model: str = "auto", text: str = "hello there", **extra: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": model, "messages": [{"role": "user", "content": text}], **extra}
    )


async def events(routed: Routed) -> list[Any]:
    assert routed.stream is not None
    lines = [line async for line in routed.stream]
    assert lines[-1] == SSE_DONE
    assert all(line.startswith("data: ") and line.endswith("\n\n") for line in lines)
    return [json.loads(line[6:]) for line in lines[:-1]]


async def test_chat_answer_usage_and_route() -> None:
    svc, pools = serving()
    routed = await svc.chat(chat(text="What is the capital of France?"))
    body = routed.body.model_dump()  # type: ignore[union-attr]
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": "small answer from tiny-chat",
    }
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["model"] == "tiny-chat"
    # "user: What is the capital of France?" is 7 words in the fake's rendering
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11}
    assert body["switchyard"]["reason"] == "default"
    # `route` never reads logprobs, so the engine was not asked for them.
    assert body["switchyard"]["mean_logprob"] is None
    assert body["choices"][0]["logprobs"] is None
    assert routed.headers()["x-switchyard-pool"] == "small"
    assert routed.headers()["x-switchyard-model"] == "tiny-chat"
    assert pools.calls[0][1].sampling.max_tokens == 64  # model default: min(256, cap)


async def test_auto_routes_code_to_code_pool() -> None:
    svc, pools = serving()
    routed = await svc.chat(chat(text="Write a python function to sort a list"))
    assert routed.route.pool == "code"
    assert routed.route.reason == "code_markers"
    assert [pool for pool, _ in pools.calls] == ["code"]


async def test_model_id_pins_pool() -> None:
    svc, pools = serving()
    routed = await svc.chat(chat(model="big-chat", text="def f(): pass"))
    assert (routed.route.pool, routed.route.reason) == ("large", "pinned_model")


async def test_sampling_defaults_and_overrides_reach_the_engine() -> None:
    svc, pools = serving()
    await svc.chat(chat(model="large", max_tokens=7, temperature=0, stop="END", seed=3))
    sampling = pools.calls[0][1].sampling
    assert (sampling.max_tokens, sampling.temperature, sampling.stop, sampling.seed) == (
        7,
        0.0,
        ("END",),
        3,
    )


async def test_max_tokens_truncates_with_length_finish() -> None:
    svc, _ = serving()
    body = (await svc.chat(chat(model="large", max_tokens=2))).body.model_dump()  # type: ignore[union-attr]
    assert body["choices"][0]["message"]["content"] == "large answer"
    assert body["choices"][0]["finish_reason"] == "length"


async def test_max_tokens_above_model_cap_is_400() -> None:
    svc, pools = serving()
    with pytest.raises(PromptError) as err:
        await svc.chat(chat(model="small", max_tokens=65))
    api = to_api_error(err.value)
    assert (api.status, api.param) == (400, "max_tokens")
    assert "limit of 64 for model 'tiny-chat'" in api.message
    assert pools.calls == []


async def test_auto_routes_past_a_pool_whose_model_cannot_give_max_tokens() -> None:
    svc, pools = serving()
    routed = await svc.chat(chat(max_tokens=65))  # small's model stops at 64
    assert routed.route.pool != "small"
    assert [p for p, _ in pools.calls] == [routed.route.pool]


async def test_without_max_tokens_each_pool_uses_its_models_default() -> None:
    svc, pools = serving(small={"logprobs": [-3.0]})  # unsure: the cascade escalates
    await svc.chat(chat(), Wishes(strategy="cascade"))
    assert [(p, r.sampling.max_tokens) for p, r in pools.calls] == [("small", 64), ("large", 256)]
    await svc.completion(CompletionRequest(model="small", prompt="hi"))
    assert pools.calls[-1][1].sampling.max_tokens == 64  # the catalog default, not 16


async def test_prompt_longer_than_context_is_refused() -> None:
    svc, _ = serving()
    with pytest.raises(ContextLengthError, match="context window is 128 tokens"):
        await svc.chat(chat(model="small", text="word " * 100))


async def test_chat_to_completion_only_model_is_400() -> None:
    args = fake_app_args()
    args["pools"]["small"]["model"] = "base-lm"
    svc, _ = serving(args)
    with pytest.raises(PromptError, match="completion-only") as err:
        await svc.chat(chat(model="small"))
    assert (to_api_error(err.value).status, err.value.param) == (400, "model")
    routed = await svc.chat(chat())  # auto: the chat goes to a chat model
    assert routed.route.pool != "small"


async def test_stream_chunks_in_openai_format() -> None:
    svc, _ = serving()
    routed = await svc.chat(chat(stream=True, stream_options={"include_usage": True}))
    chunks = await events(routed)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[0]["switchyard"]["pool"] == "small"
    text = "".join(c["choices"][0]["delta"]["content"] for c in chunks[1:-1])
    assert text == "small answer from tiny-chat"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1


async def test_stream_without_usage_has_no_usage_chunk() -> None:
    svc, _ = serving()
    chunks = await events(await svc.chat(chat(stream=True)))
    assert all(c["usage"] is None for c in chunks)


async def test_stream_falls_back_before_the_first_token() -> None:
    svc, _ = serving(small={"fail_requests": True})
    routed = await svc.chat(chat(stream=True))
    assert (routed.route.pool, routed.route.pools_tried, routed.route.fallback) == (
        "large",
        ["small", "large"],
        True,
    )
    chunks = await events(routed)
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks[1:]) == (
        "large answer from big-chat"
    )


async def test_failure_of_the_whole_chain_is_an_http_error() -> None:
    svc, _ = serving(small={"fail_requests": True}, large={"fail_requests": True})
    with pytest.raises(
        EngineError, match=r"no pool could serve the request \(tried: small, large\)"
    ):
        await svc.chat(chat(stream=True))
    with pytest.raises(EngineError, match="tried: small, large"):
        await svc.chat(chat())


async def test_failure_mid_stream_ends_with_error_event() -> None:
    svc, _ = serving(small={"fail_after_tokens": 2})
    chunks = await events(await svc.chat(chat(stream=True)))
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks[1:-1]) == "small answer"
    assert chunks[-1] == {
        "error": {
            "message": "fake engine failure mid-stream",
            "type": "server_error",
            "param": None,
            "code": "engine_error",
        }
    }


async def test_completion_and_stream() -> None:
    svc, _ = serving()
    req = CompletionRequest.model_validate({"model": "large", "prompt": "Once upon"})
    body = (await svc.completion(req)).body.model_dump()  # type: ignore[union-attr]
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"] == "large answer from big-chat"
    assert body["usage"]["prompt_tokens"] == 2
    req = CompletionRequest.model_validate({"model": "large", "prompt": ["Once"], "stream": True})
    chunks = await events(await svc.completion(req))
    assert "".join(c["choices"][0]["text"] for c in chunks) == "large answer from big-chat"


def test_models_lists_auto_pools_and_served_models() -> None:
    svc, _ = serving()
    ids = [card.id for card in svc.models().data]
    assert ids == ["auto", "small", "large", "code", "tiny-chat", "big-chat", "coder"]


async def test_logprobs_in_openai_shape_only_when_asked() -> None:
    svc, pools = serving()
    routed = await svc.chat(chat(model="small", logprobs=True, top_logprobs=2))
    choice = routed.body.model_dump()["choices"][0]  # type: ignore[union-attr]
    content = choice["logprobs"]["content"]
    assert [t["token"] for t in content] == ["small", " answer", " from", " tiny-chat"]
    assert content[0]["logprob"] == pytest.approx(-0.1)
    assert content[0]["bytes"] == list(b"small")
    assert [t["token"] for t in content[0]["top_logprobs"]] == ["small", "small~1"]
    assert pools.calls[-1][1].sampling.logprobs == 2

    routed = await svc.completion(CompletionRequest(model="small", prompt="hi", logprobs=1))
    lp = routed.body.model_dump()["choices"][0]["logprobs"]  # type: ignore[union-attr]
    assert lp["tokens"] == ["small", " answer", " from", " tiny-chat"]
    assert lp["text_offset"] == [0, 5, 12, 17]
    assert lp["top_logprobs"][1] == {" answer": pytest.approx(-0.1)}


async def test_streamed_completion_logprobs_keep_offsets_across_chunks() -> None:
    svc, _ = serving()
    routed = await svc.completion(
        CompletionRequest(model="small", prompt="hi", logprobs=0, stream=True)
    )
    chunks = [e for e in await events(routed) if e["choices"] and e["choices"][0]["text"]]
    offsets = [o for e in chunks for o in e["choices"][0]["logprobs"]["text_offset"]]
    assert offsets == [0, 5, 12, 17]


async def test_cascade_asks_the_engine_for_logprobs_route_does_not() -> None:
    svc, pools = serving()
    await svc.chat(chat(model="small"))
    assert pools.calls[-1][1].sampling.engine_logprobs is None
    routed = await svc.chat(chat(), Wishes(strategy="cascade"))
    assert routed.route.strategy == "cascade"
    assert all(req.sampling.engine_logprobs == 0 for _, req in pools.calls[1:])
    assert routed.body.model_dump()["switchyard"]["mean_logprob"] is not None  # type: ignore[union-attr]


async def test_vllm_sampling_extensions_reach_the_engine() -> None:
    svc, pools = serving()
    routed = await svc.completion(
        CompletionRequest(
            model="small", prompt="hi", max_tokens=10, ignore_eos=True, min_tokens=2,
            top_k=-1, repetition_penalty=1.2, stop_token_ids=[7],
        )
    )  # fmt: skip
    sampling = pools.calls[-1][1].sampling
    assert (sampling.ignore_eos, sampling.min_tokens, sampling.top_k) == (True, 2, None)
    assert (sampling.repetition_penalty, sampling.stop_token_ids) == (1.2, (7,))
    # the fake engine, like vLLM, keeps generating past its end of answer
    assert routed.body.model_dump()["usage"]["completion_tokens"] == 10  # type: ignore[union-attr]


async def test_min_tokens_above_max_tokens_is_refused() -> None:
    svc, _ = serving()
    with pytest.raises(PromptError) as err:
        await svc.chat(chat(model="small", max_tokens=4, min_tokens=5))
    assert (to_api_error(err.value).status, err.value.param) == (400, "min_tokens")
