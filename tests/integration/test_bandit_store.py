"""The adaptive router's shared state (tenancy/bandit.py) on SQLite and on a real PostgreSQL
server: the migrated table matches the model, a round trip keeps the posterior, replicas
see each other's evidence after a refresh, and concurrent writers lose nothing."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, create_engine

from routing.bandit import ArmStats, Reward, ThompsonRouter
from tenancy.bandit import BanditStore, SharedBandit
from tenancy.db import connect, migrate
from tenancy.schema import Base
from tests.integration.test_ledger import fresh_database

KINDS = ["sqlite", "postgresql"]
HALF_LIFE = 600.0
POOLS = ["small", "large", "code"]


@pytest.fixture(params=KINDS)
def url(request: pytest.FixtureRequest) -> str:
    url = fresh_database(request.param, request)
    engine = connect(url)
    migrate(engine)
    engine.dispose()
    return url


def engine_for(url: str, engines: list[Engine]) -> Engine:
    """A replica's own engine (its own connection pool), disposed after the test."""
    engine = connect(url)
    engines.append(engine)
    return engine


@pytest.fixture
def engines() -> Iterator[list[Engine]]:
    made: list[Engine] = []
    yield made
    for engine in made:
        engine.dispose()


def trained(seed: int, now: float) -> ThompsonRouter:
    router = ThompsonRouter(half_life_s=HALF_LIFE)
    rng = random.Random(seed)
    for i in range(300):
        context = rng.choice(["code", "chat@free", "reasoning"])
        router.update(context, rng.choice(POOLS), rng.random(), weight=rng.choice([0.5, 1.0]),
                      now=now - 300 + i)  # fmt: skip
    return router


def assert_same_posterior(a: ThompsonRouter, b: ThompsonRouter, now: float) -> None:
    arms = set(a.snapshot()) | set(b.snapshot())
    assert arms
    for context, pool in arms:
        assert b.posterior(context, pool, now) == pytest.approx(
            a.posterior(context, pool, now), rel=1e-9
        )


def test_the_migrated_table_matches_the_model(url: str, engines: list[Engine]) -> None:
    engine = engine_for(url, engines)
    migrate(engine)  # idempotent
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []


def test_a_round_trip_through_the_store_keeps_the_posterior(
    url: str, engines: list[Engine]
) -> None:
    now = 1_800_000_000.0
    router = trained(1, now)
    store = BanditStore(engine_for(url, engines), HALF_LIFE)
    store.add(router.snapshot())
    restored = ThompsonRouter(half_life_s=HALF_LIFE)
    restored.replace(store.load())
    assert_same_posterior(router, restored, now)
    assert_same_posterior(router, restored, now + 2 * HALF_LIFE)  # and decays alike
    # Adding later evidence merges (decayed) into the stored rows, as in memory.
    later = {("code", "small"): ArmStats(2.0, 1.0, now + 100)}
    store.add(later)
    router.merge(later)
    restored.replace(store.load())
    assert_same_posterior(router, restored, now + 100)


def test_two_replicas_see_each_others_evidence_after_a_refresh(
    url: str, engines: list[Engine]
) -> None:
    now = 1_800_000_000.0
    a, b = (
        SharedBandit(BanditStore(engine_for(url, engines), HALF_LIFE),
                     ThompsonRouter(half_life_s=HALF_LIFE), refresh_s=60)
        for _ in range(2)
    )  # fmt: skip
    everything = ThompsonRouter(half_life_s=HALF_LIFE)  # one router that saw all signals
    for i in range(40):
        replica, pool = (a, "code") if i % 2 else (b, "large")
        reward = Reward(1.0 if i % 3 else 0.0, 0.5 if i % 4 else 1.0)
        replica.observe("code", pool, reward, now=now + i)
        everything.update("code", pool, reward.value, weight=reward.weight, now=now + i)
    # In memory only until a sync: each replica knows its own half.
    assert a.router.posterior("code", "large", now) == (1.0, 1.0)
    assert b.router.posterior("code", "code", now) == (1.0, 1.0)
    assert a.pending() == 1 and b.pending() == 1
    assert a.sync() and b.sync() and a.sync()
    assert a.pending() == b.pending() == 0
    assert_same_posterior(everything, a.router, now + 60)
    assert_same_posterior(everything, b.router, now + 60)
    # A signal observed after the sync's write is kept on top of the reloaded snapshot.
    b.observe("code", "small", Reward(1.0), now=now + 61)
    assert b.sync()
    assert b.router.posterior("code", "small", now + 61) == pytest.approx((2.0, 1.0))


def test_concurrent_replicas_lose_no_increment(url: str, engines: list[Engine]) -> None:
    stores = [BanditStore(engine_for(url, engines), 1e12) for _ in range(3)]
    batches, errors = 25, []
    start = threading.Barrier(len(stores))

    def write(store: BanditStore) -> None:
        try:
            store.load()  # connected before the race starts
            start.wait(30)
            for _ in range(batches):
                store.add({
                    ("chat", "small"): ArmStats(1.0, 0.0, 0.0),
                    ("chat", "large"): ArmStats(0.0, 1.0, 0.0),
                })  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    snapshot = stores[0].load()
    # A read-modify-write without the version check kept 27-28 of these 75 (tried).
    assert snapshot[("chat", "small")].successes == pytest.approx(3 * batches)
    assert snapshot[("chat", "large")].failures == pytest.approx(3 * batches)


def test_an_unreachable_database_keeps_the_evidence_pending(tmp_path: Path) -> None:
    broken = create_engine(f"sqlite:///{tmp_path / 'missing' / 'no.db'}")  # no such dir
    shared = SharedBandit(BanditStore(broken, HALF_LIFE), ThompsonRouter(half_life_s=HALF_LIFE))
    shared.observe("code", "code", Reward(1.0), now=0.0)
    shared.observe("code", "code", Reward(0.0), now=0.0)
    assert not shared.sync()
    assert (shared.pending(), shared.failed_syncs) == (1, 1)
    assert shared.router.posterior("code", "code", 0.0) == (2.0, 2.0)  # still learned locally
    # Once the database is there, the merged evidence is written, once.
    engine = connect(f"sqlite:///{tmp_path / 'ok.db'}")
    migrate(engine)
    shared.store = BanditStore(engine, HALF_LIFE)
    assert shared.sync() and shared.pending() == 0
    assert shared.store.load()[("code", "code")] == ArmStats(1.0, 1.0, 0.0)
    engine.dispose()


def test_the_sync_thread_shares_evidence_and_close_writes_the_rest(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    engine = connect(url)
    migrate(engine)
    shared = SharedBandit(
        BanditStore(engine, HALF_LIFE), ThompsonRouter(half_life_s=HALF_LIFE), refresh_s=0.05
    )
    shared.start()
    shared.observe("chat", "small", Reward(1.0))
    deadline = time.monotonic() + 10
    while (shared.syncs == 0 or shared.pending()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert ("chat", "small") in shared.store.load()
    shared.observe("chat", "large", Reward(0.0))
    shared.close()
    assert shared.store.load()[("chat", "large")].failures == pytest.approx(1.0, rel=1e-3)
    engine.dispose()
