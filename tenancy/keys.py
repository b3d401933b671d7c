"""API keys: how a caller proves which tenant it is.

A key looks like `sy-<id>-<secret>`: a 12-hex-digit public id (shown by `keys list`,
written to the ledger) and a 43-character random secret. Only the secret's SHA-256 is
stored — for a 256-bit random secret a fast hash is as safe as a slow one, and lets every
request be checked in microseconds — and the check compares digests in constant time.
The whole key is printed once, by `switchyard keys create`, and never logged.

Roles: a `tenant` key acts for its own tenant. A `gateway` key belongs to a trusted
front end that authenticates end users itself; only such a key may name the tenant in
`x-switchyard-tenant`, and the request is then that tenant's if the tenant is known (a
key's or the config's), else the reserved tenant `other` (deployments/openai/wishes.py).

The ingress checks keys against an in-memory `KeyRing` it reloads every few seconds
(`KEY_REFRESH_S`), so a request never waits on the database and a revoked key stops
working within that period.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import secrets
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from routing.config import OTHER_TENANT
from tenancy.schema import NAME_CHARS, ApiKey

PREFIX = "sy-"
ID_HEX = 12
KEY_CHARS = len(PREFIX) + ID_HEX + 1 + 43  # what `new_secret` makes
KEY_REFRESH_S = 5.0
Role = Literal["tenant", "gateway"]


@dataclass(frozen=True)
class Caller:
    """Who a request comes from, once its key checked out."""

    tenant: str
    key_id: str
    tier: str | None = None
    role: Role = "tenant"


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def split_key(key: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed key, else None; constant work for any input."""
    if len(key) != KEY_CHARS or not key.startswith(PREFIX) or key[len(PREFIX) + ID_HEX] != "-":
        return None
    key_id = key[len(PREFIX) : len(PREFIX) + ID_HEX]
    if any(c not in "0123456789abcdef" for c in key_id):
        return None
    return key_id, key[len(PREFIX) + ID_HEX + 1 :]


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (the openai client's form)."""
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


class KeyRing:
    """The keys the ingress accepts, in memory: checked per request, never a DB call."""

    def __init__(self, keys: Iterable[ApiKey] = ()) -> None:
        self._keys: dict[str, tuple[str, Caller]] = {}
        self._tenants: frozenset[str] = frozenset()
        self.replace(keys)

    def replace(self, keys: Iterable[ApiKey]) -> None:
        self._keys = {
            k.id: (k.secret_sha256, Caller(k.tenant, k.id, k.tier, _role(k.role)))
            for k in keys
            if k.revoked_at is None
        }
        self._tenants = frozenset(caller.tenant for _, caller in self._keys.values())

    def __len__(self) -> int:
        return len(self._keys)

    def has_tenant(self, tenant: str) -> bool:
        """Whether some active key belongs to `tenant` (one set lookup, per request)."""
        return tenant in self._tenants

    def check(self, key: str) -> Caller | None:
        """The caller a key belongs to, or None (malformed, unknown, revoked, wrong)."""
        parts = split_key(key)
        if parts is None:
            return None
        key_id, secret = parts
        stored = self._keys.get(key_id)
        # NOTE: hash and compare even for an unknown id, so timing says nothing about ids.
        expected, caller = stored if stored else ("0" * 64, None)
        return caller if hmac.compare_digest(digest(secret), expected) else None


def _role(value: str) -> Role:
    return "gateway" if value == "gateway" else "tenant"


class KeyStore:
    """Keys in the database: what `switchyard keys` and the ingress's reloads use."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def create(
        self, tenant: str, tier: str | None = None, name: str = "", role: Role = "tenant"
    ) -> tuple[str, ApiKey]:
        """A new key: (the whole key, to show once; its stored record)."""
        for label, value in (("tenant", tenant), ("tier", tier or "x"), ("name", name or "x")):
            if not 0 < len(value) <= NAME_CHARS:
                raise ValueError(f"{label} must be 1 to {NAME_CHARS} characters")
        if tenant == OTHER_TENANT:
            raise ValueError(
                f"tenant {OTHER_TENANT!r} is reserved: it holds the requests of tenant names "
                "a gateway sends that no key or config knows"
            )
        key_id, secret = secrets.token_hex(ID_HEX // 2), secrets.token_urlsafe(32)
        record = ApiKey(
            id=key_id, secret_sha256=digest(secret), tenant=tenant, tier=tier, role=role,
            name=name, created_at=time.time(), revoked_at=None,
        )  # fmt: skip
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            session.add(record)
        return f"{PREFIX}{key_id}-{secret}", record

    def all(self) -> list[ApiKey]:
        with Session(self.engine, expire_on_commit=False) as session:
            return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at)))

    def revoke(self, key_id: str) -> bool:
        """False when no active key has this id."""
        with Session(self.engine) as session, session.begin():
            done = session.execute(
                update(ApiKey)
                .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
                .values(revoked_at=time.time())
            )
        return bool(getattr(done, "rowcount", 0))


def main(argv: Sequence[str] | None = None, *, prog: str = "python -m tenancy.keys") -> int:
    from tenancy.db import connect, database_url, migrate, redact

    parser = argparse.ArgumentParser(prog=prog, description="Manage Switchyard API keys.")
    parser.add_argument(
        "--database-url",
        help="SQLAlchemy URL (default: $SWITCHYARD_DATABASE_URL, else the embedded SQLite file)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="create a key; the key is printed once")
    create.add_argument("--tenant", required=True)
    create.add_argument("--tier", help="tier of this key's requests (default: the tenant's)")
    create.add_argument("--name", default="", help="a label, e.g. the app using it")
    create.add_argument("--gateway", action="store_true", help="a trusted gateway's key")
    commands.add_parser("list", help="list keys (ids only; secrets are never stored)")
    revoke = commands.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")
    args = parser.parse_args(argv)

    url = database_url(args.database_url)
    engine = connect(url)
    migrate(engine)
    store = KeyStore(engine)
    if args.command == "create":
        role: Role = "gateway" if args.gateway else "tenant"
        try:
            key, record = store.create(args.tenant, args.tier, args.name, role)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(key)
        print(
            f"key id {record.id} for tenant {record.tenant!r} ({role}) in {redact(url)}; "
            "the key is shown only now",
            file=sys.stderr,
        )
    elif args.command == "list":
        print(f"{'id':12}  {'tenant':16} {'tier':10} {'role':8} {'name':16} state")
        for k in store.all():
            state = "revoked" if k.revoked_at else "active"
            print(f"{k.id:12}  {k.tenant:16} {k.tier or '-':10} {k.role:8} {k.name:16} {state}")
    elif not store.revoke(args.key_id):
        print(f"error: no active key with id {args.key_id!r}", file=sys.stderr)
        return 1
    else:
        print(f"revoked {args.key_id}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
