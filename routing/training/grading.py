"""Grading multiple-choice questions with a real model: offline vLLM, one process per model.

Each question is the user message of a chat (the model's own chat template), and the
assistant's answer is begun for it: "The correct answer is". The next token decides:
vLLM returns the log-probabilities of the four letter tokens " A" .. " D"
(`logprob_token_ids`, over the whole vocabulary, temperature 0), and the model's answer
is the most likely letter. A base model without a chat template gets the question
followed by "Answer:". One generated token per question, so prompt processing is the
whole cost.

Calibration: models this small prefer one letter whatever the question (measured on 96
MMLU questions: SmolLM2-135M said "A" 95 times, Qwen2.5-Coder-0.5B "B" 52-81 times,
depending on the prompt). That prior says nothing about the question, so `choose`
subtracts each model's mean log-probability per letter over the questions graded
together before taking the most likely letter (Zhao et al. 2021, "Calibrate before use";
`calibrate=False` keeps the raw choice). What is left is the model's preference for one
option on this question, which is what a router can learn from.

Open answers (`answer`, for questions of style "open", e.g. generated arithmetic): the
model writes its answer itself, greedily, at most `OPEN_TOKENS` tokens of its first line,
no answer begun for it; the last whole number it writes (`number`) is its answer, and
`match` gives the letter of the option equal to it ("-" when none is). Letter-prior
calibration does not apply: no letter is scored. Why: measured on 200 generated
arithmetic questions, both embedded models were at chance when made to name a letter
(Qwen2.5-Coder-0.5B wants to work the sum out first, "To determine the correct answer,
...", and cannot when its first token must be a letter), yet wrote "5", "151", "12" for
"3 + 2", "62 + 89", "2 × 6" when asked for the number.

The cache: one JSON line per graded question, `{"id", "logprobs": [A, B, C, D]}` (null
when the prompt does not fit the model's context), or `{"id", "text"}` for an open
answer, appended batch by batch, so an interrupted run loses at most one batch and
nothing is graded twice.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import re
import signal
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from routing.training.dataset import Question

__all__ = [
    "ANSWER_PREFIX",
    "LETTERS",
    "MAX_MODEL_LEN",
    "OPEN_TOKENS",
    "answer",
    "choose",
    "grade",
    "match",
    "number",
    "read_answers",
    "read_grades",
]

LETTERS = ("A", "B", "C", "D")
ANSWER_PREFIX = "The correct answer is"
MAX_MODEL_LEN = 2048
OPEN_TOKENS = 16  # room for "1711 + 7142 = 8853" (digits are tokens of their own)

Grades = dict[str, list[float] | None]  # question id -> log-probs of A..D (None: too long)


def read_grades(path: Path) -> Grades:
    """What the cache file holds (a torn last line, from an interrupted run, is ignored)."""
    grades: Grades = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
                values = row["logprobs"]
                if values is not None and len(values) != len(LETTERS):
                    continue
                grades[str(row["id"])] = None if values is None else [float(v) for v in values]
            except (ValueError, KeyError, TypeError):
                continue
    return grades


def read_answers(path: Path) -> dict[str, str | None]:
    """The open answers the cache file holds (None: the prompt did not fit)."""
    answers: dict[str, str | None] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
                text = row["text"]
                if text is not None and not isinstance(text, str):
                    continue
                answers[str(row["id"])] = text
            except (ValueError, KeyError, TypeError):
                continue
    return answers


_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?!\d)")


def number(text: str | None) -> int | None:
    """The last whole number on the answer's first line ("2 + 4 = 6" -> 6, "1,234" ->
    1234); None when there is none."""
    if not text:
        return None
    found = _NUMBER.findall(text.strip().split("\n", 1)[0])
    return int(found[-1].replace(",", "")) if found else None


def match(answers: Mapping[str, str | None], questions: Sequence[Question]) -> dict[str, str]:
    """The letter of the option each open answer names ("-": no option, or not answered)."""
    letters: dict[str, str] = {}
    for q in questions:
        if q.id not in answers:
            continue
        said = number(answers[q.id])
        options = [number(c) for c in q.choices]
        letters[q.id] = (
            LETTERS[options.index(said)] if said is not None and said in options else "-"
        )
    return letters


def choose(grades: Mapping[str, list[float] | None], *, calibrate: bool = True) -> dict[str, str]:
    """The letter each graded question gets ("-" for one that was not answered)."""
    answered = {qid: v for qid, v in grades.items() if v is not None}
    if not answered:
        return dict.fromkeys(grades, "-")
    ids = list(answered)
    logprobs = np.array([answered[qid] for qid in ids], dtype=np.float64)
    if calibrate:
        logprobs = logprobs - logprobs.mean(axis=0)
    picked = {qid: LETTERS[int(i)] for qid, i in zip(ids, logprobs.argmax(axis=1), strict=True)}
    return {qid: picked.get(qid, "-") for qid in grades}


def _batches(items: Sequence[Question], size: int) -> Iterator[Sequence[Question]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _grade(
    model: str,
    model_path: str,
    todo: list[Question],
    out: str,
    batch: int,
    open_answers: bool,
    max_tokens: int = OPEN_TOKENS,
) -> None:
    """In its own process group: load `model` in vLLM, append the letters' log-probs (or,
    `open_answers`, what it writes).

    NOTE: vLLM's engine processes can hang at interpreter exit here (seen: the main
    thread waiting forever on EngineCore); so the engine is shut down with a timeout, the
    process ends with `os._exit`, and `grade` kills whatever is left in the group.
    """
    os.setpgrp()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "0-1")
    from tqdm import tqdm
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams

    from routing.training.dataset import prompt_text

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    chat = bool(getattr(tokenizer, "chat_template", None))
    letters = [tokenizer.encode(f" {x}", add_special_tokens=False) for x in LETTERS]
    if any(len(ids) != 1 for ids in letters):
        raise RuntimeError(f"{model}: an option letter is not one token: {letters}")
    ids = [t[0] for t in letters]
    if open_answers:
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    else:
        params = SamplingParams(temperature=0.0, max_tokens=1, logprob_token_ids=ids)
    llm = LLM(
        model=model_path, dtype="float32", enforce_eager=True, max_model_len=MAX_MODEL_LEN,
        max_num_seqs=16, seed=0,
    )  # fmt: skip

    def render(question: Question) -> str:
        text = prompt_text(question)
        if not chat:
            return f"{text}\nAnswer:"
        messages = [{"role": "user", "content": text}]
        head = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return str(head) if open_answers else f"{head}{ANSWER_PREFIX}"

    with (
        Path(out).open("a", encoding="utf-8") as sink,
        tqdm(total=len(todo), desc=model, unit="q") as bar,
    ):
        for chunk in _batches(todo, batch):
            prompts = [render(q) for q in chunk]
            fits = [
                len(tokenizer.encode(p, add_special_tokens=False)) < MAX_MODEL_LEN for p in prompts
            ]
            outputs = iter(
                llm.generate(
                    [p for p, ok in zip(prompts, fits, strict=True) if ok], params, use_tqdm=False
                )
                if any(fits)
                else []
            )
            for question, ok in zip(chunk, fits, strict=True):
                if open_answers:
                    text = next(outputs).outputs[0].text if ok else None
                    sink.write(json.dumps({"id": question.id, "text": text}) + "\n")
                    continue
                values = None
                if ok:
                    first = next(outputs).outputs[0].logprobs
                    step = first[0] if first else {}
                    values = [float(step[t].logprob) if t in step else float("-1e9") for t in ids]
                sink.write(json.dumps({"id": question.id, "logprobs": values}) + "\n")
            sink.flush()
            bar.update(len(chunk))
    try:
        llm.llm_engine.engine_core.shutdown(timeout=10)
    finally:
        os._exit(0)


def grade(
    model: str, questions: Sequence[Question], path: Path, *, batch: int = 32
) -> tuple[Grades, float]:
    """Log-probs of each question's letters from `model` (cached ones reused), and the
    seconds spent grading now."""
    seconds = _run(model, questions, path, batch, open_answers=False)
    wanted = {q.id for q in questions}
    return {qid: v for qid, v in read_grades(path).items() if qid in wanted}, seconds


def answer(
    model: str,
    questions: Sequence[Question],
    path: Path,
    *,
    batch: int = 32,
    max_tokens: int | None = None,
) -> tuple[dict[str, str | None], float]:
    """What `model` writes for each question (cached ones reused), and the seconds spent
    grading now; at most `max_tokens` (default `OPEN_TOKENS`) tokens each."""
    seconds = _run(model, questions, path, batch, open_answers=True, max_tokens=max_tokens)
    wanted = {q.id for q in questions}
    return {qid: v for qid, v in read_answers(path).items() if qid in wanted}, seconds


def _run(
    model: str,
    questions: Sequence[Question],
    path: Path,
    batch: int,
    *,
    open_answers: bool,
    max_tokens: int | None = None,
) -> float:
    """Grade the questions the cache file lacks; the seconds it took (0.0: none)."""
    from models.prepare import is_prepared, model_dir

    path.parent.mkdir(parents=True, exist_ok=True)
    cached = read_answers(path) if open_answers else read_grades(path)
    todo = [q for q in questions if q.id not in cached]
    started = time.monotonic()
    if todo:
        if not is_prepared(model):
            raise RuntimeError(f"model {model!r} is not prepared: run `switchyard prepare {model}`")
        # NOTE: spawn, not fork: vLLM starts its own engine process and threads, and the
        # process ending is what gives the model's memory back before the next one loads.
        child = multiprocessing.get_context("spawn").Process(
            target=_grade,
            args=(
                model,
                str(model_dir(model)),
                todo,
                str(path),
                batch,
                open_answers,
                max_tokens or OPEN_TOKENS,
            ),  # fmt: skip
        )
        child.start()
        try:
            child.join()
        finally:
            if child.pid:  # NOTE: never 0, which would be our own group
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.pid, signal.SIGKILL)  # engine processes left behind
        if child.exitcode != 0:
            raise RuntimeError(f"grading with {model} failed (exit code {child.exitcode})")
    return time.monotonic() - started if todo else 0.0
