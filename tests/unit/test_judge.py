"""The pure parts of judging answers (routing/judge.py) and of reading a stream's first
tokens (execution/sse.py)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from execution.sse import TokenReader
from routing.judge import (
    answer_key,
    answer_text,
    decided_majority,
    judge_messages,
    pick,
    verdict,
)


def judged(*top: tuple[str, float], said: str | None = None) -> dict[str, Any]:
    entries = [{"token": t, "logprob": math.log(p)} for t, p in top]
    first = {**entries[0], "top_logprobs": entries} if entries else None
    message = {"role": "assistant", "content": said if said is not None else top[0][0]}
    return {"choices": [{"message": message, "logprobs": {"content": [first] if first else []}}]}


def chat_answer(content: str | None = None, calls: list[dict[str, Any]] | None = None) -> dict:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = [{"type": "function", "function": f} for f in calls]
    return {"choices": [{"index": 0, "message": message}]}


@pytest.mark.parametrize(
    ("top", "expected"),
    [
        ((("Yes", 0.6), ("No", 0.2), ("Maybe", 0.2)), 0.75),
        ((("No", 0.7), (" yes", 0.1)), 0.125),
        ((("YES.", 0.5),), 1.0),
        ((("Incorrect", 0.9), ("Correct", 0.1)), 0.1),
    ],
)
def test_verdict_is_the_share_of_yes_among_yes_and_no(top: Any, expected: float) -> None:
    assert verdict(judged(*top)) == pytest.approx(expected)


def test_verdict_without_logprobs_reads_the_word_and_neither_is_unclear() -> None:
    assert verdict({"choices": [{"message": {"content": "No, it is wrong."}}]}) == 0.0
    assert verdict({"choices": [{"message": {"content": "yes"}}]}) == 1.0
    assert verdict(judged(("The", 0.9), ("A", 0.1))) is None
    assert verdict({"choices": []}) is None


def test_judge_prompt_is_bounded_and_keeps_braces_literal() -> None:
    question = "q" * 10_000 + " {answer} the end?"
    answer = "The answer is {42}." + "x" * 10_000
    (message,) = judge_messages("Q: {question}\nA: {answer}", question, answer, 200, 100)
    text = message["content"]
    assert len(text) < 200 + 100 + 30
    assert "{answer} the end?" in text  # the question's end is kept, braces as written
    assert text.split("A: ")[1].startswith("The answer is {42}.")
    assert "[...]" in text.split("A: ")[0] and text.endswith("[...]")


def test_answers_agree_on_normalised_text_and_on_tool_calls() -> None:
    assert answer_key(chat_answer("**42.**")) == answer_key(chat_answer(" 42 "))
    assert answer_key(chat_answer("The answer is 42")) != answer_key(chat_answer("42"))
    one = chat_answer(calls=[{"name": "f", "arguments": '{"a": 1, "b": 2}'}])
    same = chat_answer(calls=[{"name": "f", "arguments": '{"b":2,"a":1}'}])
    other = chat_answer(calls=[{"name": "f", "arguments": '{"a": 2}'}])
    assert answer_key(one) == answer_key(same) != answer_key(other)
    assert json.loads(answer_text(one))[0]["name"] == "f"
    assert answer_text({"choices": [{"text": " 7"}]}) == " 7"


def test_a_majority_is_decided_once_the_rest_cannot_outvote_it() -> None:
    assert decided_majority(["a"], 3) is None
    assert decided_majority(["a", "b"], 3) is None
    assert decided_majority(["a", "a"], 3) == "a"
    assert decided_majority(["a", "a"], 4) is None  # 2 of 4 is no majority
    assert decided_majority(["", ""], 3) is None  # empty answers never win a vote
    assert decided_majority([], 3) is None


def test_pick_by_votes_then_confidence() -> None:
    assert pick(["a", "b", "a"], [-2.0, -0.1, -3.0], "majority") == 0
    assert pick(["a", "b", "c"], [-2.0, -0.1, None], "majority") == 1
    assert pick(["a", "b", "a"], [-2.0, -0.1, -3.0], "logprob") == 1


def sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def test_token_reader_reads_chat_and_completion_logprobs_until_the_end() -> None:
    reader = TokenReader()
    chat_lp = {"content": [{"token": "a", "logprob": -0.5}, {"token": "b", "logprob": -1.0}]}
    reader.read([sse({"choices": [{"index": 0, "delta": {}, "logprobs": chat_lp}]})])
    reader.read([sse({"choices": [{"index": 1, "logprobs": chat_lp}]})])  # not choice 0
    assert (reader.logprobs, reader.ended) == ([-0.5, -1.0], False)
    legacy = {"token_logprobs": [-0.25, None]}
    reader.read([sse({"choices": [{"index": 0, "logprobs": legacy, "finish_reason": "stop"}]})])
    assert (reader.logprobs, reader.ended) == ([-0.5, -1.0, -0.25], True)
    failing = TokenReader()
    failing.read(["data: not json\n\n", sse({"error": {"message": "boom"}})])
    assert (failing.ended, failing.failed) == (True, True)
    done = TokenReader()
    done.read(["data: [DONE]\n\n"])
    assert done.ended and not done.failed
