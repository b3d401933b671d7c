"""The usage ledger: batched writes off the request path, bounded loss, the summary."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, func, select
from sqlalchemy.orm import Session

from tenancy.db import connect, migrate
from tenancy.ledger import LedgerEntry, LedgerWriter, add_feedback, feedback_target, summary
from tenancy.schema import RequestRecord
from tests.unit.test_serving import body, chat, serving


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    engine = connect(f"sqlite:///{tmp_path / 'state.db'}")
    migrate(engine)
    return engine


def entry(i: int, tenant: str = "acme", outcome: str = "ok", **kw: object) -> LedgerEntry:
    return LedgerEntry(
        id=f"chatcmpl-{i}", created_at=time.time(), endpoint="chat", model_asked="auto",
        strategy="route", outcome=outcome, latency_s=0.1, tenant=tenant, pool="small",
        model="tiny-chat", completion_tokens=4, cost_usd=0.001, large_cost_usd=0.01,
        **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def rows(engine: Engine) -> int:
    with Session(engine) as session:
        return int(session.scalar(select(func.count()).select_from(RequestRecord)) or 0)


def test_records_wait_in_memory_and_are_written_in_one_batch(engine: Engine) -> None:
    writer = LedgerWriter(engine, flush_interval_s=60)
    for i in range(500):
        writer.record(entry(i))
    assert rows(engine) == 0 and writer.pending() == 500  # the request path wrote nothing
    assert writer.flush() == 500
    assert (rows(engine), writer.pending(), writer.written) == (500, 0, 500)


def test_the_thread_flushes_every_interval_and_close_writes_the_rest(engine: Engine) -> None:
    writer = LedgerWriter(engine, flush_interval_s=0.05)
    writer.start()
    writer.record(entry(1))
    deadline = time.monotonic() + 5
    while rows(engine) == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert rows(engine) == 1
    writer.record(entry(2))
    writer.close()
    assert rows(engine) == 2


def test_an_unreachable_database_keeps_records_up_to_the_bound(tmp_path: Path) -> None:
    broken = create_engine(f"sqlite:///{tmp_path / 'missing' / 'no.db'}")  # no such dir
    writer = LedgerWriter(broken, max_pending=3)
    for i in range(5):
        writer.record(entry(i))
    assert writer.flush() == 0
    assert (writer.pending(), writer.dropped) == (3, 2)  # the oldest two went, counted


def test_feedback_needs_a_known_response_and_says_whose(engine: Engine) -> None:
    writer = LedgerWriter(engine)
    writer.record(entry(1, tenant="acme"))
    assert writer.queued_tenant("chatcmpl-1") == (True, "acme")
    assert feedback_target(engine, "chatcmpl-1") is None  # not written yet
    writer.flush()
    target = feedback_target(engine, "chatcmpl-1")
    assert target is not None and target.tenant == "acme"
    assert add_feedback(engine, "chatcmpl-1", "acme", 0.9, "good").id >= 1


def test_summary_counts_every_written_request_and_filters_by_tenant(engine: Engine) -> None:
    writer = LedgerWriter(engine)
    writer.record(entry(1, tenant="acme"))
    writer.record(entry(2, tenant="acme", escalated=1))
    writer.record(entry(3, tenant="other", outcome="client_error"))
    writer.flush()
    add_feedback(engine, "chatcmpl-1", "acme", 1.0)
    everything = summary(engine)
    assert everything["requests"] == 3
    assert everything["outcomes"] == {"ok": 2, "client_error": 1}
    assert everything["escalations"] == 1
    assert everything["cost_saved_ratio"] == pytest.approx(0.9)
    assert everything["feedback"] == {"count": 1, "mean_score": 1.0}
    acme = summary(engine, "acme")
    assert (acme["requests"], acme["outcomes"]) == (2, {"ok": 2})
    assert summary(engine, "other")["feedback"] == {"count": 0, "mean_score": None}


class Sink:
    def __init__(self) -> None:
        self.entries: list[LedgerEntry] = []

    def record(self, entry: LedgerEntry) -> None:
        self.entries.append(entry)


async def test_every_served_request_leaves_one_record_and_refusals_leave_none() -> None:
    """A refusal (a 400, a 429) before any pool is called is counted in metrics only:
    a flood of them must not write rows (issue 20, finding 8)."""
    svc, _ = serving(large={"fail_requests": True})
    sink = svc.ledger = Sink()
    routed = await svc.generate(chat(), key_id="k1")
    with pytest.raises(Exception):  # noqa: B017 - a refusal
        await svc.generate(chat(model="small", max_tokens=1000))
    await svc.generate(chat(model="large"))  # its pool failed: another one served it
    ok, failed = sink.entries
    assert (ok.id, ok.outcome, ok.pool, ok.key_id) == (body(routed)["id"], "ok", "small", "k1")
    assert (ok.completion_tokens, ok.pools_tried, ok.prompt) == (4, "small", None)
    assert (failed.model_asked, failed.pools_tried.split(",")[0]) == ("large", "large")
    assert svc.metrics.summary()["outcomes"]["client_error"] == 1


async def test_prompts_are_kept_only_for_tenants_that_opted_in() -> None:
    from routing.planner import Wishes
    from tests.conftest import fake_app_args

    args = fake_app_args()
    args["tenants"] = {"acme": {"store_prompts": True}}
    svc, _ = serving(args)
    sink = svc.ledger = Sink()
    await svc.generate(chat(text="keep me"), Wishes(tenant="acme"))
    await svc.generate(chat(text="not me"), Wishes(tenant="other"))
    assert [e.prompt for e in sink.entries] == ["keep me", None]


def test_window_totals_are_what_the_keeper_restores(engine: Engine) -> None:
    from tenancy.ledger import window_totals

    now = 1_800_000_020.0  # 20 s into a minute
    writer = LedgerWriter(engine)
    writer.record(replace(entry(1), created_at=now - 10, prompt_tokens=6))  # this minute
    writer.record(replace(entry(2), created_at=now - 3600 * 30))  # yesterday or before
    writer.record(replace(entry(3), created_at=now - 5, outcome="rejected"))  # not admitted
    writer.record(replace(entry(4, tenant="other"), created_at=now - 5))
    writer.flush()
    totals, admitted = window_totals(engine, "tenant", "acme", now)
    assert totals["minute"] == (10.0 + 4.0, 0.002)  # two records, 6 + 4 and 0 + 4 tokens
    assert admitted == 1
    assert totals["month"][1] >= totals["day"][1] >= totals["minute"][1]
