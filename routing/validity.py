"""Is a cheap answer *usable*? The validity check of the cascade.

A confident answer can still be useless to the program that asked: a request with a JSON
schema gets text that does not parse, or parses but misses a required field; a request
with tools gets a call to a tool it does not have, arguments that do not fit the tool's
parameters, or (small models do this) the call written out as plain text, which the
tool-call parser does not recognise. Such an answer is escalated like an unsure one, and
the reason is shown in `switchyard.detail`.

Pure: what the request asked for (`Expectation`) and what the answer holds in, a reason
or None out. Schemas come from clients, so they are compiled by `jsonschema_rs` with
linear-time regular expressions and without fetching remote `$ref`s.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

TOOL_CALL_TAGS = ("<tool_call>", "<function=", "<|python_tag|>")


@dataclass(frozen=True)
class Expectation:
    """What a usable answer looks like. `tool_choice`: `auto`, `required`, or a tool's
    name (that tool must be called); `schema`: the JSON schema the content must match;
    `json_object`: the content must be a JSON object."""

    tools: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # name -> params
    tool_choice: str = "auto"
    schema: Mapping[str, Any] | None = None
    json_object: bool = False

    @property
    def checks_anything(self) -> bool:
        return bool(self.tools) or self.schema is not None or self.json_object


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str


def why_invalid(
    expected: Expectation, content: str | None, calls: Sequence[ToolCall]
) -> str | None:
    """The reason the answer is not usable as asked, or None when it is."""
    if expected.tools:
        reason = _tool_problem(expected, content, calls)
        if reason is not None or calls:
            return reason
    if expected.schema is not None or expected.json_object:
        try:
            value = json.loads(content or "")
        except ValueError:
            return "the answer is not valid JSON"
        if expected.json_object and not isinstance(value, dict):
            return "the answer is not a JSON object"
        if expected.schema is not None:
            problem = _schema_problem(expected.schema, value)
            if problem is not None:
                return f"the answer does not match the schema: {problem}"
    return None


def _tool_problem(
    expected: Expectation, content: str | None, calls: Sequence[ToolCall]
) -> str | None:
    if not calls:
        if _looks_like_call(content, expected.tools):
            return "a tool call was written as text, not as tool_calls"
        if expected.tool_choice == "required":
            return "tool_choice is required but the answer calls no tool"
        if expected.tool_choice != "auto":
            return f"tool_choice names {expected.tool_choice!r} but the answer calls no tool"
        return None
    for call in calls:
        if call.name not in expected.tools:
            return f"the answer calls unknown tool {call.name[:64]!r}"
        if expected.tool_choice not in ("auto", "required") and call.name != expected.tool_choice:
            return (
                f"tool_choice names {expected.tool_choice!r}, the answer calls {call.name[:64]!r}"
            )
        try:
            arguments = json.loads(call.arguments or "{}")
        except ValueError:
            return f"the arguments of {call.name[:64]!r} are not valid JSON"
        problem = _schema_problem(expected.tools[call.name], arguments)
        if problem is not None:
            return f"the arguments of {call.name[:64]!r} do not fit its parameters: {problem}"
    return None


def _looks_like_call(content: str | None, tools: Mapping[str, Any]) -> bool:
    """Content that is a tool call a parser did not recognise: the model's tags, or a
    JSON object naming one of the tools."""
    text = (content or "").strip()
    if any(tag in text for tag in TOOL_CALL_TAGS):
        return True
    if not text.startswith("{"):
        return False
    try:
        value = json.loads(text)
    except ValueError:
        return False
    return isinstance(value, dict) and value.get("name") in tools


def _schema_problem(schema: Mapping[str, Any], value: Any) -> str | None:
    import jsonschema_rs

    if not schema:
        return None
    try:
        validator = jsonschema_rs.validator_for(
            dict(schema), pattern_options=jsonschema_rs.RegexOptions(), offline=True
        )
    except Exception:  # noqa: BLE001 - a schema we cannot compile is not held against the answer
        return None
    error = next(iter(validator.iter_errors(value)), None)
    return None if error is None else str(error.message)[:200]
