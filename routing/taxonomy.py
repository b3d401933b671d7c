"""What kind of request this is: a task type and a complexity level, from the text alone.

Richer than the rules' three outcomes (code, complex, default): eight task types (plus
`other` when nothing fits) and four complexity levels, each with a confidence in 0..1
and the markers that decided it. Pure and deterministic like `routing.rules`: the same
text and config always give the same `Classification`, so a later router (a bandit
keyed by task type) and its tests can rely on it.

How it decides. Each task type has a few weighted cues (`routing.taxonomy_cues`: RE2
patterns for English verbs, nouns and syntax); a task's score is the sum of the weights
of its distinct cues that match, and the highest score wins (ties by the order of
`TASK_TYPES`). Confidence is the winner's share of all scores, times how much evidence
it has (`1 - 0.5**score`: one weak cue gives at most 0.5). Complexity is a score of
additive signals: prompt length, the rules' own `complex_patterns` (so "complex" means
what the router thinks it means), expert vocabulary, several steps, questions or list
items, explicit constraints, and cues of a short answer (which lower it); its
confidence says how far the score is from the nearest level boundary.

Work per request is bounded as in `routing.rules`: the cues read at most `scan_chars`
characters (the head and tail, `scanned`), and all of them run in one pass of an RE2
`Set` (linear time; a Set never gives up on a hostile input the way a single regex's
DFA may, it only rebuilds its state cache). Question marks and list lines are counted
outside it (`bytes.count`, and a search that stops at the third item). Only the cues
that matched are searched again, at most four for the task and four for the
complexity, to quote their markers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal, get_args

import re2

from routing.rules import MARKER_CHARS, RulesConfig, utf8_window
from routing.taxonomy_cues import COMPLEXITY_MARKERS, TASK_MARKERS, Marker

__all__ = [
    "COMPLEXITY_LEVELS",
    "TASK_EVIDENCE",
    "TASK_TYPES",
    "Classification",
    "Complexity",
    "TaskType",
    "classify",
]

TaskType = Literal[
    "code",
    "math",
    "translation",
    "summarisation",
    "extraction",
    "creative",
    "reasoning",
    "chat",
    "other",
]
# In order of precedence (the Literal's order): a tie goes to the earlier one, the more
# specific request; `other` is what is left when nothing matched.
TASK_TYPES: tuple[TaskType, ...] = tuple(t for t in get_args(TaskType) if t != "other")
Complexity = Literal["simple", "moderate", "complex", "expert"]
COMPLEXITY_LEVELS: tuple[Complexity, ...] = get_args(Complexity)
LEVEL_FLOORS = (0.0, 1.0, 2.5, 4.5)  # the complexity score at which each level starts
LEVEL_MARGIN = 1.0  # this far (or more) from a level boundary is full confidence

# Patterns searched again to quote their markers: at most these many per request.
TASK_EVIDENCE = 4  # for the task type
COMPLEXITY_EVIDENCE = 4  # for the complexity level

# Complexity points per signal: a pattern adds its weight once, a signal at most `cap`.
SIGNAL_CAPS = {"complex_task": 3.0, "expert": 4.5, "steps": 2.0, "constraints": 1.5}
BREVITY_CAP = 1.5  # how much cues of a short answer can take off
STEPS_AT = 3  # this many questions, or list items, count as several steps
LIST_ITEM = r"^[ \t]*(\d+[.)]|[-*•])[ \t]+\S"
TASK_PRIOR = {"code": 0.5, "math": 0.5, "reasoning": 0.5, "chat": -0.5}


@dataclass(frozen=True)
class Classification:
    """The taxonomy's reading of one request (see the module docstring for how)."""

    task: TaskType
    task_confidence: float  # 0..1; 0 for `other`: nothing matched
    task_evidence: tuple[str, ...]  # markers of the chosen task, strongest first
    task_scores: Mapping[str, float]  # every task type's weighted evidence
    complexity: Complexity
    complexity_confidence: float  # 0.5 on a level boundary, 1.0 far from both
    complexity_score: float  # the additive score the level is read from
    complexity_evidence: tuple[str, ...]  # "signal: marker", strongest first
    approx_tokens: int


class _Matcher:
    """Every part of every marker in one RE2 Set (one pass over the text), and each part
    alone, to quote what matched."""

    def __init__(self, markers: Sequence[Marker]) -> None:
        options = re2.Options()
        options.log_errors = False
        options.max_mem = 64 << 20  # the Set's DFA cache; a reset, never a failure, when full
        self.markers = tuple(markers)
        self._parts = tuple(dict.fromkeys(part for m in self.markers for part in m.parts))
        self._index = {part: i for i, part in enumerate(self._parts)}
        self._needs = tuple(frozenset(self._index[p] for p in m.parts) for m in self.markers)
        self._set = re2.Set.SearchSet(options)
        for part in self._parts:
            self._set.Add(f"(?im){part}")
        self._set.Compile()
        single = re2.Options()
        single.log_errors = False
        # NOTE: no capture groups: RE2 then finds a match's span with its DFAs alone; with
        # groups it runs the NFA over the span (250 ms for `(?s)\?.*\?` on a hostile 64 KB).
        single.never_capture = True
        self._single = tuple(re2.compile(f"(?im){part}", single) for part in self._parts)
        self._items = re2.compile(f"(?m){LIST_ITEM}", single)

    def hits(self, window: bytes) -> list[Marker]:
        """The markers whose parts all match somewhere in `window`, in marker order."""
        found = set(self._set.Match(window) or ())
        return [m for m, needs in zip(self.markers, self._needs, strict=True) if needs <= found]

    def quote(self, marker: Marker, window: bytes) -> str:
        """What the marker's parts matched (the first match of each), joined by "…"."""
        return " … ".join(self._quote_part(part, window) for part in marker.parts)

    def _quote_part(self, part: str, window: bytes) -> str:
        found: Any = self._single[self._index[part]].search(window)
        if found is None:  # cannot happen for a hit; never fail a request over a quote
            return ""
        text: str = found.group(0).decode("utf-8", "replace")
        return text.strip()[:MARKER_CHARS]

    def list_items(self, window: bytes, enough: int) -> int:
        """Lines that start a list item ("1.", "-", "*"), counted up to `enough`."""
        count = 0
        for _ in self._items.finditer(window):
            count += 1
            if count >= enough:
                break
        return count


@lru_cache(maxsize=8)
def _matcher(complex_patterns: tuple[str, ...]) -> _Matcher:
    """The taxonomy's markers and the config's complex patterns, compiled once per config
    (the config validated those patterns when it loaded)."""
    rules = tuple(Marker("complex_task", 1.0, (pattern,)) for pattern in complex_patterns)
    return _Matcher((*TASK_MARKERS, *COMPLEXITY_MARKERS, *rules))


def classify(text: str, config: RulesConfig) -> Classification:
    """Task type and complexity level of `text`; `config` bounds the work (`scan_chars`)
    and supplies the length rule and the complex patterns the router uses."""
    window = utf8_window(text, config.scan_chars)
    matcher = _matcher(tuple(config.complex_patterns))
    hits = matcher.hits(window)

    def strongest(markers: Iterable[Marker], limit: int) -> list[Marker]:
        return sorted(markers, key=lambda m: -m.weight)[:limit]

    scores: dict[str, float] = {task: 0.0 for task in TASK_TYPES}
    signals: dict[str, float] = {}
    for marker in hits:
        totals = scores if marker.group in scores else signals
        totals[marker.group] = totals.get(marker.group, 0.0) + marker.weight
    top = max(TASK_TYPES, key=lambda t: (scores[t], -TASK_TYPES.index(t)))
    task: TaskType = top if scores[top] > 0 else "other"
    chosen = strongest((m for m in hits if m.group == task), TASK_EVIDENCE)
    task_evidence = [matcher.quote(m, window) for m in chosen]

    approx_tokens = round(len(text) / config.chars_per_token)
    points, evidence = _length_points(approx_tokens, config.long_prompt_tokens)
    for what, count in _structure(window, matcher):
        signals["steps"] = signals.get("steps", 0.0) + 1.0
        evidence.append(f"steps: {count}{'+' if what == 'list items' else ''} {what}")
    points += sum(min(signals.get(signal, 0.0), cap) for signal, cap in SIGNAL_CAPS.items())
    points -= min(signals.get("brevity", 0.0), BREVITY_CAP)
    points += TASK_PRIOR.get(task, 0.0)
    score = round(max(0.0, points), 3)
    level = max(i for i, floor in enumerate(LEVEL_FLOORS) if score >= floor)
    cues = strongest((m for m in hits if m.group not in scores), COMPLEXITY_EVIDENCE)
    evidence += [f"{m.group}: {matcher.quote(m, window)!r}" for m in cues]
    return Classification(
        task=task,
        task_confidence=_task_confidence(scores, scores.get(task, 0.0)),
        task_evidence=tuple(dict.fromkeys(task_evidence)),
        task_scores={t: round(v, 3) for t, v in scores.items()},
        complexity=COMPLEXITY_LEVELS[level],
        complexity_confidence=_level_confidence(score, level),
        complexity_score=score,
        complexity_evidence=tuple(dict.fromkeys(evidence)),
        approx_tokens=approx_tokens,
    )


def _structure(window: bytes, matcher: _Matcher) -> list[tuple[str, int]]:
    """Several questions, or a list of several items: each one more step to take.

    Counted outside the Set: "three question marks" as one pattern needs two `.*` gaps.
    """
    found = []
    questions = window.count(b"?")
    if questions >= STEPS_AT:
        found.append(("questions", questions))
    items = matcher.list_items(window, STEPS_AT)
    if items >= STEPS_AT:
        found.append(("list items", items))
    return found


def _length_points(tokens: int, long_tokens: int) -> tuple[float, list[str]]:
    """Length's share of the complexity score: a prompt the router calls long is complex."""
    steps = ((4 * long_tokens, 3.5), (long_tokens, 2.5), (long_tokens // 3, 1.0), (32, 0.5))
    for above, points in steps:
        if tokens > above:
            return points, [f"length: ~{tokens} tokens"]
    return 0.0, []


def _task_confidence(scores: Mapping[str, float], top: float) -> float:
    """The winner's share of all evidence, times how much of it there is."""
    total = sum(scores.values())
    if top <= 0 or total <= 0:
        return 0.0
    return round(top / total * (1.0 - math.pow(0.5, top)), 3)


def _level_confidence(score: float, level: int) -> float:
    """0.5 on a boundary between two levels, rising to 1.0 at LEVEL_MARGIN from both."""
    bounds = [LEVEL_FLOORS[level]] if level > 0 else []
    if level + 1 < len(LEVEL_FLOORS):
        bounds.append(LEVEL_FLOORS[level + 1])
    distance = min(abs(score - b) for b in bounds)
    return round(0.5 + 0.5 * min(1.0, distance / LEVEL_MARGIN), 3)
