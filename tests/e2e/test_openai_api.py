"""vLLM's OpenAI API through Switchyard, on the real engines: tools, structured output,
`n`, every sampling parameter taking effect, the validity cascade, aborts on disconnect.

Shares the embedded app (tests/e2e/conftest.py) with test_embedded.py. Small
models vary; each assertion is about a fact the engine guarantees (a schema-constrained
answer parses, a stop token stops) or compares two runs of the same engine.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from tests.e2e.conftest import APP
from tests.support.pools import WEATHER

pytestmark = pytest.mark.e2e

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}
ASK_WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def health(serve_port: int) -> Any:
    def read() -> dict[str, Any]:
        body: dict[str, Any] = httpx.get(f"http://127.0.0.1:{serve_port}/{APP}/health").json()
        return body

    return read


def route(resp: Any) -> dict[str, Any]:
    info: dict[str, Any] = resp.model_extra["switchyard"]
    return info


@pytest.mark.parametrize("choice", ["required", "named"])
def test_tool_calls_come_back_as_tool_calls(api: openai.OpenAI, choice: str) -> None:
    tool_choice: Any = (
        "required"
        if choice == "required"
        else {"type": "function", "function": {"name": "get_weather"}}
    )
    resp = api.chat.completions.create(
        model="large", messages=ASK_WEATHER, tools=[WEATHER], tool_choice=tool_choice,
        temperature=0, max_tokens=64,
    )  # fmt: skip
    calls = resp.choices[0].message.tool_calls
    assert calls and calls[0].function.name == "get_weather"
    jsonschema.validate(json.loads(calls[0].function.arguments), WEATHER["function"]["parameters"])
    assert resp.choices[0].finish_reason in ("tool_calls", "stop")


def test_tool_calls_stream_as_deltas(api: openai.OpenAI) -> None:
    stream = api.chat.completions.create(
        model="large", messages=ASK_WEATHER, tools=[WEATHER], tool_choice="required",
        temperature=0, max_tokens=64, stream=True,
    )  # fmt: skip
    name, arguments = "", ""
    for chunk in stream:
        for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            name += delta.function.name or "" if delta.function else ""
            arguments += delta.function.arguments or "" if delta.function else ""
    assert name == "get_weather"
    jsonschema.validate(json.loads(arguments), WEATHER["function"]["parameters"])


def test_json_schema_answer_validates(api: openai.OpenAI) -> None:
    resp = api.chat.completions.create(
        model="small",
        messages=[{"role": "user", "content": "Make up a person."}],
        response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}},
        temperature=0,
        max_tokens=64,
    )
    jsonschema.validate(json.loads(resp.choices[0].message.content or ""), PERSON)


def test_n_gives_that_many_choices(api: openai.OpenAI) -> None:
    resp = api.chat.completions.create(
        model="small", messages=ASK_WEATHER, n=2, temperature=1.0, seed=7, max_tokens=12
    )
    assert [c.index for c in resp.choices] == [0, 1]
    assert all(c.message.content for c in resp.choices)


def test_auto_with_tools_never_lands_on_a_pool_without_tools(api: openai.OpenAI) -> None:
    for text in ("What is the weather in Paris?", "Hi!", "Write a Python function."):
        raw = api.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": text}], tools=[WEATHER],
            temperature=0, max_tokens=32,
        )  # fmt: skip
        assert raw.headers["x-switchyard-pool"] != "small"  # SmolLM2 has no tool parser
    with pytest.raises(openai.BadRequestError) as err:
        api.chat.completions.create(model="small", messages=ASK_WEATHER, tools=[WEATHER])
    assert err.value.body["param"] == "tools"  # type: ignore[index]


def test_validity_cascade_escalates_an_unusable_cheap_answer(api: openai.OpenAI) -> None:
    # Six tokens cannot hold the whole object: the cheap answer's JSON is cut short.
    resp = api.chat.completions.create(
        model="auto",
        messages=[{"role": "user", "content": "Make up a person."}],
        response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}},
        temperature=0,
        max_tokens=6,
        extra_body={"switchyard": {"strategy": "cascade"}},
    )
    info = route(resp)
    assert (info["escalated"], info["pool"]) == (True, "large")
    assert "not valid JSON" in info["invalid"] and "unusable" in info["detail"]


def test_disconnect_mid_stream_aborts_in_the_engine(api: openai.OpenAI, health: Any) -> None:
    before = health()["pools"]["small"]["aborted"]
    stream = api.chat.completions.create(
        model="small", messages=[{"role": "user", "content": "Count to a thousand."}],
        max_tokens=400, stream=True, extra_body={"ignore_eos": True},
    )  # fmt: skip
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    deadline = time.monotonic() + 30
    pools = health()["pools"]
    while time.monotonic() < deadline:  # the stats poller samples every second
        pools = health()["pools"]
        if pools["small"]["aborted"] > before and pools["small"]["running"] == 0:
            break
        time.sleep(0.2)
    assert pools["small"]["aborted"] == before + 1
    assert pools["small"]["running"] == 0


def greedy(api: openai.OpenAI, prompt: str, **kw: Any) -> Any:
    extra = kw.pop("extra_body", {})
    return api.completions.create(
        model="small", prompt=prompt, temperature=kw.pop("temperature", 0),
        max_tokens=kw.pop("max_tokens", 16), extra_body={"return_token_ids": True, **extra}, **kw,
    ).choices[0]  # fmt: skip


PROMPT = "The capital of France is"


def test_stop_token_ids_and_stop_strings_stop(api: openai.OpenAI) -> None:
    base = greedy(api, PROMPT)
    ids = base.model_extra["token_ids"]
    assert len(ids) >= 4
    cut = greedy(api, PROMPT, extra_body={"stop_token_ids": [ids[2]]})
    assert cut.model_extra["token_ids"][:2] == ids[:2]
    assert cut.finish_reason == "stop" and len(cut.model_extra["token_ids"]) <= 3
    word = base.text.split()[1]
    stopped = greedy(api, PROMPT, stop=[word])
    assert word not in stopped.text and stopped.finish_reason == "stop"


def test_ignore_eos_and_min_tokens_keep_generating(api: openai.OpenAI) -> None:
    short = greedy(api, "Say OK.", max_tokens=64)
    assert short.finish_reason == "stop"  # the model ends on its own...
    n = len(short.model_extra["token_ids"])
    kept = greedy(api, "Say OK.", max_tokens=n + 8, extra_body={"ignore_eos": True})
    assert len(kept.model_extra["token_ids"]) == n + 8  # ...unless told to ignore EOS
    floor = greedy(api, "Say OK.", max_tokens=64, extra_body={"min_tokens": n + 4})
    assert len(floor.model_extra["token_ids"]) >= n + 4


def test_sampling_knobs_change_the_answer(api: openai.OpenAI) -> None:
    base = greedy(api, PROMPT, max_tokens=12)
    # top_k=1 samples the most likely token: greedy even at temperature 1
    top1 = greedy(api, PROMPT, max_tokens=12, temperature=1.0, extra_body={"top_k": 1})
    assert top1.text == base.text
    # the same seed gives the same sample; another seed (almost surely) another
    a = greedy(api, PROMPT, max_tokens=12, temperature=1.0, seed=1)
    b = greedy(api, PROMPT, max_tokens=12, temperature=1.0, seed=1)
    assert a.text == b.text
    # logit_bias makes a token certain; repetition and frequency penalties move the answer
    first = base.model_extra["token_ids"][0]
    other = base.model_extra["token_ids"][1]
    biased = greedy(api, PROMPT, max_tokens=3, logit_bias={str(other): 100})
    assert biased.model_extra["token_ids"][0] == other != first
    rep = greedy(api, "a a a a a a a a", max_tokens=12)
    penalised = greedy(
        api, "a a a a a a a a", max_tokens=12, frequency_penalty=2.0,
        extra_body={"repetition_penalty": 2.0},
    )  # fmt: skip
    assert penalised.text != rep.text


def test_logprobs_are_what_was_asked(api: openai.OpenAI) -> None:
    resp = api.chat.completions.create(
        model="small", messages=[{"role": "user", "content": "Say OK."}], temperature=0,
        max_tokens=6, logprobs=True, top_logprobs=3,
    )  # fmt: skip
    content = resp.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content and "".join(t.token for t in content) == resp.choices[0].message.content
    assert all(len(t.top_logprobs) == 3 and t.logprob <= 0 for t in content)
    plain = api.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "Say OK."}], max_tokens=6,
        extra_body={"switchyard": {"strategy": "cascade"}},
    )  # fmt: skip
    assert plain.choices[0].logprobs is None  # asked by the cascade only: stripped
    assert route(plain)["mean_logprob"] is not None


def test_embeddings(api: openai.OpenAI) -> None:
    resp = api.embeddings.create(model="all-minilm-l6-v2", input=["a cat", "a kitten", "tax law"])
    vectors = [d.embedding for d in resp.data]
    assert [len(v) for v in vectors] == [384] * 3

    def cos(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert cos(vectors[0], vectors[1]) > cos(vectors[0], vectors[2])
    assert resp.usage.prompt_tokens > 0
