from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import pytest
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from core.errors import (
    AllPoolsFailedError,
    CircuitOpenError,
    ColdStartError,
    ContextLengthError,
    EngineError,
    EngineRefusedError,
    EngineUnavailableError,
    PoolNotAllowedError,
    PoolOverloadedError,
    PoolTimeoutError,
    PromptError,
    SwitchyardError,
    TierNotAllowedError,
    UnknownModelError,
    UnknownTierError,
)
from deployments.engine_requests import parse, plain
from deployments.openai.errors import (
    APIError,
    create_error_response,
    outcome_of,
    sse_error_event,
    to_api_error,
)
from deployments.openai.protocol import MAX_CHOICES, ChatRequest, CompletionRequest
from deployments.pool_client import refusal
from execution.executor import counts_against_circuit, moves_on

ROOT = Path(__file__).resolve().parents[2]
MSG = [{"role": "user", "content": "hi"}]


def body(exc: BaseException) -> tuple[int, dict[str, object]]:
    response = create_error_response(exc)
    payload = json.loads(bytes(response.body))
    assert set(payload) == {"error"}
    assert set(payload["error"]) == {"message", "type", "param", "code"}
    return response.status_code, payload["error"]


def test_validation_error_is_400_with_param() -> None:
    with pytest.raises(ValidationError) as err:
        ChatRequest.model_validate({"model": "auto", "messages": [], "max_tokens": -1})
    status, error = body(err.value)
    assert status == 400
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "max_tokens"
    assert "(and 1 more problem)" in str(error["message"])


def test_fastapi_invalid_json_is_400() -> None:
    exc = RequestValidationError([{"type": "json_invalid", "loc": ("body", 1), "msg": "x"}])
    status, error = body(exc)
    assert (status, error["code"]) == (400, "invalid_json")


def test_context_length_is_400() -> None:
    status, error = body(ContextLengthError("too long"))
    assert (status, error["param"], error["code"]) == (400, "messages", "context_length_exceeded")


def test_unknown_model_is_404() -> None:
    status, error = body(UnknownModelError("gpt-9", ["auto", "small"]))
    assert (status, error["type"], error["param"]) == (404, "not_found_error", "model")
    assert "available: auto, small" in str(error["message"])


def test_not_implemented_is_501() -> None:
    assert body(NotImplementedError("secret internals"))[0] == 501


def test_unavailable_engine_is_503() -> None:
    status, error = body(EngineUnavailableError("pool 'large' is unavailable; retry shortly"))
    assert (status, error["code"]) == (503, "pool_unavailable")


def test_engine_error_is_500_without_internals() -> None:
    try:
        try:
            raise RuntimeError("CUDA error at /srv/secret/engine.py line 3")
        except RuntimeError as inner:
            raise EngineError() from inner
    except EngineError as exc:
        status, error = body(exc)
    assert status == 500
    assert "secret" not in json.dumps(error)
    assert error["message"] == "the model engine failed to serve the request"


def test_unexpected_exception_is_sanitized_500() -> None:
    status, error = body(KeyError("/home/user/.venv/internal"))
    assert (status, error["message"], error["type"]) == (
        500,
        "internal server error",
        "server_error",
    )


def test_api_error_keeps_status_and_headers() -> None:
    exc = APIError(429, "busy", headers={"retry-after": "1"})
    response = create_error_response(exc)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "1"
    assert to_api_error(exc).type == "rate_limit_error"


def test_prompt_error_survives_pickling() -> None:
    import pickle

    exc = pickle.loads(pickle.dumps(PromptError("bad", param="stop", code="x")))
    assert (exc.message, exc.param, exc.code) == ("bad", "stop", "x")


def test_sse_error_event_shape() -> None:
    event = sse_error_event(EngineError())
    assert event.startswith("data: ") and event.endswith("\n\n")
    assert json.loads(event[6:])["error"]["type"] == "server_error"


def test_framework_refusals_are_openai_shaped() -> None:
    """Regression: FastAPI/Starlette answered `{"detail": ...}` for these."""
    from starlette.exceptions import HTTPException

    status, error = body(HTTPException(400, "There was an error parsing the body"))
    assert (status, error["code"]) == (400, "invalid_json")
    status, error = body(HTTPException(404))
    assert (status, error["type"], error["code"]) == (404, "not_found_error", "not_found")
    response = create_error_response(HTTPException(405, headers={"Allow": "POST"}))
    assert (response.status_code, response.headers["allow"]) == (405, "POST")


def test_messages_never_echo_unbounded_client_input() -> None:
    status, error = body(UnknownModelError("m" * 1_000_000, ["auto"]))
    assert status == 404 and len(str(error["message"])) <= 1024


def test_validation_messages_name_the_field_not_pydantic() -> None:
    cases: dict[str, object] = {
        "n": MAX_CHOICES + 1,
        "temperature": "hot",
        "top_p": [1],
        "stream": "sometimes",
        "logprobs": "maybe",
        "max_tokens": 0,
        "messages": "hi",
    }
    for field, value in cases.items():
        with pytest.raises(ValidationError) as err:
            ChatRequest.model_validate({"messages": MSG, field: value})
        status, error = body(err.value)
        assert (status, error["param"]) == (400, field)
        assert str(error["message"]).startswith(f"{field}: ")
        assert not str(error["message"]).split(": ", 1)[1].startswith("Value error")


def test_a_misspelt_switchyard_wish_is_an_unsupported_parameter() -> None:
    with pytest.raises(ValidationError) as err:
        ChatRequest.model_validate({"messages": MSG, "switchyard": {"stratgy": "cascade"}})
    status, error = body(err.value)
    assert (status, error["param"], error["code"]) == (
        400,
        "switchyard.stratgy",
        "unsupported_parameter",
    )


def pool_refusal(method: str, fields: dict[str, object]) -> EngineRefusedError:
    """What the client gets when the pool's vLLM model refuses the forwarded body."""
    base: dict[str, object] = {"messages": MSG} if method == "chat" else {"prompt": "x"}
    request, refused = parse(method, {**base, "model": "tiny-chat", **fields})
    assert request is None and refused is not None
    error = refusal("small", refused)
    assert isinstance(error, EngineRefusedError)
    return error


def test_unknown_parameters_are_refused_by_name_not_dropped() -> None:
    """The ingress passes them on (`ChatRequest.engine_body`); the pool's vLLM model
    refuses them, and the client learns which one."""
    # NOTE: `logit_bias` was refused here; vLLM implements it, so it is accepted now.
    for extra in ({"best_of": 2}, {"store": True}, {"prediction": {}}, {"temprature": 0}):
        (name,) = extra
        assert name in ChatRequest.model_validate({"messages": MSG, **extra}).engine_body()
        status, error = body(pool_refusal("chat", extra))
        assert (status, error["param"], error["code"]) == (400, name, "unsupported_parameter")
        assert error["type"] == "invalid_request_error"
        assert "refused, not ignored" in str(error["message"])
    status, error = body(pool_refusal("completions", {"best_of_n": 2}))
    assert (status, error["param"], error["code"]) == (400, "best_of_n", "unsupported_parameter")
    assert parse("chat", {"messages": MSG, "model": "m", "logit_bias": {"1": 5}})[1] is None


def test_a_field_vllm_refuses_is_a_400_naming_it() -> None:
    # `seed` is not read by routing: the ingress passes it on, vLLM's model checks it.
    assert ChatRequest.model_validate({"messages": MSG, "seed": "seven"}).engine_body()["seed"]
    status, error = body(pool_refusal("chat", {"seed": "seven"}))
    assert (status, error["param"], error["code"]) == (400, "seed", None)
    assert (
        error["message"]
        == "seed: Input should be a valid integer, unable to parse string as an integer"
    )


@pytest.mark.parametrize(
    ("fields", "param", "problem"),
    [
        ({"stop": ["a"] * 5}, "stop", "at most 4"),
        (
            {"messages": [{"role": "user", "content": "hi", "foo": 1}]},
            "messages.0.foo",
            "unsupported",
        ),
    ],
)
def test_a_union_field_is_named_as_the_client_sent_it(
    fields: dict[str, object], param: str, problem: str
) -> None:
    status, error = body(pool_refusal("chat", fields))
    assert (status, error["param"]) == (400, param)
    assert problem in str(error["message"])


@pytest.mark.parametrize(
    ("method", "fields", "param"),
    [
        ("chat", {"top_logprobs": 2}, "top_logprobs"),
        ("chat", {"stream_options": {"include_usage": True}}, "stream_options"),
        ("chat", {"tools": []}, "tools"),
        ("chat", {"tool_choice": "required"}, "tool_choice"),
        (
            "chat",
            {
                "tools": [{"type": "function", "function": {"name": "f"}}],
                "tool_choice": {"type": "function", "function": {"name": "g"}},
            },
            "tool_choice",
        ),
        ("completions", {"prompt": ""}, "prompt"),
    ],
)
def test_vllms_own_request_checks_are_400s_naming_the_field(
    method: str, fields: dict[str, object], param: str
) -> None:
    status, error = body(pool_refusal(method, fields))
    assert (status, error["param"], error["type"]) == (400, param, "invalid_request_error")


def test_fields_only_the_operator_sets_are_refused() -> None:
    for model, base in ((ChatRequest, {"messages": MSG}), (CompletionRequest, {"prompt": "x"})):
        for name in ("request_id", "priority", "kv_transfer_params", "ec_transfer_params"):
            with pytest.raises(ValidationError) as err:
                model.model_validate({**base, name: {} if "params" in name else 1})
            status, error = body(err.value)
            assert status == 400
            assert error["message"] == f"{name}: set by Switchyard, not by clients"


# --- vLLM's refusals, from a pool ------------------------------------------------------------


def error_response(code: int, message: str, param: str | None = None) -> dict[str, object]:
    """A pool's error item, as a replica sends it (vLLM's ErrorResponse as plain data)."""
    from ray.llm._internal.serve.core.configs.openai_api_models import ErrorInfo, ErrorResponse

    kind = "BadRequestError" if code < 500 else "InternalServerError"
    response = ErrorResponse(error=ErrorInfo(message=message, type=kind, code=code, param=param))
    plain_item: dict[str, object] = plain(response)
    return plain_item


def test_a_pools_4xx_is_the_clients_error_with_vllms_words() -> None:
    refused = refusal("small", error_response(400, "temperature must be >= 0", "temperature"))
    assert isinstance(refused, EngineRefusedError)
    assert (refused.status, refused.param, refused.code) == (400, "temperature", None)
    status, error = body(refused)
    assert (status, error["param"], error["type"]) == (400, "temperature", "invalid_request_error")
    assert error["message"] == "temperature must be >= 0"
    assert (moves_on(refused), counts_against_circuit(refused)) == (False, False)
    status, error = body(refusal("small", error_response(404, "The model `x` does not exist.")))
    assert (status, error["type"]) == (404, "not_found_error")


def test_vllms_context_length_refusal_keeps_openais_code() -> None:
    message = (
        "This model's maximum context length is 128 tokens. However, you requested 300 tokens "
        "(200 in the messages, 100 in the completion). Please reduce the length."
    )
    refused = refusal("small", error_response(400, message, "messages"))
    status, error = body(refused)  # type: ignore[arg-type]
    assert (status, error["code"], error["param"]) == (400, "context_length_exceeded", "messages")
    assert error["message"] == message


def test_a_pools_5xx_is_an_engine_error_that_never_shows_vllms_message() -> None:
    for item in (
        error_response(500, "CUDA error at /srv/secret/x.py"),
        error_response(503, "CUDA error at /srv/secret/x.py"),
        {"error": {"message": "CUDA error at /srv/secret/x.py"}},  # no code: a failure
    ):
        refused = refusal("small", item)
        assert type(refused) is EngineError
        status, error = body(refused)
        assert (status, error["code"]) == (500, "engine_error")
        assert error["message"] == "pool 'small' failed to serve the request"
        assert (moves_on(refused), counts_against_circuit(refused)) == (True, True)


def test_what_is_not_an_error_body_is_no_refusal() -> None:
    for item in ("data: {}\n\n", {"id": "chatcmpl-1", "choices": []}, {"error": "x"}, None, 7):
        assert refusal("small", item) is None


def test_a_refusal_is_bounded_and_keeps_its_status_across_ray() -> None:
    refused = EngineRefusedError(413, "x" * 5000, code="too_big", param="messages")
    restored = pickle.loads(pickle.dumps(refused))
    assert (restored.status, restored.code, restored.param) == (413, "too_big", "messages")
    assert len(restored.message) == 1000
    assert to_api_error(restored).status == 413
    assert EngineRefusedError(200, "odd").status == 400  # only a 4xx is the client's
    assert EngineRefusedError(503, "odd").status == 400


# --- the domain taxonomy ---------------------------------------------------------------

DOMAIN_CASES = [
    # error, status, code, outcome, next pool tried?, counts against the circuit?
    (PromptError("no", param="max_tokens"), 400, None, "client_error", False, False),
    (UnknownTierError("gold", ["free"]), 400, "unknown_tier", "client_error", False, False),
    (UnknownModelError("x", ["auto"]), 404, "model_not_found", "client_error", False, False),
    (TierNotAllowedError("no"), 403, "tier_not_allowed", "client_error", False, False),
    (PoolNotAllowedError("large", "free"), 403, "pool_not_allowed", "client_error", False, False),
    (PoolOverloadedError("small"), 429, "pool_overloaded", "rejected", True, False),
    (ColdStartError("code"), 503, "cold_start", "unavailable", True, False),
    (CircuitOpenError("small", 30), 503, "circuit_open", "unavailable", True, False),
    (PoolTimeoutError("large", 5), 504, "timeout", "timeout", True, True),
    (EngineError(), 500, "engine_error", "error", True, True),
    (EngineUnavailableError(), 503, "pool_unavailable", "unavailable", True, True),
    (AllPoolsFailedError(["small", "large"]), 503, "pool_unavailable", "unavailable", False, False),
    (EngineRefusedError(422, "no", param="n"), 422, None, "client_error", False, False),
]


@pytest.mark.parametrize(("exc", "status", "code", "outcome", "moves", "circuit"), DOMAIN_CASES)
def test_each_domain_error_says_what_it_means_once(
    exc: SwitchyardError, status: int, code: str | None, outcome: str, moves: bool, circuit: bool
) -> None:
    api = to_api_error(exc)
    assert (api.status, api.code, outcome_of(exc)) == (status, code, outcome)
    assert (moves_on(exc), counts_against_circuit(exc)) == (moves, circuit)
    restored = pickle.loads(pickle.dumps(exc))  # pools raise them; Ray pickles them
    assert (type(restored), restored.message, restored.code, restored.param) == (
        type(exc), exc.message, exc.code, exc.param
    )  # fmt: skip


def test_a_pool_outside_the_tier_counts_as_a_client_error_not_a_server_error() -> None:
    assert outcome_of(PoolNotAllowedError("large", "free")) == "client_error"  # was "error"
    assert outcome_of(APIError(403, "no")) == "client_error"


def test_refusals_with_a_wait_carry_retry_after() -> None:
    for exc in (PoolOverloadedError("s"), ColdStartError("c"), CircuitOpenError("s", 12)):
        headers = to_api_error(exc).headers
        assert headers is not None and int(headers["retry-after"]) >= 1


def test_only_capacity_refusals_say_capacity_is_full() -> None:
    """The proxy edge shrinks admission on these alone; a tenant's own limit must not."""
    from core.errors import QuotaExceededError, RateLimitedError
    from deployments.openai.guard import router_overloaded

    full = {"x-switchyard-capacity": "full"}
    assert full.items() <= (to_api_error(PoolOverloadedError("s")).headers or {}).items()
    assert full.items() <= (router_overloaded(retry_after_s=1).headers or {}).items()
    for exc in (RateLimitedError("requests", 10, 5), QuotaExceededError("usd per day", 60)):
        assert "x-switchyard-capacity" not in (to_api_error(exc).headers or {})


def error_codes_in_code() -> set[str]:
    """Every `code` a client can receive: domain errors' and the HTTP layer's literals."""
    codes = {c for c in (sub.default_code for sub in _subclasses(SwitchyardError)) if c}
    for path in [*ROOT.glob("deployments/**/*.py"), *ROOT.glob("core/*.py")]:
        codes |= set(re.findall(r'code="([a-z_]+)"', path.read_text()))
    return codes


def _subclasses(cls: type) -> list[type]:
    return [cls, *(s for sub in cls.__subclasses__() for s in _subclasses(sub))]


def test_every_error_code_a_client_can_get_is_in_the_readme_table() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("### Errors") : readme.index("### Limits and hostile clients")]
    documented = set(re.findall(r"`([a-z_]+)`", table))
    codes = error_codes_in_code()
    assert {"cold_start", "circuit_open", "pool_overloaded", "body_too_large"} <= codes
    assert codes <= documented
