"""The ledger and feedback on the real app, on SQLite and on a real PostgreSQL server:
every request is recorded, tenants see only their own, and it all survives a restart."""

from __future__ import annotations

import itertools
import time
from typing import Any

import httpx
import openai
import psycopg
import pytest
from sqlalchemy.engine import make_url

from tenancy.db import connect, migrate
from tenancy.keys import KeyStore
from tests.conftest import delete_app, fake_app_args, run_app, state_database_url

_FRESH = itertools.count()


def fresh_database(kind: str, request: pytest.FixtureRequest | None = None) -> str:
    """An empty database of `kind` for one test (PostgreSQL needs the test's `request`)."""
    if kind == "sqlite":
        return state_database_url()
    assert request is not None
    server = make_url(request.getfixturevalue("postgres_url"))
    name = f"ledger_{next(_FRESH)}_{int(time.time())}"
    admin = server.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # a name we made, not input
    return server.set(database=name).render_as_string(hide_password=False)


def database_with_keys(
    kind: str, request: pytest.FixtureRequest | None, *tenants: str
) -> tuple[str, KeyStore, list[str]]:
    """A fresh, migrated database of `kind` and one API key per tenant in it."""
    url = fresh_database(kind, request)
    engine = connect(url)
    migrate(engine)
    store = KeyStore(engine)
    return url, store, [store.create(tenant)[0] for tenant in tenants]


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_ledger_and_feedback_are_per_tenant_and_survive_a_restart(
    serve_port: int, kind: str, request: pytest.FixtureRequest
) -> None:
    url, store, (key_a, key_b) = database_with_keys(kind, request, "tenant-a", "tenant-b")
    engine = store.engine
    name = f"ledger-{kind}"
    args = fake_app_args()
    args["auth"] = {"mode": "keys"}
    args["database"] = {"url": url, "flush_interval_s": 0.2}
    args["tenants"] = {"tenant-a": {"store_prompts": True}}
    base = f"http://127.0.0.1:{serve_port}/{name}/v1"
    a = openai.OpenAI(base_url=base, api_key=key_a, max_retries=0)
    b = openai.OpenAI(base_url=base, api_key=key_b, max_retries=0)
    hdr_a = {"authorization": f"Bearer {key_a}"}

    def metrics(headers: dict[str, str]) -> Any:
        return httpx.get(f"{base}/metrics", headers=headers, timeout=30).json()

    run_app(args, name)
    try:
        answer = a.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "remember me"}]
        )
        stream = a.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        theirs = b.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": "hi"}]
        )
        with pytest.raises(openai.AuthenticationError):  # refused: counted, not recorded
            openai.OpenAI(base_url=base, api_key="nope", max_retries=0).models.list()

        mine = metrics(hdr_a)
        assert (mine["requests"], mine["outcomes"]) == (2, {"ok": 2})

        ok = httpx.post(
            f"{base}/feedback", headers=hdr_a, json={"id": answer.id, "score": 0.8, "label": "good"}
        )
        assert ok.status_code == 200 and ok.json()["request_id"] == answer.id
        foreign = httpx.post(f"{base}/feedback", headers=hdr_a, json={"id": theirs.id, "score": 0})
        assert (foreign.status_code, foreign.json()["error"]["code"]) == (
            403, "response_not_allowed",
        )  # fmt: skip
        unknown = httpx.post(f"{base}/feedback", headers=hdr_a, json={"id": "x", "score": 1})
        assert (unknown.status_code, unknown.json()["error"]["code"]) == (
            404, "response_not_found",
        )  # fmt: skip
    finally:
        delete_app(name)  # the whole app goes: replicas flush their queues as they stop

    run_app(args, name)  # a new app on the same database
    try:
        again = metrics(hdr_a)
        assert (again["requests"], again["feedback"]) == (2, {"count": 1, "mean_score": 0.8})
        assert metrics({"authorization": f"Bearer {key_b}"})["requests"] == 1
    finally:
        delete_app(name)
    with engine.connect() as conn:
        prompts = conn.exec_driver_sql(
            "SELECT tenant, prompt FROM requests WHERE id = %s"
            if kind == "postgresql"
            else "SELECT tenant, prompt FROM requests WHERE id = ?",
            (answer.id,),
        ).one()
    assert tuple(prompts) == ("tenant-a", "remember me")
