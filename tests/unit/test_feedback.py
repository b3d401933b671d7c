"""Feedback on a response against a real SQLite file (tenancy/ledger.py, migration 0003,
the error a late verdict gets): one verdict per response, the last one wins and only the
first is evidence; a window after the response; an unknown id is unknown at once."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from pydantic import ValidationError
from sqlalchemy import Engine, select, text
from sqlalchemy.exc import IntegrityError

from core.errors import FeedbackWindowClosedError
from deployments.openai.errors import to_api_error
from deployments.openai.schema import FEEDBACK_ERRORS
from tenancy.config import FeedbackConfig
from tenancy.db import MIGRATIONS, connect, migrate
from tenancy.ledger import LedgerEntry, LedgerWriter, Verdict, add_feedback, feedback_target
from tenancy.schema import Base, Feedback

NOW = 1_800_000_000.0


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    engine = connect(f"sqlite:///{tmp_path / 'state.db'}")
    migrate(engine)
    return engine


def entry(rid: str, created_at: float = NOW, **kw: object) -> LedgerEntry:
    fields: dict[str, object] = {"tenant": "acme", "pool": "small", **kw}
    return LedgerEntry(
        id=rid, created_at=created_at, endpoint="chat", model_asked="auto", strategy="route",
        outcome="ok", latency_s=0.1, **fields,  # type: ignore[arg-type]
    )  # fmt: skip


def written(engine: Engine, *entries: LedgerEntry) -> None:
    writer = LedgerWriter(engine)
    for e in entries:
        writer.record(e)
    assert writer.flush() == len(entries)


def verdicts(engine: Engine) -> list[tuple[str, float, str | None, int]]:
    with engine.connect() as connection:
        rows = connection.execute(
            select(Feedback.request_id, Feedback.score, Feedback.label, Feedback.revisions)
            .order_by(Feedback.request_id)
        ).all()  # fmt: skip
    return [tuple(row) for row in rows]  # type: ignore[misc]


def migrate_to(engine: Engine, revision: str) -> None:
    """The schema as of an older revision (what a database upgraded today holds)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def rated_before_0003(engine: Engine, rows: Sequence[tuple[str, float, float]]) -> None:
    """Feedback rows (request id, score, created_at) as schema 0002 allowed: any number
    per response."""
    with engine.begin() as connection:
        for rid, score, at in rows:
            connection.execute(
                text("INSERT INTO feedback (request_id, tenant, score, created_at) "
                     "VALUES (:rid, 'acme', :score, :at)"),
                {"rid": rid, "score": score, "at": at},
            )  # fmt: skip


def test_a_later_verdict_replaces_the_first_and_says_so(engine: Engine) -> None:
    written(engine, entry("chatcmpl-1"), entry("chatcmpl-2"))
    first = add_feedback(engine, "chatcmpl-1", "acme", 1.0, "good")
    assert not first.replaced
    assert add_feedback(engine, "chatcmpl-1", "acme", 0.0, "wrong") == Verdict(first.id, True)
    assert add_feedback(engine, "chatcmpl-1", "acme", 0.25) == Verdict(first.id, True)
    assert not add_feedback(engine, "chatcmpl-2", "acme", 1.0).replaced  # its own first
    assert verdicts(engine) == [("chatcmpl-1", 0.25, None, 2), ("chatcmpl-2", 1.0, None, 0)]


def test_feedback_sees_whose_response_when_it_was_asked_and_its_arm(engine: Engine) -> None:
    writer = LedgerWriter(engine)
    writer.record(entry("chatcmpl-routed", NOW - 100, route_class="code", pool="large"))
    writer.record(entry("chatcmpl-plain"))
    assert feedback_target(engine, "chatcmpl-routed") is None  # queued: not written yet
    writer.flush()
    routed = feedback_target(engine, "chatcmpl-routed")
    assert routed is not None
    assert (routed.tenant, routed.created_at, routed.arm) == ("acme", NOW - 100, ("code", "large"))
    assert not routed.closed(NOW, window_s=100.0)  # up to the end of the window
    assert routed.closed(NOW + 0.5, window_s=100.0)
    plain = feedback_target(engine, "chatcmpl-plain")
    assert plain is not None and plain.arm is None  # the adaptive router did not route it
    assert feedback_target(engine, "chatcmpl-nobody") is None  # one look, no retry


def test_a_late_verdict_is_a_409_in_the_openai_shape() -> None:
    window = FeedbackConfig()
    assert window.window_s == 86400
    err = to_api_error(FeedbackWindowClosedError(window.window_s))
    assert (err.status, err.type, err.code, err.param) == (
        409, "invalid_request_error", "feedback_window_closed", "id",
    )  # fmt: skip
    assert "86400 s" in err.message
    assert 409 in FEEDBACK_ERRORS  # documented in /openapi.json
    with pytest.raises(ValidationError):
        FeedbackConfig(window_s=0)
    with pytest.raises(ValidationError):
        FeedbackConfig.model_validate({"window": 60})
    from tests.conftest import fake_app, fake_app_args

    args = fake_app_args()
    args["feedback"] = {"window_s": 600}
    assert fake_app(args)[0].feedback.window_s == 600


def test_the_migration_keeps_the_newest_verdict_of_each_response(tmp_path: Path) -> None:
    engine = connect(f"sqlite:///{tmp_path / 'old.db'}")
    migrate_to(engine, "0002")
    written(engine, entry("chatcmpl-a"), entry("chatcmpl-b"), entry("chatcmpl-c"))
    rated_before_0003(
        engine,
        [
            ("chatcmpl-a", 0.1, NOW + 1), ("chatcmpl-a", 0.9, NOW + 3),
            ("chatcmpl-a", 0.5, NOW + 2),
            ("chatcmpl-b", 1.0, NOW),
            ("chatcmpl-c", 0.2, NOW + 5), ("chatcmpl-c", 0.3, NOW + 5),  # a tie: the later row
        ],
    )  # fmt: skip
    migrate(engine)
    assert verdicts(engine) == [
        ("chatcmpl-a", 0.9, None, 2), ("chatcmpl-b", 1.0, None, 0), ("chatcmpl-c", 0.3, None, 1),
    ]  # fmt: skip
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    assert add_feedback(engine, "chatcmpl-b", "acme", 0.0).replaced
    with pytest.raises(IntegrityError):  # the database itself holds one row per response
        rated_before_0003(engine, [("chatcmpl-b", 1.0, NOW + 9)])
