"""API keys on the real app (Serve, fake engine): who may call, and as which tenant."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import openai
import pytest

from tenancy.db import connect, migrate
from tenancy.keys import KeyStore
from tests.conftest import delete_app, fake_app_args, run_app, wait_for, wait_healthy

APP = "authapp"


@pytest.fixture(scope="module")
def keyed(serve_port: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyStore]:
    url = f"sqlite:///{tmp_path_factory.mktemp('auth') / 'state.db'}"
    engine = connect(url)
    migrate(engine)
    args = fake_app_args()
    args["auth"] = {"mode": "keys", "key_refresh_s": 0.5}
    args["database"] = {"url": url}
    args["routing"] = {
        "tiers": {"free": {"pools": ["small"]}, "pro": {}},
        "tenants": {"acme": "pro"},
        "default_tier": "free",
    }
    store = KeyStore(engine)
    store.create("acme", name="before start")  # loaded when the ingress starts
    run_app(args, APP)
    yield store
    delete_app(APP)


def base(serve_port: int) -> str:
    return f"http://127.0.0.1:{serve_port}/{APP}/v1"


def ask(api: openai.OpenAI, **extra: object) -> openai.types.chat.ChatCompletion:
    return api.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "hi"}], **extra
    )


def test_a_valid_key_is_served_as_its_tenant(serve_port: int, keyed: KeyStore) -> None:
    key, _ = keyed.create("acme", name="app")
    accepted(serve_port, key)
    api = openai.OpenAI(base_url=base(serve_port), api_key=key, max_retries=0)
    assert ask(api).choices[0].message.content == "small answer from tiny-chat"
    # acme is on `pro`, which may pin `large`; the default tier `free` may not
    pinned = api.chat.completions.create(model="large", messages=[{"role": "user", "content": "x"}])
    assert pinned.model == "big-chat"


def test_no_key_or_a_bad_key_is_a_401_the_openai_client_understands(
    serve_port: int, keyed: KeyStore
) -> None:
    for key in ("unused", "sy-000000000000-" + "x" * 43):
        api = openai.OpenAI(base_url=base(serve_port), api_key=key, max_retries=0)
        with pytest.raises(openai.AuthenticationError) as err:
            ask(api)
        assert err.value.status_code == 401
        assert err.value.code == "invalid_api_key"
        assert err.value.response.headers["www-authenticate"] == "Bearer"
    bare = httpx.post(f"{base(serve_port)}/chat/completions", json={}, timeout=10)
    assert bare.status_code == 401 and bare.json()["error"]["code"] == "invalid_api_key"
    # probes need no key (wait_healthy: a pool's stats may be a round late on a busy machine)
    assert wait_healthy(f"http://127.0.0.1:{serve_port}/{APP}")["ok"] is True


def test_a_revoked_key_stops_working_within_the_refresh_period(
    serve_port: int, keyed: KeyStore
) -> None:
    key, record = keyed.create("acme", name="short-lived")
    headers = accepted(serve_port, key)
    api = openai.OpenAI(base_url=base(serve_port), api_key=key, max_retries=0)
    ask(api)
    assert keyed.revoke(record.id)
    wait_for(lambda: models_status(serve_port, headers) == 401, 30, 0.1, "the key dropped")
    with pytest.raises(openai.AuthenticationError):
        ask(api)


def test_a_tenant_key_cannot_claim_another_tenant(serve_port: int, keyed: KeyStore) -> None:
    key, _ = keyed.create("small-co")  # default tier `free`: only the small pool
    accepted(serve_port, key)
    api = openai.OpenAI(base_url=base(serve_port), api_key=key, max_retries=0)
    with pytest.raises(openai.BadRequestError) as err:
        ask(api, extra_headers={"x-switchyard-tenant": "acme"})
    assert err.value.code is None and "gateway key" in str(err.value)
    with pytest.raises(openai.PermissionDeniedError):  # not its tier's pool
        api.chat.completions.create(model="large", messages=[{"role": "user", "content": "x"}])
    gateway, _ = keyed.create("edge", role="gateway")
    accepted(serve_port, gateway)
    edge = openai.OpenAI(base_url=base(serve_port), api_key=gateway, max_retries=0)
    claimed = edge.chat.completions.create(
        model="large",
        messages=[{"role": "user", "content": "x"}],
        extra_headers={"x-switchyard-tenant": "acme"},
    )
    assert claimed.model == "big-chat"  # served as acme (pro) through the trusted gateway


def test_the_key_file_is_never_in_the_response_or_models(serve_port: int, keyed: KeyStore) -> None:
    key, _ = keyed.create("acme")
    accepted(serve_port, key)
    models = httpx.get(
        f"{base(serve_port)}/models", headers={"authorization": f"Bearer {key}"}, timeout=10
    )
    assert models.status_code == 200 and key not in models.text
    assert httpx.get(f"{base(serve_port)}/models", timeout=10).status_code == 401


def models_status(serve_port: int, headers: dict[str, str]) -> int:
    return httpx.get(f"{base(serve_port)}/models", headers=headers, timeout=10).status_code


def accepted(serve_port: int, key: str) -> dict[str, str]:
    """Wait until the ingress has reloaded `key` (every 0.5 s); its request headers."""
    headers = {"authorization": f"Bearer {key}"}
    wait_for(lambda: models_status(serve_port, headers) == 200, 30, 0.1, "the new key loaded")
    return headers


async def test_requests_without_a_key_are_refused_unread_and_leave_no_ledger_rows(
    serve_port: int, keyed: KeyStore
) -> None:
    """Issue 20 #8 and #13: a 401 is answered from the headers (the guard never reads the
    body), and neither it nor a 400 before serving costs a ledger row; both are counted."""
    headers = accepted(serve_port, keyed.create("acme", name="counter")[0])
    url = f"{base(serve_port)}/chat/completions"

    def rows() -> int:
        # NOTE: /v1/metrics writes this replica's queued ledger records first.
        assert httpx.get(f"{base(serve_port)}/metrics", headers=headers, timeout=30).is_success
        with keyed.engine.connect() as conn:
            return int(conn.exec_driver_sql("SELECT count(*) FROM requests").scalar_one())

    def health() -> tuple[int, int]:
        got = httpx.get(f"http://127.0.0.1:{serve_port}/{APP}/health", timeout=30).json()
        refused = got.get("refused", {}).get("401", 0)
        return refused, got["counters"].get("refused.client_error", 0)

    rows_before, (unauthorized, client_errors) = rows(), health()
    text = "x" * (1024 * 1024)
    body = {"model": "auto", "messages": [{"role": "user", "content": text}]}
    no_key: dict[str, str] = {}
    bad_key = {"authorization": "Bearer sy-000000000000-" + "x" * 43}
    async with httpx.AsyncClient(timeout=60) as http:
        answers = await asyncio.gather(
            *(http.post(url, json=body, headers=(no_key, bad_key)[i % 2]) for i in range(32))
        )
    assert {(a.status_code, a.json()["error"]["code"]) for a in answers} == {
        (401, "invalid_api_key")
    }
    # refused by the ingress before any pool call (an unknown field is now the pool's 400,
    # after a call: a ledger row, as tests/unit/test_serving.py asserts)
    too_many = {"model": "auto", "messages": [{"role": "user", "content": "hi"}], "n": 17}
    refused = httpx.post(url, json=too_many, headers=headers, timeout=30)
    assert (refused.status_code, refused.json()["error"]["param"]) == (400, "n")
    assert rows() == rows_before
    assert health() == (unauthorized + 32, client_errors + 1)
