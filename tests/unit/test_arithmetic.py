"""Generated arithmetic questions for `switchyard make-data --questions arithmetic`: the
stream, the options, the groups, and the command line with grading replaced by a fake."""

from __future__ import annotations

import collections
import json
import re
from collections.abc import Sequence
from pathlib import Path

import pytest

from routing.training import arithmetic, dataset, grading
from routing.training.arithmetic import (
    ARITHMETIC,
    ARITHMETIC_OPEN,
    PER_SUBJECT,
    SUBJECTS,
    TOPIC,
    generate,
    generate_open,
)
from routing.training.dataset import Question, make_dataset, prompt_text
from routing.training.grading import LETTERS
from routing.training.train import read_router_csv

N = 400  # 20 rounds of the 20 subjects


@pytest.fixture(scope="module")
def stream() -> list[Question]:
    return generate(N, seed=0)


def value(question: Question) -> int:
    """The right answer, worked out again from the question's own text."""
    text = question.question
    if text.startswith("Which of these numbers is the "):
        numbers = [int(c) for c in question.choices]
        return max(numbers) if "largest" in text else min(numbers)
    a, b = (int(x) for x in re.findall(r"\d+", text))
    if question.domain == "word":
        op = question.subject.split("_")[1]
    else:
        op = question.domain
    return {"add": a + b, "sub": a - b, "mul": a * b}[op]


def test_the_stream_is_deterministic_for_a_seed_and_grows_by_extension(
    stream: list[Question],
) -> None:
    assert generate(N, seed=0) == stream
    assert generate(N + 37, seed=0)[:N] == stream  # a larger --limit re-grades nothing
    assert generate(N, seed=1) != stream
    assert len({q.id for q in generate(N, seed=1)} & {q.id for q in stream}) < N // 4


def test_every_key_is_right_and_the_only_right_option(stream: list[Question]) -> None:
    for q in stream:
        numbers = [int(c) for c in q.choices]  # whole numbers, no sign
        assert all(c == str(n) and n >= 0 for c, n in zip(q.choices, numbers, strict=True))
        assert len(set(numbers)) == 4, q  # distinct options
        right = value(q)
        assert q.choices[LETTERS.index(q.answer)] == str(right), q
        assert numbers.count(right) == 1, q


def test_distractors_are_near_misses(stream: list[Question]) -> None:
    """Most wrong options are off by 1, 2, 10 or 100, or the right digits swapped."""
    near = 0
    total = 0
    for q in stream:
        right = value(q)
        for c in q.choices:
            if c == str(right):
                continue
            total += 1
            gap = abs(int(c) - right)
            near += gap in (1, 2, 10, 100) or sorted(c) == sorted(str(right))
    assert near / total > 0.5


def test_letters_are_balanced_and_subjects_equal(stream: list[Question]) -> None:
    assert collections.Counter(q.answer for q in stream) == dict.fromkeys(LETTERS, N // 4)
    for start in range(0, N, 4):  # every four consecutive questions: each letter once
        assert sorted(q.answer for q in stream[start : start + 4]) == list(LETTERS)
    subjects = collections.Counter(q.subject for q in stream)
    assert len(subjects) == 20 and set(subjects.values()) == {N // 20}
    per_subject = collections.defaultdict(collections.Counter)
    for q in stream:
        per_subject[q.subject][q.answer] += 1
    assert all(max(c.values()) < N // 20 for c in per_subject.values())  # no fixed letter


def test_groups_columns_and_prompt_as_documented(stream: list[Question]) -> None:
    assert set(SUBJECTS) == {"add", "sub", "mul", "compare", "word"}
    assert all(len(subjects) == 4 for subjects in SUBJECTS.values())
    domain_of = {s: d for d, subjects in SUBJECTS.items() for s in subjects}
    for q in stream:
        assert q.domain == domain_of[q.subject] and q.topic == TOPIC
        assert re.fullmatch(r"[a-z]+(_[a-z]+)?_(\d+digit|\dx\d)", q.subject)
    assert len({q.question for q in stream if not q.question.startswith("Which")}) == len(
        [q for q in stream if not q.question.startswith("Which")]
    )  # no problem twice
    q = next(q for q in stream if q.subject == "add_2digit")
    a, b = re.findall(r"\d+", q.question)
    options = "\n".join(f"{x}. {c}" for x, c in zip(LETTERS, q.choices, strict=True))
    assert prompt_text(q) == (
        "The following is a multiple choice question about arithmetic.\n\n"
        f"What is {a} + {b}?\n{options}\n\n"
        "Answer with the letter of the correct option (A, B, C or D)."
    )
    assert len(str(int(a))) == len(str(int(b))) == 2


def test_operand_sizes_follow_the_subject(stream: list[Question]) -> None:
    for q in stream:
        digits = [len(x) for x in re.findall(r"\d+", q.question)]
        size = q.subject.rsplit("_", 1)[1]
        if q.domain == "compare":
            assert {len(c) for c in q.choices} == {int(size[0])}
        elif q.subject == "sub_1digit":  # the facts: 1-digit subtrahend and difference
            assert digits[1] == 1 and len(q.choices[LETTERS.index(q.answer)]) == 1
        elif size.endswith("digit"):
            assert digits == [int(size[0])] * 2
        else:
            assert digits == [int(size[0]), int(size[2])]


def test_small_subjects_run_out_and_the_rest_carry_on() -> None:
    everything = generate(None, seed=0)
    counts = collections.Counter(q.subject for q in everything)
    assert counts["add_1digit"] == 81  # 1..9 + 1..9: every problem, once
    assert counts["mul_1digit"] == 64  # 2..9 x 2..9
    assert max(counts.values()) == PER_SUBJECT
    assert len({q.id for q in everything}) == len(everything)


def fake_grade(picks: dict[str, str]) -> object:
    """`grade` without vLLM: writes the cache file like the real one, one letter's log-prob
    high per question; `picks` maps a model to "key" (always right) or "A" (always A)."""

    def grade(
        model: str, questions: Sequence[Question], path: Path, *, batch: int = 32
    ) -> tuple[dict[str, list[float] | None], float]:
        path.parent.mkdir(parents=True, exist_ok=True)
        grades: dict[str, list[float] | None] = {}
        for q in questions:
            letter = q.answer if picks[model] == "key" else "A"
            grades[q.id] = [-1.0 if x == letter else -5.0 for x in LETTERS]
        with path.open("a") as f:
            for qid, v in grades.items():
                f.write(json.dumps({"id": qid, "logprobs": v}) + "\n")
        return grades, 1.5

    return grade


def test_make_data_questions_arithmetic_through_main(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SWITCHYARD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(dataset, "grade", fake_grade({"tiny": "A", "big": "key"}))
    monkeypatch.setattr(dataset, "fetch_questions", lambda *a: pytest.fail("no download"))
    argv = ["--questions", "arithmetic", "--limit", "40", "--model", "small=tiny"]
    assert dataset.main([*argv, "--model", "large=big", "--no-calibrate"]) == 0
    out = capsys.readouterr().out
    csv_path = tmp_path / "cache" / "datasets" / "arithmetic_graded.csv"
    assert str(csv_path) in out and ARITHMETIC.licence in out
    data = read_router_csv(csv_path)
    assert len(data.prompts) == 40
    assert set(data.columns["source"]) == {"arithmetic"}
    assert len(set(data.columns["subject"])) == 20
    assert set(data.columns["domain"]) == set(SUBJECTS)
    assert data.correct("large").all()  # the fake "big" always picks the key
    assert data.correct("small").mean() == 0.25  # "A" is the key of a quarter
    questions = {prompt_text(q): q for q in generate(40)}
    for row, prompt in enumerate(data.prompts):
        q = questions[prompt]
        assert data.correct("small")[row] == (q.answer == "A")
        assert (data.columns["subject"][row], data.columns["domain"][row]) == (
            q.subject,
            q.domain,
        )
    grades = sorted((tmp_path / "cache" / "datasets" / "grades").iterdir())
    assert [p.name for p in grades] == [
        f"big.arithmetic.p{dataset.PROMPT_VERSION}.jsonl",
        f"tiny.arithmetic.p{dataset.PROMPT_VERSION}.jsonl",
    ]


def test_mmlu_stays_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, object] = {}

    def fake_make_dataset(output: Path, pools: dict[str, str], **kwargs: object) -> object:
        seen.update(kwargs, output=output)
        raise RuntimeError("stop here")

    monkeypatch.setenv("SWITCHYARD_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(dataset, "make_dataset", fake_make_dataset)
    assert dataset.main([]) == 1
    assert seen["question_set"] is dataset.MMLU
    assert seen["output"] == tmp_path / "datasets" / "mmlu_graded.csv"
    assert dataset.main(["--questions", "arithmetic"]) == 1
    assert seen["question_set"] is ARITHMETIC and arithmetic.ARITHMETIC.name == "arithmetic"


def test_cached_arithmetic_grades_are_reused(tmp_path: Path) -> None:
    """make_dataset on the generated set reads the same cache files as MMLU's."""
    qs = generate(8)
    grades = tmp_path / "grades"
    grades.mkdir()
    path = grades / f"m.arithmetic.p{dataset.PROMPT_VERSION}.jsonl"
    path.write_text(
        "".join(
            json.dumps({"id": q.id, "logprobs": [-1.0 if x == q.answer else -4.0 for x in LETTERS]})
            + "\n"
            for q in qs
        )
    )
    summary = make_dataset(
        tmp_path / "out.csv", {"small": "m"}, limit=8, cache=tmp_path, question_set=ARITHMETIC
    )
    assert summary.seconds == {"m": 0.0} and summary.accuracy == {"small": 1.0}


def test_open_questions_are_the_same_problems_without_options() -> None:
    choice, open_ = generate(40), generate_open(40)
    assert [q.subject for q in open_] == [q.subject for q in choice]
    assert all(
        q.style == "open" and q.domain == c.domain for q, c in zip(open_, choice, strict=True)
    )
    assert not {q.id for q in open_} & {q.id for q in choice}  # graded apart
    add = open_[1]
    assert prompt_text(add) == f"{add.question}\nAnswer with the number only."
    assert add.question == choice[1].question and add.choices == choice[1].choices
    compare = next(q for q in open_ if q.domain == "compare")
    numbers = ", ".join(compare.choices[:3]) + f" or {compare.choices[3]}"
    assert compare.question.endswith(f"est: {numbers}?")
    assert ARITHMETIC_OPEN.style == "open" and ARITHMETIC.style == "choice"


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("151", 151),
        (" 5", 5),
        ("2 + 4 = 6", 6),
        ("The answer is 1,234.", 1234),
        ("\n\n42\nbecause 4 and 2", 42),
        ("To solve this problem, we need to", None),
        ("", None),
        (None, None),
        ("-3", -3),
    ],
)
def test_the_number_an_open_answer_names(text: str | None, said: int | None) -> None:
    assert grading.number(text) == said


def test_open_answers_are_matched_to_the_options(tmp_path: Path) -> None:
    qs = generate_open(4)
    key = [q.choices[LETTERS.index(q.answer)] for q in qs]
    wrong = next(c for c in qs[1].choices if c != key[1])
    answers = {qs[0].id: key[0], qs[1].id: f"{wrong}", qs[2].id: "no idea", qs[3].id: None}
    letters = grading.match(answers, qs)
    assert letters[qs[0].id] == qs[0].answer
    assert letters[qs[1].id] == LETTERS[qs[1].choices.index(wrong)] != qs[1].answer
    assert letters[qs[2].id] == letters[qs[3].id] == "-"
    path = tmp_path / "a.jsonl"
    path.write_text(
        '{"id": "a", "text": "12"}\n{"id": "b", "text": null}\n{"id": "c", "text": 3}\n'
        '{"id": "d", "logprobs": [0, 0, 0, 0]}\n{"id": "e", "te'
    )
    assert grading.read_answers(path) == {"a": "12", "b": None}


def test_make_data_arithmetic_open_through_main(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Open answers: `answer` (faked) instead of `grade`, no calibration, the same CSV."""

    def fake_answer(
        model: str,
        questions: Sequence[Question],
        path: Path,
        *,
        batch: int = 32,
        max_tokens: int | None = None,
    ) -> tuple[dict[str, str | None], float]:
        assert max_tokens is None  # arithmetic-open's answers keep grading's default
        said: dict[str, str | None] = {}
        for q in questions:  # "big" right on all but "compare", "tiny" only on "add"
            right = q.choices[LETTERS.index(q.answer)]
            good = q.domain == "add" if model == "tiny" else q.domain != "compare"
            said[q.id] = f"The answer is {right}." if good else "I do not know"
        return said, 2.0

    monkeypatch.setenv("SWITCHYARD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(dataset, "answer", fake_answer)
    monkeypatch.setattr(dataset, "grade", lambda *a, **k: pytest.fail("no letters scored"))
    argv = ["--questions", "arithmetic-open", "--limit", "100"]
    assert dataset.main([*argv, "--model", "small=tiny", "--model", "large=big"]) == 0
    out = capsys.readouterr().out
    assert "accuracy 0.200 (uncalibrated 0.200)" in out and "accuracy 0.800" in out
    data = read_router_csv(tmp_path / "cache" / "datasets" / "arithmetic-open_graded.csv")
    assert len(data.prompts) == 100
    assert all(p.endswith("\nAnswer with the number only.") for p in data.prompts)
    domains = data.columns["domain"]
    assert data.correct("small").tolist() == [d == "add" for d in domains]
    assert data.correct("large").tolist() == [d != "compare" for d in domains]
    assert set(data.columns["source"]) == {"arithmetic-open"}
