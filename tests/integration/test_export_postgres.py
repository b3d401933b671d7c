"""`switchyard export` on SQLite and on a real PostgreSQL server (a server-side cursor there):
the same ledger gives the same CSV. And the feedback it reads, on both: one row per
response (an upsert, the last verdict wins), exactly one first verdict however they race,
and migration 0003 collapsing the duplicates an older schema allowed."""

from __future__ import annotations

import io
import threading

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from tenancy.db import connect, migrate
from tenancy.export import cascade_confidences, export_csv
from tenancy.ledger import LedgerEntry, LedgerWriter, Verdict, add_feedback
from tenancy.schema import Base
from tests.integration.test_ledger import fresh_database
from tests.unit.test_feedback import NOW, migrate_to, rated_before_0003, verdicts, written
from tests.unit.test_feedback import entry as answered


def entry(i: int, prompt: str, pool: str, **kw: object) -> LedgerEntry:
    fields: dict[str, object] = {"strategy": "route", "pools_tried": pool, **kw}
    return LedgerEntry(
        id=f"chatcmpl-x{i}", created_at=1_800_000_000.0 + i, endpoint="chat",
        model_asked="auto", outcome="ok", latency_s=0.1, tenant="acme",
        pool=pool, prompt=prompt, **fields,  # type: ignore[arg-type]
    )  # fmt: skip


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_the_export_is_the_same_on_both_databases(
    kind: str, request: pytest.FixtureRequest
) -> None:
    engine = connect(fresh_database(kind, request))
    migrate(engine)
    writer = LedgerWriter(engine)
    n = 3000  # more than one streamed batch
    for i in range(n):
        writer.record(entry(i, f"prompt {i % 1000:04d}, with a comma", "small"))
    writer.record(entry(n, "escalated", "large", strategy="cascade", escalated=1, confidence=-2.0))
    writer.record(
        entry(n + 1, "escalated", "large", pools_tried="small,large", strategy="cascade",
              escalated=1, confidence=-2.0)
    )  # fmt: skip
    assert writer.flush() == n + 2
    for i in range(0, n, 3):  # a third of the answers were rated, alternately good and bad
        first = add_feedback(engine, f"chatcmpl-x{i}", "acme", float(i % 2 == 0))
        # ... after a change of mind: the upsert keeps one row, the latest verdict
        assert add_feedback(engine, f"chatcmpl-x{i}", "acme", float(i % 2)) == (first.id, True)
        assert not first.replaced
    out = io.StringIO()
    stats = export_csv(engine, out, pools=["small", "large"])
    lines = out.getvalue().splitlines()
    assert lines[0] == "prompt,small,large,records,source"
    assert lines[1] == "escalated,0,,2,ledger"  # only the record that tried small says so
    # prompt k was served 3 times (i = k, k+1000, k+2000); the rated one of those is the
    # i divisible by 3, good when i is odd
    expected = {}
    for k in range(1000):
        rated = next(i for i in (k, k + 1000, k + 2000) if i % 3 == 0)
        expected[f'"prompt {k:04d}, with a comma"'] = str(rated % 2)
    got = {line.rsplit(",", 4)[0]: line.rsplit(",", 4)[1] for line in lines[2:]}
    assert got == expected
    assert all(line.endswith(",,3,ledger") for line in lines[2:])
    assert (stats.rows, stats.records) == (1001, n + 2)
    engine.dispose()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_verdicts_racing_on_one_response_leave_one_row_and_one_first(
    kind: str, request: pytest.FixtureRequest
) -> None:
    engine = connect(fresh_database(kind, request))
    migrate(engine)
    written(engine, answered("chatcmpl-raced"))
    n = 8
    start = threading.Barrier(n)
    got: list[Verdict] = []

    def rate(score: float) -> None:
        start.wait()
        got.append(add_feedback(engine, "chatcmpl-raced", "acme", score))

    threads = [threading.Thread(target=rate, args=(i / n,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(v.replaced for v in got) == [False] + [True] * (n - 1)
    assert len({v.id for v in got}) == 1
    assert [(rid, revisions) for rid, _, _, revisions in verdicts(engine)] == [
        ("chatcmpl-raced", n - 1)
    ]
    engine.dispose()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_the_migration_keeps_the_newest_verdict_of_each_response(
    kind: str, request: pytest.FixtureRequest
) -> None:
    engine = connect(fresh_database(kind, request))
    migrate_to(engine, "0002")
    written(engine, answered("chatcmpl-a"), answered("chatcmpl-b"))
    rated_before_0003(
        engine,
        [("chatcmpl-a", 0.1, NOW + 1), ("chatcmpl-a", 0.9, NOW + 3), ("chatcmpl-a", 0.5, NOW + 2),
         ("chatcmpl-b", 0.2, NOW), ("chatcmpl-b", 0.3, NOW)],
    )  # fmt: skip
    migrate(engine)
    assert verdicts(engine) == [("chatcmpl-a", 0.9, None, 2), ("chatcmpl-b", 0.3, None, 1)]
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    assert add_feedback(engine, "chatcmpl-a", "acme", 0.0).replaced
    engine.dispose()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_cascade_confidences_are_the_same_on_both_databases(
    kind: str, request: pytest.FixtureRequest
) -> None:
    """The source pool is matched in SQL: "small" and "small,large", not "smaller"."""
    engine = connect(fresh_database(kind, request))
    migrate(engine)
    writer = LedgerWriter(engine)
    for i, (tried, on) in enumerate(
        [("small", "start"), ("small,large", "start"), ("smaller", "start"),
         ("small_%", "start"), ("small", "answer"), ("large", "start")]
    ):  # fmt: skip
        writer.record(
            entry(i, None, tried.split(",")[-1], pools_tried=tried, strategy="cascade",
                  confidence=-i / 10, confidence_on=on)
        )  # fmt: skip
    writer.flush()
    assert cascade_confidences(engine, on="start", source="small") == [0.0, -0.1]
    assert cascade_confidences(engine, on="answer", source="small") == [-0.4]
    assert cascade_confidences(engine, on="start", source="small_%") == [-0.3]
    engine.dispose()
