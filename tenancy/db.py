"""Connecting to the state database and bringing its schema up to date.

    SQLite (the embedded default)  a file under the cache dir, WAL journal: readers never
                                   block the ledger writer, nothing to start
    PostgreSQL (clusters)          `postgresql+psycopg://...`, usually from the
                                   environment (`SWITCHYARD_DATABASE_URL`, a secret)

`migrate` runs the Alembic migrations to the newest revision. The app builder calls it
once, before any replica starts, so replicas never race to create tables; on PostgreSQL
an advisory lock serialises migrations from anywhere else (the `keys` CLI, a second app).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text

DATABASE_URL_ENV = "SWITCHYARD_DATABASE_URL"
MIGRATIONS = Path(__file__).parent / "migrations"
_MIGRATION_LOCK = 0x5377_6974  # PostgreSQL advisory lock id ("Swit")


def default_sqlite_path() -> Path:
    from models.prepare import cache_root

    return cache_root() / "state" / "switchyard.db"


def database_url(configured: str | None = None) -> str:
    """The URL to use: the environment wins (secrets stay out of config files), then the
    config's `database.url`, then SQLite under the cache dir."""
    url = os.environ.get(DATABASE_URL_ENV) or configured
    if url:
        return url
    path = default_sqlite_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def redact(url: str) -> str:
    """The URL without its password, for logs."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def connect(url: str) -> Engine:
    """An engine for `url`; SQLite gets WAL, a busy timeout and foreign keys."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")  # durable at checkpoints; WAL-safe
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=4, max_overflow=4)


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision (idempotent)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _MIGRATION_LOCK})
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
