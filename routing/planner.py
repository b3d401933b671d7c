"""The routing policy: a request's profile + pool stats in, a `Plan` out.

The only policy module. Pure (no Ray, no vLLM, no I/O): the ingress measures
everything first (the `RequestProfile`: text, tokens, the classifiers' readings; live
pool stats, circuit states) and this module only decides. The plan says which strategy
runs, on which pools, with which confidence rule and fallback chain, and records every
reason so the response can explain it.

    route        one pool: rules and the semantic classifier say which pools fit the
                 request; the multi-objective score J picks among those that meet the
                 request's constraints
    cascade      the cheap pool first; escalate when its confidence is low
    speculative  cheap and strong pool at once; keep the cheap answer when confident
    verify       the cheap pool first; a judge pool grades its answer; escalate when the
                 judge rejects it
    ensemble     several pools (or samples) at once; a vote or confidence picks one
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from core.errors import PoolNotAllowedError, PromptError, UnknownModelError
from routing.config import ConfidenceRule, RoutingConfig, Strategy
from routing.profile import RequestProfile
from routing.rules import RouteDecision, decide, extract_features

AUTO_MODEL = "auto"  # the `model` that lets Switchyard choose


def pinned_pool(model: str, pool_models: Mapping[str, str]) -> RouteDecision:
    """The pool a request names: a pool name, or a model id (its first pool in config order)."""
    if model in pool_models:
        return RouteDecision(model, "pinned_pool", f"client asked for pool {model!r}")
    for pool, served in pool_models.items():
        if served == model:
            return RouteDecision(pool, "pinned_model", f"client asked for model {model!r}")
    known = [AUTO_MODEL, *pool_models, *dict.fromkeys(pool_models.values())]
    raise UnknownModelError(model, known)


@dataclass(frozen=True)
class PoolView:
    """What the policy knows about one pool right now."""

    name: str
    quality: float  # prior answer quality, 0..1, from config
    cost_per_request: float  # USD, estimated for this request's prompt and max_tokens
    expected_latency_s: float  # from live stats
    saturated: bool = False  # no free slot: queueing more would only add latency
    available: bool = True  # circuit closed (or half-open trial allowed)


@dataclass(frozen=True)
class Wishes:
    """What a client asked for in the `switchyard` request extension."""

    strategy: Strategy | None = None
    min_quality: float | None = None
    max_cost_usd: float | None = None
    latency_budget_s: float | None = None
    tier: str | None = None
    assigned_tier: str | None = None  # the operator's tier for the caller (quotas read it)
    pools: frozenset[str] | None = None  # the tier's pools; None = all
    tenant: str | None = None  # who asks (an API key's tenant, or a trusted gateway's)
    frugal: str | None = None  # why routing must save (a budget near its limit), if it must


@dataclass(frozen=True)
class Plan:
    strategy: Strategy
    pool: str  # the pool that runs first (for cascade/speculative: the cheap one)
    reason: str
    detail: str
    target: str | None = None  # escalation pool of cascade/speculative
    rule: ConfidenceRule | None = None
    fallbacks: tuple[str, ...] = ()
    target_fallbacks: tuple[str, ...] = ()  # after the escalation target fails
    scores: dict[str, float] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    downgrade: tuple[str, str] | None = None  # (strategy asked for, reason) when downgraded
    max_tokens: Mapping[str, int] = field(default_factory=dict)  # per pool, from the profile
    # `route` only: the pools that meet the request's constraints, best J first; the
    # adaptive router (routing.bandit) may choose another of these, never anything else.
    candidates: tuple[str, ...] = ()
    judge: str | None = None  # `verify`, `ensemble` picked by judge: who grades answers
    members: tuple[str, ...] = ()  # `ensemble`: one answer per entry, all at once

    def answer_chains(self) -> tuple[tuple[str, ...], ...]:
        """The chains of pools that may answer: at most one pool of each chain runs, and
        the chains add up (for the bill's worst case; a judge's call is not an answer)."""
        if self.strategy == "ensemble":
            return tuple((m,) for m in self.members)
        first = (self.pool, *self.fallbacks)
        if self.strategy == "route" or self.target is None:
            return (first,)
        return (first, (self.target, *self.target_fallbacks))


def match_scores(
    decision: RouteDecision,
    pools: Sequence[str],
    similarities: Mapping[str, float],
    default_pool: str,
    min_similarity: float,
) -> dict[str, float]:
    """How well each pool fits the request, 0..1.

    A rule hit is certain (1.0). Otherwise a pool's fit is its semantic similarity
    (when above `min_similarity`), and the default pool keeps what the others leave.
    """
    if decision.reason not in ("default",) and decision.pool in pools:
        return {p: 1.0 if p == decision.pool else 0.0 for p in pools}
    fit = {
        p: (s if (s := similarities.get(p, 0.0)) >= min_similarity else 0.0)
        for p in pools
        if p != default_pool
    }
    fit[default_pool] = 1.0 - max(fit.values(), default=0.0)
    return {p: max(0.0, fit.get(p, 0.0)) for p in pools}


def objective(
    views: Mapping[str, PoolView], match: Mapping[str, float], config: RoutingConfig
) -> dict[str, float]:
    """J(p) = alpha*latency + beta*cost - gamma*quality*match; lower is better."""
    w = config.scoring
    max_latency = max((v.expected_latency_s for v in views.values()), default=0.0) or 1.0
    max_cost = max((v.cost_per_request for v in views.values()), default=0.0) or 1.0
    return {
        name: round(
            w.alpha_latency * v.expected_latency_s / max_latency
            + w.beta_cost * v.cost_per_request / max_cost
            - w.gamma_quality * v.quality * match.get(name, 0.0),
            4,
        )
        for name, v in views.items()
    }


def _meets(view: PoolView, wishes: Wishes) -> bool:
    return (
        view.available
        and (wishes.min_quality is None or view.quality >= wishes.min_quality)
        and (wishes.max_cost_usd is None or view.cost_per_request <= wishes.max_cost_usd)
        and (wishes.latency_budget_s is None or view.expected_latency_s <= wishes.latency_budget_s)
    )


def _fallbacks(first: str, views: Mapping[str, PoolView], config: RoutingConfig) -> tuple[str, ...]:
    chain = config.fallback.chains.get(first, [])
    return tuple(p for p in dict.fromkeys(chain) if p in views and p != first)


def plan(
    profile: RequestProfile,
    views: Mapping[str, PoolView],
    pool_models: Mapping[str, str],
    config: RoutingConfig,
    wishes: Wishes | None = None,
) -> Plan:
    """Decide how one request is served.

    Only pools the request may use (its tier) and that can serve it (the profile) are
    candidates, for the first pool, escalation and fallbacks alike.
    """
    wishes = wishes or Wishes()
    allowed = {n: v for n, v in views.items() if wishes.pools is None or n in wishes.pools}
    views = {n: v for n, v in allowed.items() if profile.servable(n)}
    if profile.model != AUTO_MODEL:
        pinned = pinned_pool(profile.model, pool_models)
        if pinned.pool not in allowed:
            raise PoolNotAllowedError(pinned.pool, wishes.tier)
        _require_servable(profile, pinned.pool)
        notes = ("strategy ignored: the request pins a pool",) if wishes.strategy else ()
        decided = Plan(
            "route", pinned.pool, pinned.reason, pinned.detail,
            fallbacks=_fallbacks(pinned.pool, views, config), notes=notes,
        )  # fmt: skip
        return replace(decided, max_tokens=profile.max_tokens)
    rules = config.rules
    decision = decide(extract_features(profile.text, rules), rules)
    if profile.learned is not None and decision.reason == "default":
        # NOTE: rules first; the learned router chooses among the pools this request may
        # use and that are up, so it never names one the plan would then have to drop.
        picked = profile.learned.choose([p for p, v in views.items() if v.available])
        if picked is not None and picked != decision.pool:
            decision = RouteDecision(picked, "learned", profile.learned.describe())
    if decision.pool not in views:
        # NOTE: a profile may leave a pool out (no code pool), a tier may forbid it, or it
        # cannot serve this request: the rule still explains what it saw.
        why = f"pool {decision.pool!r} is not available to this request"
        decision = RouteDecision(rules.default_pool, decision.reason, f"{decision.detail}; {why}")
    if decision.pool not in views:
        if not views:
            _require_servable(profile, decision.pool)
        decision = RouteDecision(next(iter(views)), decision.reason, decision.detail)
    strategy = wishes.strategy or config.default_strategy
    if wishes.frugal is not None:
        return _frugal(strategy, decision, views, config, wishes, profile)
    if strategy == "route":
        decided = _route(decision, views, config, wishes, profile.similarities)
    elif strategy == "ensemble":
        decided = _ensemble(decision, views, config, wishes, profile)
    else:
        decided = _escalating(strategy, decision, views, config, wishes, profile)
    return replace(decided, max_tokens=profile.max_tokens)


FRUGAL_COST_FACTOR = 3.0  # how much more cost weighs in J for a tenant near its budget


def _frugal(
    strategy: Strategy,
    decision: RouteDecision,
    views: Mapping[str, PoolView],
    config: RoutingConfig,
    wishes: Wishes,
    profile: RequestProfile,
) -> Plan:
    """A tenant near its budget: one pool, no speculation or escalation, cost weighs more."""
    scoring = config.scoring.model_copy(
        update={"beta_cost": config.scoring.beta_cost * FRUGAL_COST_FACTOR}
    )
    cheaper = config.model_copy(update={"scoring": scoring})
    decided = _route(decision, views, cheaper, wishes, profile.similarities)
    note = f"{wishes.frugal}: frugal routing, cost weighs {FRUGAL_COST_FACTOR:g}x"
    if strategy != "route":
        note += f", {strategy} skipped"
    downgrade = (strategy, "budget") if strategy != "route" else None
    return replace(
        decided, notes=(*decided.notes, note), downgrade=downgrade, max_tokens=profile.max_tokens
    )


def _require_servable(profile: RequestProfile, pool: str) -> None:
    refusal = profile.unservable.get(pool)
    if refusal is not None:
        raise PromptError(refusal.message, param=refusal.param, code=refusal.code)


def _route(
    decision: RouteDecision,
    views: Mapping[str, PoolView],
    config: RoutingConfig,
    wishes: Wishes,
    similarities: Mapping[str, float],
) -> Plan:
    match = match_scores(
        decision,
        list(views),
        similarities,
        config.rules.default_pool,
        config.semantic.min_similarity,
    )
    scores = objective(views, match, config)
    notes: tuple[str, ...] = ()
    candidates = [p for p in views if _meets(views[p], wishes)]
    if not candidates:
        candidates = [p for p in views if views[p].available] or list(views)
        notes = ("no pool meets the request's constraints; best effort",)
    best = min(candidates, key=lambda p: (scores[p], p != decision.pool))
    if best == decision.pool:
        reason, detail = decision.reason, decision.detail
    else:
        reason = "score"
        detail = f"lowest J among eligible pools (rules said {decision.pool!r}: {decision.detail})"
    # NOTE: "semantic" only when the classifier decided: the chosen pool is the one the
    # request is most similar to; when cost or latency outweighed the match it is "score".
    most_similar = max(candidates, key=lambda p: match.get(p, 0.0))
    if decision.reason == "default" and best == most_similar and best in similarities:
        if best != config.rules.default_pool and match.get(best, 0.0) > 0:
            reason, detail = "semantic", f"similar to {best!r} examples ({similarities[best]:.2f})"
    ranked = sorted(candidates, key=lambda p: (p != best, scores[p]))
    return Plan(
        "route", best, reason, detail,
        fallbacks=_fallbacks(best, views, config), scores=scores, notes=notes,
        candidates=tuple(ranked),
    )  # fmt: skip


def adapt(
    decided: Plan, pool: str, views: Mapping[str, PoolView], config: RoutingConfig, note: str
) -> Plan:
    """The plan with the adaptive router's pick (one of `decided.candidates`) as its pool.

    The bandit only reorders what the policy allowed: a pool outside the candidates (its
    tier, servability, constraints) is refused here too, whatever the caller passes.
    """
    if pool == decided.pool or decided.strategy != "route" or pool not in decided.candidates:
        return decided
    detail = f"learned from feedback; the policy's pick was {decided.pool!r} ({decided.detail})"
    return replace(
        decided, pool=pool, reason="adaptive", detail=detail,
        fallbacks=_fallbacks(pool, views, config), notes=(*decided.notes, note),
    )  # fmt: skip


def _ensemble(
    decision: RouteDecision,
    views: Mapping[str, PoolView],
    config: RoutingConfig,
    wishes: Wishes,
    profile: RequestProfile,
) -> Plan:
    """The configured members this request may use and that are up; fewer than two is
    no ensemble: the request is routed."""
    members = tuple(m for m in config.ensemble.members if m in views and views[m].available)
    judge = None
    if config.ensemble.pick == "judge" and members:
        wanted = config.verifier.judge_pool or members[0]
        judge = wanted if wanted in views and views[wanted].available else members[0]
    skipped = ""
    if len(members) < 2:
        skipped = "ensemble skipped: fewer than 2 of its members are available to this request"
    elif wishes.max_cost_usd is not None and (
        sum(views[m].cost_per_request for m in members)
        + (len(members) * views[judge].cost_per_request if judge else 0.0)
        > wishes.max_cost_usd
    ):
        skipped = "ensemble skipped: its members together exceed max_cost_usd"
    if skipped:
        routed = _route(decision, views, config, wishes, profile.similarities)
        return replace(routed, notes=(*routed.notes, skipped))
    detail = f"{len(members)} answers ({', '.join(members)}), picked by {config.ensemble.pick}"
    if judge is not None:
        detail = f"{detail} ({judge!r} grades each distinct answer)"
    return Plan(
        "ensemble", members[0], decision.reason, detail, members=members,
        fallbacks=_fallbacks(members[0], views, config), judge=judge,
    )  # fmt: skip


def _escalating(
    strategy: Strategy,
    decision: RouteDecision,
    views: Mapping[str, PoolView],
    config: RoutingConfig,
    wishes: Wishes,
    profile: RequestProfile,
) -> Plan:
    rules = config.rules
    source = config.cascade.source_pool
    if source not in views:  # the tier does not include the cheap pool
        routed = _route(decision, views, config, wishes, {})
        note = f"{strategy} skipped: pool {source!r} is not in tier {wishes.tier!r}"
        return replace(routed, notes=(*routed.notes, note))
    wanted = rules.code_pool if decision.reason == "code_markers" else rules.large_pool
    chooser = ""
    if profile.learned is not None and decision.reason in ("default", "learned"):
        # The learned router picks where to escalate, among the pools above the source.
        above = [p for p, v in views.items() if p != source and v.available]
        picked = profile.learned.choose(above)
        if picked is not None:
            wanted, chooser = picked, f"; target chosen by the {profile.learned.describe()}"
    target = wanted if wanted in views and wanted != source else None
    detail = f"{source!r} first, escalating to {target!r} ({decision.reason}){chooser}"

    def direct(pool: str, note: str) -> Plan:
        return Plan(
            "route", pool, decision.reason, decision.detail,
            fallbacks=_fallbacks(pool, views, config), notes=(note,),
        )  # fmt: skip

    if target is None:
        return direct(source, f"{strategy} needs a pool to escalate to; none configured")
    if source not in views or not views[source].available:
        return direct(target, f"{strategy} skipped: pool {source!r} is unavailable")
    if wishes.min_quality is not None and views[source].quality < wishes.min_quality:
        return direct(target, f"{strategy} skipped: {source!r} is below min_quality")
    judge = None
    if strategy == "verify":
        wanted_judge = config.verifier.judge_pool or source
        judge = wanted_judge if wanted_judge in views else source
        detail = f"{detail}; judged by {judge!r}"
    # NOTE: a cascade may pay for both pools, a speculation always does: the cap holds
    # for their sum (and the judge's call), the request's worst case.
    both = views[source].cost_per_request + views[target].cost_per_request
    if judge is not None:
        both += views[judge].cost_per_request
    if wishes.max_cost_usd is not None and both > wishes.max_cost_usd:
        return direct(source, f"{strategy} skipped: {source!r} + {target!r} exceed max_cost_usd")
    notes: tuple[str, ...] = ()
    downgrade = None
    if strategy == "speculative" and (views[target].saturated or not views[target].available):
        strategy = "cascade"
        why = "saturated" if views[target].saturated else "unavailable"
        notes = (f"speculation downgraded to cascade: pool {target!r} is {why}",)
        downgrade = ("speculative", f"target_{why}")
    return Plan(
        strategy, source, decision.reason, detail,
        target=target, rule=config.cascade.rule(source, target),
        fallbacks=_fallbacks(source, views, config),
        target_fallbacks=_fallbacks(target, views, config), notes=notes, downgrade=downgrade,
        judge=judge,
    )  # fmt: skip
