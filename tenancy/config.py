"""Config of the tenancy layer: how callers authenticate, where state is kept."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

from pydantic import Field

from core.config import StrictConfig
from tenancy.quota import Budget, RateLimits


class AuthConfig(StrictConfig):
    """Who may call the API.

    `keys`: every request carries `Authorization: Bearer <key>` (see `switchyard keys`);
    its tenant and tier come from the key, and `x-switchyard-tenant` counts only from a
    gateway key. `off`: anyone who reaches the port is served (the embedded profile, on
    127.0.0.1); the ingress logs that it runs without authentication.
    """

    mode: Literal["keys", "off"] = Field(default="keys", description="`keys` or `off`.")
    key_refresh_s: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="How often the ingress reloads keys: a revoked key works at most "
        "this long after `switchyard keys revoke`.",
    )


class DatabaseConfig(StrictConfig):
    """Where keys, the usage ledger and feedback are kept."""

    url: str | None = Field(
        default=None,
        description="SQLAlchemy URL, e.g. `postgresql+psycopg://user@host/db`. The "
        "environment variable SWITCHYARD_DATABASE_URL wins (keep passwords there); "
        "without either, SQLite in the cache dir.",
    )
    flush_interval_s: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="How often each ingress writes its queued ledger records (one "
        "transaction each time); also the most a crashed replica can lose.",
    )


class FeedbackConfig(StrictConfig):
    """What `POST /v1/feedback` accepts: one verdict per response (a later one replaces
    it; only the first is evidence for the adaptive router), for a while after it."""

    window_s: float = Field(
        default=86400.0,
        gt=0,
        description="Feedback on a response is accepted until this long after the request "
        "arrived; later it is a 409 `feedback_window_closed`. A verdict on an old answer "
        "says little about the pool as it is now.",
    )


class AccountingConfig(StrictConfig):
    """How limits are enforced when the shared quota keeper cannot be asked, and the
    cheap limit on the endpoints that generate nothing."""

    fail_mode: Literal["local", "closed"] = Field(
        default="local",
        description="When the quota keeper (or its database) cannot answer: `local` keeps "
        "enforcing every limit from each ingress replica's own book at `local_share` of "
        "it, spend reconciled once the keeper is back; `closed` refuses requests with "
        "limits (503 accounting_unavailable). Never unlimited.",
    )
    local_share: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Each replica's share of every limit in `local` mode; default: one "
        "over the ingress's (maximum) number of replicas.",
    )
    side_requests_per_minute: int = Field(
        default=600,
        ge=1,
        description="Calls per minute per caller (tenant, or one bucket for all anonymous "
        "callers) to /v1/route, /v1/classify, /v1/metrics, /v1/budget and /v1/feedback, "
        "per ingress replica; more is a 429. These generate nothing and spend no budget.",
    )


class QuotaConfig(StrictConfig):
    """Rate limits and a budget for one account: a tenant, or one API key."""

    limits: RateLimits = Field(
        default_factory=RateLimits,
        description="Requests and tokens per minute, across every ingress replica.",
    )
    budget: Budget = Field(
        default_factory=Budget,
        description="USD per hour/day/month and token quotas; frugal routing from "
        "`frugal_at`, 429 insufficient_quota at the limit.",
    )

    def governs(self) -> bool:
        limits = self.limits
        return bool(
            limits.requests_per_minute
            or limits.tokens_per_minute
            or limits.max_in_flight
            or self.budget.limits()
        )


class TenantConfig(QuotaConfig):
    """One tenant's limits (when unset: its tier's, from `tier_quotas`) and agreements."""

    store_prompts: bool = Field(
        default=False,
        description="Keep this tenant's prompt text in the ledger (router training data). "
        "Off by default: the ledger keeps no request text.",
    )


class Quotas:
    """Which limits apply to a request: its tenant's (or, when the tenant has none, its
    *assigned* tier's, counted per tenant) and its API key's, each an account the keeper
    counts.

    The tier comes from the operator (the key's tier, the tenant's mapping, the default
    tier), never from the request: a tier a request may choose (`selectable`) can only
    narrow the assigned tier's quota, never widen it.
    """

    def __init__(
        self,
        tenants: Mapping[str, TenantConfig],
        tiers: Mapping[str, QuotaConfig],
        keys: Mapping[str, QuotaConfig],
    ) -> None:
        self.tenants, self.tiers, self.keys = dict(tenants), dict(tiers), dict(keys)

    def accounts(
        self,
        tenant: str | None,
        assigned: str | None,
        key_id: str | None,
        chosen: str | None = None,
    ) -> list[tuple[str, QuotaConfig]]:
        found: list[tuple[str, QuotaConfig]] = []
        if tenant is not None:
            own = self.tenants.get(tenant)
            policy = own if own is not None and own.governs() else self.tiers.get(assigned or "")
            narrower = self.tiers.get(chosen or "") if chosen != assigned else None
            if narrower is not None and narrower.governs():
                policy = narrower if policy is None else narrowest(policy, narrower)
            if policy is not None and policy.governs():
                found.append((f"tenant:{tenant}", policy))
        if key_id is not None and key_id in self.keys and self.keys[key_id].governs():
            found.append((f"key:{key_id}", self.keys[key_id]))
        return found


def narrowest(a: QuotaConfig, b: QuotaConfig) -> QuotaConfig:
    """Each limit the tighter of the two (unset = no limit)."""

    def tighter(_: str, x: Any, y: Any) -> Any:
        return y if x is None else x if y is None else min(x, y)

    return field_by_field(a, tighter, b)


def field_by_field(
    a: QuotaConfig, value: Callable[[str, Any, Any], Any], b: QuotaConfig | None = None
) -> QuotaConfig:
    """A policy of `limits` and `budget` built from `a`'s (and `b`'s) fields:
    `value(name, a's value, b's value)` for each."""
    other = b if b is not None else a
    sections = {
        section: {
            name: value(
                name, getattr(getattr(a, section), name), getattr(getattr(other, section), name)
            )
            for name in type(getattr(a, section)).model_fields
        }
        for section in ("limits", "budget")
    }
    return QuotaConfig.model_validate(sections)
