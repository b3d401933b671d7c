"""Client tiers: what a tenant's or a tier's config adds to a request's own wishes.

What is trusted: Switchyard does not authenticate. The tenant id is read from
`x-switchyard-tenant` only when `routing.trust_tenant_header` says a gateway in front sets
that header (and strips it from clients); otherwise the header is refused, because any
client could claim any tenant. A mapped tenant always gets its tier. A request may ask
for a tier only if that tier is `selectable` (none is by default): tiers are limits
chosen by the operator, not options a client picks for itself.
"""

from __future__ import annotations

from dataclasses import replace

from core.errors import TierNotAllowedError, UnknownTierError
from routing.config import RoutingConfig
from routing.planner import Wishes


def tier_of(
    config: RoutingConfig, tenant: str | None, asked: str | None, assigned: str | None = None
) -> str | None:
    """The tier of a request: the caller's API key's (`assigned`), else the tenant's
    mapping, else one the request may choose, else the default tier."""
    mapped = assigned or (config.tenants.get(tenant) if tenant is not None else None)
    if mapped is not None:
        if mapped not in config.tiers:
            raise UnknownTierError(mapped, sorted(config.tiers))
        if asked is not None and asked != mapped:
            raise TierNotAllowedError(
                f"this tenant is on tier {mapped!r} and cannot choose tier {asked[:64]!r}"
            )
        return mapped
    if asked is None:
        return config.default_tier
    if asked not in config.tiers:
        raise UnknownTierError(asked, sorted(config.tiers))
    if not config.tiers[asked].selectable:
        raise TierNotAllowedError(
            f"tier {asked!r} is assigned by the operator, not chosen by a request"
        )
    return asked


def apply_tier(
    config: RoutingConfig,
    wishes: Wishes,
    tenant: str | None,
    asked: str | None,
    assigned: str | None = None,
) -> Wishes:
    """The request's wishes, completed by its tier's defaults and bounded by its limits."""
    name = tier_of(config, tenant, asked, assigned)
    # NOTE: quotas follow the tier the operator gave the caller, not the one it chose.
    wishes = replace(wishes, assigned_tier=tier_of(config, tenant, None, assigned))
    if name is None:
        return wishes
    tier = config.tiers[name]
    caps = [c for c in (wishes.max_cost_usd, tier.max_cost_usd) if c is not None]
    budget_s = tier.latency_budget_ms / 1000 if tier.latency_budget_ms else None
    return replace(
        wishes,
        strategy=wishes.strategy or tier.strategy,
        min_quality=wishes.min_quality if wishes.min_quality is not None else tier.min_quality,
        max_cost_usd=min(caps) if caps else None,
        latency_budget_s=wishes.latency_budget_s or budget_s,
        tier=name,
        pools=frozenset(tier.pools) if tier.pools is not None else None,
    )
