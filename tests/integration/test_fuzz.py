"""Fuzzing the HTTP API of the real app (fake engine), bounded so it runs in CI.

Two fuzzers, both kept in the repository so a regression shows up in `make test`:

- schemathesis generates requests from our own `/openapi.json` (valid and invalid ones)
  and checks every answer: never a 5xx, status, content type and body as the schema
  declares, and the OpenAI error shape on every non-2xx;
- a hypothesis property test mutates valid requests the way careless and hostile
  clients do (wrong types, unknown fields, odd headers, raw bytes) and checks the same
  properties, plus that an admitted stream always ends with `data: [DONE]`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import delete_app, fake_app_args, run_app

APP = "fuzzed"
# Bounded for CI; raise for a longer hunt, e.g. SWITCHYARD_FUZZ_SCALE=20 make test-integration
SCALE = max(1, int(os.environ.get("SWITCHYARD_FUZZ_SCALE", "1")))
OK_OR_REFUSED = {200, 400, 403, 404, 405, 408, 413, 422, 429, 431}


@pytest.fixture(scope="module")
def base(serve_port: int) -> Iterator[str]:
    args = fake_app_args()
    args["api"] = {"max_body_bytes": 256 * 1024}
    args["routing"] = {"tiers": {"free": {"pools": ["small"]}, "open": {"selectable": True}}}
    run_app(args, APP)
    yield f"http://127.0.0.1:{serve_port}/{APP}"
    delete_app(APP)


def content_type(resp: httpx.Response | Any) -> str:
    value = resp.headers.get("content-type") or resp.headers.get("Content-Type") or ""
    return str(value[0] if isinstance(value, list) else value)


def assert_answer(resp: httpx.Response | Any) -> None:
    """No server error; a refusal is an OpenAI-shaped error; a stream is complete."""
    status = resp.status_code
    assert status < 500, f"{status}: {resp.text[:500]}"
    assert status in OK_OR_REFUSED, status
    if status >= 400:
        assert content_type(resp).startswith("application/json")
        error = json.loads(resp.text)["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert isinstance(error["message"], str) and len(error["message"]) <= 1024
    elif content_type(resp).startswith("text/event-stream"):
        assert resp.text.endswith("data: [DONE]\n\n")


# --- schemathesis ----------------------------------------------------------------------


@schemathesis.check
def openai_error_shape(ctx: Any, response: Any, case: Any) -> bool | None:
    assert_answer(response)
    return None


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    openai_error_shape,
]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_schemathesis(base: str, mode: GenerationMode) -> None:
    """Every operation of /openapi.json, with valid and with invalid requests."""
    api_schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 6
    for operation in operations:
        if mode == GenerationMode.NEGATIVE and operation.method.upper() != "POST":
            continue  # nothing to make invalid in a GET without parameters

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=25 * SCALE, deadline=None, suppress_health_check=list(HealthCheck))
        def call(case: Any) -> None:
            case.call_and_validate(base_url=base, timeout=30, checks=CHECKS)

        call()


# --- property fuzzer ---------------------------------------------------------------------

JSON_LEAF = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
JSON = st.recursive(
    JSON_LEAF,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
FIELDS = [
    "model", "messages", "prompt", "max_tokens", "max_completion_tokens", "temperature",
    "top_p", "n", "stream", "stream_options", "stop", "seed", "presence_penalty",
    "frequency_penalty", "user", "switchyard", "tools", "logprobs", "echo", "suffix",
]  # fmt: skip
MODELS = st.sampled_from(["auto", "small", "large", "code", "tiny-chat", "base-lm", "nope"])
MESSAGES = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "assistant", "robot"]), "content": JSON}
    ),
    max_size=3,
)
SWITCHYARD = st.fixed_dictionaries(
    {},
    optional={
        "strategy": st.sampled_from(["route", "cascade", "speculative", "fast"]),
        "tier": st.sampled_from(["free", "open", "pro", ""]),
        "min_quality": st.floats(-1, 2),
        "max_cost_usd": st.floats(-1, 1),
        "latency_budget_ms": st.floats(-10, 1e6),
    },
)
HEADER_TEXT = st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=80)
HEADERS = st.fixed_dictionaries(
    {},
    optional={
        "x-switchyard-strategy": st.sampled_from(["route", "cascade", "speculative", "x"]),
        "x-switchyard-tier": HEADER_TEXT,
        "x-switchyard-tenant": HEADER_TEXT,
        "content-type": st.sampled_from(["application/json", "text/plain", "application/x"]),
    },
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, bytes, dict[str, str]]:
    path = draw(st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/route"]))
    body: dict[str, Any] = {"model": draw(MODELS), "max_tokens": 4}
    if path == "/v1/completions" or draw(st.booleans()):
        body["prompt"] = draw(st.text(max_size=60) | JSON)
    if path != "/v1/completions" or draw(st.booleans()):
        body["messages"] = draw(MESSAGES)
    body["stream"] = draw(st.booleans())
    if draw(st.booleans()):
        body["switchyard"] = draw(SWITCHYARD | JSON)
    for field in draw(st.lists(st.sampled_from(FIELDS), max_size=3)):
        body[field] = draw(JSON)
    if draw(st.booleans()):
        body[draw(st.text(max_size=10))] = draw(JSON)
    raw = json.dumps(body).encode()
    mutation = draw(st.sampled_from(["none", "none", "none", "truncate", "bytes"]))
    if mutation == "truncate":
        raw = raw[: draw(st.integers(0, len(raw)))]
    elif mutation == "bytes":
        raw = draw(st.binary(max_size=200))
    return path, raw, draw(HEADERS)


@given(request=requests())
@settings(max_examples=300 * SCALE, deadline=None, suppress_health_check=list(HealthCheck))
def test_property_fuzzer(base: str, request: tuple[str, bytes, dict[str, str]]) -> None:
    path, raw, headers = request
    headers = {"content-type": "application/json", **headers}
    resp = httpx.post(f"{base}{path}", content=raw, headers=headers, timeout=30)
    assert_answer(resp)
