"""A graded, mixed workload with answers a program can check: the live cost/quality benchmark
replays it through the router under each routing policy and scores every answer.

Why: a policy that saves money is only worth it if the answers stay right, and "right"
must be decided without a judge model. So every task asks for one short answer (a
number, a word, a list) that `grade` reads from the model's free text, deterministically.
The embedded models are tiny (SmolLM2-135M as `small`, Qwen2.5-Coder-0.5B as `large`),
so the tasks run from easy (both usually right) through medium to hard (at best the
larger one, sometimes) and very hard ("hard" too: the labels are the size of the problem,
what the models do with it is the benchmark's to measure).

What: seven kinds (a task's `kind`, the "domain" of grouped splits), each of subjects
of one difficulty (`SUBJECTS`, and `ARITHMETIC_DIFFICULTY` for arithmetic):

- `arithmetic`: `routing.training.arithmetic`'s open questions ("What is 62 + 89?"), with
  its prompt; 1-digit facts are easy, 3-4 digits and 2x2-digit products hard (measured
  there: Qwen 1.00 / SmolLM2 0.54 on `add_1digit`, 0.16 / 0.02 on `mul_2digit`).
- `sort`: 3 to 12 numbers, ascending or descending, answered as a comma-separated list.
- `string`: first/last/n-th letter, length, a letter's count, a reversed word, the
  alphabetically first word, over `WORDS`.
- `lookup`: the value of a key in a JSON object of 3 to 12 keys, or nested.
- `python`: what a line or a few lines of Python print (`len`, indexing, slicing,
  precedence, a loop, a nested expression).
- `sequence`: the next term of an arithmetic, geometric, second-order or Fibonacci-like
  sequence.
- `units`: conversions with whole results ("Convert 7 hours to minutes.").

Every prompt ends with a one-line instruction on the answer's form ("Answer with the
number only.").

Grading (`grade`): the answer line is the first line with a letter or digit that is not
a code fence ("```python"). A number task is right when that line's last whole number
(`routing.training.grading.number`, "1,234" is 1234) is the answer: "The answer is 42.",
"**42**", "62 + 89 = 151". A text task (words, letters, lists) is right when the line's
words, lower-cased, with punctuation, quotes and markdown dropped, end with the answer's:
"The reverse is 'Nedrag'.", "Sorted: 7, 19, 42". Both are one pass over the text, no
regex that can backtrack without bound. What they miss, on purpose (the same rule for
every policy): an answer not at the end of its line ("nedrag is the reverse"), on a later
line, or spelled out ("seven").

Reproducible: nothing is downloaded or random between runs. Subject `s` of kind `k`
draws from `random.Random(f"{seed}:{k}:{s}")`, no prompt twice; a kind takes its
subjects in turn, and `tasks` the kinds in turn (one that runs out drops out, as in
`arithmetic`), so each kind has an equal share and `tasks(m)` starts with `tasks(n)` for
m > n. Small subjects (the first letter of 250 words) run out after some hundreds; every
kind has one that does not, and arithmetic goes on with a seed derived from `seed`
after its 8,324 questions, so the shares stay equal to n = 100,000 and beyond (the mix
of difficulties within a kind shifts to the larger subjects there). A task's `id` is its
kind and a hash of its prompt: the same question has the same id under any seed.

Cost (measured once, 2-core machine, a CPU benchmark running beside): `tasks(100_000)`
2.2 s (2.1 s CPU), arithmetic.py's generator about a third of it (two passes of its
stream); `tasks(1_000)` 0.02 s. Only what `n` needs is drawn.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

from routing.training.arithmetic import generate_open
from routing.training.dataset import GeneratedSet, Question, prompt_text
from routing.training.grading import LETTERS, number

__all__ = [
    "TASK_SET",
    "as_question",
    "grade_question",
    "ARITHMETIC_DIFFICULTY",
    "KINDS",
    "SUBJECTS",
    "WORDS",
    "Task",
    "grade",
    "summary",
    "tasks",
]

Difficulty = Literal["easy", "medium", "hard"]
AnswerType = Literal["number", "text"]


@dataclass(frozen=True)
class Task:
    """One question of the workload and what `grade` needs to score an answer to it."""

    id: str  # "<kind>-<hash of the prompt>": stable, the same under any seed
    kind: str  # the task family, the domain of grouped splits
    subject: str  # the generator within the kind, e.g. "reverse_long", "add_2digit"
    difficulty: Difficulty
    prompt: str  # the user message; its last line says the answer's form
    answer: str  # the canonical answer, e.g. "151", "nedrag", "7, 19, 42"
    answer_type: AnswerType  # "number": the last number of the answer line; "text": its words


# A subject's draw: the prompt, the answer, how it is graded.
Draft = tuple[str, str, AnswerType]
Maker = Callable[[random.Random], Draft]

_TRIES = 200  # draws without a new prompt before a subject counts as exhausted
_NUMBER_ONLY = "\nAnswer with the number only."
_LETTER_ONLY = "\nAnswer with the letter only."
_WORD_ONLY = "\nAnswer with the word only."

# Common lowercase words of 3 to 10 letters (a-z only), for the string, lookup and
# python tasks.
WORDS: tuple[str, ...] = tuple(
    """
    cat dog sun hat cup pen box red map bus egg ice jam key leg net owl pig rug sky toy van
    web yak zip ant bee fox cow bed car arm ear eye fan gem hen ink jar kit lid mud nut oak
    pot rat sea tea art bag bat bow tree fish bird book door milk rain snow star wind lake
    moon ship frog king lamp nest rock salt sand seed song soup time wolf yard leaf gold rope
    bell coat desk drum farm gate hill iron kite lion mask nose road ring sock tent vase wall
    apple bread chair cloud dream earth flame grape house juice knife lemon mouse night ocean
    piano queen river stone table tiger train water zebra beach candy dance eagle field ghost
    heart horse light money music paper plant sheep smile spoon storm sugar toast watch whale
    garden basket bottle button candle carpet castle cheese circle copper dragon forest
    friend guitar hammer island jacket kitten ladder marble mirror monkey orange pencil
    pepper pillow planet rabbit rocket silver spider summer ticket tomato turtle window
    winter yellow balloon blanket captain chicken diamond dolphin elephant feather giraffe
    harvest holiday kitchen lantern library morning mountain necklace notebook octopus
    painter penguin picture pyramid rainbow sandwich science station teacher thunder tornado
    trumpet umbrella village volcano weather blossom calendar computer dinosaur festival
    hospital keyboard magazine mushroom question squirrel starfish strawberry triangle
    vacation
    """.split()
)

# JSON keys: none is in WORDS, so a key is never also a value.
_KEYS: tuple[str, ...] = tuple(
    """
    id name color size city owner price count level score status kind code mode rank team
    year page port user host label group phase shape speed state style title topic unit
    value zone width height depth weight total limit
    """.split()
)


# --- string ---------------------------------------------------------------------------


def _ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, ..., 11th, 12th, 13th."""
    suffix = "th" if n % 100 in (11, 12, 13) else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


@functools.cache
def _words(low: int, high: int) -> tuple[str, ...]:
    """The words of `low` to `high` letters (cached: asked for on every draw)."""
    return tuple(w for w in WORDS if low <= len(w) <= high)


def _first_or_last_letter(rng: random.Random) -> Draft:
    word, first = rng.choice(WORDS), rng.random() < 0.5
    where, letter = ("first", word[0]) if first else ("last", word[-1])
    return f'What is the {where} letter of the word "{word}"?{_LETTER_ONLY}', letter, "text"


def _nth_letter(rng: random.Random) -> Draft:
    word = rng.choice(_words(4, 10))
    i = rng.randint(2, len(word) - 1)  # neither first nor last: those are their own subject
    text = f'What is the {_ordinal(i)} letter of the word "{word}"?{_LETTER_ONLY}'
    return text, word[i - 1], "text"


def _word_length(rng: random.Random) -> Draft:
    word = rng.choice(WORDS)
    return f'How many letters are in the word "{word}"?{_NUMBER_ONLY}', str(len(word)), "number"


def _letter_count(rng: random.Random) -> Draft:
    word = rng.choice(WORDS)
    letter = rng.choice(sorted(set(word)))
    text = f'How many times does the letter "{letter}" appear in the word "{word}"?'
    return text + _NUMBER_ONLY, str(word.count(letter)), "number"


def _reverse(low: int, high: int) -> Maker:
    pool = _words(low, high)

    def make(rng: random.Random) -> Draft:
        word = rng.choice(pool)
        text = f'Write the word "{word}" backwards, letter by letter reversed.'
        return f"{text}\nAnswer with the reversed word only.", word[::-1], "text"

    return make


def _alphabetical(count: int, same_initial: bool) -> Maker:
    """The word that comes first of `count`; hard: all begin with the same letter."""
    groups = [g for g in _initials().values() if len(g) >= count or not same_initial]

    def make(rng: random.Random) -> Draft:
        if same_initial:
            words = rng.sample(rng.choice(groups), count)
        else:  # one word from each of `count` initials
            words = [rng.choice(g) for g in rng.sample(groups, count)]
        shown = ", ".join(words)
        text = f"Which of these words comes first in alphabetical order: {shown}?"
        return text + _WORD_ONLY, min(words), "text"

    return make


def _initials() -> dict[str, list[str]]:
    """WORDS by their first letter."""
    groups: dict[str, list[str]] = {}
    for word in WORDS:
        groups.setdefault(word[0], []).append(word)
    return groups


# --- sort -------------------------------------------------------------------------------


def _sort(count: int, low: int, high: int) -> Maker:
    def make(rng: random.Random) -> Draft:
        while True:
            numbers = rng.sample(range(low, high + 1), count)
            ascending = rng.random() < 0.5
            ordered = sorted(numbers, reverse=not ascending)
            if numbers != ordered:  # echoing the question must not be right
                break
        order = (
            "ascending order (smallest first)" if ascending else "descending order (largest first)"
        )
        shown = ", ".join(map(str, numbers))
        text = f"Sort these numbers in {order}: {shown}."
        instruction = "\nAnswer with the sorted numbers only, separated by commas."
        return text + instruction, ", ".join(map(str, ordered)), "text"

    return make


# --- lookup -----------------------------------------------------------------------------


def _values(rng: random.Random, count: int) -> list[int | str]:
    """`count` distinct values, each a number or a word, so a wrong key is a wrong answer."""
    numbers = rng.sample(range(1, 1000), count)
    words = rng.sample(WORDS, count)
    return [n if rng.random() < 0.5 else w for n, w in zip(numbers, words, strict=True)]


def _lookup_prompt(data: object, what: str, value: int | str) -> Draft:
    text = f"Here is a JSON object:\n{json.dumps(data)}\nWhat is the value of {what}?"
    kind: AnswerType = "number" if isinstance(value, int) else "text"
    return f"{text}\nAnswer with the value only.", str(value), kind


def _lookup(size: int) -> Maker:
    def make(rng: random.Random) -> Draft:
        keys, values = rng.sample(_KEYS, size), _values(rng, size)
        i = rng.randrange(size)
        data = dict(zip(keys, values, strict=True))
        return _lookup_prompt(data, f'the key "{keys[i]}"', values[i])

    return make


def _nested_lookup(rng: random.Random) -> Draft:
    """Three objects with the same three keys: the outer key decides which value."""
    keys = rng.sample(_KEYS, 6)
    outer, inner = keys[:3], keys[3:]
    values = iter(_values(rng, 9))
    data = {o: {i: next(values) for i in inner} for o in outer}
    o, i = rng.choice(outer), rng.choice(inner)
    return _lookup_prompt(data, f'the key "{i}" inside "{o}"', data[o][i])


# --- python -----------------------------------------------------------------------------


def _program(source: str, output: int | str) -> Draft:
    text = f"What does this Python code print?\n```python\n{source}\n```"
    kind: AnswerType = "number" if isinstance(output, int) else "text"
    return f"{text}\nAnswer with the printed output only.", str(output), kind


def _len_plus(rng: random.Random) -> Draft:
    word, k = rng.choice(WORDS), rng.randint(1, 9)
    return _program(f'print(len("{word}") + {k})', len(word) + k)


def _sum_list(rng: random.Random) -> Draft:
    xs = [rng.randint(1, 20) for _ in range(3)]
    return _program(f"print(sum({xs}))", sum(xs))


def _index(rng: random.Random) -> Draft:
    word = rng.choice(_words(4, 10))
    i = rng.randrange(len(word))
    return _program(f'print("{word}"[{i}])', word[i])


def _precedence(rng: random.Random) -> Draft:
    a, b, c = (rng.randint(2, 20) for _ in range(3))
    return _program(f"print({a} + {b} * {c})", a + b * c)


def _variables(rng: random.Random) -> Draft:
    a, b = rng.randint(2, 20), rng.randint(2, 9)
    c = rng.randint(1, a * b)
    return _program(f"x = {a}\ny = x * {b}\nprint(y - {c})", a * b - c)


def _spread(rng: random.Random) -> Draft:
    xs = rng.sample(range(1, 100), 5)
    return _program(f"values = {xs}\nprint(max(values) - min(values))", max(xs) - min(xs))


def _slice(rng: random.Random) -> Draft:
    word = rng.choice(_words(5, 10))
    if rng.random() < 0.25:
        return _program(f'print("{word}"[::-1])', word[::-1])
    i = rng.randint(0, len(word) - 2)
    j = rng.randint(i + 2, len(word))
    return _program(f'print("{word}"[{i}:{j}])', word[i:j])


def _loop(rng: random.Random) -> Draft:
    start, n, k = rng.randint(0, 20), rng.randint(3, 9), rng.randint(1, 9)
    source = f"total = {start}\nfor i in range({n}):\n    total += i * {k}\nprint(total)"
    return _program(source, start + k * n * (n - 1) // 2)


def _expression(rng: random.Random, depth: int) -> tuple[str, int]:
    """A random +, -, * expression of 1-digit numbers, fully parenthesised, and its value."""
    if depth == 0:
        value = rng.randint(1, 9)
        return str(value), value
    left, a = _expression(rng, depth - 1)
    right, b = _expression(rng, rng.randint(0, depth - 1))
    op = rng.choice("+-*")
    value = a + b if op == "+" else a - b if op == "-" else a * b
    return f"({left} {op} {right})", value


def _nested(depth: int) -> Maker:
    def make(rng: random.Random) -> Draft:
        while True:
            text, value = _expression(rng, depth)
            if 0 <= value <= 999:  # no sign to read, no huge products
                return _program(f"print({text[1:-1]})", value)

    return make


# --- sequence ---------------------------------------------------------------------------


def _next_term(terms: list[int], following: int) -> Draft:
    text = f"What number comes next in the sequence {', '.join(map(str, terms))}, ...?"
    return text + _NUMBER_ONLY, str(following), "number"


def _steps(low: int, high: int, steps: tuple[int, int], down: bool = False) -> Maker:
    def make(rng: random.Random) -> Draft:
        length, step = rng.randint(4, 5), rng.randint(*steps)
        step = -step if down else step
        start = rng.randint(low - length * step if down else low, high)  # down: stays > 0
        terms = [start + i * step for i in range(length + 1)]
        return _next_term(terms[:-1], terms[-1])

    return make


def _geometric(ratios: tuple[int, int], high: int) -> Maker:
    def make(rng: random.Random) -> Draft:
        length, ratio, start = rng.randint(4, 5), rng.randint(*ratios), rng.randint(1, high)
        terms = [start * ratio**i for i in range(length + 1)]
        return _next_term(terms[:-1], terms[-1])

    return make


def _second_order(rng: random.Random) -> Draft:
    """Differences that grow by a constant: 1, 2, 4, 7, 11 -> 16."""
    term, step, growth = rng.randint(1, 30), rng.randint(1, 9), rng.randint(1, 5)
    terms = [term]
    for i in range(5):
        terms.append(terms[-1] + step + i * growth)
    return _next_term(terms[:-1], terms[-1])


def _fibonacci(rng: random.Random) -> Draft:
    """Each term the sum of the two before it."""
    terms = [rng.randint(1, 20), rng.randint(1, 20)]
    while len(terms) < 6:
        terms.append(terms[-1] + terms[-2])
    return _next_term(terms[:-1], terms[-1])


# --- units ------------------------------------------------------------------------------

# (larger unit, smaller unit, how many smaller in one larger), plural names
_METRIC = (
    ("kilometers", "meters", 1000),
    ("meters", "centimeters", 100),
    ("centimeters", "millimeters", 10),
    ("kilograms", "grams", 1000),
    ("liters", "milliliters", 1000),
)
_CLOCK = (
    ("hours", "minutes", 60),
    ("minutes", "seconds", 60),
    ("days", "hours", 24),
    ("weeks", "days", 7),
    ("years", "months", 12),
    ("feet", "inches", 12),
    ("yards", "feet", 3),
)
_TWO_STEPS = (
    ("hours", "seconds", 3600),
    ("days", "minutes", 1440),
    ("weeks", "hours", 168),
    ("days", "seconds", 86_400),
    ("kilometers", "centimeters", 100_000),
)
# (larger, smaller, factor, at most this many of the larger, of the smaller)
_MIXED = (
    ("hours", "minutes", 60, 23, 59),
    ("days", "hours", 24, 30, 23),
    ("minutes", "seconds", 60, 59, 59),
    ("meters", "centimeters", 100, 99, 99),
    ("kilometers", "meters", 1000, 99, 999),
    ("feet", "inches", 12, 20, 11),
)


def _convert(table: tuple[tuple[str, str, int], ...], high: int, *, back: bool = False) -> Maker:
    """From the larger unit to the smaller (`back`: the other way, a whole number)."""

    def make(rng: random.Random) -> Draft:
        large, small, factor = rng.choice(table)
        value = rng.randint(2, high)
        amount, unit, target, result = value, large, small, value * factor
        if back:
            amount, unit, target, result = value * factor, small, large, value
        return f"Convert {amount} {unit} to {target}.{_NUMBER_ONLY}", str(result), "number"

    return make


def _mixed_units(rng: random.Random) -> Draft:
    large, small, factor, most, rest = rng.choice(_MIXED)
    a, b = rng.randint(2, most), rng.randint(2, rest)
    text = f"Convert {a} {large} and {b} {small} to {small}.{_NUMBER_ONLY}"
    return text, str(a * factor + b), "number"


# --- the workload -----------------------------------------------------------------------

# arithmetic.py's subjects by difficulty (every one of its subjects is here)
_ARITHMETIC_LEVELS: dict[Difficulty, tuple[str, ...]] = {
    "easy": ("add_1digit", "sub_1digit", "mul_1digit", "compare_1digit", "compare_2digit"),
    "medium": (
        "add_2digit", "sub_2digit", "mul_2x1", "compare_3digit", "compare_4digit",
        "word_add_2digit", "word_sub_2digit", "word_mul_1digit",
    ),
    "hard": (
        "add_3digit", "add_4digit", "sub_3digit", "sub_4digit", "mul_3x1", "mul_2digit",
        "word_mul_2x1",
    ),
}  # fmt: skip
ARITHMETIC_DIFFICULTY: dict[str, Difficulty] = {
    subject: level for level, subjects in _ARITHMETIC_LEVELS.items() for subject in subjects
}

# kind -> subject -> (its difficulty, its draws); arithmetic's come from arithmetic.py
SUBJECTS: dict[str, dict[str, tuple[Difficulty, Maker]]] = {
    "sort": {
        "sort_3": ("easy", _sort(3, 1, 99)),
        "sort_5": ("medium", _sort(5, 10, 99)),
        "sort_8": ("hard", _sort(8, 100, 999)),
        "sort_12": ("hard", _sort(12, 100, 9999)),
    },
    "string": {
        "first_last_letter": ("easy", _first_or_last_letter),
        "alphabetical_3": ("easy", _alphabetical(3, same_initial=False)),
        "word_length": ("medium", _word_length),
        "nth_letter": ("medium", _nth_letter),
        "letter_count": ("medium", _letter_count),
        "reverse_short": ("medium", _reverse(3, 5)),
        "reverse_long": ("hard", _reverse(7, 10)),
        "alphabetical_same_initial": ("hard", _alphabetical(4, same_initial=True)),
    },
    "lookup": {
        "keys_3": ("easy", _lookup(3)),
        "keys_6": ("medium", _lookup(6)),
        "keys_12": ("hard", _lookup(12)),
        "nested": ("hard", _nested_lookup),
    },
    "python": {
        "len_plus": ("easy", _len_plus),
        "sum_list": ("easy", _sum_list),
        "index": ("medium", _index),
        "precedence": ("medium", _precedence),
        "variables": ("medium", _variables),
        "spread": ("medium", _spread),
        "slice": ("hard", _slice),
        "loop": ("hard", _loop),
        "nested_expression": ("hard", _nested(3)),
    },
    "sequence": {
        "step_up": ("easy", _steps(1, 50, (1, 9))),
        "doubling": ("medium", _geometric((2, 2), 40)),
        "step_down": ("medium", _steps(1, 300, (2, 15), down=True)),
        "step_large": ("medium", _steps(100, 999, (11, 99))),
        "geometric": ("hard", _geometric((3, 5), 12)),
        "second_order": ("hard", _second_order),
        "fibonacci": ("hard", _fibonacci),
    },
    "units": {
        "metric": ("easy", _convert(_METRIC, 999)),
        "clock": ("medium", _convert(_CLOCK, 99)),
        "clock_back": ("medium", _convert(_CLOCK, 99, back=True)),
        "two_steps": ("hard", _convert(_TWO_STEPS, 99)),
        "mixed": ("hard", _mixed_units),
    },
}
KINDS: tuple[str, ...] = ("arithmetic", *SUBJECTS)


def _task(kind: str, subject: str, difficulty: Difficulty, draft: Draft) -> Task:
    prompt, answer, answer_type = draft
    digest = hashlib.sha256(prompt.encode()).hexdigest()[:12]
    return Task(f"{kind}-{digest}", kind, subject, difficulty, prompt, answer, answer_type)


def _drawn(
    seed: int, kind: str, subject: str, difficulty: Difficulty, make: Maker, seen: set[str]
) -> Iterator[Task]:
    """A subject's tasks, none with a prompt seen before; ends when `_TRIES` draws in a row
    found nothing new."""
    rng = random.Random(f"{seed}:{kind}:{subject}")
    misses = 0
    while misses < _TRIES:
        draft = make(rng)
        if draft[0] in seen:
            misses += 1
            continue
        misses = 0
        seen.add(draft[0])
        yield _task(kind, subject, difficulty, draft)


def _arithmetic(seed: int, seen: set[str], wanted: int) -> Iterator[Task]:
    """arithmetic.py's open questions for `seed`, then for seeds derived from it (new
    problems only), until a whole pass brings nothing new; `wanted`: how many will likely
    be taken, the size of the first batch."""
    for round_ in itertools.count():
        derived = f"{seed}:arithmetic:{round_}".encode()
        pass_seed = seed if round_ == 0 else int(hashlib.sha256(derived).hexdigest()[:15], 16)
        fresh = 0
        for question in _open_questions(pass_seed, wanted):
            prompt = prompt_text(question)
            if prompt in seen:
                continue
            seen.add(prompt)
            fresh += 1
            key = question.choices[LETTERS.index(question.answer)]
            difficulty = ARITHMETIC_DIFFICULTY[question.subject]
            yield _task("arithmetic", question.subject, difficulty, (prompt, key, "number"))
        if not fresh:
            return


def _open_questions(seed: int, first: int) -> Iterator[Question]:
    """`generate_open(None, seed)` as a stream of prefixes, the first `first` long, then
    doubling (a longer limit extends a shorter one): a short workload does not pay for
    all 8,324 questions, a long one does not regenerate them many times."""
    done, limit = 0, max(first, 64)
    while True:
        batch = generate_open(limit, seed)
        yield from batch[done:]
        if len(batch) < limit:
            return
        done, limit = len(batch), limit * 2


def _rotation(streams: Iterable[Iterator[Task]]) -> Iterator[Task]:
    """One from each stream in turn; a stream that ends drops out, the others go on."""
    live = list(streams)
    while live:
        for stream in list(live):
            item = next(stream, None)
            if item is None:
                live.remove(stream)
            else:
                yield item


def tasks(n: int, seed: int = 0) -> list[Task]:
    """The first `n` tasks of the seeded workload: kinds in turn, each kind's subjects in
    turn, no prompt twice; `tasks(m)` starts with `tasks(n)` for m > n."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    seen: set[str] = set()
    kinds = [_arithmetic(seed, seen, wanted=-(-n // len(KINDS)))]  # its share, rounded up
    for kind, subjects in SUBJECTS.items():
        drawn = [_drawn(seed, kind, s, d, make, seen) for s, (d, make) in subjects.items()]
        kinds.append(_rotation(drawn))
    return list(itertools.islice(_rotation(kinds), n))


# --- grading ----------------------------------------------------------------------------


def _answer_line(text: str | None) -> str:
    """The first line with a letter or a digit that is not a code fence ("```python")."""
    for line in (text or "").splitlines():
        stripped = line.strip()
        if stripped.startswith("```") and "`" not in stripped[3:]:
            continue
        if any(c.isalnum() for c in stripped):
            return stripped
    return ""


def _tokens(text: str) -> list[str]:
    """The words and numbers of `text`, lower-cased; everything else separates them."""
    return "".join(c.lower() if c.isalnum() else " " for c in text).split()


def grade(task: Task, text: str | None) -> bool:
    """Whether `text`, a model's reply, gives the task's answer (the module docstring has
    the rule); None, an unanswered task, is wrong."""
    line = _answer_line(text)
    if task.answer_type == "number":
        return number(line) == int(task.answer)
    said, expected = _tokens(line), _tokens(task.answer)
    return len(said) >= len(expected) and said[len(said) - len(expected) :] == expected


def summary(workload: Iterable[Task]) -> dict[str, int]:
    """How many tasks per "kind/difficulty", e.g. {"sort/easy": 25, ...}."""
    return dict(Counter(f"{t.kind}/{t.difficulty}" for t in workload))


# --- as router training data (`switchyard make-data --questions tasks`) -------------------

TASK_TOKENS = 48  # room for a sorted list of 12 four-digit numbers


def as_question(task: Task) -> Question:
    """A task as `routing.training.dataset` grades it: the prompt as written (style
    "task"), the kind as its domain, its answer where `grade_question` reads it back,
    and "A" as the key a right answer gets."""
    return Question(
        id=task.id, subject=task.subject, question=task.prompt, choices=("", "", "", ""),
        answer="A", group=task.kind, style="task", expected=task.answer,
        expected_type=task.answer_type,
    )  # fmt: skip


def grade_question(question: Question, text: str | None) -> bool:
    """`grade` for a task made into a question by `as_question`."""
    kind = question.group
    answer_type: AnswerType = "number" if question.expected_type == "number" else "text"
    task = Task(
        question.id, kind, question.subject, "easy", question.question, question.expected,
        answer_type,
    )  # fmt: skip
    return grade(task, text)


def _task_questions(limit: int | None, seed: int) -> list[Question]:
    return [as_question(t) for t in tasks(limit or 1000, seed)]


TASK_SET = GeneratedSet(
    name="tasks",
    licence="generated here (routing/training/quality_tasks.py)",
    generate=_task_questions,
    style="task",
    grade=grade_question,
    max_tokens=TASK_TOKENS,
)
