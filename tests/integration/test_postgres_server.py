"""The suite's own PostgreSQL server (tests/support/postgres.py, fixture `postgres_url`).

A real server: it answers as PostgreSQL, commits are seen by other connections and
uncommitted rows are not, and leaving the block leaves no process, port or directory
behind. Binary discovery and the skip/fail policy are checked on fake installations.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.support import postgres
from tests.support.postgres import (
    PostgresBinaries,
    PostgresError,
    PostgresNotInstalled,
    PostgresServer,
    find_binaries,
    skip_or_fail,
)


def test_server_answers_as_postgresql(postgres_url: str) -> None:
    assert postgres_url.startswith("postgresql+psycopg://postgres@127.0.0.1:")
    engine = create_engine(postgres_url)
    try:
        with engine.connect() as conn:
            version = conn.execute(text("SELECT version()")).scalar_one()
            database = conn.execute(text("SELECT current_database()")).scalar_one()
    finally:
        engine.dispose()
    assert version.startswith("PostgreSQL ")
    assert database == postgres.DATABASE


def test_commit_is_seen_by_another_connection(postgres_url: str) -> None:
    table = f"ledger_{uuid.uuid4().hex[:8]}"
    engine = create_engine(postgres_url)
    try:
        with engine.begin() as conn:
            conn.execute(text(f"CREATE TABLE {table} (id serial PRIMARY KEY, note text NOT NULL)"))
        with engine.connect() as writer, engine.connect() as reader:
            with writer.begin():
                writer.execute(text(f"INSERT INTO {table} (note) VALUES (:note)"), {"note": "hi"})
                assert writer.execute(text(f"SELECT note FROM {table}")).scalars().all() == ["hi"]
                # Not committed yet: the other connection does not see it.
                assert reader.execute(text(f"SELECT count(*) FROM {table}")).scalar_one() == 0
                reader.rollback()
            rows = reader.execute(text(f"SELECT id, note FROM {table}")).all()
            assert [tuple(row) for row in rows] == [(1, "hi")]
            reader.rollback()
        with engine.begin() as conn:
            conn.execute(text(f"DROP TABLE {table}"))
    finally:
        engine.dispose()


def test_leaving_the_block_leaves_nothing_behind() -> None:
    try:
        server = PostgresServer(database="switchyard_cleanup")
    except PostgresNotInstalled as missing:
        skip_or_fail(missing)
    with server as url:
        root, port = server.root, server.port
        assert root is not None and port is not None
        pid = int((root / "data" / "postmaster.pid").read_text().split()[0])
        assert url.endswith(f"@127.0.0.1:{port}/switchyard_cleanup")
        assert server.started_in is not None and server.started_in < postgres.START_TIMEOUT
    assert not root.exists()
    assert not postgres._alive(pid)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    server.stop()  # idempotent


def test_failed_start_raises_with_output_and_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failing initdb: the error names the command and carries its output; no temp dir."""
    false = shutil.which("false")
    assert false is not None
    monkeypatch.setattr(postgres.tempfile, "tempdir", str(tmp_path))
    server = PostgresServer(PostgresBinaries(Path(false), Path(false)))
    with pytest.raises(PostgresError, match=r"failed \(exit 1\)"), server:
        pass
    assert list(tmp_path.iterdir()) == []


def test_discovery_finds_this_machines_binaries() -> None:
    try:
        binaries = find_binaries()
    except PostgresNotInstalled as missing:
        skip_or_fail(missing)
    for path in (binaries.initdb, binaries.pg_ctl):
        assert path.is_file() and os.access(path, os.X_OK)
    assert binaries.initdb.parent == binaries.pg_ctl.parent
    out = subprocess.run(
        [binaries.pg_ctl, "--version"], capture_output=True, text=True, timeout=10, check=True
    )
    assert "PostgreSQL" in out.stdout


def _fake_install(bin_dir: Path, names: tuple[str, ...] = ("initdb", "pg_ctl")) -> None:
    bin_dir.mkdir(parents=True)
    for name in names:
        (bin_dir / name).write_text("#!/bin/sh\n")
        (bin_dir / name).chmod(0o755)


def test_discovery_takes_the_highest_debian_version(tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    for version in ("9.6", "13", "15"):
        _fake_install(lib / version / "bin")
    _fake_install(lib / "17" / "bin", names=("pg_ctl",))  # a client-only leftover
    found = find_binaries(path=str(tmp_path / "empty"), debian_lib=lib)
    assert found == PostgresBinaries(lib / "15" / "bin" / "initdb", lib / "15" / "bin" / "pg_ctl")


def test_discovery_prefers_path(tmp_path: Path) -> None:
    _fake_install(tmp_path / "lib" / "15" / "bin")
    _fake_install(tmp_path / "local")
    found = find_binaries(path=str(tmp_path / "local"), debian_lib=tmp_path / "lib")
    assert found.initdb == tmp_path / "local" / "initdb"


def test_not_installed_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulated: nothing on PATH and no Debian layout."""
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(postgres, "DEBIAN_LIB", tmp_path / "lib")
    with pytest.raises(PostgresNotInstalled, match="apt-get install postgresql"):
        PostgresServer()


def test_missing_postgres_skips_locally_and_fails_when_required(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    missing = PostgresNotInstalled(postgres.INSTALL_HINT)
    monkeypatch.delenv(postgres.REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install postgresql"):
        skip_or_fail(missing)
    monkeypatch.setenv(postgres.REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="SWITCHYARD_REQUIRE_POSTGRES=1"):
        skip_or_fail(missing)
