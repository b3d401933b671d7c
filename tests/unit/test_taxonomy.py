"""The request taxonomy (routing/taxonomy.py): task types, complexity levels, bounded work."""

from __future__ import annotations

import random

import pytest
import re2

from routing.rules import MARKER_CHARS, RulesConfig, extract_features, utf8_window
from routing.taxonomy import (
    COMPLEXITY_LEVELS,
    TASK_EVIDENCE,
    TASK_TYPES,
    Classification,
    classify,
)
from routing.taxonomy_cues import COMPLEXITY_MARKERS, TASK_MARKERS

RULES = RulesConfig()
MB = 1_000_000


def of(text: str, rules: RulesConfig = RULES) -> Classification:
    return classify(text, rules)


@pytest.mark.parametrize(
    ("text", "task"),
    [
        ("Write a Python function that reverses a string.", "code"),
        ("Why does this raise TypeError: 'NoneType' object is not iterable?", "code"),
        ("```js\nconst f = (x) => { return x }\n```", "code"),
        ("Solve for x: 3x + 5 = 20", "math"),
        ("What is the probability of two sixes with two dice?", "math"),
        ('Translate "good morning" into French.', "translation"),
        ("How do you say thank you in Japanese?", "translation"),
        ("Summarize the following article in three sentences: ...", "summarisation"),
        ("tl;dr of this thread please", "summarisation"),
        ("Extract all email addresses from the text below and return them as JSON.", "extraction"),
        ("Classify the sentiment of each review as positive or negative.", "extraction"),
        ("Write a haiku about autumn leaves.", "creative"),
        ("Tell me a story about a dragon who is afraid of fire.", "creative"),
        (
            "If all bloops are razzies and all razzies are lazzies, then are all bloops "
            "lazzies? Explain why.",
            "reasoning",
        ),  # fmt: skip
        ("Here is a riddle: what has keys but cannot open locks?", "reasoning"),
        ("hi there!", "chat"),
        ("Thanks, that helped a lot", "chat"),
        ("What is the capital of France?", "chat"),
    ],
)
def test_task_types(text: str, task: str) -> None:
    reading = of(text)
    assert reading.task == task, reading
    assert 0 < reading.task_confidence <= 1
    assert reading.task_evidence  # the markers that decided it are quoted
    assert reading.task_scores[task] == max(reading.task_scores.values())


def test_nothing_recognisable_is_other_with_no_confidence() -> None:
    for text in ("", "   ", "asdf qwer zxcv", "42"):
        reading = of(text)
        assert (reading.task, reading.task_confidence, reading.task_evidence) == ("other", 0, ())
        assert set(reading.task_scores) == set(TASK_TYPES)
        assert not any(reading.task_scores.values())


@pytest.mark.parametrize(
    ("text", "level"),
    [
        ("hi", "simple"),
        ("What is the capital of France? One word, please.", "simple"),
        ("Write a Python function that reverses a string.", "simple"),
        ("If it rains then the grass is wet. It is wet. Did it rain? Explain why.", "moderate"),
        ("Explain why the sky is blue, step by step.", "complex"),
        ("Prove that there are infinitely many primes.", "complex"),
        (
            "Design a lock-free concurrent hash map in C++ with a formal correctness proof, "
            "analyze its asymptotic complexity, and handle all edge cases.",
            "expert",
        ),  # fmt: skip
    ],
)
def test_complexity_levels(text: str, level: str) -> None:
    reading = of(text)
    assert reading.complexity == level, reading
    assert 0.5 <= reading.complexity_confidence <= 1


def test_complexity_grows_with_length_as_the_routers_long_rule_does() -> None:
    words = "Tell me about the history of this town. "
    levels = [of(words * n).complexity for n in (1, 20, 60, 200)]  # ~10 .. ~2000 tokens
    assert [COMPLEXITY_LEVELS.index(lv) for lv in levels] == sorted(
        COMPLEXITY_LEVELS.index(lv) for lv in levels
    )
    long = of(words * 60)  # ~600 tokens: the rules send it to `large` as long_prompt
    assert long.complexity in ("complex", "expert")
    assert long.complexity_evidence[0] == "length: ~600 tokens"


def test_brevity_cues_lower_complexity() -> None:
    ask = "Compare Rome and Athens in depth."
    assert of(ask).complexity_score > of(ask + " Briefly, in one sentence.").complexity_score


def test_the_configs_complex_patterns_count() -> None:
    text = "Make a wibble of the report."
    custom = RulesConfig(complex_patterns=[r"\bwibble\b"])
    assert of(text).complexity_score == 0
    reading = of(text, custom)
    assert reading.complexity_score == 1.0
    assert "complex_task: 'wibble'" in reading.complexity_evidence


def test_confidence_reflects_evidence_and_ambiguity() -> None:
    weak, strong = of("What is 2+2?"), of("Solve for x: 3x + 5 = 20")
    assert weak.task == strong.task == "math"
    assert weak.task_confidence < strong.task_confidence
    mixed = of("Translate this Python function to JavaScript")  # code words, translate verb
    assert mixed.task_confidence < of('Translate "good morning" into French.').task_confidence
    on_boundary = of("Compare Rome and Athens in depth.")  # score exactly at `complex`
    assert (on_boundary.complexity, on_boundary.complexity_confidence) == ("complex", 0.5)


def test_evidence_is_capped_like_the_rules_markers() -> None:
    text = "def " + "a" * 500 + "() ```python import os``` class X: function f() {} python"
    reading = of(text)
    assert reading.task == "code"
    assert len(reading.task_evidence) <= TASK_EVIDENCE
    assert all(len(marker) <= MARKER_CHARS for marker in reading.task_evidence)


def test_deterministic_and_ties_go_to_the_more_specific_task() -> None:
    text = "Explain why this python code is slow, step by step, and summarise it."
    assert of(text) == of(text)
    assert of(text).task == "reasoning"  # 3.5 against summarisation 3, code 2
    tie = of("why is there a bug")  # reasoning `why` 1.0, code `bug` 1.0
    assert tie.task_scores["code"] == tie.task_scores["reasoning"] == 1.0
    assert tie.task == "code"  # TASK_TYPES order


def test_reads_only_the_head_and_tail_like_the_rules() -> None:
    filler = "lorem ipsum " * 20_000  # ~240 KB, more than scan_chars
    hidden = filler + "translate this into French " + filler
    assert of(hidden).task == "other"
    assert of(filler + "translate this into French").task == "translation"


def test_lone_surrogates_do_not_fail_the_request() -> None:
    """A JSON string may carry "\\ud800", which is not UTF-8 (RE2 raised on it: a 500)."""
    text = "translate \ud800 into French def f("
    assert of(text).task in ("translation", "code")
    assert extract_features(text, RULES).code_markers == ("def f(",)


PATHOLOGICAL = {  # 1 MB of shapes that hurt regex engines; what each must read as
    "newlines": ("\n", "other", "complex"),
    "spaces": (" ", "other", "complex"),
    "one word": ("a", "other", "complex"),
    "questions": ("?", "other", "expert"),
    "sums": ("1+", "math", "complex"),
    "list": ("1. x\n", "other", "expert"),
    "def": ("def f(", "code", "complex"),
    "imports": ("\n import", "code", "complex"),
    "unicode": ("é漢\u200b", "other", "complex"),
    "markers": ("step by step? translate summary def f( 2+2 if then ", "translation", "expert"),
}


@pytest.mark.parametrize("shape", list(PATHOLOGICAL))
def test_a_pathological_megabyte_prompt(shape: str) -> None:
    """1 MB of a hostile shape: the reading, not the time (bench/taxonomy.py times it)."""
    unit, task, level = PATHOLOGICAL[shape]
    text = (unit * (MB // len(unit) + 1))[:MB]
    reading = of(text)
    assert (reading.task, reading.complexity) == (task, level)
    assert reading.approx_tokens == MB // 4
    assert reading.complexity_evidence[0] == f"length: ~{MB // 4} tokens"


def brute_force_scores(text: str, rules: RulesConfig) -> dict[str, float]:
    """Task scores with every part searched on its own: what the one-pass Set must give."""
    window = utf8_window(text, rules.scan_chars)
    options = re2.Options()
    options.log_errors = False

    def found(part: str) -> bool:
        return re2.compile(f"(?im){part}", options).search(window) is not None

    scores: dict[str, float] = dict.fromkeys(TASK_TYPES, 0.0)
    for marker in TASK_MARKERS:
        if all(found(part) for part in marker.parts):
            scores[marker.group] += marker.weight
    return {task: round(score, 3) for task, score in scores.items()}


def test_the_one_pass_set_agrees_with_each_pattern_alone() -> None:
    pieces = [
        "step by step ", "?", "\n", " ", "1. ", "- x\n", "def f(", "2+2=", "é", "漢",
        "translate ", "if ", " then ", "first ", "```", "{", ";\n", "\\frac", "x^2", "why ",
        "summary", "a", "import os\n", "Error: ", "hi\n", "what is it?\n", "into French",
        "write a poem", "extract all", "as json", "tl;dr", "must ", "prove ", "lock-free",
    ]  # fmt: skip
    rng = random.Random(12)
    for _ in range(300):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 40)))
        assert of(text).task_scores == brute_force_scores(text, RULES), text


def test_markers_are_valid_and_gap_free() -> None:
    """No part may hold an unbounded gap (`.*`, `[^\\n]*`): in one Set each multiplies
    the DFA states a hostile text can make it build."""
    for marker in (*TASK_MARKERS, *COMPLEXITY_MARKERS):
        assert marker.weight > 0
        for part in marker.parts:
            re2.compile(part)
            assert ".*" not in part and "]*" not in part, part
