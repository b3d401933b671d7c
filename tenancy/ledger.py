"""The usage ledger: one record per request, written in batches off the request path.

`LedgerWriter.record` only appends to an in-memory queue; a background thread inserts
what accumulated every `flush_interval_s` in one transaction. So a request never waits
on the database, and the database sees one write per second per ingress replica instead
of one per request.

What can be lost, and how much: records still in the queue when a replica dies without
closing the writer (at most `flush_interval_s` of traffic per replica), and, while the
database is unreachable, records beyond `max_pending` (the oldest are dropped and
counted in `dropped`; the rest are retried). A clean shutdown flushes everything.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal, NamedTuple

from sqlalchemy import (
    ColumnCollection,
    Connection,
    Engine,
    Executable,
    func,
    insert,
    select,
    true,
    update,
)
from sqlalchemy.orm import Session

from tenancy.quota import PERIODS, Period, window
from tenancy.schema import Feedback, RequestRecord

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LedgerEntry:
    """One request as it ended (the columns of `RequestRecord`)."""

    id: str
    created_at: float
    endpoint: str
    model_asked: str
    strategy: str
    outcome: str
    latency_s: float
    tenant: str | None = None
    key_id: str | None = None
    pools_tried: str = ""
    pool: str | None = None
    model: str | None = None
    reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    large_cost_usd: float = 0.0
    discarded_tokens: int = 0
    discarded_engine_s: float = 0.0
    ttft_s: float | None = None
    confidence: float | None = None
    confidence_on: str | None = None  # "start" | "answer" (schema.RequestRecord)
    escalated: int = 0
    prompt: str | None = None
    route_class: str | None = None


class LedgerWriter:
    def __init__(
        self, engine: Engine, flush_interval_s: float = 1.0, max_pending: int = 100_000
    ) -> None:
        self.engine = engine
        self.flush_interval_s = flush_interval_s
        self.max_pending = max_pending
        self.written = 0
        self.dropped = 0
        self._queue: deque[LedgerEntry] = deque()
        self._lock = threading.Lock()  # one flush at a time (the thread, or close/flush)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_error_log = 0.0

    # --- the request path -----------------------------------------------------------

    def record(self, entry: LedgerEntry) -> None:
        """Queue one record; never blocks, never raises."""
        if len(self._queue) >= self.max_pending:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append(entry)

    def pending(self) -> int:
        return len(self._queue)

    def queued_tenant(self, request_id: str) -> tuple[bool, str | None]:
        """(queued?, its tenant) for a record not written yet (feedback may come first)."""
        for entry in list(self._queue):
            if entry.id == request_id:
                return True, entry.tenant
        return False, None

    # --- the background thread --------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ledger-writer", daemon=True)
        self._thread.start()

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the thread and write what is queued."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.flush_interval_s):
            self.flush()

    def flush(self) -> int:
        """Write everything queued now, in one transaction; returns records written."""
        with self._lock:
            batch = list(self._queue)
            if not batch:
                return 0
            try:
                with Session(self.engine) as session, session.begin():
                    session.execute(insert(RequestRecord), [asdict(e) for e in batch])
            except Exception as exc:  # noqa: BLE001 - kept queued, retried next flush
                now = time.monotonic()
                if now - self._last_error_log >= 60:
                    logger.warning("ledger write of %d records failed: %r", len(batch), exc)
                    self._last_error_log = now
                return 0
            # NOTE: records were appended (or, when full, the oldest dropped) meanwhile:
            # remove exactly the written ones from the front.
            ids = {e.id for e in batch}
            while self._queue and self._queue[0].id in ids:
                self._queue.popleft()
            self.written += len(batch)
            return len(batch)


@dataclass(frozen=True)
class FeedbackTarget:
    """What `POST /v1/feedback` needs of a written response: whose it is, when it was
    asked, and the adaptive router's arm when it chose the pool."""

    tenant: str | None
    created_at: float  # unix time the request arrived
    route_class: str | None = None
    pool: str | None = None

    @property
    def arm(self) -> tuple[str, str] | None:
        """(route class, pool) when the adaptive router routed the request."""
        if self.route_class is None or self.pool is None:
            return None
        return self.route_class, self.pool

    def closed(self, now: float, window_s: float) -> bool:
        """Too late for feedback: more than `window_s` after the request arrived."""
        return now - self.created_at > window_s


def feedback_target(engine: Engine, request_id: str) -> FeedbackTarget | None:
    """The written request record `request_id` as feedback sees it; None when unknown
    (also while another replica still holds it in its queue)."""
    with Session(engine) as session:
        row = session.execute(
            select(RequestRecord.tenant, RequestRecord.created_at, RequestRecord.route_class,
                   RequestRecord.pool).where(RequestRecord.id == request_id)
        ).first()  # fmt: skip
    return None if row is None else FeedbackTarget(*row)


class Verdict(NamedTuple):
    """The stored feedback row, and whether it replaced an earlier verdict."""

    id: int
    replaced: bool


def add_feedback(
    engine: Engine,
    request_id: str,
    tenant: str | None,
    score: float,
    label: str | None = None,
    comment: str | None = None,
) -> Verdict:
    """Keep `score` as the verdict on the response: the first one, or in place of the one
    before (the last one wins; `Verdict.replaced` says which).

    One statement (an upsert that counts `revisions`), so of concurrent verdicts on one
    response exactly one is told it is the first, on SQLite and PostgreSQL alike.
    """
    values = {
        "request_id": request_id, "tenant": tenant, "score": score, "label": label,
        "comment": comment, "created_at": time.time(), "revisions": 0,
    }  # fmt: skip
    with engine.begin() as connection:
        statement = _upsert(connection.dialect.name, values)
        if statement is None:
            return _read_then_write(connection, values)
        row = connection.execute(statement).one()
    return Verdict(int(row[0]), int(row[1]) > 0)


def _upsert(dialect: str, values: dict[str, Any]) -> Executable | None:
    """INSERT ... ON CONFLICT (request_id) DO UPDATE, returning (id, revisions); None for a
    database without it."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        pg = pg_insert(Feedback).values(values)
        return pg.on_conflict_do_update(
            index_elements=[Feedback.request_id], set_=_replacing(pg.excluded, values)
        ).returning(Feedback.id, Feedback.revisions)
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        lite = sqlite_insert(Feedback).values(values)
        return lite.on_conflict_do_update(
            index_elements=[Feedback.request_id], set_=_replacing(lite.excluded, values)
        ).returning(Feedback.id, Feedback.revisions)
    return None


def _replacing(excluded: ColumnCollection[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """What a new verdict overwrites: everything it carries; `revisions` counts up."""
    replaced = {name: excluded[name] for name in values if name != "revisions"}
    return {**replaced, "revisions": Feedback.revisions + 1}


def _read_then_write(connection: Connection, values: dict[str, Any]) -> Verdict:
    """Another database: a read, then an insert or update. Two verdicts racing on one
    response may both be told they are the first (or the insert fails on the index)."""
    mine = Feedback.request_id == values["request_id"]
    old = connection.execute(select(Feedback.id, Feedback.revisions).where(mine)).first()
    if old is None:
        key = connection.execute(insert(Feedback).values(values)).inserted_primary_key
        assert key is not None
        return Verdict(int(key[0]), False)
    connection.execute(update(Feedback).where(mine).values({**values, "revisions": old[1] + 1}))
    return Verdict(int(old[0]), True)


def summary(engine: Engine, tenant: str | None = None) -> dict[str, object]:
    """What `/v1/metrics` shows, over every request in the ledger (all replicas, ever);
    one tenant's requests when `tenant` is given."""
    mine = RequestRecord.tenant == tenant if tenant is not None else true()
    theirs = Feedback.tenant == tenant if tenant is not None else true()
    with Session(engine) as session:
        outcomes = dict(
            session.execute(
                select(RequestRecord.outcome, func.count())
                .where(mine)
                .group_by(RequestRecord.outcome)
            ).all()
        )
        served = dict(
            session.execute(
                select(RequestRecord.model, func.count())
                .where(RequestRecord.outcome == "ok", mine)
                .group_by(RequestRecord.model)
            ).all()
        )
        totals = session.execute(
            select(
                func.coalesce(func.sum(RequestRecord.escalated), 0),
                func.coalesce(func.sum(RequestRecord.completion_tokens), 0),
                func.coalesce(func.sum(RequestRecord.cost_usd), 0.0),
                func.coalesce(func.sum(RequestRecord.large_cost_usd), 0.0),
            ).where(RequestRecord.outcome == "ok", mine)
        ).one()
        feedback = session.execute(
            select(func.count(), func.avg(Feedback.score)).where(theirs)
        ).one()
    return _summary(outcomes, served, *totals, feedback)


def _summary(
    outcomes: dict[str, int],
    served: dict[str | None, int],
    escalations: int,
    completion_tokens: int,
    cost: float,
    large_cost: float,
    feedback: Iterable[object],
) -> dict[str, object]:
    total = sum(outcomes.values())
    ok = outcomes.get("ok", 0)
    saved = large_cost - cost
    count, mean = tuple(feedback)
    return {
        "requests": total,
        "outcomes": outcomes,
        "success_rate": round(ok / total, 4) if total else None,
        "model_distribution": {
            str(model): round(n / ok, 4) for model, n in sorted(served.items(), key=lambda x: -x[1])
        },
        "escalations": int(escalations),
        "completion_tokens": int(completion_tokens),
        "cost_usd": round(cost, 6),
        "always_large_cost_usd": round(large_cost, 6),
        "cost_saved_usd": round(saved, 6),
        "cost_saved_ratio": round(saved / large_cost, 4) if large_cost else None,
        "feedback": {
            "count": count,
            "mean_score": round(float(str(mean)), 4) if mean is not None else None,
        },
    }


def window_totals(
    engine: Engine, column: Literal["tenant", "key_id"], value: str, now: float
) -> tuple[dict[Period, tuple[float, float]], int]:
    """An account's (tokens, usd) per current window, and requests admitted this minute,
    from the ledger (`column`: whose records, a tenant's or a key's): what the quota
    keeper restores after a restart."""
    mine = getattr(RequestRecord, column) == value
    totals: dict[Period, tuple[float, float]] = {}
    tokens = RequestRecord.prompt_tokens + RequestRecord.completion_tokens
    with Session(engine) as session:
        for period in PERIODS:
            start = window(now, period)[0]
            row = session.execute(
                select(
                    func.coalesce(func.sum(tokens), 0),
                    func.coalesce(func.sum(RequestRecord.cost_usd), 0.0),
                ).where(mine, RequestRecord.created_at >= start)
            ).one()
            totals[period] = (float(row[0]), float(row[1]))
        admitted = session.scalar(
            select(func.count()).where(
                mine,
                RequestRecord.created_at >= window(now, "minute")[0],
                RequestRecord.outcome.not_in(("rejected", "unauthorized")),
            )
        )
    return totals, int(admitted or 0)
