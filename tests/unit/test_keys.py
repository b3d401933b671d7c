"""API keys: format, hashing, constant-time checks, the store (SQLite, migrated by Alembic)."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from tenancy.db import connect, migrate
from tenancy.keys import KEY_CHARS, KeyRing, KeyStore, bearer_token, digest, main, split_key
from tenancy.schema import ApiKey, Base


@pytest.fixture
def store(tmp_path: Path) -> KeyStore:
    engine = connect(f"sqlite:///{tmp_path / 'state.db'}")
    migrate(engine)
    return KeyStore(engine)


def test_a_key_is_printed_once_and_only_its_hash_is_stored(store: KeyStore) -> None:
    key, record = store.create("acme", tier="pro", name="app")
    assert len(key) == KEY_CHARS and key.startswith(f"sy-{record.id}-")
    (stored,) = store.all()
    secret = key[len(f"sy-{record.id}-") :]
    assert stored.secret_sha256 == digest(secret)
    assert secret not in {str(v) for v in vars(stored).values()}  # no secret at rest


def test_the_ring_accepts_the_key_and_nothing_close_to_it(store: KeyStore) -> None:
    key, record = store.create("acme", tier="pro")
    ring = KeyRing(store.all())
    caller = ring.check(key)
    assert caller is not None and (caller.tenant, caller.tier, caller.key_id) == (
        "acme", "pro", record.id,
    )  # fmt: skip
    wrong_secret = key[:-1] + ("A" if key[-1] != "A" else "B")
    unknown_id = "sy-000000000000-" + key[16:]
    for bad in (wrong_secret, unknown_id, key + "x", key[:-1], "", "sy-", "Bearer " + key):
        assert ring.check(bad) is None, bad


def test_revoked_keys_stop_working_at_the_next_reload(store: KeyStore) -> None:
    key, record = store.create("acme")
    ring = KeyRing(store.all())
    assert store.revoke(record.id) is True
    assert ring.check(key) is not None  # until the ring reloads
    ring.replace(store.all())
    assert ring.check(key) is None
    assert store.revoke(record.id) is False  # already revoked


def test_gateway_keys_carry_their_role(store: KeyStore) -> None:
    key, _ = store.create("edge", role="gateway")
    caller = KeyRing(store.all()).check(key)
    assert caller is not None and caller.role == "gateway"


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer   abc  ", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        ("Bearer ", None),
        (None, None),
    ],
)
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


def test_split_key_is_strict_about_shape() -> None:
    good = "sy-0123456789ab-" + "x" * 43
    assert split_key(good) == ("0123456789ab", "x" * 43)
    assert split_key(good.replace("0123", "ABCD")) is None  # ids are lowercase hex
    assert split_key("sy-0123456789abX" + "x" * 43) is None


def test_store_refuses_unbounded_names(store: KeyStore) -> None:
    with pytest.raises(ValueError, match="tenant"):
        store.create("t" * 65)
    with pytest.raises(ValueError, match="tenant"):
        store.create("")


def test_migrations_are_idempotent_and_match_the_models(store: KeyStore) -> None:
    migrate(store.engine)  # a second run changes nothing
    with store.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == []
    assert ApiKey.__tablename__ in Base.metadata.tables


def test_cli_creates_lists_and_revokes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    assert main(["--database-url", url, "create", "--tenant", "acme", "--name", "ci"]) == 0
    key = capsys.readouterr().out.strip()
    key_id = split_key(key)
    assert key_id is not None
    assert main(["--database-url", url, "list"]) == 0
    listing = capsys.readouterr().out
    assert key_id[0] in listing and "active" in listing and key_id[1] not in listing
    assert main(["--database-url", url, "revoke", key_id[0]]) == 0
    assert main(["--database-url", url, "revoke", key_id[0]]) == 1
