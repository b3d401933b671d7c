"""Client tiers: what a tenant's or a tier's config adds to a request's own wishes.

Switchyard does not authenticate: put the tenant id in `x-switchyard-tenant` at a
gateway you trust. A tenant mapped to a tier gets that tier whatever the request says;
an unmapped request may name a tier (`switchyard.tier`) or gets `default_tier`.
"""

from __future__ import annotations

from dataclasses import replace

from routing.config import RoutingConfig
from routing.planner import Wishes


class UnknownTierError(ValueError):
    def __init__(self, tier: str, known: list[str]) -> None:
        super().__init__(f"unknown tier {tier!r} (known: {', '.join(known) or 'none'})")


def tier_of(config: RoutingConfig, tenant: str | None, asked: str | None) -> str | None:
    if tenant is not None and tenant in config.tenants:
        return config.tenants[tenant]
    tier = asked or config.default_tier
    if tier is not None and tier not in config.tiers:
        raise UnknownTierError(tier, sorted(config.tiers))
    return tier


def apply_tier(
    config: RoutingConfig, wishes: Wishes, tenant: str | None, asked: str | None
) -> Wishes:
    """The request's wishes, completed by its tier's defaults and bounded by its limits."""
    name = tier_of(config, tenant, asked)
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
