"""Arithmetic multiple-choice questions, generated here: `switchyard make-data --questions
arithmetic`.

Why: both embedded models are at chance on MMLU, so its labels are noise. Arithmetic has
a difficulty that is easy to vary (the operation and the operands' size) and that small
models plausibly get right at different rates, which is what a router can learn.

What: five domains, the operation, of four subjects each (`SUBJECTS`), e.g. `add_2digit`
(both operands have two digits), `mul_2x1` (two digits times one), `compare_3digit`
("which is the largest / smallest?" among four 3-digit numbers) and `word_sub_2digit` (a
subtraction told as a short story). Four options: the answer and three distractors drawn
from the mistakes people make: off by one or by ten (a hundred for 3-4 digits), two
adjacent digits swapped, the carry or the borrow forgotten, the wrong operation, one
factor too many or too few; for "compare", numbers with the same digits or one digit
apart. Every option is a non-negative whole number and the four are distinct.

Reproducible: nothing is downloaded and nothing is random between runs. Subject `s`
draws its questions from `random.Random(f"{seed}:{s}")` (no problem twice in a
subject); the stream takes the subjects in turn (one that has no new problem left, e.g.
`add_1digit` after its 81, drops out), so every subject keeps an equal share and the
questions for a larger `--limit` start with those for a smaller one (nothing is graded
twice). The key's letter is a shuffle of A-D per four consecutive questions: exactly
balanced, and independent of the subject. At most `PER_SUBJECT` questions per subject.

The prompt is `routing.training.dataset.prompt_text`'s, the one MMLU questions get,
with "arithmetic" as the topic, so grading (letter log-probabilities, letter-prior
calibration, the cache) and the CSV are exactly those of MMLU; `source` is `arithmetic`.

`--questions arithmetic-open` (`ARITHMETIC_OPEN`): the same problems without the
options, "What is 62 + 89?\nAnswer with the number only." ("compare" lists its four
numbers in the question); the model writes its answer and is right when the number it
names is the key (`routing.training.grading.answer`, `match`). Why: on the four-option
prompt both embedded models were at chance (200 questions: SmolLM2-135M 0.220,
Qwen2.5-Coder-0.5B 0.265), while asked for the number Qwen gets 0.645 and SmolLM2 0.083
(1,000 questions), from 1.00 / 0.54 on `add_1digit` down to 0.16 / 0.02 on `mul_2digit`.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Iterator

from routing.training.dataset import GeneratedSet, Question
from routing.training.grading import LETTERS

__all__ = [
    "ARITHMETIC",
    "ARITHMETIC_OPEN",
    "PER_SUBJECT",
    "SUBJECTS",
    "TOPIC",
    "generate",
    "generate_open",
]

TOPIC = "arithmetic"
PER_SUBJECT = 500  # questions a subject yields at most (--limit 0: all, 8,324 for seed 0)
_TRIES = 400  # draws without a new problem before a subject counts as exhausted

# A problem: its text, the answer, and candidate distractors (three are picked).
Problem = tuple[str, int, list[int]]
Maker = Callable[[random.Random], Problem]


def _number(rng: random.Random, digits: int, low: int | None = None) -> int:
    """A whole number with exactly `digits` digits (1-digit: from `low`, default 1)."""
    if digits == 1:
        return rng.randint(1 if low is None else low, 9)
    return rng.randint(10 ** (digits - 1), 10**digits - 1)


def _swaps(n: int) -> list[int]:
    """`n` with two adjacent, different digits swapped (no leading zero)."""
    text = str(n)
    found = []
    for i in range(len(text) - 1):
        if text[i] != text[i + 1] and not (i == 0 and text[i + 1] == "0"):
            found.append(int(text[:i] + text[i + 1] + text[i] + text[i + 2 :]))
    return found


def _digits(n: int, width: int) -> list[int]:
    return [int(c) for c in str(n).zfill(width)]


def _no_carry(a: int, b: int) -> int:
    """a + b with every carry forgotten (digit sums mod 10)."""
    width = max(len(str(a)), len(str(b)))
    pairs = zip(_digits(a, width), _digits(b, width), strict=True)
    return int("".join(str((x + y) % 10) for x, y in pairs))


def _no_borrow(a: int, b: int) -> int:
    """a - b digit by digit, the smaller digit taken from the larger (no borrowing)."""
    width = len(str(a))
    pairs = zip(_digits(a, width), _digits(b, width), strict=True)
    return int("".join(str(abs(x - y)) for x, y in pairs))


def _near(r: int) -> list[int]:
    """Off by one, by ten and (for 3+ digits) by a hundred, both ways."""
    offsets = [1, -1, 2, -2, 10, -10] + ([100, -100] if r >= 100 else [])
    return [r + d for d in offsets]


# An operation's operands, result and candidate mistakes.
Sum = tuple[int, int, int, list[int]]


def _addition(rng: random.Random, digits: int) -> Sum:
    a, b = _number(rng, digits), _number(rng, digits)
    r = a + b
    return a, b, r, [*_near(r), *_swaps(r), _no_carry(a, b), abs(a - b)]


def _subtraction(rng: random.Random, digits: int) -> Sum:
    if digits == 1:  # the subtraction facts: a 1-digit subtrahend and difference
        r, b = _number(rng, 1), _number(rng, 1)
        a = r + b
    else:
        a, b = sorted((_number(rng, digits), _number(rng, digits)), reverse=True)
        r = a - b
    wrong = [_no_borrow(a, b)] if len(str(a)) == len(str(b)) else []
    return a, b, r, [*_near(r), *_swaps(r), *wrong, a + b]


def _multiplication(rng: random.Random, left: int, right: int) -> Sum:
    a, b = _number(rng, left, low=2), _number(rng, right, low=2)
    r = a * b
    factors = [r + a, r - a, r + b, r - b]  # one factor too many or too few
    return a, b, r, [*factors, *_near(r), *_swaps(r), a + b]


_SIGN = {"add": "+", "sub": "-", "mul": "×"}


def _operation(op: str, left: int, right: int = 0) -> Maker:
    def make(rng: random.Random) -> Problem:
        a, b, r, wrong = _solve(rng, op, left, right)
        return f"What is {a} {_SIGN[op]} {b}?", r, wrong

    return make


def _solve(rng: random.Random, op: str, left: int, right: int) -> Sum:
    if op == "add":
        return _addition(rng, left)
    if op == "sub":
        return _subtraction(rng, left)
    return _multiplication(rng, left, right)


def _compare(digits: int) -> Maker:
    low, high = (0, 9) if digits == 1 else (10 ** (digits - 1), 10**digits - 1)

    def make(rng: random.Random) -> Problem:
        largest = rng.random() < 0.5
        while True:
            x = rng.randint(low, high)
            near = [x + 1, x - 1, x + 10, x - 10, *_swaps(x), rng.randint(low, high)]
            if digits > 1:
                near += [x + 10 ** (digits - 1), x - 10 ** (digits - 1)]
            near = sorted({n for n in near if low <= n <= high and n != x})
            if len(near) >= 3:
                break
        numbers = [x, *rng.sample(near, 3)]
        answer = max(numbers) if largest else min(numbers)
        word = "largest" if largest else "smallest"
        return f"Which of these numbers is the {word}?", answer, [n for n in numbers if n != answer]

    return make


_NAMES = ("Anna", "Ben", "Chloe", "David", "Emma", "Farid", "Grace", "Hiro", "Ines", "Jonas")
_THINGS = ("apples", "marbles", "stamps", "books", "coins", "stickers", "pencils", "cards")
_STORIES = {
    "add": "{name} has {a} {things} and gets {b} more. How many {things} does {name} have now?",
    "sub": "{name} has {a} {things} and gives {b} of them away. "
    "How many {things} does {name} have left?",
    "mul": "{name} has {a} boxes with {b} {things} in each box. "
    "How many {things} does {name} have in all?",
}


def _story(op: str, left: int, right: int = 0) -> Maker:
    def make(rng: random.Random) -> Problem:
        a, b, r, wrong = _solve(rng, op, left, right)
        name, things = rng.choice(_NAMES), rng.choice(_THINGS)
        return _STORIES[op].format(name=name, things=things, a=a, b=b), r, wrong

    return make


# domain (the operation) -> subject -> its problems
SUBJECTS: dict[str, dict[str, Maker]] = {
    "add": {f"add_{d}digit": _operation("add", d) for d in (1, 2, 3, 4)},
    "sub": {f"sub_{d}digit": _operation("sub", d) for d in (1, 2, 3, 4)},
    "mul": {
        "mul_1digit": _operation("mul", 1, 1),
        "mul_2x1": _operation("mul", 2, 1),
        "mul_3x1": _operation("mul", 3, 1),
        "mul_2digit": _operation("mul", 2, 2),
    },
    "compare": {f"compare_{d}digit": _compare(d) for d in (1, 2, 3, 4)},
    "word": {
        "word_add_2digit": _story("add", 2),
        "word_sub_2digit": _story("sub", 2),
        "word_mul_1digit": _story("mul", 1, 1),
        "word_mul_2x1": _story("mul", 2, 1),
    },
}


def _problems(seed: int, subject: str, make: Maker) -> Iterator[Problem]:
    """A subject's problems, none twice, each with three distinct distractors."""
    rng = random.Random(f"{seed}:{subject}")
    seen: set[tuple[str, int, tuple[int, ...]]] = set()
    misses = 0
    while len(seen) < PER_SUBJECT and misses < _TRIES:
        text, answer, wrong = make(rng)
        pool = sorted({w for w in wrong if w >= 0 and w != answer})
        # the same text with the same mistakes is the same problem ("compare": the same
        # text, other numbers, is not)
        identity = (text, answer, tuple(pool))
        if identity in seen:
            misses += 1
            continue
        if len(pool) < 3:  # NOTE: every maker offers more; a guard, not a path
            raise AssertionError(f"{subject}: too few distractors for {text!r}")
        seen.add(identity)
        misses = 0
        yield text, answer, rng.sample(pool, 3)


def generate(limit: int | None, seed: int = 0, *, style: str = "choice") -> list[Question]:
    """The first `limit` questions of the seeded stream (None: all of it); `style="open"`:
    the same problems, asked without options (`generate_open`)."""
    streams = [
        (domain, subject, _problems(seed, subject, make))
        for domain, subjects in SUBJECTS.items()
        for subject, make in subjects.items()
    ]
    questions: list[Question] = []
    while streams and (limit is None or len(questions) < limit):
        for entry in list(streams):
            if limit is not None and len(questions) >= limit:
                break
            domain, subject, problems = entry
            problem = next(problems, None)
            if problem is None:
                streams.remove(entry)
                continue
            questions.append(_question(seed, len(questions), domain, subject, problem, style))
    return questions


def generate_open(limit: int | None, seed: int = 0) -> list[Question]:
    """`generate`'s problems as open questions: the model writes the number (graded by
    `routing.training.grading.answer`); "compare" lists its four numbers in the text."""
    return generate(limit, seed, style="open")


def _question(
    seed: int, index: int, domain: str, subject: str, problem: Problem, style: str
) -> Question:
    """Question `index` of the stream: the key at its letter, distractors around it."""
    text, answer, distractors = problem
    block = list(LETTERS)
    random.Random(f"{seed}:letters:{index // 4}").shuffle(block)
    letter = block[index % 4]
    others = list(distractors)
    random.Random(f"{seed}:order:{index}").shuffle(others)
    others.insert(LETTERS.index(letter), answer)
    a, b, c, d = (str(n) for n in others)
    if style == "open" and domain == "compare":
        text = f"{text.removesuffix('?')}: {a}, {b}, {c} or {d}?"
    content = [text, a, b, c, d] if style == "choice" else [style, text, a, b, c, d]
    key = hashlib.sha256(json.dumps(content).encode()).hexdigest()[:16]
    return Question(
        key, subject, text, (a, b, c, d), letter, group=domain, topic=TOPIC, style=style
    )


ARITHMETIC = GeneratedSet(
    name="arithmetic",
    licence="generated here from a seed, nothing downloaded",
    generate=generate,
)
ARITHMETIC_OPEN = GeneratedSet(
    name="arithmetic-open",
    licence="generated here from a seed, nothing downloaded",
    generate=generate_open,
    style="open",
)
