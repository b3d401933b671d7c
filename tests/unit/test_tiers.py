"""Client tiers: merging wishes, tenant mapping, and the pools a tier may use."""

from __future__ import annotations

from typing import Any

import pytest

from core.errors import PoolNotAllowedError, TierNotAllowedError, UnknownTierError
from deployments.config import load_fake_app_config
from deployments.openai.errors import APIError, to_api_error
from deployments.openai.protocol import ChatRequest
from deployments.openai.wishes import RoutingHeaders, wishes
from routing.config import RoutingConfig
from routing.planner import Wishes
from routing.tiers import apply_tier
from tenancy.keys import Caller
from tests.conftest import fake_app_args
from tests.unit.test_serving import body as answer
from tests.unit.test_serving import chat, serving

TIERS: dict[str, Any] = {
    "tiers": {
        "free": {"strategy": "cascade", "max_cost_usd": 0.001, "pools": ["small", "code"]},
        "pro": {"strategy": "speculative", "min_quality": 0.7, "latency_budget_ms": 2000},
        "batch": {"strategy": "cascade", "selectable": True},
    },
    "tenants": {"acme": "pro", "bob": "free"},
    "default_tier": "free",
    "trust_tenant_header": True,
}


def config() -> RoutingConfig:
    return RoutingConfig.model_validate(TIERS)


def test_tier_defaults_fill_what_the_request_leaves_open() -> None:
    got = apply_tier(config(), Wishes(), tenant="acme", asked=None)
    assert got == Wishes(
        strategy="speculative", min_quality=0.7, latency_budget_s=2.0, tier="pro", pools=None,
        assigned_tier="pro",
    )  # fmt: skip
    own = apply_tier(config(), Wishes(strategy="route", min_quality=0.2), "acme", None)
    assert (own.strategy, own.min_quality) == ("route", 0.2)  # the request's wishes win


def test_tier_cost_cap_and_pools_are_limits_not_defaults() -> None:
    got = apply_tier(config(), Wishes(max_cost_usd=1.0), tenant=None, asked=None)
    assert got.max_cost_usd == 0.001  # a request cannot raise its tier's cap
    assert got.pools == frozenset({"small", "code"})
    assert apply_tier(config(), Wishes(max_cost_usd=0.0001), None, None).max_cost_usd == 0.0001


def test_a_mapped_tenant_gets_its_tier_and_cannot_pick_another() -> None:
    assert apply_tier(config(), Wishes(), tenant="bob", asked=None).tier == "free"
    assert apply_tier(config(), Wishes(), tenant="bob", asked="free").tier == "free"
    with pytest.raises(TierNotAllowedError):
        apply_tier(config(), Wishes(), tenant="bob", asked="pro")
    with pytest.raises(TierNotAllowedError):  # even a selectable one
        apply_tier(config(), Wishes(), tenant="acme", asked="batch")
    assert apply_tier(config(), Wishes(), tenant=None, asked=None).tier == "free"  # default
    assert apply_tier(RoutingConfig(), Wishes(), None, None) == Wishes()  # no tiers at all


def test_tiers_are_not_self_service() -> None:
    """Regression: an unmapped client sending `switchyard.tier: pro` got the pro pools."""
    for tenant in (None, "unknown-co"):
        with pytest.raises(TierNotAllowedError):
            apply_tier(config(), Wishes(), tenant=tenant, asked="pro")
        assert apply_tier(config(), Wishes(), tenant, "batch").tier == "batch"  # selectable
    body = ChatRequest.model_validate(
        {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
    )
    with pytest.raises(TierNotAllowedError) as err:
        wishes(body, config(), RoutingHeaders(tier="pro"))
    api = to_api_error(err.value)
    assert (api.status, api.code, api.type) == (403, "tier_not_allowed", "permission_error")


def test_the_tenant_header_is_refused_unless_a_gateway_sets_it() -> None:
    """Regression: any client could claim a mapped tenant in x-switchyard-tenant."""
    body = ChatRequest.model_validate(
        {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
    )
    untrusted = RoutingConfig.model_validate({**TIERS, "tenants": {}, "trust_tenant_header": False})
    with pytest.raises(APIError) as err:
        wishes(body, untrusted, RoutingHeaders(tenant="acme"))
    assert (err.value.status, err.value.param) == (400, "x-switchyard-tenant")
    assert wishes(body, config(), RoutingHeaders(tenant="acme")).tier == "pro"  # behind a gateway
    with pytest.raises(APIError) as err:
        wishes(body, config(), RoutingHeaders(tenant="x" * 65))
    assert err.value.status == 400
    args = {**fake_app_args(), "auth": {"mode": "off"}}
    args["routing"] = {**TIERS, "trust_tenant_header": False}
    with pytest.raises(ValueError, match="trust_tenant_header"):
        load_fake_app_config(args)
    load_fake_app_config({**args, "auth": {"mode": "keys"}})  # keys tell tenants apart


def test_with_api_keys_the_key_says_who_the_tenant_is() -> None:
    body = ChatRequest.model_validate(
        {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
    )
    mapped = Caller(tenant="acme", key_id="k1")
    assert wishes(body, config(), RoutingHeaders(), mapped).tier == "pro"  # tenants: acme
    assigned = Caller(tenant="initech", key_id="k2", tier="batch")
    assert wishes(body, config(), RoutingHeaders(), assigned).tier == "batch"  # the key's
    with pytest.raises(APIError) as err:  # a spoofed tenant is refused, never used
        wishes(body, config(), RoutingHeaders(tenant="acme"), assigned)
    assert (err.value.status, err.value.param) == (400, "x-switchyard-tenant")
    with pytest.raises(TierNotAllowedError):  # a key's tier cannot be swapped per request
        wishes(body, config(), RoutingHeaders(tier="pro"), assigned)
    gateway = Caller(tenant="edge", key_id="g1", role="gateway")
    assert wishes(body, config(), RoutingHeaders(tenant="acme"), gateway).tier == "pro"


def test_unknown_tier_is_a_400() -> None:
    with pytest.raises(UnknownTierError):
        apply_tier(config(), Wishes(), None, "platinum")
    body = ChatRequest.model_validate(
        {
            "model": "auto",
            "messages": [{"role": "user", "content": "hi"}],
            "switchyard": {"tier": "platinum"},
        }
    )
    with pytest.raises(UnknownTierError) as err:
        wishes(body, config(), RoutingHeaders())
    api = to_api_error(err.value)
    assert (api.status, api.param, api.code) == (400, "switchyard.tier", "unknown_tier")


def test_config_rejects_tenants_of_unknown_tiers() -> None:
    with pytest.raises(ValueError, match="unknown tiers"):
        RoutingConfig.model_validate({"tenants": {"acme": "gold"}})


async def test_a_tier_routes_only_to_its_pools() -> None:
    svc, pools = serving()
    free = apply_tier(config(), Wishes(strategy="route"), "bob", None)
    complex_task = chat(text="Compare Rome and Athens in depth.")
    everyone = await svc.generate(complex_task, Wishes(strategy="route"))
    assert answer(everyone)["switchyard"]["pool"] == "large"
    routed = await svc.generate(complex_task, free)
    assert answer(routed)["switchyard"]["pool"] in {"small", "code"}
    assert pools.calls[-1][0] != "large"


async def test_a_cascade_without_its_target_in_the_tier_stays_on_the_cheap_pool() -> None:
    svc, pools = serving(small={"logprobs": [-3.0]})
    free = apply_tier(config(), Wishes(), "bob", None)  # cascade by tier default
    routed = await svc.generate(chat(), free)
    assert answer(routed)["switchyard"]["pool"] == "small"
    assert [p for p, _ in pools.calls] == ["small"]


async def test_pinning_a_pool_outside_the_tier_is_a_403() -> None:
    svc, pools = serving()
    with pytest.raises(PoolNotAllowedError) as err:
        await svc.generate(chat(model="large"), apply_tier(config(), Wishes(), "bob", None))
    api = to_api_error(err.value)
    assert (api.status, api.type, api.code) == (403, "permission_error", "pool_not_allowed")
    assert pools.calls == []
