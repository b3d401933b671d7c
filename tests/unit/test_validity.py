"""The validity check of the cascade: is a cheap answer usable as the request asked?"""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from routing.validity import TOOL_CALL_TAGS, Expectation, ToolCall, why_invalid

WEATHER: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 3},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "where": {"$ref": "#/$defs/place"},
    },
    "required": ["city"],
    "additionalProperties": False,
    "$defs": {"place": {"type": "object", "required": ["lat"]}},
}
TOOLS: dict[str, Any] = {"search": {"type": "object"}, "weather": WEATHER}
PERSON: dict[str, Any] = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
}


def tools(choice: str = "auto") -> Expectation:
    return Expectation(tools=TOOLS, tool_choice=choice)


def call(name: str, arguments: Any) -> ToolCall:
    return ToolCall(name, arguments if isinstance(arguments, str) else json.dumps(arguments))


# --- what is checked at all -----------------------------------------------------------


def test_an_unconstrained_request_accepts_anything() -> None:
    nothing = Expectation()
    assert not nothing.checks_anything
    for content in ("", None, "not json", '{"a": 1}'):
        assert why_invalid(nothing, content, []) is None
    assert Expectation(tools={"f": {}}).checks_anything
    assert Expectation(schema={}).checks_anything
    assert Expectation(json_object=True).checks_anything


# --- JSON schema and json_object --------------------------------------------------------


def test_an_answer_fitting_the_schema_is_usable() -> None:
    assert why_invalid(Expectation(schema=PERSON), '{"name": "Ada", "age": 36}', []) is None
    assert why_invalid(Expectation(schema=PERSON), ' {"name":"Ada","age":0}\n', []) is None


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("Ada, 36", "the answer is not valid JSON"),
        ("", "the answer is not valid JSON"),
        (None, "the answer is not valid JSON"),
        ('{"name": "Ada", "age": 36', "the answer is not valid JSON"),
        ('{"name": "Ada"}', 'the answer does not match the schema: "age" is a required property'),
        (
            '{"name": "Ada", "age": -1}',
            "the answer does not match the schema: -1 is less than the minimum of 0",
        ),
        (
            '{"name": 7, "age": 1}',
            'the answer does not match the schema: 7 is not of type "string"',
        ),
        ("[]", 'the answer does not match the schema: [] is not of type "object"'),
    ],
)
def test_an_answer_that_does_not_parse_or_fit_is_unusable(content: str | None, reason: str) -> None:
    assert why_invalid(Expectation(schema=PERSON), content, []) == reason


def test_local_refs_of_a_schema_are_followed() -> None:
    place = {"type": "object", "properties": {"at": {"$ref": "#/$defs/point"}}, "required": ["at"]}
    place["$defs"] = {"point": {"type": "array", "items": {"type": "number"}, "minItems": 2}}
    expected = Expectation(schema=place)
    assert why_invalid(expected, '{"at": [1.5, 2]}', []) is None
    assert why_invalid(expected, '{"at": [1.5]}', []) == (
        "the answer does not match the schema: [1.5] has less than 2 items"
    )


def test_json_object_needs_an_object_and_nothing_more() -> None:
    expected = Expectation(json_object=True)
    assert why_invalid(expected, '{"anything": [1, 2]}', []) is None
    assert why_invalid(expected, "{}", []) is None
    assert why_invalid(expected, "[1, 2]", []) == "the answer is not a JSON object"
    assert why_invalid(expected, '"text"', []) == "the answer is not a JSON object"
    assert why_invalid(expected, "hello", []) == "the answer is not valid JSON"


def test_an_empty_schema_needs_only_json() -> None:
    assert why_invalid(Expectation(schema={}), "5", []) is None
    assert why_invalid(Expectation(schema={}), "five", []) == "the answer is not valid JSON"


def test_a_schema_that_cannot_be_compiled_is_not_held_against_the_answer() -> None:
    for schema in ({"type": "no-such-type"}, {"type": "string", "pattern": "(?=a)b"}):
        assert why_invalid(Expectation(schema=schema), '"b"', []) is None
    # ... but the answer must still be JSON.
    assert why_invalid(Expectation(schema={"type": "no-such-type"}), "b", []) == (
        "the answer is not valid JSON"
    )


def test_the_reason_quotes_at_most_200_characters_of_the_problem() -> None:
    long = json.dumps("x" * 10_000)
    reason = why_invalid(Expectation(schema={"type": "integer"}), long, [])
    prefix = "the answer does not match the schema: "
    assert reason is not None and reason.startswith(prefix + '"xxx')
    assert len(reason) == len(prefix) + 200


def test_a_catastrophic_backtracking_pattern_is_checked_in_linear_time() -> None:
    """The schema is the client's: `^(a+)+$` against `a…a!` takes a backtracking engine
    (Python's `re`) longer than the age of the universe; the check must not hang."""
    for pattern in ("^(a+)+$", "^(a|a)*$", "^(a|aa)+$"):
        schema = {"type": "string", "pattern": pattern}
        start = time.monotonic()
        reason = why_invalid(Expectation(schema=schema), json.dumps("a" * 5000 + "!"), [])
        assert time.monotonic() - start < 1.0
        assert reason is not None and "does not match" in reason
    fits = {"type": "string", "pattern": "^(a+)+$"}
    assert why_invalid(Expectation(schema=fits), json.dumps("a" * 5000), []) is None


class _Recorder(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - the handler's API
        _Recorder.hits.append(self.path)
        body = json.dumps({"type": "integer"}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/schema+json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture
def schema_server() -> Iterator[str]:
    """A local server that would answer a remote `$ref`, and counts what it is asked."""
    _Recorder.hits = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/schema.json"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_remote_ref_is_never_fetched(schema_server: str) -> None:
    """A client's schema must not make the router fetch URLs (SSRF, slow hosts)."""
    # Had the ref been fetched ({"type": "integer"}), "text" would not match.
    for schema in (
        {"$ref": schema_server},
        {"type": "object", "properties": {"a": {"$ref": schema_server + "#/x"}}},
    ):
        assert why_invalid(Expectation(schema=schema), '"text"', []) is None
        assert why_invalid(Expectation(schema=schema), '{"a": "text"}', []) is None
    assert _Recorder.hits == []
    # The server does answer: nothing but the check kept it from being asked.
    import urllib.request

    with urllib.request.urlopen(schema_server, timeout=5) as reply:  # noqa: S310 - local
        assert json.loads(reply.read()) == {"type": "integer"}
    assert _Recorder.hits == ["/schema.json"]


# --- tools -------------------------------------------------------------------------------


def test_a_fitting_call_or_a_plain_answer_is_usable_under_auto() -> None:
    assert why_invalid(tools(), None, [call("weather", {"city": "Rome", "days": 3})]) is None
    assert why_invalid(tools(), "It is sunny.", []) is None
    assert why_invalid(tools(), "", [call("search", "")]) is None  # no arguments: {}
    two = [call("search", {"q": "x"}), call("weather", {"city": "Oslo"})]
    assert why_invalid(tools(), "", two) is None


def test_required_needs_a_call_of_any_tool() -> None:
    assert why_invalid(tools("required"), "It is sunny.", []) == (
        "tool_choice is required but the answer calls no tool"
    )
    assert why_invalid(tools("required"), None, [call("search", {})]) is None


def test_a_named_tool_choice_needs_that_tool() -> None:
    assert why_invalid(tools("weather"), "It is sunny.", []) == (
        "tool_choice names 'weather' but the answer calls no tool"
    )
    assert why_invalid(tools("weather"), None, [call("search", {})]) == (
        "tool_choice names 'weather', the answer calls 'search'"
    )
    assert why_invalid(tools("weather"), None, [call("weather", {"city": "Rome"})]) is None


def test_a_call_of_an_unknown_tool_is_unusable() -> None:
    assert why_invalid(tools(), None, [call("send_email", {})]) == (
        "the answer calls unknown tool 'send_email'"
    )
    reason = why_invalid(tools(), None, [call("x" * 10_000, {})])
    assert reason == f"the answer calls unknown tool {'x' * 64!r}"


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        ({}, '"city" is a required property'),
        ({"city": "Ro"}, '"Ro" is shorter than 3 characters'),
        ({"city": "Rome", "days": 9}, "9 is greater than the maximum of 7"),
        ({"city": "Rome", "where": {}}, '"lat" is a required property'),  # through a $ref
        ({"city": "Rome", "units": "C"}, "Additional properties are not allowed"),
        ([1], '[1] is not of type "object"'),
    ],
)
def test_arguments_that_do_not_fit_the_parameters_are_unusable(
    arguments: Any, problem: str
) -> None:
    reason = why_invalid(tools(), None, [call("weather", arguments)])
    assert reason is not None
    assert reason.startswith("the arguments of 'weather' do not fit its parameters: ")
    assert problem in reason


def test_arguments_that_are_not_json_are_unusable() -> None:
    for arguments in ('{"city": "Rome"', "city=Rome"):
        assert why_invalid(tools(), None, [call("weather", arguments)]) == (
            "the arguments of 'weather' are not valid JSON"
        )


def test_every_call_is_checked_not_only_the_first() -> None:
    calls = [call("search", {"q": "x"}), call("weather", {"days": 2})]
    reason = why_invalid(tools(), None, calls)
    assert reason is not None and reason.startswith("the arguments of 'weather'")
    assert why_invalid(tools(), None, [call("search", {}), call("nope", {})]) == (
        "the answer calls unknown tool 'nope'"
    )


@pytest.mark.parametrize(
    "content",
    [
        '<tool_call>\n{"name": "weather", "arguments": {"city": "Rome"}}\n</tool_call>',
        '<function=weather>{"city": "Rome"}</function>',
        '<|python_tag|>{"name": "weather", "parameters": {"city": "Rome"}}',
        '{"name": "weather", "arguments": {"city": "Rome"}}',
        '  {"name": "search", "arguments": {}}  ',
    ],
)
def test_a_tool_call_written_as_text_is_unusable(content: str) -> None:
    """Small models write the call into the content where the parser does not see it."""
    for choice in ("auto", "required", "weather"):
        assert why_invalid(tools(choice), content, []) == (
            "a tool call was written as text, not as tool_calls"
        )


def test_every_known_tag_counts_as_a_call_written_as_text() -> None:
    for tag in TOOL_CALL_TAGS:
        assert why_invalid(tools(), f"Sure. {tag} ...", []) == (
            "a tool call was written as text, not as tool_calls"
        )


def test_json_content_that_is_not_a_call_of_a_tool_is_an_answer() -> None:
    for content in ('{"name": "Ada"}', '{"answer": 42}', "[1, 2]", "{not json"):
        assert why_invalid(tools(), content, []) is None


def test_a_tool_without_parameters_accepts_any_arguments() -> None:
    expected = Expectation(tools={"ping": {}})
    assert why_invalid(expected, None, [call("ping", {"any": ["thing"]})]) is None
    assert why_invalid(expected, None, [call("ping", "[1]")]) is None


def test_with_tools_and_a_schema_a_call_is_judged_by_its_tool_an_answer_by_the_schema() -> None:
    both = Expectation(tools=TOOLS, schema=PERSON)
    assert why_invalid(both, None, [call("search", {})]) is None
    assert why_invalid(both, '{"name": "Ada", "age": 3}', []) is None
    assert why_invalid(both, "plain text", []) == "the answer is not valid JSON"
    reason = why_invalid(both, None, [call("weather", {})])
    assert reason is not None and reason.startswith("the arguments of 'weather'")
