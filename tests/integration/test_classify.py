"""`POST /v1/classify` on the real app (Serve, fake engine): the readings over HTTP, and
the same API keys, body limits, error shape and rate limits as the generation endpoints."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tenancy.db import connect, migrate
from tenancy.keys import KeyStore
from tests.conftest import delete_app, fake_app_args, minute_left, run_app

APP = "classifyapp"
MAX_BODY = 64 * 1024
LIMIT = 3  # requests per minute of the tenant `metered`
SIDE_LIMIT = 20  # calls per minute per tenant to endpoints that generate nothing


@pytest.fixture(scope="module")
def keys(serve_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    url = f"sqlite:///{tmp_path_factory.mktemp('classify') / 'state.db'}"
    engine = connect(url)
    migrate(engine)
    store = KeyStore(engine)
    made = {tenant: store.create(tenant)[0] for tenant in ("open", "metered")}
    args = fake_app_args()
    args["auth"] = {"mode": "keys"}
    args["database"] = {"url": url, "flush_interval_s": 0.2}
    args["api"] = {"max_body_bytes": MAX_BODY}
    args["tenants"] = {"metered": {"limits": {"requests_per_minute": LIMIT}}}
    args["accounting"] = {"side_requests_per_minute": SIDE_LIMIT}
    run_app(args, APP)
    yield made
    delete_app(APP)


@pytest.fixture(scope="module")
def http(serve_port: int, keys: dict[str, str]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://127.0.0.1:{serve_port}/{APP}/v1", timeout=30) as client:
        yield client


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], **extra}


def error_of(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    error: dict[str, Any] = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def test_classifies_without_generating(http: httpx.Client, keys: dict[str, str]) -> None:
    body = chat("Write a Python function that reverses a string.")
    resp = http.post("/classify", json=body, headers=auth(keys["open"]))
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    assert answer["object"] == "switchyard.classification"
    assert (answer["task"]["type"], answer["complexity"]["level"]) == ("code", "simple")
    assert answer["task"]["evidence"] == ["Python", "function"]
    assert answer["features"]["code_markers"] == ["Python", "function"]
    assert answer["rules"] == {
        "pool": "code",
        "reason": "code_markers",
        "detail": "code markers found: 'Python', 'function'",
    }
    assert (answer["semantic"], answer["learned"]) == (None, None)  # neither configured
    assert "x-ratelimit-limit-requests" not in resp.headers  # an unlimited tenant
    # /v1/route is unchanged and agrees with the classification's route part
    route = http.post("/route", json={"model": "auto", **body}, headers=auth(keys["open"]))
    assert route.status_code == 200 and route.json() == answer["route"]
    assert (answer["route"]["pool"], answer["route"]["reason"]) == ("code", "code_markers")
    metrics = http.get("/metrics", headers=auth(keys["open"])).json()  # flushes the ledger
    assert metrics["requests"] == 0  # nothing was served, nothing was recorded


def test_refusals_are_the_other_endpoints(http: httpx.Client, keys: dict[str, str]) -> None:
    missing = httpx.post(http.base_url.join("classify"), json=chat("hi"), timeout=30)
    assert error_of(missing, 401)["code"] == "invalid_api_key"
    assert missing.headers["www-authenticate"] == "Bearer"
    ok = auth(keys["open"])
    # Fields routing does not read go unread: only a pool checks them (vLLM's request
    # model), and classifying calls none (ClassifyRequest).
    unread = http.post("/classify", json=chat("hi", temprature=1), headers=ok)
    plain = http.post("/classify", json=chat("hi"), headers=ok)
    assert (unread.status_code, plain.status_code) == (200, 200)
    assert unread.json() == plain.json()
    reserved = http.post("/classify", json=chat("hi", priority=1), headers=ok)
    # the operator's field, refused as chat refuses it
    assert error_of(reserved, 400)["message"] == "priority: set by Switchyard, not by clients"
    assert error_of(http.post("/classify", json={"messages": []}, headers=ok), 400)["param"] == (
        "messages"
    )
    raw = http.post("/classify", content=b"{", headers={**ok, "content-type": "application/json"})
    assert error_of(raw, 400)["code"] == "invalid_json"
    unknown_model = http.post("/classify", json=chat("hi", model="nope"), headers=ok)
    assert error_of(unknown_model, 404)["code"] == "model_not_found"
    big = http.post("/classify", json=chat("x" * (MAX_BODY + 10)), headers=ok)
    assert error_of(big, 413)["code"] == "body_too_large"


def test_is_metered_in_the_cheap_bucket_not_the_request_limit(
    http: httpx.Client, keys: dict[str, str]
) -> None:
    """Classifying spends none of the tenant's requests per minute, but one caller cannot
    classify without end (issue 20, finding 9)."""
    minute_left(10)  # the requests below fall in one minute window
    metered = auth(keys["metered"])
    for _ in range(SIDE_LIMIT):
        resp = http.post("/classify", json=chat("hi"), headers=metered)
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-ratelimit-limit-requests"] == str(LIMIT)
    refused = http.post("/classify", json=chat("hi"), headers=metered)
    assert error_of(refused, 429)["code"] == "rate_limit_exceeded"
    assert int(refused.headers["retry-after"]) >= 1
    for _ in range(LIMIT):  # the request limit is untouched
        generation = http.post("/chat/completions", json=chat("hi", model="auto"), headers=metered)
        assert generation.status_code == 200, generation.text
    over = http.post("/chat/completions", json=chat("hi", model="auto"), headers=metered)
    assert error_of(over, 429)["code"] == "rate_limit_exceeded"


def test_openapi_declares_it(http: httpx.Client, keys: dict[str, str]) -> None:
    schema = httpx.get(http.base_url.join("../openapi.json"), timeout=30)
    operation = schema.json()["paths"]["/v1/classify"]["post"]
    assert {"200", "400", "401", "403", "404", "413", "429"} <= set(operation["responses"])
    assert "422" not in operation["responses"]
    ok = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert ok.endswith("/ClassifyResponse")
