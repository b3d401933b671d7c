"""The adaptive router's shared state: evidence per (context, pool) in the database, and
each ingress replica's in-memory copy of it.

    BanditStore   the table `bandit_arms` (tenancy/schema.py): `load` a snapshot, `add`
                  increments. Rows hold decayed successes/failures as of `updated_at`
                  (`routing.bandit.ArmStats`), so a merge is a read-modify-write: an
                  update applies only to the `version` it read and is retried otherwise,
                  so concurrent replicas never lose each other's evidence, on SQLite and
                  PostgreSQL alike, without table locks. Rows are written in key order,
                  so two replicas' transactions cannot deadlock on PostgreSQL.
    SharedBandit  one replica's `ThompsonRouter` plus the increments it has not written
                  yet. `choose` and `observe` are in memory only (microseconds, no DB
                  call on the request path); `sync` - every `refresh_s`, in a background
                  thread - writes the pending increments in one transaction and reloads
                  everyone's. So a replica learns from its own signals at once, and from
                  the other replicas' within about two refresh periods.

What can be lost: a replica that dies without `close` loses at most `refresh_s` of its
own evidence. While the database is unreachable the increments wait in memory, merged
per arm (memory grows with the number of arms, not of requests), and are written when it
is back. Why not one row per observation: the snapshot would need an aggregate with
exponentials per row on every refresh, and compaction; counts per arm stay tiny.
A tenant's feedback overlays (`routing.bandit.overlay_key`) are arms like any other, so
the table and each replica's copy grow with tenants x contexts x pools of tenants that
give feedback.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Mapping, Sequence

from sqlalchemy import Connection, Engine, insert, select, update

from routing.bandit import Arm, ArmStats, Choice, Reward, ThompsonRouter
from tenancy.schema import BanditArm

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 20  # optimistic retries per arm within one `add`


class BanditConflictError(RuntimeError):
    """An arm kept changing under `add` (other writers won MAX_ATTEMPTS times in a row)."""


class BanditStore:
    """Evidence per (context, pool) in the state database (migrated by `tenancy.db`)."""

    def __init__(self, engine: Engine, half_life_s: float) -> None:
        self.engine = engine
        self.half_life_s = half_life_s

    def load(self) -> dict[Arm, ArmStats]:
        """Every arm's counts as written (decay them to `now` when reading)."""
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(BanditArm.context, BanditArm.pool, BanditArm.successes,
                       BanditArm.failures, BanditArm.updated_at)
            ).all()  # fmt: skip
        return {
            (context, pool): ArmStats(successes, failures, updated_at)
            for context, pool, successes, failures, updated_at in rows
        }

    def add(self, increments: Mapping[Arm, ArmStats]) -> None:
        """Merge `increments` into the stored counts, in one transaction."""
        if not increments:
            return
        with self.engine.begin() as connection:
            for arm in sorted(increments):
                self._add_one(connection, arm, increments[arm])

    def _add_one(self, connection: Connection, arm: Arm, increment: ArmStats) -> None:
        key = (BanditArm.context == arm[0]) & (BanditArm.pool == arm[1])
        for _ in range(MAX_ATTEMPTS):
            row = connection.execute(
                select(BanditArm.successes, BanditArm.failures, BanditArm.updated_at,
                       BanditArm.version).where(key)
            ).first()  # fmt: skip
            if row is None:
                if self._insert(connection, arm, increment):
                    return
                continue  # another replica created it first: merge into theirs
            successes, failures, updated_at, version = row
            merged = ArmStats(successes, failures, updated_at).merged(increment, self.half_life_s)
            result = connection.execute(
                update(BanditArm)
                .where(key, BanditArm.version == version)
                .values(successes=merged.successes, failures=merged.failures,
                        updated_at=merged.at, version=version + 1)
            )  # fmt: skip
            if result.rowcount == 1:
                return
        raise BanditConflictError(f"arm {arm} changed {MAX_ATTEMPTS} times during one write")

    @staticmethod
    def _insert(connection: Connection, arm: Arm, increment: ArmStats) -> bool:
        """Create the arm's row; False when it exists already (a concurrent insert).

        NOTE: RETURNING says whether the row was inserted: with psycopg an INSERT's
        `rowcount` is -1, so it cannot tell."""
        values = {
            "context": arm[0], "pool": arm[1], "successes": increment.successes,
            "failures": increment.failures, "updated_at": increment.at, "version": 0,
        }  # fmt: skip
        dialect = connection.dialect.name
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            pg = pg_insert(BanditArm).values(values).on_conflict_do_nothing()
            return connection.execute(pg.returning(BanditArm.version)).first() is not None
        if dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            lite = sqlite_insert(BanditArm).values(values).on_conflict_do_nothing()
            return connection.execute(lite.returning(BanditArm.version)).first() is not None
        # Another database: a concurrent insert fails the transaction; the next sync retries.
        connection.execute(insert(BanditArm).values(values))
        return True


class SharedBandit:
    """One ingress replica's view of the shared bandit (see the module docstring).

    Thread-safe: the request path (`choose`, `observe`) and the sync thread share a lock
    that is held only for in-memory work, never across a database call.
    """

    def __init__(
        self,
        store: BanditStore,
        router: ThompsonRouter,
        refresh_s: float = 5.0,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.router = router
        self.refresh_s = refresh_s
        self.syncs = 0
        self.failed_syncs = 0
        self._rng = rng or random.Random()
        self._pending: dict[Arm, ArmStats] = {}
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()  # one sync at a time (the thread, or close)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_error_log = 0.0

    # --- the request path -----------------------------------------------------------

    def choose(
        self,
        context: str,
        eligible: Sequence[str],
        *,
        costs: Mapping[str, float] | None = None,
        frugal: bool = False,
        now: float | None = None,
        overlay: str | None = None,
    ) -> Choice:
        """A pool for a request of `context`; of a tenant whose `overlay` counts too."""
        with self._lock:
            return self.router.choose(
                context, eligible, self._rng, costs=costs, frugal=frugal, now=now, overlay=overlay
            )

    def observe(self, context: str, pool: str, reward: Reward, now: float | None = None) -> None:
        """Learn from one signal at once, and queue it for the other replicas."""
        with self._lock:
            increment = self.router.update(
                context, pool, reward.value, weight=reward.weight, now=now
            )
            _merge_into(self._pending, {(context, pool): increment}, self.router.half_life_s)

    def evidence(self, context: str, pool: str, overlay: str | None = None) -> float:
        """How many observations (decayed, weighted) the arm has, beyond the prior: the
        shared context's, and the `overlay`'s when given."""
        with self._lock:
            alpha, beta = self.router.posterior(context, pool, overlay=overlay)
        return max(0.0, alpha + beta - sum(self.router.prior))

    def pending(self) -> int:
        """Arms with evidence not written yet."""
        return len(self._pending)

    # --- the background thread --------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="bandit-sync", daemon=True)
        self._thread.start()

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the thread and write what is pending."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self.sync()

    def _run(self) -> None:
        while not self._stop.wait(self.refresh_s):
            self.sync()

    def sync(self) -> bool:
        """Write the pending increments, then take everyone's counts; False on failure
        (the increments stay pending and the current view is kept)."""
        with self._sync_lock:
            with self._lock:
                batch, self._pending = self._pending, {}
            try:
                self.store.add(batch)
            except Exception as exc:  # noqa: BLE001 - kept pending, retried next sync
                with self._lock:
                    _merge_into(self._pending, batch, self.router.half_life_s)
                return self._failed("write", exc)
            try:
                snapshot = self.store.load()
            except Exception as exc:  # noqa: BLE001 - the local view stays valid
                return self._failed("read", exc)
            with self._lock:
                # NOTE: signals observed since the batch was taken are in the router's
                # counts but not yet in the database: keep them on top of the snapshot.
                _merge_into(snapshot, self._pending, self.router.half_life_s)
                self.router.replace(snapshot)
            self.syncs += 1
            return True

    def _failed(self, what: str, exc: Exception) -> bool:
        self.failed_syncs += 1
        now = time.monotonic()
        if now - self._last_error_log >= 60:
            logger.warning("bandit state %s failed: %r", what, exc)
            self._last_error_log = now
        return False


def _merge_into(
    target: dict[Arm, ArmStats], increments: Mapping[Arm, ArmStats], half_life_s: float
) -> None:
    for arm, increment in increments.items():
        old = target.get(arm)
        target[arm] = increment if old is None else old.merged(increment, half_life_s)
