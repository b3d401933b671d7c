"""Tenant names a gateway sends are bounded: only known tenants count, the rest are `other`.

Every tenant is a quota account, a ledger value and a Prometheus label value, so 10^4
made-up names through a gateway key (or a trusted header) must not make 10^4 of each.
No Ray: Prometheus is a recording stand-in for Ray's metrics.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from deployments import metrics as metrics_module
from deployments.metrics import RequestMetrics
from deployments.openai.errors import APIError
from deployments.openai.protocol import ChatRequest
from deployments.openai.serving import OpenAIServing
from deployments.openai.wishes import KnownTenants, RoutingHeaders, wishes
from routing.config import OTHER_TENANT, RoutingConfig
from tenancy.db import connect, migrate
from tenancy.keys import Caller, KeyRing, KeyStore, digest
from tenancy.schema import ApiKey
from tests.conftest import fake_app, fake_app_args
from tests.support.pools import InProcessPools

NAMES = 10_000
GATEWAY = Caller(tenant="edge", key_id="g1", role="gateway")
BODY = ChatRequest.model_validate(
    {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
)


def key(key_id: str, tenant: str, revoked: bool = False) -> ApiKey:
    return ApiKey(
        id=key_id, secret_sha256=digest("s"), tenant=tenant, tier=None, role="tenant",
        name="", created_at=0.0, revoked_at=1.0 if revoked else None,
    )  # fmt: skip


def app_args(trust_header: bool = False) -> dict[str, Any]:
    args = fake_app_args()
    args["auth"] = {"mode": "off" if trust_header else "keys"}
    args["tenants"] = {"acme": {"store_prompts": False}}  # known from the app config
    args["routing"] = {
        "tiers": {"free": {}, "pro": {}},
        "tenants": {"bob": "pro"},  # known from the tier mapping
        "default_tier": "free",
        "trust_tenant_header": trust_header,
    }
    return args


class Recorded:
    """One Prometheus metric as Ray would get it: every call's tags."""

    def __init__(self) -> None:
        self.tags: list[dict[str, str]] = []

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        self.tags.append(dict(tags or {}))

    observe = set = inc


@pytest.fixture
def exported(monkeypatch: pytest.MonkeyPatch) -> dict[str, Recorded]:
    """What `RequestMetrics` sends to Prometheus, recorded instead of exported."""
    registry: defaultdict[str, Recorded] = defaultdict(Recorded)
    registry["requests"]  # NOTE: non-empty, so RequestMetrics exports
    monkeypatch.setattr(metrics_module, "_ray_metrics", lambda: registry)
    return registry


def tenant_labels(registry: dict[str, Recorded]) -> set[str]:
    return {t["tenant"] for metric in registry.values() for t in metric.tags if "tenant" in t}


def test_ten_thousand_gateway_names_make_at_most_the_known_tenants_and_other() -> None:
    config = fake_app(app_args())[0]
    ring = KeyRing([key("k1", "initech"), key("k2", "gone", revoked=True)])
    known = KnownTenants([*config.tenants, *config.routing.tenants], ring)
    seen = {
        wishes(BODY, config.routing, RoutingHeaders(tenant=f"user-{i}"), GATEWAY, known).tenant
        for i in range(NAMES)
    }
    assert seen == {OTHER_TENANT}
    for name in ("acme", "bob", "initech"):  # app config, tier mapping, an active key
        assert wishes(BODY, config.routing, RoutingHeaders(tenant=name), GATEWAY, known).tenant == (
            name
        )
    named = RoutingHeaders(tenant="gone")  # its only key is revoked
    assert wishes(BODY, config.routing, named, GATEWAY, known).tenant == OTHER_TENANT
    folded = wishes(BODY, config.routing, RoutingHeaders(tenant="user-1"), GATEWAY, known)
    assert folded.tier == "free"  # `other` is on the default tier
    assert wishes(BODY, config.routing, RoutingHeaders(), GATEWAY, known).tenant == "edge"


def test_a_tenant_key_still_cannot_claim_another_tenant() -> None:
    config = fake_app(app_args())[0]
    known = KnownTenants(config.tenants, KeyRing([key("k1", "initech")]))
    own = Caller(tenant="initech", key_id="k1")
    same = RoutingHeaders(tenant="initech")
    assert wishes(BODY, config.routing, same, own, known).tenant == "initech"
    with pytest.raises(APIError) as err:
        wishes(BODY, config.routing, RoutingHeaders(tenant="acme"), own, known)
    assert (err.value.status, err.value.param) == (400, "x-switchyard-tenant")
    with pytest.raises(APIError):  # still too long to be a name at all
        wishes(BODY, config.routing, RoutingHeaders(tenant="x" * 65), GATEWAY, known)


def test_a_trusted_tenant_header_without_keys_is_bounded_the_same_way() -> None:
    config = fake_app(app_args(trust_header=True))[0]
    known = KnownTenants([*config.tenants, *config.routing.tenants])
    seen = {
        wishes(BODY, config.routing, RoutingHeaders(tenant=f"user-{i}"), None, known).tenant
        for i in range(NAMES)
    }
    assert seen == {OTHER_TENANT}
    bob = wishes(BODY, config.routing, RoutingHeaders(tenant="bob"), None, known)
    assert (bob.tenant, bob.tier) == ("bob", "pro")
    # Without a `known` set, the tier mapping is what is known.
    assert wishes(BODY, config.routing, RoutingHeaders(tenant="zed")).tenant == OTHER_TENANT


async def test_prometheus_tenant_labels_stay_bounded(exported: dict[str, Recorded]) -> None:
    config, fake = fake_app(app_args())
    ring = KeyRing([key("k1", "initech")])
    known = KnownTenants([*config.tenants, *config.routing.tenants], ring)
    metrics = RequestMetrics()
    serving = OpenAIServing(config, InProcessPools(config, fake), metrics=metrics)
    names = [f"user-{i}" for i in range(NAMES)] + ["acme", "bob", "initech"]
    for name in names:
        asked = wishes(BODY, config.routing, RoutingHeaders(tenant=name), GATEWAY, known)
        await serving.generate(BODY, asked)
    assert metrics.requests["ok"] == len(names)
    labels = tenant_labels(exported)
    assert labels == {"acme", "bob", "initech", OTHER_TENANT}  # known (3) + 1
    metrics.refused("unauthorized")  # a refusal knows no tenant: the empty label
    assert tenant_labels(exported) == labels | {""}
    assert metrics.counts["refused.unauthorized"] == 1


def test_the_key_ring_knows_its_tenants_after_each_reload() -> None:
    ring = KeyRing([key("k1", "acme")])
    assert ring.has_tenant("acme") and not ring.has_tenant("bob")
    ring.replace([key("k1", "acme", revoked=True), key("k2", "bob")])
    assert not ring.has_tenant("acme") and ring.has_tenant("bob")


def test_other_is_reserved(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="reserved"):
        RoutingConfig.model_validate({"tiers": {"free": {}}, "tenants": {OTHER_TENANT: "free"}})
    engine = connect(f"sqlite:///{tmp_path / 'state.db'}")
    migrate(engine)
    with pytest.raises(ValueError, match="reserved"):
        KeyStore(engine).create(OTHER_TENANT)
