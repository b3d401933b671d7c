"""The adaptive router's policy (routing/bandit.py): posteriors, decay, bounded exploration,
eligibility, the signals, and its config section."""

from __future__ import annotations

import hashlib
import random

import pytest
from pydantic import ValidationError

from routing.bandit import (
    CONTEXT_CHARS,
    EXPLORE_BURST,
    IMPLICIT_WEIGHT,
    SHARED_CONTEXT_CHARS,
    ArmStats,
    Reward,
    ThompsonRouter,
    context_key,
    feedback_reward,
    outcome_reward,
    overlay_key,
)
from routing.config import AdaptiveConfig, RoutingConfig, TierConfig
from tenancy.schema import CONTEXT_CHARS as STORED_CONTEXT_CHARS

POOLS = ["small", "large", "code"]
COSTS = {"small": 0.1, "large": 1.0, "code": 0.6}


def test_context_is_the_route_class_optionally_on_a_tier() -> None:
    assert context_key("code") == "code"
    assert context_key("code", "free") == "code@free"
    with pytest.raises(ValueError):
        context_key("")
    with pytest.raises(ValueError):
        context_key("x" * CONTEXT_CHARS, "free")
    assert STORED_CONTEXT_CHARS == CONTEXT_CHARS  # the table holds any key


def test_evidence_halves_every_half_life_and_merges_in_any_order() -> None:
    stats = ArmStats(8.0, 4.0, at=100.0)
    assert stats.decayed(100.0 + 60.0, 60.0) == ArmStats(4.0, 2.0, 160.0)
    assert stats.decayed(40.0, 60.0) == ArmStats(8.0, 4.0, 100.0)  # a clock behind: no growth
    a, b, c = ArmStats(1.0, 0.0, 10.0), ArmStats(0.0, 2.0, 70.0), ArmStats(3.0, 1.0, 40.0)
    left = a.merged(b, 60.0).merged(c, 60.0)
    right = c.merged(a.merged(b, 60.0), 60.0)
    assert left.at == right.at == 70.0
    assert left.successes == pytest.approx(right.successes)
    assert left.successes == pytest.approx(0.5 + 3.0 * 0.5**0.5)
    assert left.failures == pytest.approx(2.0 + 0.5**0.5)


def test_a_fractional_score_moves_the_posterior_by_its_weight() -> None:
    router = ThompsonRouter(half_life_s=1e9)
    assert router.posterior("chat", "small", now=0.0) == (1.0, 1.0)
    increment = router.update("chat", "small", 0.75, weight=2.0, now=0.0)
    assert increment == ArmStats(1.5, 0.5, 0.0)
    assert router.posterior("chat", "small", now=0.0) == (2.5, 1.5)
    assert router.posterior("code", "small", now=0.0) == (1.0, 1.0)  # contexts are separate
    for bad in (-0.1, 1.1):
        with pytest.raises(ValueError):
            router.update("chat", "small", bad, now=0.0)
    with pytest.raises(ValueError):
        router.update("chat", "small", 0.5, weight=0.0, now=0.0)


def test_old_evidence_fades_back_to_the_prior() -> None:
    router = ThompsonRouter(half_life_s=10.0)
    for _ in range(100):
        router.update("chat", "large", 1.0, now=0.0)
    assert router.mean("chat", "large", now=0.0) > 0.98
    assert router.mean("chat", "large", now=200.0) == pytest.approx(0.5, abs=1e-3)


def test_the_signals() -> None:
    assert feedback_reward(0.8) == Reward(0.8, 1.0)
    assert feedback_reward(7.0) == Reward(1.0, 1.0)
    assert outcome_reward("error") == Reward(0.0, 1.0)
    assert outcome_reward("timeout", escalated=None) == Reward(0.0, 1.0)
    assert outcome_reward("ok", escalated=True) == Reward(0.0, IMPLICIT_WEIGHT)
    assert outcome_reward("ok", escalated=False) == Reward(1.0, IMPLICIT_WEIGHT)
    assert outcome_reward("ok") is None  # served, nobody judged it
    assert outcome_reward("unavailable") is None  # never ran: availability is not quality
    assert outcome_reward("client_error") is None


def learned_router(explore_share: float = 0.1) -> ThompsonRouter:
    """Evidence that `large` is far better on `reasoning`, `small` fine on `chat`."""
    router = ThompsonRouter(half_life_s=1e9, explore_share=explore_share)
    for _ in range(50):
        router.update("reasoning", "large", 1.0, now=0.0)
        router.update("reasoning", "small", 0.0, now=0.0)
        router.update("chat", "small", 1.0, now=0.0)
    return router


def test_it_never_leaves_the_eligible_set() -> None:
    router = learned_router(explore_share=0.5)
    rng = random.Random(7)
    for i in range(3000):
        eligible = rng.sample(POOLS, rng.randint(1, 3))
        context = rng.choice(["reasoning", "chat", "new"])
        choice = router.choose(context, eligible, rng, costs=COSTS, frugal=i % 7 == 0, now=0.0)
        assert choice.pool in eligible
        assert set(choice.scores) == set(eligible)
        router.update(context, choice.pool, rng.random(), now=0.0)
    with pytest.raises(ValueError):
        router.choose("chat", [], rng, now=0.0)


def test_exploits_what_it_learned_within_the_eligible_set() -> None:
    router = learned_router(explore_share=0.0)
    rng = random.Random(1)
    assert router.choose("reasoning", POOLS, rng, now=0.0).pool == "large"
    # A tier without `large`: the best of what is left, never `large`.
    assert router.choose("reasoning", ["small", "code"], rng, now=0.0).pool == "code"
    # Nothing known and no costs: the caller's first pool (its preference) wins ties.
    assert router.choose("new", ["code", "small"], rng, now=0.0).pool == "code"


def test_cost_is_weighed_against_the_dearest_pool_of_the_request() -> None:
    router = ThompsonRouter(cost_weight=0.3, explore_share=0.0)
    choice = router.choose("new", ["small", "code"], random.Random(0), costs=COSTS, now=0.0)
    # Means 0.5 each; penalties 0.3 * cost / 1.0 (large is dearest, though not eligible).
    assert choice == ("small", False, {"small": 0.47, "code": 0.32})


def test_exploration_never_exceeds_its_share_in_any_prefix() -> None:
    share = 0.1
    router = ThompsonRouter(half_life_s=1e9, explore_share=share)
    rng = random.Random(3)
    decisions: dict[str, int] = {}
    explorations: dict[str, int] = {}
    for _ in range(4000):
        context = rng.choice(["a", "b"])
        choice = router.choose(context, POOLS, rng, now=0.0)  # no evidence: samples disagree
        decisions[context] = decisions.get(context, 0) + 1
        explorations[context] = explorations.get(context, 0) + choice.explored
        assert explorations[context] <= share * decisions[context] + 1e-9
        if choice.explored:
            assert choice.pool != router.choose(context, POOLS, rng, frugal=True, now=0.0).pool
    for context in ("a", "b"):
        # Without evidence nearly every sample disagrees with the greedy pool: the cap binds.
        assert explorations[context] >= share * decisions[context] - EXPLORE_BURST - 1


def test_frugal_requests_and_a_zero_share_never_explore() -> None:
    rng = random.Random(5)
    curious = ThompsonRouter(explore_share=0.5)
    cautious = ThompsonRouter(explore_share=0.0)
    for _ in range(500):
        frugal = curious.choose("x", POOLS, rng, costs=COSTS, frugal=True, now=0.0)
        assert frugal == ("small", False, {"small": 0.47, "large": 0.2, "code": 0.32})
        assert not cautious.choose("x", POOLS, rng, costs=COSTS, now=0.0).explored
    # Frugal decisions earned no credit: the first normal one cannot explore yet.
    assert not curious.choose("x", POOLS, rng, costs=COSTS, now=0.0).explored


def test_snapshot_and_replace_carry_the_posterior() -> None:
    router = learned_router()
    copy = ThompsonRouter(half_life_s=1e9)
    copy.replace(router.snapshot())
    for context in ("reasoning", "chat"):
        for pool in POOLS:
            assert copy.posterior(context, pool, 5.0) == router.posterior(context, pool, 5.0)


def test_a_tenants_overlay_is_a_stable_context_of_its_own_within_the_table() -> None:
    digest = hashlib.sha256(b"acme").hexdigest()[:12]
    assert overlay_key("code@pro", "acme") == f"code@pro#{digest}"  # same on every replica
    assert overlay_key("code", "acme") != overlay_key("code", "other")
    longest = context_key("x" * (SHARED_CONTEXT_CHARS - 5), "free")
    assert len(overlay_key(longest, "t" * 64)) == CONTEXT_CHARS  # fits the table
    with pytest.raises(ValueError):  # a context leaves room for an overlay of it
        context_key("x" * (SHARED_CONTEXT_CHARS - 4), "free")


def shares(choices: list[str]) -> dict[str, float]:
    return {p: choices.count(p) / len(choices) for p in POOLS}


def test_one_tenants_feedback_leaves_every_other_tenants_routing_exactly_as_it_was() -> None:
    """10^4 observations in tenant A's overlay: B's posteriors, and B's choices over many
    seeded Thompson draws, are those of a router that never heard of A."""

    def shared_evidence() -> ThompsonRouter:
        router = ThompsonRouter(half_life_s=1e9, explore_share=1.0, cost_weight=0.0)
        for pool, good, bad in (("large", 6, 4), ("small", 5, 5), ("code", 4, 6)):
            for _ in range(good):
                router.update("code", pool, 1.0, now=0.0)
            for _ in range(bad):
                router.update("code", pool, 0.0, now=0.0)
        return router

    untouched, stuffed = shared_evidence(), shared_evidence()
    a, b = overlay_key("code", "a"), overlay_key("code", "b")
    for i in range(10_000):  # A: `large` is awful, `code` is perfect
        stuffed.update(a, "large" if i % 2 else "code", float(i % 2 == 0), now=0.0)
    for pool in POOLS:
        assert stuffed.posterior("code", pool, 1.0, b) == untouched.posterior("code", pool, 1.0, b)
        assert stuffed.mean("code", pool, 1.0, b) == untouched.mean("code", pool, 1.0, b)
    assert (
        stuffed.mean("code", "large", 1.0, a) < 0.01 < 0.99 < stuffed.mean("code", "code", 1.0, a)
    )

    def b_choices(router: ThompsonRouter) -> list[str]:
        rng = random.Random(11)
        return [router.choose("code", POOLS, rng, now=1.0, overlay=b).pool for _ in range(5000)]

    before, after = b_choices(untouched), b_choices(stuffed)
    was, now = shares(before), shares(after)
    assert all(abs(now[p] - was[p]) <= 0.02 for p in POOLS)
    assert after == before  # not merely within 2 points: the very same draws
    assert min(was.values()) > 0.1  # B's own choices do spread over the pools
    rng = random.Random(11)
    a_choices = [stuffed.choose("code", POOLS, rng, now=1.0, overlay=a).pool for _ in range(500)]
    assert shares(a_choices)["code"] > 0.95  # A's overlay does steer A


def test_adaptive_config_is_opt_in_per_tier() -> None:
    off = AdaptiveConfig()
    assert not off.covers(None) and not off.covers("pro")
    on = AdaptiveConfig(tiers=["pro"], untiered=True, explore_share=0.05, half_life_s=60)
    assert on.covers("pro") and on.covers(None) and not on.covers("free")
    router = ThompsonRouter.from_config(on)
    assert (router.explore_share, router.half_life_s, router.cost_weight) == (0.05, 60, 0.3)
    RoutingConfig(tiers={"pro": TierConfig()}, adaptive=on)
    with pytest.raises(ValidationError, match="adaptive.tiers name unknown tiers"):
        RoutingConfig(adaptive=on)
    with pytest.raises(ValidationError):
        AdaptiveConfig(explore_share=0.9)
