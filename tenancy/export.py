"""`switchyard export`: the ledger's opted-in prompts as a router training CSV.

The ledger keeps prompt text only for tenants with `store_prompts: true`; those records,
with their outcomes, feedback and cascade verdicts, are what a router can learn from.
The output is the CSV format of `routing.training.train` (`prompt`, one 0/1 column per
pool), so `switchyard train-router`, `calibrate` and `eval` read it as they are.

Where a label comes from (per prompt and pool):

    feedback        the latest score on a response labels the pool that served it:
                    score >= `correct_at` (0.5) is 1, below is 0
    cascade verdict a cascade that judged the cheap pool's answer (it has a confidence)
                    and escalated, so that another pool served, labels the cheap pool 0:
                    its answer was not good enough to show. The pool that then served
                    gets a label only from feedback on its answer.

Not labels: a cascade whose cheap pool failed (no confidence: an error, not a verdict on
an answer), speculative races (the ledger does not say whether the strong pool won
because the cheap answer was unsure or only because it finished first), errors and
timeouts, and records without feedback or verdict.

One row per distinct prompt. Several verdicts on the same (prompt, pool) are combined by
majority, a tie by the most recent. A pool with no verdict on a prompt gets an empty
cell: unknown, not wrong. Prompts without any label are left out. The offline tools read
empty cells as unknown (`routing.training.train`): an N-pool router's heads learn each
from the prompts its pool has a label for, a binary router and `eval` skip the prompts
missing a label they need. `complete` (`--complete`) keeps only the prompts labelled for
every pool column instead.

Memory stays bounded at any ledger size: the query is ordered by prompt and streamed
(server-side cursor on PostgreSQL; SQLite's cursor is lazy), and only the records of one
prompt are held at a time; the ordering itself is the database's (it sorts on disk).
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from sqlalchemy import ColumnElement, Engine, Executable, and_, func, or_, select, true
from sqlalchemy.orm import aliased

from tenancy.schema import Feedback, RequestRecord

__all__ = [
    "ExportStats",
    "LabelRecord",
    "cascade_confidences",
    "PromptLabels",
    "export_csv",
    "labelled_rows",
    "main",
    "parse_since",
    "pools_in_ledger",
]

SOURCE = "ledger"
_BATCH = 1000  # rows fetched per round trip while streaming
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class LabelRecord:
    """What one ledger record says about its prompt (a row of the export query)."""

    prompt: str
    created_at: float
    strategy: str
    pools_tried: str
    pool: str | None
    escalated: int
    confidence: float | None
    score: float | None  # the latest feedback score, None without feedback


@dataclass
class ExportStats:
    """What an export read and wrote, for the summary line."""

    records: int = 0
    rows: int = 0
    unlabelled: int = 0  # prompts left out: no feedback, no verdict
    incomplete: int = 0  # prompts left out by `complete`: some pool's label unknown
    labels: dict[str, list[int]] = field(default_factory=dict)  # pool -> [zeros, ones]

    def summary(self) -> str:
        parts = [f"{self.rows} prompts from {self.records} ledger records"]
        if self.unlabelled:
            parts.append(f"{self.unlabelled} prompts without any label left out")
        if self.incomplete:
            parts.append(f"{self.incomplete} prompts without a label for every pool left out")
        for pool, (zeros, ones) in sorted(self.labels.items()):
            parts.append(f"{pool}: {zeros + ones} labels, {ones} correct")
        return "; ".join(parts)


def verdicts(record: LabelRecord, correct_at: float) -> Iterator[tuple[str, int]]:
    """(pool, 0/1) for each label this record gives (module docstring)."""
    if record.score is not None and record.pool:
        yield record.pool, int(record.score >= correct_at)
    tried = [p for p in record.pools_tried.split(",") if p]
    if (
        record.strategy == "cascade"
        and record.escalated
        and record.confidence is not None
        and tried
        and tried[0] != record.pool
    ):
        yield tried[0], 0


def combine(votes: Sequence[tuple[float, int]]) -> int:
    """Majority of (time, label) votes; a tie goes to the most recent."""
    ones = sum(label for _, label in votes)
    zeros = len(votes) - ones
    if ones != zeros:
        return int(ones > zeros)
    return max(votes)[1]


@dataclass(frozen=True)
class PromptLabels:
    """One row of the export: a prompt, its label per pool, how many records gave them."""

    prompt: str
    labels: dict[str, int]
    records: int


def labelled_rows(
    records: Iterable[LabelRecord],
    correct_at: float = 0.5,
    pools: Sequence[str] | None = None,
    stats: ExportStats | None = None,
) -> Iterator[PromptLabels]:
    """One `PromptLabels` per labelled prompt, from records ordered by prompt; labels of
    pools outside `pools` (when given) are dropped."""
    stats = stats if stats is not None else ExportStats()
    wanted = set(pools) if pools is not None else None
    current: str | None = None
    count = 0
    votes: dict[str, list[tuple[float, int]]] = {}

    def finish() -> Iterator[PromptLabels]:
        if current is None:
            return
        if not votes:
            stats.unlabelled += 1
            return
        labels = {pool: combine(v) for pool, v in votes.items()}
        for pool, label in labels.items():
            stats.labels.setdefault(pool, [0, 0])[label] += 1
        stats.rows += 1
        yield PromptLabels(current, labels, count)

    for record in records:
        stats.records += 1
        if record.prompt != current:
            yield from finish()
            current, count, votes = record.prompt, 0, {}
        count += 1
        for pool, label in verdicts(record, correct_at):
            if wanted is None or pool in wanted:
                votes.setdefault(pool, []).append((record.created_at, label))
    yield from finish()


def _where(since: float | None, tenants: Sequence[str]) -> ColumnElement[bool]:
    conditions = [RequestRecord.prompt.is_not(None), RequestRecord.outcome == "ok"]
    if since is not None:
        conditions.append(RequestRecord.created_at >= since)
    if tenants:
        conditions.append(RequestRecord.tenant.in_(tenants))
    return and_(true(), *conditions)


def _query(since: float | None, tenants: Sequence[str]) -> Executable:
    newest = (
        select(Feedback.request_id, func.max(Feedback.id).label("feedback_id"))
        .group_by(Feedback.request_id)
        .subquery()
    )
    latest = aliased(Feedback)
    return (
        select(
            RequestRecord.prompt,
            RequestRecord.created_at,
            RequestRecord.strategy,
            RequestRecord.pools_tried,
            RequestRecord.pool,
            RequestRecord.escalated,
            RequestRecord.confidence,
            latest.score,
        )
        .outerjoin(newest, newest.c.request_id == RequestRecord.id)
        .outerjoin(latest, latest.id == newest.c.feedback_id)
        .where(_where(since, tenants))
        .order_by(RequestRecord.prompt, RequestRecord.created_at, RequestRecord.id)
    )


def _records(engine: Engine, since: float | None, tenants: Sequence[str]) -> Iterator[LabelRecord]:
    with engine.connect() as connection:
        result = connection.execution_options(yield_per=_BATCH).execute(_query(since, tenants))
        for row in result:
            yield LabelRecord(*row)


def cascade_confidences(
    engine: Engine, *, on: str, source: str, since: float | None = None
) -> list[float]:
    """The confidences cascades judged `source`'s answers by (the first pool they tried),
    computed on `on` ("start": a streaming cascade's first tokens; "answer": whole
    answers), oldest first: what `switchyard calibrate-cascade` turns into a threshold.
    Needs no prompt text, so every tenant's requests count, opted in or not."""
    tried_first = or_(
        RequestRecord.pools_tried == source,
        RequestRecord.pools_tried.startswith(f"{source},", autoescape=True),
    )
    query = (
        select(RequestRecord.confidence)
        .where(
            RequestRecord.created_at >= since if since is not None else true(),
            RequestRecord.strategy == "cascade",
            RequestRecord.confidence_on == on,
            RequestRecord.confidence.is_not(None),
            tried_first,
        )
        .order_by(RequestRecord.created_at)
    )
    with engine.connect() as connection:
        result = connection.execution_options(yield_per=_BATCH).scalars(query)
        return [float(confidence) for confidence in result if confidence is not None]


def pools_in_ledger(engine: Engine, since: float | None, tenants: Sequence[str]) -> list[str]:
    """Every pool that served or was tried for an exported record, sorted."""
    where = _where(since, tenants)
    found: set[str] = set()
    with engine.connect() as connection:
        for (pool,) in connection.execute(select(RequestRecord.pool).where(where).distinct()):
            if pool:
                found.add(pool)
        tried = select(RequestRecord.pools_tried).where(where).distinct()
        for (names,) in connection.execute(tried):
            found.update(p for p in (names or "").split(",") if p)
    return sorted(found)


def export_csv(
    engine: Engine,
    out: IO[str],
    *,
    since: float | None = None,
    tenants: Sequence[str] = (),
    pools: Sequence[str] | None = None,
    correct_at: float = 0.5,
    complete: bool = False,
) -> ExportStats:
    """Write the training CSV to `out`; pools default to those found in the ledger.
    `complete`: only prompts with a label for every pool (no empty cell)."""
    columns = list(pools) if pools else pools_in_ledger(engine, since, tenants)
    stats = ExportStats()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["prompt", *columns, "records", "source"])
    for row in labelled_rows(_records(engine, since, tenants), correct_at, columns, stats):
        cells = [str(row.labels[p]) if p in row.labels else "" for p in columns]
        if complete and not all(cells):
            stats.rows -= 1
            stats.incomplete += 1
            for pool, label in row.labels.items():
                stats.labels[pool][label] -= 1
            continue
        writer.writerow([row.prompt, *cells, row.records, SOURCE])
    return stats


def parse_since(text: str, now: float | None = None) -> float:
    """Unix time from `7d` / `12h` / `30m` / `90s` ago, an ISO date or time (UTC unless it
    says otherwise), or unix seconds."""
    text = text.strip()
    if match := _DURATION.match(text):
        ago = float(match.group(1)) * _SECONDS[match.group(2)]
        return (time.time() if now is None else now) - ago
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"--since {text!r}: give a duration (7d, 12h, 30m), an ISO date or time, "
            "or unix seconds"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def main(argv: Sequence[str] | None = None, *, prog: str = "python -m tenancy.export") -> int:
    """Command line: the ledger to a training CSV (stdout or `-o FILE`)."""
    from tenancy.db import connect, database_url, migrate, redact

    parser = argparse.ArgumentParser(
        prog=prog,
        description="Export opted-in prompts with per-pool correctness labels (feedback, "
        "cascade verdicts) as a router training CSV.",
    )
    parser.add_argument(
        "--database-url",
        help="SQLAlchemy URL (default: $SWITCHYARD_DATABASE_URL, else the embedded SQLite file)",
    )
    parser.add_argument("-o", "--output", type=Path, help="CSV to write (default: stdout)")
    parser.add_argument(
        "--since", help="only records from then on: 7d, 12h, 2026-11-01, unix seconds"
    )
    parser.add_argument(
        "--tenant", action="append", default=[], help="only this tenant's records (repeatable)"
    )
    parser.add_argument(
        "--pools", help="comma-separated pool columns, in order (default: pools in the ledger)"
    )
    parser.add_argument(
        "--correct-at",
        type=float,
        default=0.5,
        metavar="SCORE",
        help="feedback score from which an answer counts as correct (default: 0.5)",
    )
    parser.add_argument(
        "--complete",
        action="store_true",
        help="only prompts with a label for every pool column (default: unknown labels are "
        "empty cells, which train-router, calibrate and eval read as unknown)",
    )
    args = parser.parse_args(argv)
    try:
        since = parse_since(args.since) if args.since else None
    except ValueError as exc:
        parser.error(str(exc))
    pools = [p.strip() for p in args.pools.split(",") if p.strip()] if args.pools else None

    url = database_url(args.database_url)
    engine = connect(url)
    migrate(engine)
    if args.output is None:
        stats = export_csv(
            engine, sys.stdout, since=since, tenants=args.tenant, pools=pools,
            correct_at=args.correct_at, complete=args.complete,
        )  # fmt: skip
    else:
        partial = args.output.with_name(args.output.name + ".partial")
        with partial.open("w", newline="", encoding="utf-8") as out:
            stats = export_csv(
                engine, out, since=since, tenants=args.tenant, pools=pools,
                correct_at=args.correct_at, complete=args.complete,
            )  # fmt: skip
        partial.replace(args.output)  # NOTE: a failed export never leaves a half file
    where = f" to {args.output}" if args.output else ""
    print(f"exported {stats.summary()} from {redact(url)}{where}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
