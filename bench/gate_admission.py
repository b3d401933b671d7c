"""What admission costs per request: the quota gate before and after reserve-then-settle,
in the same run.

Both gates run in-process against a keeper whose every call waits `--keeper-ms` (a Serve
handle call is about a millisecond), for one tenant with requests per minute, tokens per
minute and a daily budget, at `--concurrency` requests at once on one replica. The
baseline is the gate of `--baseline-rev` (read with `git show`), so the two are measured
on the same machine minutes apart, not from a stored number.

    .venv/bin/python bench/gate_admission.py [--requests 20000] [--baseline-rev 25741da]

Prints p50 and p99 of the time from arrival to admitted (and, for the new gate, of
settling), the keeper calls per request, and the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tenancy.config import Quotas, TenantConfig  # noqa: E402
from tenancy.gate import QuotaGate  # noqa: E402
from tenancy.keeper import QuotaBook  # noqa: E402

POLICY = {
    "limits": {"requests_per_minute": 1_000_000, "tokens_per_minute": 10**9},
    "budget": {"usd_per_day": 10**6},
}


class SlowKeeper:
    """The new keeper's methods over a book, each call `latency_s` away."""

    def __init__(self, latency_s: float) -> None:
        self.book, self.latency_s, self.calls = QuotaBook(), latency_s, 0

    async def acquire(self, *args: Any) -> Any:
        self.calls += 1
        await asyncio.sleep(self.latency_s)
        return self.book.acquire(*args, time.time())

    async def settle(self, holder: str, items: list[Any]) -> Any:
        self.calls += 1
        await asyncio.sleep(self.latency_s)
        return self.book.settle(holder, items, time.time())

    async def snapshot(self, account: str) -> Any:
        self.calls += 1
        await asyncio.sleep(self.latency_s)
        return self.book.snapshot(account, time.time())


def load_baseline(rev: str) -> Any:
    """The gate and keeper modules of `rev`, loaded under other names."""
    folder = Path(tempfile.mkdtemp(prefix="gate-baseline-"))
    for name in ("gate", "keeper"):
        source = subprocess.run(
            ["git", "show", f"{rev}:tenancy/{name}.py"],
            cwd=ROOT, check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        source = source.replace("from tenancy.keeper import", "from baseline_keeper import")
        (folder / f"baseline_{name}.py").write_text(source)
    sys.path.insert(0, str(folder))
    modules = {}
    for name in ("keeper", "gate"):
        spec = importlib.util.spec_from_file_location(
            f"baseline_{name}", folder / f"baseline_{name}.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[f"baseline_{name}"] = module
        spec.loader.exec_module(module)
        modules[name] = module
    return modules


class OldSlowKeeper:
    def __init__(self, book: Any, latency_s: float) -> None:
        self.book, self.latency_s, self.calls = book, latency_s, 0

    async def lease(self, account: str, want: int, limit: int, now: float) -> Any:
        self.calls += 1
        await asyncio.sleep(self.latency_s)
        return self.book.lease(account, want, limit, now)

    async def report(self, spent: list[Any], now: float) -> None:
        self.calls += 1
        await asyncio.sleep(self.latency_s)
        self.book.report(spent, now)

    async def snapshot(self, account: str, now: float) -> Any:
        self.calls += 1
        await asyncio.sleep(self.latency_s)
        return self.book.snapshot(account, now)


def quotas() -> Quotas:
    return Quotas({"acme": TenantConfig.model_validate(POLICY)}, {}, {})


async def run(
    admit: Any, settle: Any, flush: Any, requests: int, concurrency: int
) -> tuple[list[float], list[float]]:
    admit_s: list[float] = []
    settle_s: list[float] = []
    queue = iter(range(requests))

    async def worker() -> None:
        for _ in queue:
            started = time.perf_counter()
            handle = await admit()
            admit_s.append(time.perf_counter() - started)
            await asyncio.sleep(0)  # the request's work
            started = time.perf_counter()
            settle(handle)
            settle_s.append(time.perf_counter() - started)

    async def flusher() -> None:
        while True:
            await asyncio.sleep(0.5)
            await flush()

    background = asyncio.ensure_future(flusher())
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    background.cancel()
    return admit_s, settle_s


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] * 1000


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--keeper-ms", type=float, default=1.0)
    parser.add_argument("--baseline-rev", default="25741da")
    args = parser.parse_args()
    latency = args.keeper_ms / 1000

    old = load_baseline(args.baseline_rev)
    old_keeper = OldSlowKeeper(old["keeper"].QuotaBook(), latency)
    old_gate = old["gate"].QuotaGate(quotas(), old_keeper)

    refused = 0

    async def old_admit() -> Any:
        nonlocal refused
        try:
            return await old_gate.admit("acme")
        except Exception:  # noqa: BLE001 - its lease race refuses some (issue 20, finding 5)
            refused += 1
            return None

    def old_settle(admission: Any) -> None:
        if admission is not None:
            old_gate.spent(admission.accounts, time.time(), 50, 0.001)

    new_keeper = SlowKeeper(latency)
    new_gate = QuotaGate(quotas(), new_keeper)
    accounts = new_gate.accounts("acme", None, None, None)

    async def new_admit() -> Any:
        new_gate.frugal(accounts)
        return await new_gate.reserve(accounts, 300, 0.002)

    def new_settle(reservation: Any) -> None:
        new_gate.settle(reservation, 50, 0.001)

    rows = []
    for name, admit, settle, flush, keeper in (
        ("before", old_admit, old_settle, old_gate.flush, old_keeper),
        ("after", new_admit, new_settle, new_gate.flush, new_keeper),
    ):
        admit_s, settle_s = await run(admit, settle, flush, args.requests, args.concurrency)
        rows.append(
            (name, pct(admit_s, 50), pct(admit_s, 99), pct(settle_s, 50), pct(settle_s, 99),
             keeper.calls / args.requests)
        )  # fmt: skip
    print(
        f"gate admission, {args.requests} requests, concurrency {args.concurrency}, "
        f"keeper call {args.keeper_ms:g} ms"
    )
    print(f"{'gate':<8}{'admit p50 ms':>14}{'admit p99 ms':>14}{'settle p50 ms':>15}"
          f"{'settle p99 ms':>15}{'keeper calls/req':>18}")  # fmt: skip
    for name, a50, a99, s50, s99, calls in rows:
        print(f"{name:<8}{a50:>14.4f}{a99:>14.4f}{s50:>15.4f}{s99:>15.4f}{calls:>18.4f}")
    (_, b50, b99, *_), (_, n50, n99, *_) = rows
    print(f"after - before: p50 {n50 - b50:+.4f} ms, p99 {n99 - b99:+.4f} ms")
    print(f"before: {refused} of {args.requests} refused under a limit never reached")


if __name__ == "__main__":
    asyncio.run(main())
