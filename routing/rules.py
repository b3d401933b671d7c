"""Rule-based routing: cheap, explainable signals that pick a pool.

Pure: text and config in, a `RouteDecision` out. No Ray, no vLLM, no I/O, so every
decision is unit-tested as a plain function. Rules run in a fixed order because a
request can match several: code markers win (a long code question still wants the code
model), then length, then complexity keywords; otherwise the default (cheap) pool.

Work per request is bounded whatever the client sends: patterns are compiled with RE2,
whose matching is linear in the text (Python's `re` backtracks, and `^\\s*import` over
80 KB of newlines took 22 s), and they read at most `scan_chars` characters of it (the
head and the tail). A pattern RE2 cannot run in linear time (back-references,
look-arounds) is refused when the config is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import re2
from pydantic import Field, field_validator

from core.config import StrictConfig

MARKER_CHARS = 40  # a matched marker is shown (in `detail`) up to this many characters

DEFAULT_CODE_PATTERNS = [
    r"```",
    r"\bdef\s+\w+\s*\(",
    r"\bclass\s+\w+\s*[:(]",
    r"^\s*(import|from)\s+\w+",
    r"#include\s*<",
    r"\bfunction\s*\w*\s*\(",
    r"=>\s*\{",
    r"\b(python|javascript|typescript|golang|rust|java|c\+\+|sql|bash|regex)\b",
    r"\b(code|function|compile[rs]?|debug|stack ?trace|traceback|refactor|unit tests?)\b",
]
DEFAULT_COMPLEX_PATTERNS = [
    r"\bstep[- ]by[- ]step\b",
    r"\b(prove|proof|derive|analy[sz]e|compare|contrast|evaluate|critique)\b",
    r"\bexplain (why|how)\b",
    r"\b(essay|in detail|in depth|detailed|thorough|trade-?offs?)\b",
]


class RulesConfig(StrictConfig):
    """Thresholds and patterns of the rule-based policy."""

    default_pool: str = Field(default="small", description="Pool when no rule matches.")
    code_pool: str = Field(default="code", description="Pool for requests with code markers.")
    large_pool: str = Field(default="large", description="Pool for long or complex requests.")
    code_patterns: list[str] = Field(
        default_factory=lambda: list(DEFAULT_CODE_PATTERNS),
        description="RE2 regexes (case-insensitive, multiline); any match routes to code_pool.",
    )
    complex_patterns: list[str] = Field(
        default_factory=lambda: list(DEFAULT_COMPLEX_PATTERNS),
        description="RE2 regexes marking a complex task; enough matches route to large_pool.",
    )
    complex_min_matches: int = Field(
        default=1, ge=1, description="Distinct complex patterns needed to route to large_pool."
    )
    long_prompt_tokens: int = Field(
        default=384, gt=0, description="Prompts longer than this (estimated) go to large_pool."
    )
    chars_per_token: float = Field(
        default=4.0, gt=0, description="Characters per token used to estimate prompt length."
    )
    scan_chars: int = Field(
        default=65_536,
        ge=256,
        description="Patterns read at most this many characters of a prompt: its first "
        "and last halves (the length rule still counts the whole prompt).",
    )

    @field_validator("code_patterns", "complex_patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                _compile(pattern)
            except re2.error as exc:
                why = exc.args[0] if exc.args else exc
                reason = why.decode() if isinstance(why, bytes) else why
                raise ValueError(
                    f"invalid regex {pattern!r} (RE2 syntax, no back-references or "
                    f"look-arounds): {reason}"
                ) from exc
        return patterns

    @cached_property
    def compiled_code(self) -> tuple[Any, ...]:
        return tuple(_compile(p) for p in self.code_patterns)

    @cached_property
    def compiled_complex(self) -> tuple[Any, ...]:
        return tuple(_compile(p) for p in self.complex_patterns)


def _compile(pattern: str) -> Any:
    options = re2.Options()
    options.log_errors = False
    return re2.compile(f"(?im){pattern}", options)


def scanned(text: str, limit: int) -> str:
    """The part of `text` the patterns read: all of it, or its head and tail."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n{text[-half:]}"


def utf8_window(text: str, limit: int) -> bytes:
    """`scanned(text, limit)` as the UTF-8 bytes the patterns read.

    Encoded once per request, not once per pattern by RE2. A JSON string may hold a lone
    surrogate (`"\\ud800"`), which is not UTF-8: it becomes `?` here, where RE2 would
    fail the request with a 500.
    """
    return scanned(text, limit).encode("utf-8", "replace")


@dataclass(frozen=True)
class RequestFeatures:
    """What the policy knows about a request."""

    approx_tokens: int
    code_markers: tuple[str, ...]
    complex_markers: tuple[str, ...]


@dataclass(frozen=True)
class RouteDecision:
    """Which pool serves a request, and why (`reason` is a stable label, `detail` prose)."""

    pool: str
    reason: str
    detail: str


def extract_features(text: str, config: RulesConfig) -> RequestFeatures:
    """Measure the request text: estimated tokens and which markers matched."""

    window = utf8_window(text, config.scan_chars)

    def matches(patterns: tuple[Any, ...]) -> tuple[str, ...]:
        found = (p.search(window) for p in patterns)
        quoted = (m.group(0).decode("utf-8", "replace") for m in found if m)
        return tuple(dict.fromkeys(q.strip()[:MARKER_CHARS] for q in quoted))

    return RequestFeatures(
        approx_tokens=round(len(text) / config.chars_per_token),
        code_markers=matches(config.compiled_code),
        complex_markers=matches(config.compiled_complex),
    )


def decide(features: RequestFeatures, config: RulesConfig) -> RouteDecision:
    """Apply the rules in order: code, long, complex, default."""
    if features.code_markers:
        shown = ", ".join(repr(m) for m in features.code_markers[:3])
        return RouteDecision(config.code_pool, "code_markers", f"code markers found: {shown}")
    if features.approx_tokens > config.long_prompt_tokens:
        return RouteDecision(
            config.large_pool,
            "long_prompt",
            f"~{features.approx_tokens} prompt tokens > {config.long_prompt_tokens}",
        )
    if len(features.complex_markers) >= config.complex_min_matches:
        shown = ", ".join(repr(m) for m in features.complex_markers[:3])
        return RouteDecision(config.large_pool, "complex_task", f"complexity markers: {shown}")
    return RouteDecision(config.default_pool, "default", "no rule matched")
