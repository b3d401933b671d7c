from __future__ import annotations

import pytest
from pydantic import ValidationError

from deployments.openai.protocol import ChatCompletionRequest, CompletionRequest

MSG = [{"role": "user", "content": "hi"}]


def test_unknown_fields_are_refused_everywhere() -> None:
    for body in (
        {"model": "auto", "messages": MSG, "foo": 1},
        {"model": "auto", "messages": [{"role": "user", "content": "hi", "foo": 1}]},
        {"model": "auto", "messages": MSG, "stream_options": {"include_obfuscation": True}},
    ):
        with pytest.raises(ValidationError) as err:
            ChatCompletionRequest.model_validate(body)
        assert err.value.errors()[0]["type"] == "extra_forbidden"


def test_vllm_sampling_extensions_are_read() -> None:
    req = CompletionRequest.model_validate(
        {"model": "small", "prompt": "x", "ignore_eos": True, "min_tokens": 3, "top_k": 5,
         "repetition_penalty": 1.1, "stop_token_ids": [2], "logprobs": 2}
    )  # fmt: skip
    assert (req.ignore_eos, req.min_tokens, req.top_k) == (True, 3, 5)
    assert (req.repetition_penalty, req.stop_token_ids, req.requested_logprobs) == (1.1, [2], 2)


def test_chat_logprobs_and_top_logprobs() -> None:
    plain = ChatCompletionRequest.model_validate({"model": "auto", "messages": MSG})
    assert plain.requested_logprobs is None
    chosen = ChatCompletionRequest.model_validate(
        {"model": "auto", "messages": MSG, "logprobs": True}
    )
    assert chosen.requested_logprobs == 0
    top = ChatCompletionRequest.model_validate(
        {"model": "auto", "messages": MSG, "logprobs": True, "top_logprobs": 3}
    )
    assert top.requested_logprobs == 3
    for bad in ({"top_logprobs": 3}, {"logprobs": True, "top_logprobs": 21}):
        with pytest.raises(ValidationError):
            ChatCompletionRequest.model_validate({"model": "auto", "messages": MSG, **bad})


def test_content_parts_are_flattened() -> None:
    req = ChatCompletionRequest.model_validate(
        {
            "model": "auto",
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                }
            ],
        }
    )
    assert req.messages[0].text() == "ab"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"n": 2}, "only n=1"),
        ({"tools": [{"type": "function"}]}, "tools are not supported"),
        ({"max_tokens": 0}, "greater than or equal to 1"),
        ({"temperature": "hot"}, "valid number"),
        ({"temperature": 3}, "less than or equal to 2"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "at most 4"),
        ({"messages": "hi"}, "valid list"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "Input should be"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "Input should be"),
    ],
)
def test_bad_chat_requests(extra: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ChatCompletionRequest.model_validate({"model": "auto", "messages": MSG, **extra})


def test_max_completion_tokens_wins() -> None:
    req = ChatCompletionRequest.model_validate(
        {"model": "auto", "messages": MSG, "max_tokens": 5, "max_completion_tokens": 9}
    )
    assert req.requested_max_tokens == 9


def test_completion_defaults_and_limits() -> None:
    req = CompletionRequest.model_validate({"model": "auto", "prompt": "x"})
    assert req.requested_max_tokens is None  # the catalog's default_max_tokens applies
    assert req.stop_list() == ()
    with pytest.raises(ValidationError, match="one string"):
        CompletionRequest.model_validate({"model": "auto", "prompt": ["a", "b"]})
    with pytest.raises(ValidationError, match="not supported"):
        CompletionRequest.model_validate({"model": "auto", "prompt": "a", "echo": True})
