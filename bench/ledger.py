"""What tenancy costs: key checks and ledger enqueue on the request path, and how many
ledger records per second each database takes.

    .venv/bin/python bench/ledger.py            # SQLite, plus PostgreSQL when installed
    .venv/bin/python bench/ledger.py --records 200000

The request path pays `KeyRing.check` (one SHA-256, one dict lookup) and
`LedgerWriter.record` (one deque append); the database write happens in a background
thread, one transaction per flush. PostgreSQL is the project's test server
(tests/support/postgres.py: a throwaway cluster with fsync off, so its numbers are an
upper bound for a durable server).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tenancy.db import connect, migrate  # noqa: E402
from tenancy.keys import KeyRing, KeyStore  # noqa: E402
from tenancy.ledger import LedgerEntry, LedgerWriter  # noqa: E402

N = 20_000


def per_call_us(call: object, n: int) -> float:
    samples = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(n):
            call()  # type: ignore[operator]
        samples.append((time.perf_counter() - started) / n * 1e6)
    return statistics.median(samples)


def entry(i: int) -> LedgerEntry:
    return LedgerEntry(
        id=f"chatcmpl-{i:032x}", created_at=time.time(), endpoint="chat", model_asked="auto",
        strategy="route", outcome="ok", latency_s=0.1, tenant="acme", key_id="0123456789ab",
        pools_tried="small", pool="small", model="tiny", reason="default", prompt_tokens=20,
        completion_tokens=64, cost_usd=1e-5, large_cost_usd=1e-4,
    )  # fmt: skip


def throughput(url: str, records: int, batch: int) -> float:
    engine = connect(url)
    migrate(engine)
    writer = LedgerWriter(engine)
    started = time.perf_counter()
    for start in range(0, records, batch):
        for i in range(start, min(records, start + batch)):
            writer.record(entry(i))
        writer.flush()
    elapsed = time.perf_counter() - started
    engine.dispose()
    return records / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000, help="records per flush")
    args = parser.parse_args()
    with ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        engine = connect(f"sqlite:///{tmp}/keys.db")
        migrate(engine)
        store = KeyStore(engine)
        keys = [store.create(f"tenant-{i}")[0] for i in range(1000)]
        ring = KeyRing(store.all())
        good, bad = keys[7], keys[7][:-1] + "x"
        print(
            f"key check, 1,000 keys in the ring: {per_call_us(lambda: ring.check(good), N):.2f} µs"
        )
        print(
            f"key check, wrong secret:           {per_call_us(lambda: ring.check(bad), N):.2f} µs"
        )
        writer = LedgerWriter(engine, max_pending=10**7)
        counter = iter(range(10**8))

        def record() -> None:
            writer.record(entry(next(counter)))

        print(f"ledger record(), request path:     {per_call_us(record, N):.2f} µs (with entry)")
        urls = {"sqlite": f"sqlite:///{tmp}/ledger.db"}
        try:
            from tests.support.postgres import PostgresServer

            urls["postgresql"] = stack.enter_context(PostgresServer())
        except Exception as exc:  # noqa: BLE001 - PostgreSQL is optional here
            print(f"PostgreSQL skipped: {exc}")
        for name, url in urls.items():
            rate = throughput(url, args.records, args.batch)
            print(
                f"ledger writes, {name:10}: {rate:,.0f} records/s "
                f"({args.records:,} records, {args.batch} per transaction)"
            )


if __name__ == "__main__":
    main()
