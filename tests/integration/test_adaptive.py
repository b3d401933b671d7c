"""The adaptive router on the real app (Serve, fake engines, two ingress replicas, one
SQLite state file): evidence in the database moves a route class to another pool on
every replica, and feedback on an answer becomes evidence for the pool that gave it; a
tenant that stuffs feedback moves neither the shared evidence nor another tenant."""

from __future__ import annotations

import time

import httpx
from sqlalchemy import select

from routing.bandit import ArmStats, overlay_key
from tenancy.bandit import BanditStore
from tenancy.db import connect, migrate
from tenancy.schema import BanditArm, Feedback, RequestRecord
from tests.conftest import client, delete_app, fake_app_args, run_app, state_database_url
from tests.integration.test_ledger import database_with_keys

CODE = "Write a Python function that reverses a string."  # rules: code; taxonomy: code


def test_evidence_moves_a_class_and_feedback_teaches_the_pool_that_answered(
    serve_port: int,
) -> None:
    url = state_database_url()
    engine = connect(url)
    migrate(engine)
    store = BanditStore(engine, half_life_s=3600.0)
    now = time.time()
    # What earlier traffic taught: for code requests `large` is good, `code` is not.
    store.add(
        {("code", "code"): ArmStats(1.0, 30.0, now), ("code", "large"): ArmStats(30.0, 1.0, now)}
    )
    args = fake_app_args()
    args["database"] = {"url": url, "flush_interval_s": 0.2}
    args["ingress"] = {"num_replicas": 2, "max_ongoing_requests": 1024}
    args["routing"] = {"adaptive": {"untiered": True, "explore_share": 0.0, "refresh_s": 0.5}}
    name = "adaptive"
    run_app(args, name)
    try:
        api = client(serve_port, name)
        served = []
        for _ in range(6):  # both replicas answer some of these
            raw = api.chat.completions.with_raw_response.create(
                model="auto", messages=[{"role": "user", "content": CODE}]
            )
            served.append((raw.headers["x-switchyard-pool"], raw.headers["x-switchyard-route"]))
        assert set(served) == {("large", "adaptive")}, served
        plain = api.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "What is the capital of France?"}]
        )
        assert plain.headers["x-switchyard-route"] == "default"  # no evidence: policy's pick
        answer = raw.parse()
        assert "adaptive" in " ".join(answer.model_extra["switchyard"]["notes"])

        before = _arm(engine, "code", "large")
        base = f"http://127.0.0.1:{serve_port}/{name}/v1"
        deadline = time.monotonic() + 20
        # NOTE: the other replica may have answered and not written its record yet (up to
        # `flush_interval_s`): its 404 comes at once, and a client retries, as here.
        while (sent := httpx.post(f"{base}/feedback", json={"id": answer.id, "score": 0.0},
                                  timeout=30)).status_code == 404:  # fmt: skip
            assert time.monotonic() < deadline, "the response never reached the ledger"
            time.sleep(0.1)
        assert sent.status_code == 200, sent.text
        while _arm(engine, "code", "large")[1] < before[1] + 0.9:
            assert time.monotonic() < deadline, "feedback never reached the shared evidence"
            time.sleep(0.5)
        with engine.connect() as conn:
            recorded = conn.execute(
                select(RequestRecord.route_class, RequestRecord.pool).where(
                    RequestRecord.id == answer.id
                )
            ).one()
        assert tuple(recorded) == ("code", "large")
    finally:
        delete_app(name)


def test_a_tenant_stuffing_feedback_moves_no_one_elses_routing(serve_port: int) -> None:
    url, store, (stuffer, victim) = database_with_keys("sqlite", None, "stuffer", "victim")
    engine = store.engine
    # `large` does well on code requests, `code` so-so: a few zeros would turn it around.
    BanditStore(engine, half_life_s=3600.0).add(
        {("code", "large"): ArmStats(8.0, 0.0, time.time()),
         ("code", "code"): ArmStats(4.0, 4.0, time.time())}
    )  # fmt: skip
    args = fake_app_args()
    args["auth"] = {"mode": "keys"}
    args["database"] = {"url": url, "flush_interval_s": 2.0}
    args["routing"] = {"adaptive": {"untiered": True, "explore_share": 0.0, "refresh_s": 0.5}}
    args["feedback"] = {"window_s": 4.0}
    name = "adaptive-stuffing"
    base = f"http://127.0.0.1:{serve_port}/{name}/v1"

    def pool_for(key: str) -> tuple[str, str]:
        raw = httpx.post(
            f"{base}/chat/completions", headers={"authorization": f"Bearer {key}"}, timeout=30,
            json={"model": "auto", "messages": [{"role": "user", "content": CODE}]},
        )  # fmt: skip
        assert raw.status_code == 200, raw.text
        return raw.headers["x-switchyard-pool"], raw.json()["id"]

    def rate(rid: str, score: float = 0.0) -> httpx.Response:
        return httpx.post(
            f"{base}/feedback", headers={"authorization": f"Bearer {stuffer}"}, timeout=30,
            json={"id": rid, "score": score},
        )  # fmt: skip

    run_app(args, name)
    try:
        pool, stuffed = pool_for(stuffer)
        assert (pool, pool_for(victim)[0]) == ("large", "large")
        shared = _arm(engine, "code", "large")
        answers = [rate(stuffed) for _ in range(20)]  # "large was bad", twenty times over
        assert [a.status_code for a in answers] == [200] * 20, answers[-1].text
        assert [a.json()["replaced"] for a in answers] == [False] + [True] * 19
        assert len({a.json()["id"] for a in answers}) == 1

        started = time.monotonic()
        unknown = rate("chatcmpl-nobody-answered-this")
        assert (unknown.status_code, unknown.json()["error"]["code"]) == (
            404, "response_not_found",
        )  # fmt: skip
        assert time.monotonic() - started < 1.5  # no waiting out a flush period (2 s)

        own = overlay_key("code", "stuffer")
        deadline = time.monotonic() + 20
        while _arm(engine, own, "large", missing=(0.0, 0.0))[1] < 0.99:
            assert time.monotonic() < deadline, "the first verdict never became evidence"
            time.sleep(0.2)
        assert _arm(engine, own, "large")[1] < 1.01  # one observation, not twenty
        assert _arm(engine, "code", "large") == shared  # the shared evidence: untouched
        assert pool_for(victim)[0] == "large"

        deadline = time.monotonic() + 30  # the window (4 s) closes
        while (late := rate(stuffed, 1.0)).status_code == 200:
            assert time.monotonic() < deadline, "feedback was accepted past its window"
            time.sleep(0.2)
        assert (late.status_code, late.json()["error"]["code"]) == (409, "feedback_window_closed")
    finally:
        delete_app(name)
    with engine.connect() as conn:
        rows = conn.execute(select(Feedback.score).where(Feedback.request_id == stuffed)).all()
    assert len(rows) == 1  # one row per response, however often it was rated


def _arm(
    engine: object, context: str, pool: str, missing: tuple[float, float] | None = None
) -> tuple[float, float]:
    with engine.connect() as conn:  # type: ignore[attr-defined]
        row = conn.execute(
            select(BanditArm.successes, BanditArm.failures).where(
                BanditArm.context == context, BanditArm.pool == pool
            )
        ).first()
    if row is None and missing is not None:
        return missing
    assert row is not None, f"no evidence on {(context, pool)}"
    return float(row[0]), float(row[1])
