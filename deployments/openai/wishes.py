"""What a client asks of routing: the `switchyard` body field and `x-switchyard-*` headers.

Read once per request into `Wishes` for the planner, completed and bounded by the
client's tier (routing/tiers.py). Headers are hostile input like the body: each is
length-checked, and the tenant header is refused unless a trusted gateway sets it.

Even a trusted gateway's tenant names are bounded: a name counts only when it is known
(`KnownTenants`: configured in `tenants` or `routing.tenants`, or the tenant of an active
key). Any other name becomes the reserved tenant `other` (`routing.config.OTHER_TENANT`,
on the default tier): each tenant is a quota account, a ledger value and a Prometheus
label, so a gateway passing through made-up names must not create one per name.
"""

from __future__ import annotations

from collections.abc import Container, Iterable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header

from deployments.openai.errors import APIError
from deployments.openai.protocol import RoutingFields, SwitchyardOptions
from routing.config import OTHER_TENANT, STRATEGIES, RoutingConfig
from routing.planner import Wishes
from routing.tiers import apply_tier
from tenancy.keys import Caller, KeyRing

HEADER_VALUE_CHARS = 64


class KnownTenants:
    """The tenant names a gateway may name: the config's, and those holding an active key
    (the ingress's `KeyRing`, reloaded in place, so new keys count without a restart)."""

    def __init__(self, configured: Iterable[str], ring: KeyRing | None = None) -> None:
        self.configured = frozenset(configured)
        self.ring = ring

    def __contains__(self, tenant: object) -> bool:
        if not isinstance(tenant, str):
            return False
        return tenant in self.configured or (self.ring is not None and self.ring.has_tenant(tenant))


Hdr = Annotated[str | None, Header()]


@dataclass(frozen=True)
class RoutingHeaders:
    """The `x-switchyard-*` headers of one request (FastAPI reads them, see `Headers`)."""

    strategy: str | None = None
    tenant: str | None = None
    tier: str | None = None


def routing_headers(
    x_switchyard_strategy: Hdr = None,
    x_switchyard_tenant: Hdr = None,
    x_switchyard_tier: Hdr = None,
) -> RoutingHeaders:
    return RoutingHeaders(x_switchyard_strategy, x_switchyard_tenant, x_switchyard_tier)


# The routing headers as one endpoint parameter (they still appear in /openapi.json).
Headers = Annotated[RoutingHeaders, Depends(routing_headers)]


def wishes(
    body: RoutingFields,
    config: RoutingConfig,
    headers: RoutingHeaders,
    caller: Caller | None = None,
    known: Container[str] | None = None,
) -> Wishes:
    """Routing wishes from the `switchyard` body field and the `x-switchyard-*` headers,
    completed by the client's tier (routing/tiers.py says what is trusted).

    With API keys (`caller`), the tenant and its tier come from the key; only a gateway
    key may name the tenant in `x-switchyard-tenant`. Without keys the header counts only
    when `routing.trust_tenant_header` says a gateway sets it. A tenant named in the
    header that is not `known` (default: `routing.tenants`) is `OTHER_TENANT`.
    """
    opts = body.switchyard or SwitchyardOptions()
    strategy_header, tenant, tier_header = headers.strategy, headers.tenant, headers.tier
    strategy = opts.strategy
    if strategy is None and strategy_header:
        if strategy_header not in STRATEGIES:
            raise APIError(
                400,
                f"x-switchyard-strategy must be one of {', '.join(STRATEGIES)}",
                param="x-switchyard-strategy",
            )
        strategy = strategy_header
    assigned = None
    claimed = tenant is not None  # a name from the header, bounded below if it counts
    if caller is not None and caller.role == "gateway":
        tenant = tenant or caller.tenant
    elif caller is not None:
        if tenant is not None and tenant != caller.tenant:
            raise APIError(
                400,
                "x-switchyard-tenant is accepted only from a gateway key: this key's "
                "requests are its own tenant's",
                param="x-switchyard-tenant",
            )
        tenant, assigned, claimed = caller.tenant, caller.tier, False  # the key's own
    elif tenant is not None and not config.trust_tenant_header:
        raise APIError(
            400,
            "x-switchyard-tenant is not accepted from clients here: tenants are set by the "
            "operator's gateway (routing.trust_tenant_header)",
            param="x-switchyard-tenant",
        )
    for name, value in (("x-switchyard-tenant", tenant), ("x-switchyard-tier", tier_header)):
        if value is not None and not 0 < len(value) <= HEADER_VALUE_CHARS:
            raise APIError(400, f"{name} must be 1 to {HEADER_VALUE_CHARS} characters", param=name)
    if claimed and tenant not in (config.tenants if known is None else known):
        tenant = OTHER_TENANT
    asked = Wishes(
        strategy=strategy,
        min_quality=opts.min_quality,
        max_cost_usd=opts.max_cost_usd,
        latency_budget_s=opts.latency_budget_ms / 1000 if opts.latency_budget_ms else None,
        tenant=tenant,
    )
    return apply_tier(config, asked, tenant, opts.tier or tier_header, assigned)
