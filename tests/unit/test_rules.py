from __future__ import annotations

import threading

import pytest
from pydantic import ValidationError

from core.errors import UnknownModelError
from routing.planner import pinned_pool
from routing.rules import RouteDecision, RulesConfig, decide, extract_features

RULES = RulesConfig()
POOLS = {"small": "tiny-chat", "large": "big-chat", "code": "coder"}


def route(text: str, rules: RulesConfig = RULES) -> RouteDecision:
    return decide(extract_features(text, rules), rules)


@pytest.mark.parametrize(
    "text",
    [
        "```python\nprint(1)\n```",
        "Why does def parse(x): fail here?",
        "Write a Python function that reverses a string.",
        "#include <stdio.h> won't compile",
        "import numpy as np\nnp.zeros(3)",
    ],
)
def test_code_markers_route_to_code(text: str) -> None:
    decision = route(text)
    assert decision.pool == "code"
    assert decision.reason == "code_markers"


def test_plain_question_goes_to_default_pool() -> None:
    assert route("What is the capital of France?") == RouteDecision(
        "small", "default", "no rule matched"
    )


def test_long_prompt_goes_to_large() -> None:
    text = "Tell me about the history of this town. " * 60  # ~2400 chars, ~600 tokens
    decision = route(text)
    assert decision.pool == "large"
    assert decision.reason == "long_prompt"
    assert "600 prompt tokens > 384" in decision.detail


def test_complex_task_goes_to_large() -> None:
    decision = route("Explain why the sky is blue, step by step.")
    assert decision.pool == "large"
    assert decision.reason == "complex_task"
    assert "'step by step'" in decision.detail


def test_code_wins_over_length_and_complexity() -> None:
    text = "Explain why this python code is slow step by step. " * 80
    assert route(text).pool == "code"


def test_complex_min_matches_is_honoured() -> None:
    strict = RulesConfig(complex_min_matches=2)
    assert route("Compare cats and dogs.", strict).pool == "small"
    assert route("Compare cats and dogs step by step.", strict).pool == "large"


def test_features_list_distinct_markers() -> None:
    features = extract_features("def f(): pass\ndef g(): pass", RULES)
    assert features.code_markers[0] == "def f("
    assert features.approx_tokens == round(len("def f(): pass\ndef g(): pass") / 4)


def test_invalid_regex_is_a_config_error() -> None:
    with pytest.raises(ValidationError, match="invalid regex"):
        RulesConfig(code_patterns=["(unclosed"])


def test_pool_name_pins() -> None:
    decision = pinned_pool("large", POOLS)
    assert (decision.pool, decision.reason) == ("large", "pinned_pool")


def test_model_id_pins_first_pool_serving_it() -> None:
    pools = {"small": "tiny-chat", "large": "coder", "code": "coder"}
    decision = pinned_pool("coder", pools)
    assert (decision.pool, decision.reason) == ("large", "pinned_model")


def test_unknown_model_lists_choices() -> None:
    with pytest.raises(UnknownModelError) as err:
        pinned_pool("gpt-4", POOLS)
    assert "auto, small, large, code, tiny-chat, big-chat, coder" in str(err.value)


PATHOLOGICAL = [
    "\n" * 1_000_000,  # `^\s*import` backtracked over every line start: quadratic
    " " * 1_000_000,
    "function" + " " * 1_000_000,  # `\bfunction\s*\w*\s*\(`
    "\n import" * 150_000,
    "a" * 1_000_000,
]


@pytest.mark.parametrize("text", PATHOLOGICAL, ids=["newlines", "spaces", "fn", "imports", "word"])
def test_pathological_prompts_finish(text: str) -> None:
    """Regression: 80 KB of newlines took 22 s with Python's `re` (quadratic).

    A hang guard, not a speed target (bench/rule_features.py measures speed): the old
    patterns would need hours on these 1 MB prompts; here each takes milliseconds.
    """
    done = threading.Event()
    found: list[RouteDecision] = []
    whole = RulesConfig(scan_chars=len(text))  # every character, not just the window

    def run() -> None:
        found.append(route(text, whole))
        done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(60), "rule matching did not finish: is it backtracking again?"
    assert found[0].pool in {"small", "large", "code"}


def test_rules_read_a_bounded_window_head_and_tail() -> None:
    rules = RulesConfig(scan_chars=1024)
    filler = "plain words " * 10_000
    assert route(filler + "```", rules).reason == "code_markers"  # in the tail
    assert route("```" + filler, rules).reason == "code_markers"  # in the head
    middle = filler + "```" + filler
    assert route(middle, rules).reason == "long_prompt"  # not scanned; length still counts
    decision = route("```" + " " * 100 + "x" * 5000)
    assert len(decision.detail) < 100  # markers are shown short


def test_patterns_re2_cannot_run_linearly_are_refused() -> None:
    for pattern in (r"(a)\1", r"foo(?=bar)", r"(?<!x)y"):
        with pytest.raises(ValidationError, match="RE2 syntax"):
            RulesConfig(code_patterns=[pattern])
