"""Judging answers without a person: a judge model's verdict (strategy `verify`) and a
vote among several answers (strategy `ensemble`).

Pure: what the judge is asked, how its reply is read, what counts as the same answer.
The executor makes the calls; the planner decides who is judged by whom.

- The judge is asked with a bounded prompt (the question's end and the answer's start,
  cut to configured sizes: an attacker's 100k-token question must not become a
  100k-token judge call) for one word, and its verdict is read from that word's
  log-probabilities: P(Yes) / (P(Yes) + P(No)) over the top tokens vLLM returns, a
  graded score, not a coin on the sampled word. A judge that says neither is unclear
  (None), which never accepts an answer.
- Two answers are the same answer when their normalised text is (case, whitespace,
  markdown emphasis and surrounding punctuation dropped), or their tool calls are (name
  and arguments, keys sorted). Free prose rarely agrees to the letter: then no answer
  has a majority, and the most confident one (mean logprob) is picked.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["answer_key", "answer_text", "decided_majority", "judge_messages", "pick", "verdict"]

_YES = ("yes", "correct", "true")
_NO = ("no", "incorrect", "wrong", "false")
_STRIP = " \t\r\n.,;:!?\"'`*_()[]{}"


def judge_messages(
    prompt: str, question: str, answer: str, max_question_chars: int, max_answer_chars: int
) -> list[dict[str, str]]:
    """The judge's chat messages. The question keeps its end (where a chat's last turn
    is), the answer its start (where a short answer is); both say when they were cut."""
    if len(question) > max_question_chars:
        question = "[...]" + question[-max_question_chars:]
    if len(answer) > max_answer_chars:
        answer = answer[:max_answer_chars] + "[...]"
    # NOTE: one pass each, no format(): braces in the question or answer stay literal.
    text = prompt.replace("{question}", "\x00q\x00").replace("{answer}", "\x00a\x00")
    text = text.replace("\x00q\x00", question).replace("\x00a\x00", answer)
    return [{"role": "user", "content": text}]


def _word(token: str) -> str:
    return token.strip(_STRIP).lower()


def verdict(response: Mapping[str, Any]) -> float | None:
    """P(the answer is right) from a judge's chat response (its first token's top
    logprobs), or None when the judge said neither yes nor no."""
    choices = response.get("choices") or []
    if not choices:
        return None
    content = ((choices[0].get("logprobs") or {}).get("content")) or []
    yes = no = 0.0
    if content:
        first = content[0]
        candidates = first.get("top_logprobs") or [first]
        for entry in candidates:
            word = _word(str(entry.get("token", "")))
            p = math.exp(float(entry.get("logprob", -math.inf)))
            if word in _YES:
                yes += p
            elif word in _NO:
                no += p
    if yes + no > 0:
        return yes / (yes + no)
    said = ((choices[0].get("message") or {}).get("content") or "").split()
    word = _word(said[0]) if said else ""
    return 1.0 if word in _YES else 0.0 if word in _NO else None


def answer_text(response: Mapping[str, Any]) -> str:
    """An answer as the judge reads it (first choice): its text, or its tool calls."""
    choices = response.get("choices") or []
    if not choices:
        return ""
    message = choices[0].get("message")
    if message is None:
        return str(choices[0].get("text") or "")
    calls = message.get("tool_calls") or []
    if calls:
        return json.dumps([c.get("function") for c in calls])
    return str(message.get("content") or "")


def answer_key(response: Mapping[str, Any]) -> str:
    """What must agree for two answers to be the same (first choice)."""
    choices = response.get("choices") or []
    if not choices:
        return ""
    first = choices[0]
    message = first.get("message")
    if message is None:  # a text completion
        return _normalised(first.get("text") or "")
    calls = message.get("tool_calls") or []
    if calls:
        return json.dumps([_call_key(c) for c in calls], sort_keys=True)
    return _normalised(message.get("content") or "")


def _call_key(call: Mapping[str, Any]) -> list[Any]:
    function = call.get("function") or {}
    arguments = function.get("arguments") or ""
    try:
        parsed: Any = json.loads(arguments)
    except ValueError:
        parsed = arguments
    return [function.get("name"), parsed]


def _normalised(text: str) -> str:
    words = (w.strip(_STRIP).lower() for w in text.split())
    return " ".join(w for w in words if w)


def decided_majority(keys: Sequence[str], members: int) -> str | None:
    """The answer more than half of `members` gave, once it is certain (None: not yet).
    `keys` are the answers finished so far; the others can no longer outvote it."""
    if not keys:
        return None
    key, votes = Counter(k for k in keys if k).most_common(1)[0] if any(keys) else ("", 0)
    return key if votes * 2 > members else None


def pick(keys: Sequence[str], confidences: Sequence[float | None], by: str) -> int:
    """Which of the answers to keep: `majority` (most votes; ties and single votes go
    to the most confident) or `logprob` (the most confident)."""
    assert keys and len(keys) == len(confidences)
    score = [c if c is not None else -math.inf for c in confidences]
    if by == "majority":
        votes = Counter(k for k in keys if k)
        return max(range(len(keys)), key=lambda i: (votes.get(keys[i], 0), score[i]))
    return max(range(len(keys)), key=lambda i: score[i])
