"""The adaptive router on the real app (Serve, fake engines, two ingress replicas, one
SQLite state file): evidence in the database moves a route class to another pool on
every replica, and feedback on an answer becomes evidence for the pool that gave it."""

from __future__ import annotations

import time

import httpx
from sqlalchemy import select

from routing.bandit import ArmStats
from tenancy.bandit import BanditStore
from tenancy.db import connect, migrate
from tenancy.schema import BanditArm, RequestRecord
from tests.conftest import client, delete_app, fake_app_args, run_app, state_database_url

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
        sent = httpx.post(f"{base}/feedback", json={"id": answer.id, "score": 0.0}, timeout=30)
        assert sent.status_code == 200, sent.text
        deadline = time.monotonic() + 20
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


def _arm(engine: object, context: str, pool: str) -> tuple[float, float]:
    with engine.connect() as conn:  # type: ignore[attr-defined]
        row = conn.execute(
            select(BanditArm.successes, BanditArm.failures).where(
                BanditArm.context == context, BanditArm.pool == pool
            )
        ).one()
    return float(row[0]), float(row[1])
