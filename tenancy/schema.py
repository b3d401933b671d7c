"""The tables: API keys, one ledger record per request, feedback on a response, the
adaptive router's evidence per (route class, pool).

Changing a table means adding an Alembic migration in `tenancy/migrations/versions/`
(a test compares the migrated schema with these models).
"""

from __future__ import annotations

from sqlalchemy import Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

ID_CHARS = 64  # request ids are "chatcmpl-" + 32 hex
NAME_CHARS = 64  # tenants, tiers, pools, models, key names
CONTEXT_CHARS = 128  # a bandit context: a route class, or a class and a tier


class Base(DeclarativeBase):
    pass


class ApiKey(Base):
    """A key's public id and the SHA-256 of its secret; the secret itself is never kept."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    secret_sha256: Mapped[str] = mapped_column(String(64))
    tenant: Mapped[str] = mapped_column(String(NAME_CHARS), index=True)
    tier: Mapped[str | None] = mapped_column(String(NAME_CHARS))
    role: Mapped[str] = mapped_column(String(16), default="tenant")  # or "gateway"
    name: Mapped[str] = mapped_column(String(NAME_CHARS), default="")
    created_at: Mapped[float] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float)


class RequestRecord(Base):
    """One request as it ended: who, what was asked, who served it, what it cost."""

    __tablename__ = "requests"

    id: Mapped[str] = mapped_column(String(ID_CHARS), primary_key=True)
    created_at: Mapped[float] = mapped_column(Float)  # unix time the request arrived
    tenant: Mapped[str | None] = mapped_column(String(NAME_CHARS))
    key_id: Mapped[str | None] = mapped_column(String(16))
    endpoint: Mapped[str] = mapped_column(String(16))  # chat | completions
    model_asked: Mapped[str] = mapped_column(String(256))
    strategy: Mapped[str] = mapped_column(String(16))
    pools_tried: Mapped[str] = mapped_column(String(256), default="")  # comma-separated
    pool: Mapped[str | None] = mapped_column(String(NAME_CHARS))
    model: Mapped[str | None] = mapped_column(String(256))
    reason: Mapped[str | None] = mapped_column(String(32))
    outcome: Mapped[str] = mapped_column(String(16))
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)  # answer + discarded work
    large_cost_usd: Mapped[float] = mapped_column(Float, default=0.0)  # had `large` served
    discarded_tokens: Mapped[int] = mapped_column(Integer, default=0)
    discarded_engine_s: Mapped[float] = mapped_column(Float, default=0.0)
    latency_s: Mapped[float] = mapped_column(Float)
    ttft_s: Mapped[float | None] = mapped_column(Float)
    confidence: Mapped[float | None] = mapped_column(Float)
    # What `confidence` was computed on: "start" (a streaming cascade's first tokens),
    # "answer" (the whole answer); `switchyard calibrate --from-ledger` keeps them apart.
    confidence_on: Mapped[str | None] = mapped_column(String(8))
    escalated: Mapped[int] = mapped_column(Integer, default=0)
    prompt: Mapped[str | None] = mapped_column(Text)  # only for tenants that opt in
    # The adaptive router's context of the request (`routing.bandit`), when it routed it:
    # feedback arriving later is evidence about (route_class, pool).
    route_class: Mapped[str | None] = mapped_column(String(CONTEXT_CHARS))

    __table_args__ = (Index("ix_requests_tenant_created", "tenant", "created_at"),)


class Feedback(Base):
    """A caller's verdict on one of its own responses (router training data): one row per
    response, the latest verdict (`tenancy.ledger.add_feedback` upserts)."""

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(
        String(ID_CHARS), ForeignKey("requests.id", ondelete="CASCADE"), index=True, unique=True
    )
    tenant: Mapped[str | None] = mapped_column(String(NAME_CHARS))
    score: Mapped[float] = mapped_column(Float)
    label: Mapped[str | None] = mapped_column(String(NAME_CHARS))
    comment: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float)  # unix time of the latest verdict
    # Earlier verdicts this one replaced (0: the first). Counted by the upsert itself, so
    # of concurrent verdicts on one response exactly one is the first.
    revisions: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class BanditArm(Base):
    """The adaptive router's evidence on one pool for one context (`routing.bandit`):
    decayed successes and failures as of `updated_at`. `version` makes concurrent
    read-modify-writes from several replicas safe (an update applies only to the version
    it read)."""

    __tablename__ = "bandit_arms"

    context: Mapped[str] = mapped_column(String(CONTEXT_CHARS), primary_key=True)
    pool: Mapped[str] = mapped_column(String(NAME_CHARS), primary_key=True)
    successes: Mapped[float] = mapped_column(Float, default=0.0)
    failures: Mapped[float] = mapped_column(Float, default=0.0)
    updated_at: Mapped[float] = mapped_column(Float)
    version: Mapped[int] = mapped_column(Integer, default=0)
