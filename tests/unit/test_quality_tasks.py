"""The benchmark's graded workload (`routing.training.quality_tasks`): a deterministic,
growing stream with equal kinds, answers worked out again from the prompts' own text, and
the grader's reading of free text."""

from __future__ import annotations

import collections
import contextlib
import csv
import dataclasses
import io
import json
import re
from pathlib import Path
from typing import Literal

import pytest

from routing.training import arithmetic, quality_tasks
from routing.training.dataset import prompt_text
from routing.training.grading import LETTERS
from routing.training.quality_tasks import (
    ARITHMETIC_DIFFICULTY,
    KINDS,
    SUBJECTS,
    WORDS,
    Task,
    grade,
    summary,
    tasks,
)

N = 2_000
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def workload() -> list[Task]:
    return tasks(N, seed=0)


# --- the stream -------------------------------------------------------------------------


def test_the_same_seed_gives_the_same_tasks_and_a_larger_n_extends_a_smaller(
    workload: list[Task],
) -> None:
    assert tasks(N, seed=0) == workload
    assert tasks(N // 3, seed=0) == workload[: N // 3]
    assert tasks(N + 123, seed=0)[:N] == workload
    assert tasks(0) == []
    other = tasks(N, seed=1)
    assert other != workload
    assert len({t.id for t in other} & {t.id for t in workload}) < N // 4
    with pytest.raises(ValueError):
        tasks(-1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        workload[0].answer = "0"  # type: ignore[misc]


def test_kinds_take_turns_and_have_equal_shares(workload: list[Task]) -> None:
    assert len(KINDS) >= 6 and KINDS[0] == "arithmetic"
    assert [t.kind for t in workload[: 2 * len(KINDS)]] == list(KINDS) * 2
    for n in (7, 70, 700, N):
        counts = collections.Counter(t.kind for t in workload[:n])
        assert set(counts) == set(KINDS)
        assert max(counts.values()) - min(counts.values()) <= 1, (n, counts)


def test_ids_and_prompts_are_unique_and_ids_stable(workload: list[Task]) -> None:
    assert len({t.id for t in workload}) == len({t.prompt for t in workload}) == N
    for t in workload:
        assert re.fullmatch(rf"{t.kind}-[0-9a-f]{{12}}", t.id)
    # the id is the prompt's: the same question has the same id under another seed
    shared = {t.prompt: t.id for t in tasks(N, seed=1)}
    assert all(shared[t.prompt] == t.id for t in workload if t.prompt in shared)


def test_every_kind_spans_the_difficulties_and_prompts_end_with_the_form(
    workload: list[Task],
) -> None:
    per_kind: dict[str, set[str]] = collections.defaultdict(set)
    for t in workload:
        per_kind[t.kind].add(t.difficulty)
        head, _, instruction = t.prompt.rpartition("\n")
        assert head.strip() and instruction.startswith("Answer with") and instruction.endswith(".")
        assert t.answer == t.answer.strip() and t.answer
        assert t.answer_type in ("number", "text")
        if t.answer_type == "number":
            assert int(t.answer) >= 0
    assert per_kind == {k: {"easy", "medium", "hard"} for k in KINDS}
    for kind, subjects in SUBJECTS.items():  # every subject is drawn from early on
        assert {t.subject for t in workload if t.kind == kind} == set(subjects)


def test_summary_counts_kind_and_difficulty(workload: list[Task]) -> None:
    counts = summary(workload[:700])
    assert sum(counts.values()) == 700
    assert {key.split("/")[0] for key in counts} == set(KINDS)
    assert counts["sort/easy"] == 25 and counts["sort/hard"] == 50  # 4 subjects, 2 hard


def test_arithmetic_is_arithmetic_py_open_questions(workload: list[Task]) -> None:
    assert set(ARITHMETIC_DIFFICULTY) == {
        s for subjects in arithmetic.SUBJECTS.values() for s in subjects
    }
    source = {prompt_text(q): q for q in arithmetic.generate_open(N)}
    mine = [t for t in workload if t.kind == "arithmetic"]
    assert [t.prompt for t in mine] == [prompt_text(q) for q in arithmetic.generate_open(len(mine))]
    for t in mine:
        q = source[t.prompt]
        assert t.answer == q.choices[LETTERS.index(q.answer)]
        assert (t.subject, t.difficulty) == (q.subject, ARITHMETIC_DIFFICULTY[q.subject])
        assert t.answer_type == "number"


def test_arithmetic_goes_on_past_its_own_stream_without_repeats() -> None:
    seen: set[str] = set()
    stream = quality_tasks._arithmetic(0, seen, wanted=9_000)
    drawn = [next(stream) for _ in range(9_000)]  # seed 0 alone has 8,324
    assert len({t.prompt for t in drawn}) == 9_000 == len(seen)


def test_words_are_distinct_plain_words() -> None:
    assert len(set(WORDS)) == len(WORDS) >= 200
    assert all(re.fullmatch(r"[a-z]{3,10}", w) for w in WORDS)
    assert not set(WORDS) & set(quality_tasks._KEYS)


def test_the_request_path_never_imports_this_module() -> None:
    online = [ROOT / "deployments", ROOT / "routing", ROOT / "core", ROOT / "execution"]
    for folder in online:
        for path in folder.rglob("*.py"):
            if "training" in path.parts:
                continue
            assert "quality_tasks" not in path.read_text(encoding="utf-8"), path


# --- answers, worked out again from the prompt's text -------------------------------------


def code_of(prompt: str) -> str:
    return prompt.split("```python\n", 1)[1].split("\n```", 1)[0]


def quoted(prompt: str) -> list[str]:
    return re.findall(r'"([^"]*)"', prompt)


def test_python_answers_are_what_python_prints(workload: list[Task]) -> None:
    for t in (t for t in workload if t.kind == "python"):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(code_of(t.prompt), {})  # generated here, by the module
        assert out.getvalue() == t.answer + "\n", t


def test_lookup_answers_are_the_values_in_the_json(workload: list[Task]) -> None:
    for t in (t for t in workload if t.kind == "lookup"):
        data = json.loads(t.prompt.split("\n")[1])
        path = re.search(r'the key "(\w+)"(?: inside "(\w+)")?\?', t.prompt)
        assert path is not None
        key, outer = path.groups()
        value = data[outer][key] if outer else data[key]
        assert str(value) == t.answer
        assert t.answer_type == ("number" if isinstance(value, int) else "text")
        values = (
            [v for inner in data.values() for v in inner.values()] if outer else list(data.values())
        )
        assert len(set(map(str, values))) == len(values)  # a wrong key: a wrong value


def test_sort_answers_are_the_numbers_sorted(workload: list[Task]) -> None:
    for t in (t for t in workload if t.kind == "sort"):
        shown = [int(x) for x in re.findall(r"\d+", t.prompt.split(":", 1)[1].split("\n")[0])]
        expected = sorted(shown, reverse="descending" in t.prompt)
        assert t.answer == ", ".join(map(str, expected))
        assert shown != expected  # echoing the question is never right
        size = {"sort_3": 3, "sort_5": 5, "sort_8": 8, "sort_12": 12}[t.subject]
        assert len(set(shown)) == size


def test_string_answers(workload: list[Task]) -> None:
    for t in (t for t in workload if t.kind == "string"):
        q = quoted(t.prompt)
        if t.subject == "first_last_letter":
            assert t.answer == q[0][0 if "first letter" in t.prompt else -1]
        elif t.subject == "nth_letter":
            nth = re.search(r"the (\d+)(st|nd|rd|th) letter", t.prompt)
            assert nth is not None and 1 < int(nth[1]) < len(q[0])
            assert t.answer == q[0][int(nth[1]) - 1]
            assert nth[2] == {1: "st", 2: "nd", 3: "rd"}.get(int(nth[1]), "th")
        elif t.subject == "word_length":
            assert t.answer == str(len(q[0]))
        elif t.subject == "letter_count":
            assert t.answer == str(q[1].count(q[0])) != "0"
        elif t.subject.startswith("reverse"):
            assert t.answer == q[0][::-1]
        else:
            words = t.prompt.split(": ", 1)[1].split("?")[0].split(", ")
            assert t.answer == min(words) and len(set(words)) == len(words)
            initials = {w[0] for w in words}
            assert len(initials) == (1 if t.subject == "alphabetical_same_initial" else 3)


def test_sequence_answers_follow_the_one_rule_the_terms_show(workload: list[Task]) -> None:
    for t in (t for t in workload if t.kind == "sequence"):
        terms = [int(x) for x in re.findall(r"\d+", t.prompt.split("\n")[0])]
        full = [*terms, int(t.answer)]
        steps = [b - a for a, b in zip(full, full[1:], strict=False)]
        growth = {b - a for a, b in zip(steps, steps[1:], strict=False)}
        ratio = full[1] // full[0]
        rules = {
            "step": len(set(steps)) == 1,
            "ratio": ratio > 1
            and all(b == a * ratio for a, b in zip(full, full[1:], strict=False)),
            "second": len(growth) == 1 and growth != {0},
            "fibonacci": all(c == a + b for a, b, c in zip(full, full[1:], full[2:], strict=False)),
        }
        assert sum(rules.values()) == 1, (t, rules)
        assert len(terms) >= 4 and full[-1] > 0


FACTORS = {
    ("kilometers", "meters"): 1000, ("meters", "centimeters"): 100,
    ("centimeters", "millimeters"): 10, ("kilograms", "grams"): 1000,
    ("liters", "milliliters"): 1000, ("hours", "minutes"): 60, ("minutes", "seconds"): 60,
    ("days", "hours"): 24, ("weeks", "days"): 7, ("years", "months"): 12,
    ("feet", "inches"): 12, ("yards", "feet"): 3, ("hours", "seconds"): 3600,
    ("days", "minutes"): 1440, ("weeks", "hours"): 168, ("days", "seconds"): 86_400,
    ("kilometers", "centimeters"): 100_000,
}  # fmt: skip


def test_unit_answers_are_whole_conversions(workload: list[Task]) -> None:
    for t in (t for t in workload if t.kind == "units"):
        line = t.prompt.split("\n")[0]
        mixed = re.fullmatch(r"Convert (\d+) (\w+) and (\d+) (\w+) to (\w+)\.", line)
        if mixed:
            a, big, b, small, to = mixed.groups()
            assert small == to
            assert int(t.answer) == int(a) * FACTORS[big, small] + int(b)
            continue
        plain = re.fullmatch(r"Convert (\d+) (\w+) to (\w+)\.", line)
        assert plain is not None, line
        value, source, target = plain.groups()
        if (source, target) in FACTORS:
            assert int(t.answer) == int(value) * FACTORS[source, target]
        else:
            assert int(t.answer) * FACTORS[target, source] == int(value)


# --- grading ----------------------------------------------------------------------------


def test_the_canonical_answer_and_a_sentence_around_it_are_right(workload: list[Task]) -> None:
    for t in workload:
        assert grade(t, t.answer), t
        assert grade(t, f"The answer is {t.answer}."), t


PHRASINGS = [
    "{}",
    "The answer is {}.",
    "**{}**",
    "Answer: `{}`",
    "\n\n  {}  \n",
    "```\n{}\n```",
    "```text\n{}\n```\nThat is all.",
    '"{}"',
    "{}\nBecause 2 + 2 = 4 and the word is banana.",  # later lines are not read
]


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_accepts_typical_phrasings_and_rejects_wrong_answers(
    workload: list[Task], kind: str
) -> None:
    for answer_type in ("number", "text"):
        found = [t for t in workload if t.kind == kind and t.answer_type == answer_type]
        for t in found[:5]:
            for phrasing in PHRASINGS:
                assert grade(t, phrasing.format(t.answer)), (t, phrasing)
            for wrong in wrong_answers(t):
                assert not grade(t, wrong), (t, wrong)
                assert not grade(t, f"The answer is {wrong}."), (t, wrong)
            assert not grade(t, None) and not grade(t, "") and not grade(t, "I don't know.")
            later = f"I think it is {wrong_answers(t)[0]}.\n{t.answer}"
            assert not grade(t, later)  # only the first answer line counts


def wrong_answers(t: Task) -> list[str]:
    if t.answer_type == "number":
        return [str(int(t.answer) + 1), str(int(t.answer) - 1), str(int(t.answer) + 10)]
    words = t.answer.split(", ")
    if len(words) > 1:  # a list: another order, one item short
        return [", ".join(reversed(words)), ", ".join(words[:-1])]
    other = "zebra" if t.answer != "zebra" else "apple"
    shorter = t.answer[:-1] if len(t.answer) > 1 else ("x" if t.answer != "x" else "y")
    return [other, t.answer + "s", shorter]


def sample_task(kind: str, answer: str, answer_type: Literal["number", "text"]) -> Task:
    return Task("x-0", kind, "s", "easy", "Q?\nAnswer with it.", answer, answer_type)


def test_number_grading_reads_the_last_whole_number_of_the_answer_line() -> None:
    t = sample_task("arithmetic", "151", "number")
    assert grade(t, "62 + 89 = 151")
    assert grade(t, "The sum of 62 and 89 is **151**. Good luck!")
    assert grade(t, "151 apples")
    assert not grade(t, "151 is 62 + 89")  # the last number is the answer
    assert not grade(t, "1510") and not grade(t, "15.1")
    assert grade(sample_task("units", "4147200", "number"), "That is 4,147,200 seconds.")


def test_text_grading_ignores_case_punctuation_quotes_and_markdown() -> None:
    word = sample_task("string", "nedrag", "text")
    assert grade(word, "The reverse of 'garden' is 'Nedrag'.")
    assert grade(word, "*NEDRAG*!") and grade(word, "> `nedrag`")
    assert not grade(word, "nedrag is the reverse of garden")  # not at the end: documented
    assert not grade(word, "nedrags") and not grade(word, "ne drag")
    letter = sample_task("string", "r", "text")
    assert grade(letter, 'The 3rd letter of "garden" is "R".')
    assert not grade(letter, "The 3rd letter is a")
    numbers = sample_task("sort", "7, 19, 42", "text")
    assert grade(numbers, "Sorted in ascending order: [7, 19, 42]")
    assert grade(numbers, "7,19,42") and grade(numbers, "7 19 42")
    assert not grade(numbers, "17, 19, 42") and not grade(numbers, "7, 19, 42, 50")


def test_grading_is_one_pass_even_on_long_hostile_replies() -> None:
    """No timing assertion: these would take minutes with a backtracking pattern."""
    t = sample_task("arithmetic", "7", "number")
    assert not grade(t, "1," * 200_000 + "x")
    assert not grade(t, "-" * 200_000 + "1")
    assert grade(t, " " * 200_000 + "a " * 200_000 + "7")
    words = sample_task("string", "ok", "text")
    assert grade(words, "*" * 200_000 + " ok") and not grade(words, "ok " * 200_000 + "no")


def test_a_hundred_thousand_tasks_are_made_with_unique_ids_and_equal_kinds() -> None:
    many = tasks(100_000)
    assert len(many) == len({t.id for t in many}) == 100_000
    counts = collections.Counter(t.kind for t in many)
    assert max(counts.values()) - min(counts.values()) <= 1


# --- as router training data (`switchyard make-data --questions tasks`) -----------------


def test_tasks_become_questions_graded_by_the_same_rule() -> None:
    from routing.training.dataset import QUESTION_SETS, prompt_text
    from routing.training.quality_tasks import TASK_SET, as_question, grade_question

    assert QUESTION_SETS["tasks"]() is TASK_SET
    for task in tasks(70, seed=3):
        question = as_question(task)
        assert prompt_text(question) == task.prompt  # the prompt as the bench asks it
        assert (question.domain, question.subject, question.id) == (
            task.kind, task.subject, task.id,
        )  # fmt: skip
        assert grade_question(question, f"The answer is {task.answer}.") is True
        assert grade_question(question, None) is False
        assert grade_question(question, "I do not know") is False
    assert [q.id for q in TASK_SET.generate(14, 3)] == [t.id for t in tasks(14, seed=3)]


def test_make_data_on_tasks_labels_each_pool_by_its_graded_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CSV the trainer reads, without vLLM: `answer` replaced by a model that is right
    on every other task (`large`) or never (`small`)."""
    from routing.training import dataset
    from routing.training.quality_tasks import TASK_SET, TASK_TOKENS
    from routing.training.train import read_router_csv

    workload = tasks(21, seed=5)
    asked: list[tuple[str, int | None]] = []

    def fake_answer(model: str, questions: list, path: Path, **kw: object) -> tuple[dict, float]:
        asked.append((model, kw.get("max_tokens")))  # type: ignore[arg-type]
        right = model == "big"
        return {
            q.id: (q.expected if right and i % 2 == 0 else "no idea")
            for i, q in enumerate(questions)
        }, 0.0

    monkeypatch.setattr(dataset, "answer", fake_answer)
    out = tmp_path / "tasks.csv"
    summary = dataset.make_dataset(
        out, {"small": "tiny", "large": "big"}, limit=21, seed=5, cache=tmp_path,
        question_set=TASK_SET,
    )  # fmt: skip
    assert asked == [("tiny", TASK_TOKENS), ("big", TASK_TOKENS)]
    assert summary.accuracy == {"small": 0.0, "large": 11 / 21}
    rows = list(csv.DictReader(out.open()))
    assert [r["prompt"] for r in rows] == [t.prompt for t in workload]
    assert [r["domain"] for r in rows] == [t.kind for t in workload]
    assert [int(r["large"]) for r in rows] == [int(i % 2 == 0) for i in range(21)]
    read_router_csv(out)  # the trainer reads it
