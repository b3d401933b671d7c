"""The bandit on the request path: which requests it routes, what it may change, what it learns."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import pytest

from deployments.openai.adaptive import MIN_EVIDENCE, AdaptiveRouting, Pick
from routing.bandit import Choice, Reward, ThompsonRouter, overlay_key
from routing.config import AdaptiveConfig, RoutingConfig
from routing.planner import Wishes, plan
from routing.profile import RequestProfile
from tests.unit.test_planner import POOL_MODELS, views

CONFIG = RoutingConfig()


class Local:
    """`SharedBandit` without the database: the same router, in memory."""

    def __init__(self, explore_share: float = 0.0) -> None:
        self.router = ThompsonRouter(explore_share=explore_share, half_life_s=1e9)
        self.rng = random.Random(0)

    def choose(
        self,
        context: str,
        eligible: Sequence[str],
        *,
        costs: Mapping[str, float] | None = None,
        frugal: bool = False,
        overlay: str | None = None,
    ) -> Choice:
        return self.router.choose(
            context, eligible, self.rng, costs=costs, frugal=frugal, overlay=overlay
        )

    def observe(self, context: str, pool: str, reward: Reward) -> None:
        self.router.update(context, pool, reward.value, weight=reward.weight)

    def evidence(self, context: str, pool: str, overlay: str | None = None) -> float:
        alpha, beta = self.router.posterior(context, pool, overlay=overlay)
        return alpha + beta - sum(self.router.prior)


def planned(text: str, wishes: Wishes | None = None) -> tuple:  # type: ignore[type-arg]
    pools = views()
    profile = RequestProfile("auto", text, len(text) / 4, {p: 128 for p in POOL_MODELS})
    return plan(profile, pools, POOL_MODELS, CONFIG, wishes), pools


def test_only_covered_auto_requests_have_a_context() -> None:
    adaptive = AdaptiveRouting(AdaptiveConfig(tiers=["pro"], per_tier=True), Local())
    assert adaptive.context("code", "auto", Wishes(tier="pro")) == "code@pro"
    assert adaptive.context("code", "auto", Wishes(tier="free")) is None
    assert adaptive.context("code", "auto", Wishes()) is None  # untiered is off
    assert adaptive.context("code", "small", Wishes(tier="pro")) is None  # pinned


def test_without_evidence_the_policy_pick_stands() -> None:
    adaptive = AdaptiveRouting(AdaptiveConfig(untiered=True), Local())
    decided, pools = planned("Fix my python function")  # rules: code
    kept, pick = adaptive.choose(decided, "code", pools, CONFIG, Wishes())
    assert (kept.pool, pick) == ("code", Pick("code", "code"))  # not the cheapest, `small`


def test_with_evidence_it_moves_the_class_to_the_pool_that_answers_well() -> None:
    bandit = Local()
    adaptive = AdaptiveRouting(AdaptiveConfig(untiered=True), bandit)
    decided, pools = planned("Fix my python function")
    for _ in range(int(MIN_EVIDENCE) + 5):
        adaptive.feedback(Pick("code", "code"), 0.1, tenant=None)
        adaptive.feedback(Pick("code", "large"), 0.95, tenant=None)
    moved, pick = adaptive.choose(decided, "code", pools, CONFIG, Wishes())
    assert (moved.pool, moved.reason, pick.pool) == ("large", "adaptive", "large")
    assert "adaptive" in moved.notes[-1]
    # A tier without `large`: the bandit cannot take it there, whatever it learnt.
    tiered, pools = planned("Fix my python function", Wishes(pools=frozenset({"small", "code"})))
    kept, pick = adaptive.choose(tiered, "code", pools, CONFIG, Wishes())
    assert kept.pool in {"small", "code"} and pick.pool == kept.pool


def test_outcomes_are_evidence_about_the_chosen_pool() -> None:
    bandit = Local()
    adaptive = AdaptiveRouting(AdaptiveConfig(untiered=True), bandit)
    adaptive.finished(Pick("chat", "small"), "error", None)
    adaptive.finished(Pick("chat", "small"), "ok", escalated=True)  # cascade: not good enough
    adaptive.finished(Pick("chat", "small"), "ok", None)  # a plain success says nothing
    adaptive.finished(Pick("chat", "small"), "client_error", None)  # nor a client mistake
    alpha, beta = bandit.router.posterior("chat", "small")
    assert (alpha, beta) == (1.0, pytest.approx(1.0 + 1.0 + 0.5))


def test_a_dry_run_shows_the_best_known_pool_and_spends_no_exploration() -> None:
    bandit = Local(explore_share=0.5)  # a real request may explore every other time
    adaptive = AdaptiveRouting(AdaptiveConfig(untiered=True, explore_share=0.5), bandit)
    decided, pools = planned("Fix my python function")
    for _ in range(200):  # dry runs: never exploring, so never a pool but the policy's
        shown, pick = adaptive.choose(decided, "code", pools, CONFIG, Wishes(), explore=False)
        assert (shown.pool, pick.pool) == ("code", "code")
    assert bandit.router._credit.get("code", 0.0) == 0.0  # and they saved no credit up
    served = [adaptive.choose(decided, "code", pools, CONFIG, Wishes())[0].pool for _ in range(40)]
    assert set(served) != {"code"}  # served requests do explore (no evidence yet: priors)


def test_a_tenants_feedback_moves_its_own_requests_and_nobody_elses() -> None:
    bandit = Local()
    adaptive = AdaptiveRouting(AdaptiveConfig(untiered=True), bandit)
    decided, pools = planned("Fix my python function")  # the policy's pick: `code`
    for _ in range(int(MIN_EVIDENCE) + 5):  # what everyone's traffic showed: `large` is better
        adaptive.finished(Pick("code", "code"), "error", None)
        bandit.observe("code", "large", Reward(1.0))
    shared = bandit.router.snapshot()
    for _ in range(10_000):  # tenant `stuffer` insists that `large` is bad
        adaptive.feedback(Pick("code", "large"), 0.0, tenant="stuffer")
    assert {c for c, _ in bandit.router.snapshot()} == {"code", overlay_key("code", "stuffer")}
    assert all(bandit.router.snapshot()[arm] == stats for arm, stats in shared.items())

    def pool_for(tenant: str | None) -> str:
        return adaptive.choose(decided, "code", pools, CONFIG, Wishes(tenant=tenant))[1].pool

    assert pool_for("victim") == pool_for(None) == "large"  # shared evidence only
    assert pool_for("stuffer") == "code"  # its own verdicts count for its own requests
    assert bandit.evidence("code", "large", overlay_key("code", "stuffer")) == pytest.approx(
        10_000 + MIN_EVIDENCE + 5
    )
    victim = bandit.evidence("code", "large", overlay_key("code", "victim"))
    assert victim == pytest.approx(MIN_EVIDENCE + 5)
