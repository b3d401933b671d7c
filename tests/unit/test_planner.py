from __future__ import annotations

from typing import Any

import pytest

from core.errors import PromptError
from routing.choice import ChoicePolicy, PoolQuality, StrongScore
from routing.config import RoutingConfig
from routing.planner import PoolView, Wishes, match_scores, objective, plan
from routing.profile import Refusal, RequestProfile
from routing.rules import RouteDecision

POOL_MODELS = {"small": "tiny", "large": "big", "code": "coder"}
CONFIG = RoutingConfig()


def views(**overrides: dict[str, Any]) -> dict[str, PoolView]:
    base = {
        "small": dict(quality=0.5, cost_per_request=0.0001, expected_latency_s=1.0),
        "large": dict(quality=0.85, cost_per_request=0.001, expected_latency_s=4.0),
        "code": dict(quality=0.8, cost_per_request=0.0008, expected_latency_s=4.0),
    }
    return {
        name: PoolView(name=name, **{**fields, **overrides.get(name, {})})  # type: ignore[arg-type]
        for name, fields in base.items()
    }


def profile(text: str, model: str = "auto", **kw: Any) -> RequestProfile:
    return RequestProfile(model, text, len(text) / 4, {p: 128 for p in POOL_MODELS}, **kw)


def auto(text: str, **kw: Any) -> Any:
    facts = {k: kw.pop(k) for k in ("similarities", "learned", "unservable") if k in kw}
    request = profile(text, kw.pop("model", "auto"), **facts)
    return plan(request, kw.pop("views", views()), POOL_MODELS, kw.pop("config", CONFIG), **kw)


# --- route ---------------------------------------------------------------------


def test_route_plain_question_goes_small_with_scores() -> None:
    decided = auto("What is the capital of France?")
    assert (decided.strategy, decided.pool, decided.reason) == ("route", "small", "default")
    # J = 0.2*lat/4 + 0.3*cost/0.001 - 1.0*quality*match
    assert decided.scores == {"small": pytest.approx(0.05 + 0.03 - 0.5), "large": 0.5, "code": 0.44}
    assert decided.fallbacks == ("large",)


def test_route_rules_win_for_code_and_complex() -> None:
    assert auto("Fix my python function").pool == "code"
    assert auto("Explain why the sky is blue, step by step").pool == "large"


def test_route_semantic_similarity_can_pick_a_pool() -> None:
    sims = {"large": 0.8, "code": 0.1}
    decided = auto("Who wins: Kant or Hume?", similarities=sims)
    assert (decided.pool, decided.reason) == ("large", "semantic")
    assert "0.80" in decided.detail
    weak = auto("Who wins: Kant or Hume?", similarities={"large": 0.3})  # below 0.35
    assert weak.pool == "small"


def test_route_respects_max_cost_and_min_quality() -> None:
    cheap = auto("Explain why the sky is blue, step by step", wishes=Wishes(max_cost_usd=0.0005))
    assert (cheap.pool, cheap.reason) == ("small", "score")
    good = auto("hello", wishes=Wishes(min_quality=0.8))
    assert good.pool in ("large", "code")


def test_route_skips_open_circuit_and_notes_unsatisfiable_constraints() -> None:
    decided = auto("Fix my python function", views=views(code={"available": False}))
    assert decided.pool != "code"
    impossible = auto("hello", wishes=Wishes(max_cost_usd=0.0))
    assert impossible.notes == ("no pool meets the request's constraints; best effort",)


def test_latency_weight_moves_traffic_from_a_slow_pool() -> None:
    slow_code = views(code={"expected_latency_s": 400.0})
    config = RoutingConfig.model_validate({"scoring": {"alpha_latency": 2.0}})
    decided = auto("Fix my python function", views=slow_code, config=config)
    assert decided.pool != "code"


def test_pinned_model_ignores_strategy() -> None:
    decided = auto("hi", model="coder", wishes=Wishes(strategy="cascade"))
    assert (decided.strategy, decided.pool, decided.reason) == ("route", "code", "pinned_model")
    assert decided.notes == ("strategy ignored: the request pins a pool",)
    assert decided.fallbacks == ("large",)


# --- cascade / speculative -----------------------------------------------------------


@pytest.mark.parametrize("strategy", ["cascade", "speculative"])
def test_escalating_plans_pick_target_by_rules(strategy: str) -> None:
    general = auto("What is love?", wishes=Wishes(strategy=strategy))  # type: ignore[arg-type]
    assert (general.strategy, general.pool, general.target) == (strategy, "small", "large")
    assert general.rule is not None and general.rule.method == "mean_logprob"
    code = auto("Write a bash script", wishes=Wishes(strategy=strategy))  # type: ignore[arg-type]
    assert (code.pool, code.target) == ("small", "code")


def test_per_pair_confidence_rule_from_config() -> None:
    config = RoutingConfig.model_validate(
        {
            "default_strategy": "cascade",
            "cascade": {
                "rules": [
                    {"source": "small", "target": "code", "method": "quantile", "threshold": -2}
                ]
            },
        }
    )
    decided = auto("Write a bash script", config=config)
    assert decided.rule is not None
    assert (decided.rule.method, decided.rule.threshold) == ("quantile", -2)
    assert auto("hi", config=config).rule.method == "mean_logprob"  # type: ignore[union-attr]


def test_speculation_downgrades_when_target_saturated() -> None:
    decided = auto(
        "hi", views=views(large={"saturated": True}), wishes=Wishes(strategy="speculative")
    )
    assert decided.strategy == "cascade"
    assert decided.notes == ("speculation downgraded to cascade: pool 'large' is saturated",)


def test_cascade_goes_direct_when_source_down_or_below_min_quality() -> None:
    down = auto("hi", views=views(small={"available": False}), wishes=Wishes(strategy="cascade"))
    assert (down.strategy, down.pool) == ("route", "large")
    picky = auto("hi", wishes=Wishes(strategy="cascade", min_quality=0.7))
    assert (picky.strategy, picky.pool) == ("route", "large")
    frugal = auto("hi", wishes=Wishes(strategy="cascade", max_cost_usd=0.0005))
    assert (frugal.strategy, frugal.pool) == ("route", "small")


def test_match_scores() -> None:
    rule_hit = RouteDecision("code", "code_markers", "")
    assert match_scores(rule_hit, ["small", "code"], {}, "small", 0.35) == {
        "small": 0.0,
        "code": 1.0,
    }
    default = RouteDecision("small", "default", "")
    fit = match_scores(default, ["small", "large"], {"large": 0.6}, "small", 0.35)
    assert fit == {"small": pytest.approx(0.4), "large": 0.6}


def test_objective_normalises_latency_and_cost() -> None:
    v = views()
    j = objective(v, {"small": 1.0, "large": 0.0, "code": 0.0}, CONFIG)
    assert j["large"] == pytest.approx(0.2 * 1 + 0.3 * 1)


def test_learned_router_sends_hard_requests_to_strong_pool() -> None:
    config = RoutingConfig.model_validate({"learned": {"path": "router.json"}})
    hard = auto("Is it true?", config=config, learned=StrongScore(0.8, 0.69, "large"))
    assert (hard.pool, hard.reason) == ("large", "learned")
    assert "0.80 >= 0.69" in hard.detail
    easy = auto("Is it true?", config=config, learned=StrongScore(0.2, 0.69, "large"))
    assert (easy.pool, easy.reason) == ("small", "default")
    code = auto("fix my python", config=config, learned=StrongScore(0.9, 0.69, "large"))
    assert code.pool == "code"  # rules come first


def pool_quality(rule: str = "quality_target", value: float = 0.6, **quality: float) -> Any:
    costs = {"small": 0.0001, "code": 0.0002, "large": 0.001}
    return PoolQuality(quality, {p: costs[p] for p in quality}, ChoicePolicy(rule, value))  # type: ignore[arg-type]


def test_an_n_pool_router_picks_any_pool_and_only_eligible_ones() -> None:
    reading = pool_quality(small=0.3, code=0.7, large=0.9)
    decided = auto("Is it true?", learned=reading)
    # the cheapest pool reaching 0.6 is code, which no rule and no binary router can pick
    assert (decided.pool, decided.reason) == ("code", "learned")
    assert "P(correct) small 0.30, code 0.70, large 0.90" in decided.detail
    # a tier without code: the router chooses among what the tier allows
    tier = auto("Is it true?", learned=reading, wishes=Wishes(pools=frozenset({"small", "large"})))
    assert (tier.pool, tier.reason) == ("large", "learned")
    # code's circuit is open: large, never the pool that is down
    down = auto("Is it true?", learned=reading, views=views(code=dict(available=False)))
    assert (down.pool, down.reason) == ("large", "learned")
    # small reaches the target: the cheapest pool, and the rules still come first
    easy = auto("Is it true?", learned=pool_quality(small=0.8, code=0.9, large=0.95))
    assert (easy.pool, easy.reason) == ("small", "default")
    assert auto("Explain why, step by step", learned=reading).reason == "complex_task"


def test_an_n_pool_router_chooses_the_cascade_escalation_target() -> None:
    # small first; the router says code is the cheapest pool that gets this right
    reading = pool_quality(small=0.2, code=0.65, large=0.7)
    decided = auto("Is it true?", learned=reading, wishes=Wishes(strategy="cascade"))
    assert (decided.strategy, decided.pool, decided.target) == ("cascade", "small", "code")
    assert "target chosen by the learned router" in decided.detail
    # tradeoff: with cost nearly free, the best quality (large) is the target
    best = pool_quality("tradeoff", 0.001, small=0.2, code=0.65, large=0.7)
    spec = auto("Is it true?", learned=best, wishes=Wishes(strategy="speculative"))
    assert (spec.strategy, spec.pool, spec.target) == ("speculative", "small", "large")
    # the target is never the source, nor a pool the tier leaves out
    tier = Wishes(strategy="cascade", pools=frozenset({"small", "large"}))
    assert auto("Is it true?", learned=reading, wishes=tier).target == "large"


# --- what decided, and pools that cannot serve -------------------------------------

LOW_QUALITY_WEIGHT = RoutingConfig.model_validate({"scoring": {"gamma_quality": 0.1}})


def test_a_pool_without_semantic_examples_can_win_on_score() -> None:
    # Only `code` has examples; `small` is down and `code` is dear: `large` wins on J.
    # This was a KeyError (a 500): the label read the winner's similarity.
    v = views(small=dict(available=False), code=dict(cost_per_request=0.01))
    decided = auto("hello", views=v, similarities={"code": 0.9}, config=LOW_QUALITY_WEIGHT)
    assert (decided.pool, decided.reason) == ("large", "score")


def test_semantic_label_only_when_the_most_similar_pool_wins() -> None:
    v = views(small=dict(available=False), code=dict(cost_per_request=0.01))
    similar = {"code": 0.9, "large": 0.4}
    decided = auto("hello", views=v, similarities=similar, config=LOW_QUALITY_WEIGHT)
    assert (decided.pool, decided.reason) == ("large", "score")  # cost decided, not the match
    cheap_code = views(small=dict(available=False))
    decided = auto("hello", views=cheap_code, similarities=similar, config=LOW_QUALITY_WEIGHT)
    assert (decided.pool, decided.reason) == ("code", "semantic")


def test_pools_that_cannot_serve_are_never_chosen_nor_fallbacks() -> None:
    too_long = {"small": Refusal("max_tokens", "max_tokens=100 exceeds the limit of 64")}
    decided = auto("hello", unservable=too_long)
    assert (decided.pool, decided.reason) == ("code", "score")  # lowest J of the others
    assert "small" not in decided.scores and "small" not in decided.fallbacks
    cascade = auto("hello", unservable=too_long, wishes=Wishes(strategy="cascade"))
    assert (cascade.strategy, cascade.pool) == ("route", "code")  # no cheap pool to try
    assert any("'small'" in note for note in cascade.notes)


def test_a_pinned_pool_that_cannot_serve_is_a_400_naming_the_field() -> None:
    refusal = {"small": Refusal("max_tokens", "max_tokens=100 exceeds the limit of 64")}
    with pytest.raises(PromptError) as err:
        auto("hello", model="small", unservable=refusal)
    assert (err.value.param, err.value.message) == ("max_tokens", refusal["small"].message)
    everyone = {p: Refusal("model", f"{p} is completion-only") for p in POOL_MODELS}
    with pytest.raises(PromptError, match="small is completion-only"):
        auto("hello", unservable=everyone)  # the pool the rules chose says why


# --- the adaptive router's pick -----------------------------------------------------


def test_route_plans_list_their_candidates_best_first() -> None:
    decided = auto("What is the capital of France?")
    assert decided.candidates[0] == decided.pool == "small"
    assert set(decided.candidates) == {"small", "large", "code"}
    tiered = auto("What is the capital of France?", wishes=Wishes(pools=frozenset({"small"})))
    assert tiered.candidates == ("small",)
    cascade = auto("What is the capital of France?", wishes=Wishes(strategy="cascade"))
    assert cascade.candidates == ()  # nothing to reorder: the cascade decides its pools


def test_adapt_takes_only_a_candidate_and_recomputes_fallbacks() -> None:
    from routing.planner import adapt

    pools = views()
    decided = auto("What is the capital of France?", views=pools)
    moved = adapt(decided, "large", pools, CONFIG, "bandit: explored")
    assert (moved.pool, moved.reason, moved.notes[-1]) == ("large", "adaptive", "bandit: explored")
    assert "small" in moved.detail and moved.fallbacks == tuple(
        p for p in CONFIG.fallback.chains.get("large", []) if p != "large"
    )
    tiered = auto(
        "What is the capital of France?", views=pools, wishes=Wishes(pools=frozenset({"small"}))
    )
    assert adapt(tiered, "large", pools, CONFIG, "x") == tiered  # outside the tier: refused


def test_cascade_and_speculation_fit_max_cost_with_both_pools() -> None:
    """Issue 20, finding 12: the cap checked only the target ($0.033 under a $0.03 cap);
    a cascade may pay for both pools, a speculation always does."""
    for strategy in ("cascade", "speculative"):
        both = auto("hi", wishes=Wishes(strategy=strategy, max_cost_usd=0.0011))  # type: ignore[arg-type]
        assert (both.strategy, both.pool) == (strategy, "small")
        tight = auto("hi", wishes=Wishes(strategy=strategy, max_cost_usd=0.00105))  # type: ignore[arg-type]
        assert (tight.strategy, tight.pool) == ("route", "small")
        assert "exceed max_cost_usd" in tight.notes[0]


# --- verify and ensemble --------------------------------------------------------------


def test_verify_plans_the_judge_the_target_and_the_bill_chains() -> None:
    decided = auto("What is the capital of France?", wishes=Wishes(strategy="verify"))
    assert (decided.strategy, decided.pool, decided.target, decided.judge) == (
        "verify", "small", "large", "small",
    )  # fmt: skip
    assert "judged by 'small'" in decided.detail
    assert decided.answer_chains() == (("small", "large"), ("large", "small"))
    judged = RoutingConfig.model_validate({"verifier": {"judge_pool": "code"}})
    assert auto("Hi", wishes=Wishes(strategy="verify"), config=judged).judge == "code"
    # a judge outside the request's tier: the cheap pool judges itself
    tier = Wishes(strategy="verify", pools=frozenset({"small", "large"}))
    assert auto("Hi", wishes=tier, config=judged).judge == "small"


def test_verify_counts_the_judge_against_max_cost() -> None:
    # small 0.0001 + large 0.001 fit 0.00115; with the judge (small again) they do not
    wishes = Wishes(strategy="verify", max_cost_usd=0.00115)
    decided = auto("Hi", wishes=wishes)
    assert (decided.strategy, decided.pool) == ("route", "small")
    assert "exceed max_cost_usd" in decided.notes[0]
    cascade = auto("Hi", wishes=Wishes(strategy="cascade", max_cost_usd=0.00115))
    assert cascade.strategy == "cascade"


def test_ensemble_plans_its_available_members() -> None:
    config = RoutingConfig.model_validate({"ensemble": {"members": ["small", "large", "code"]}})
    decided = auto("Hi", wishes=Wishes(strategy="ensemble"), config=config)
    assert (decided.strategy, decided.members, decided.pool) == (
        "ensemble", ("small", "large", "code"), "small",
    )  # fmt: skip
    assert decided.answer_chains() == (("small",), ("large",), ("code",))
    down = views(large={"available": False})
    decided = auto("Hi", wishes=Wishes(strategy="ensemble"), config=config, views=down)
    assert decided.members == ("small", "code")
    tier = Wishes(strategy="ensemble", pools=frozenset({"small"}))
    decided = auto("Hi", wishes=tier, config=config)
    assert (decided.strategy, decided.pool) == ("route", "small")
    assert "fewer than 2" in decided.notes[-1]
    cheap = Wishes(strategy="ensemble", max_cost_usd=0.001)
    decided = auto("Hi", wishes=cheap, config=config)
    assert decided.strategy == "route" and "exceed max_cost_usd" in decided.notes[-1]
