"""Routing configuration: strategies, confidence rules, scoring weights, fallbacks.

Strict like every config (`core.config.StrictConfig`: unknown keys and wrong types fail).
Lives in `routing/` with the policy it configures so the policy and its tests need nothing
from the Serve layer.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from core.config import StrictConfig
from routing.confidence import ConfidenceMethod
from routing.rules import RulesConfig

Strategy = Literal["route", "cascade", "speculative", "verify", "ensemble"]
STRATEGIES: tuple[Strategy, ...] = ("route", "cascade", "speculative", "verify", "ensemble")

# Reserved tenant name: requests a trusted gateway sends for a tenant nobody configured or
# gave a key are this tenant's, so that made-up names cannot multiply quota accounts and
# metric labels (deployments/openai/wishes.py). It gets the default tier.
OTHER_TENANT = "other"


class ConfidenceRule(StrictConfig):
    """When the `source` pool's answer is good enough to skip `target`."""

    source: str = Field(default="small", description="Pool that answers first.")
    target: str = Field(default="large", description="Pool escalated to.")
    method: ConfidenceMethod = Field(default="mean_logprob", description="Confidence method.")
    threshold: float = Field(
        default=-0.6, description="Accept the source answer when confidence >= threshold."
    )
    quantile: float = Field(default=0.1, ge=0, le=1, description="For method `quantile`.")
    stream_threshold: float | None = Field(
        default=None,
        description="The threshold a streaming cascade holds its first "
        "`cascade.stream_decide_tokens` tokens to (a start is scored differently from a "
        "whole answer); None uses `threshold`.",
    )

    def threshold_for(self, streamed: bool) -> float:
        if streamed and self.stream_threshold is not None:
            return self.stream_threshold
        return self.threshold


class CascadeConfig(StrictConfig):
    """Cascade and speculative execution: which pool answers first, and when to escalate."""

    source_pool: str = Field(default="small", description="The cheap pool tried first.")
    check_validity: bool = Field(
        default=True,
        description="A cheap answer to a request with tools or a JSON schema must also be "
        "usable (JSON that parses and fits, tool calls that fit a tool) or it escalates.",
    )
    rules: list[ConfidenceRule] = Field(
        default_factory=list,
        description="Confidence method and threshold per (source, target) pool pair; a pair "
        "without a rule uses ConfidenceRule's defaults.",
    )
    stream_decide_tokens: int = Field(
        default=0,
        ge=0,
        le=256,
        description="Streaming cascades: judge the cheap answer on its first this-many tokens "
        "and stream it on at once when confident, else abort it and stream the target's "
        "(mid-stream escalation; the client's first token waits for these tokens only). "
        "0 holds the whole cheap answer back until it is judged.",
    )

    def rule(self, source: str, target: str) -> ConfidenceRule:
        for rule in self.rules:
            if (rule.source, rule.target) == (source, target):
                return rule
        return ConfidenceRule(source=source, target=target)


JUDGE_PROMPT = (
    "You grade answers. Reply with one word: Yes if the answer is correct and complete, "
    "No otherwise.\n\nQuestion:\n{question}\n\nAnswer:\n{answer}\n\nIs the answer correct?"
)


class VerifierConfig(StrictConfig):
    """Strategy `verify`: the cheap pool answers, a judge pool grades that answer with a
    bounded prompt, and a rejected answer is retried or escalated."""

    judge_pool: str | None = Field(
        default=None,
        description="Pool that grades the answer; None: the cheap pool itself (a second, "
        "short call with the grading prompt).",
    )
    threshold: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Accept the answer when the judge's P(Yes) / (P(Yes) + P(No)) >= this.",
    )
    retries: int = Field(
        default=0,
        ge=0,
        le=2,
        description="A rejected answer is asked again from the cheap pool this many times "
        "(at retry_temperature, judged again) before escalating.",
    )
    retry_temperature: float = Field(default=0.7, ge=0, le=2)
    prompt: str = Field(
        default=JUDGE_PROMPT,
        max_length=4000,
        description="The judge's instruction, with {question} and {answer} in it.",
    )
    max_question_chars: int = Field(
        default=4000, ge=100, le=100_000, description="The question is cut to this (its end)."
    )
    max_answer_chars: int = Field(
        default=2000, ge=100, le=100_000, description="The answer is cut to this (its start)."
    )

    @model_validator(mode="after")
    def _has_slots(self) -> VerifierConfig:
        for slot in ("{question}", "{answer}"):
            if slot not in self.prompt:
                raise ValueError(f"verifier.prompt must contain {slot}")
        return self


class EnsembleConfig(StrictConfig):
    """Strategy `ensemble`: several answers at once, one picked; the rest aborted as soon
    as the pick is decided."""

    members: list[str] = Field(
        default_factory=lambda: ["small", "small", "small"],
        min_length=2,
        max_length=8,
        description="One answer per entry, all at once; a pool may repeat (samples, each "
        "with its own seed: at temperature 0 repeats answer alike).",
    )
    pick: Literal["majority", "logprob", "judge"] = Field(
        default="majority",
        description="majority: the answer most members agree on (normalised text), ties "
        "and no agreement by mean logprob; logprob: the most confident answer; judge: "
        "every distinct answer graded by the verifier's judge (`verifier.judge_pool`, "
        "default the first member; its prompt and bounds), the best graded kept.",
    )


class FallbackConfig(StrictConfig):
    """Where a request goes when its pool fails, times out or has an open circuit."""

    chains: dict[str, list[str]] = Field(
        default_factory=lambda: {"small": ["large"], "large": ["small"], "code": ["large"]},
        description="Per pool, the pools to try next, in order.",
    )
    failure_threshold: int = Field(
        default=3, ge=1, description="Consecutive failures that open a pool's circuit."
    )
    cooldown_s: float = Field(
        default=30.0, gt=0, description="How long an open circuit rejects before a trial."
    )


class SemanticConfig(StrictConfig):
    """The embedding classifier: example utterances per pool, matched by cosine."""

    enabled: bool = Field(default=False, description="Load all-MiniLM-L6-v2 and use it.")
    min_similarity: float = Field(
        default=0.35, ge=-1, le=1, description="Similarities below this count as no match."
    )
    examples: dict[str, list[str]] = Field(
        default_factory=dict, description="Pool name -> example requests that pool should get."
    )


class LearnedConfig(StrictConfig):
    """A router trained by `switchyard train-router`: binary (P(strong model needed) per
    request) or over N pools (P(correct) per pool and a choice rule, in the file)."""

    path: str = Field(description="Router JSON written by `switchyard train-router`.")
    threshold: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Binary routers: send to strong_pool when the score >= threshold; None "
        "uses the file's calibrated threshold (`switchyard calibrate`).",
    )
    strong_pool: str = Field(
        default="large",
        description="Binary routers: the pool for requests that need the strong model.",
    )
    reload_s: float = Field(
        default=10.0,
        ge=0,
        description="How often the ingress checks `path` for a new router (mtime, size, "
        "sha256) and serves it without a restart; an invalid file keeps the old router. "
        "0 turns the check off.",
    )


class AdaptiveConfig(StrictConfig):
    """The adaptive router (`routing.bandit`): learns from feedback which pool serves each
    route class best, among the pools a request may use. Off unless a tier opts in."""

    tiers: list[str] = Field(
        default_factory=list, description="Tiers whose `route` requests it chooses pools for."
    )
    untiered: bool = Field(default=False, description="Also requests that have no tier.")
    per_tier: bool = Field(
        default=False,
        description="Learn per (route class, tier) instead of per route class: tiers whose "
        "users differ get their own evidence, at the price of learning each more slowly.",
    )
    explore_share: float = Field(
        default=0.1,
        ge=0,
        le=0.5,
        description="At most this share of a class's requests may go to another pool than "
        "the best one known (exploration); frugal requests never explore.",
    )
    cost_weight: float = Field(
        default=0.3,
        ge=0,
        description="Score = P(good answer) - cost_weight * cost / the dearest pool's cost.",
    )
    half_life_s: float = Field(
        default=3600.0,
        gt=0,
        description="Evidence loses half its weight in this time, so a pool that changes is "
        "re-learned.",
    )
    refresh_s: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="How often each ingress replica writes its evidence to the database and "
        "reloads everyone's.",
    )

    @property
    def enabled(self) -> bool:
        """Whether any request is routed adaptively."""
        return bool(self.tiers) or self.untiered

    def covers(self, tier: str | None) -> bool:
        """Whether requests of `tier` (None: no tier) are routed adaptively."""
        return self.untiered if tier is None else tier in self.tiers


class ScoringConfig(StrictConfig):
    """Weights of the multi-objective score J = a*latency + b*cost - g*quality*match.

    Latency and cost are normalised to [0, 1] across the candidate pools of a request,
    so the weights are unitless and comparable.
    """

    alpha_latency: float = Field(default=0.2, ge=0, description="Weight of expected latency.")
    beta_cost: float = Field(default=0.3, ge=0, description="Weight of estimated cost.")
    gamma_quality: float = Field(default=1.0, ge=0, description="Weight of quality x match.")


class TierConfig(StrictConfig):
    """Defaults and limits for a class of clients (e.g. `free`, `pro`).

    A request's own wishes win over the tier's defaults, except that the tier's
    `max_cost_usd` is a cap and its `pools` a hard limit.
    """

    strategy: Strategy | None = Field(default=None, description="Default strategy.")
    min_quality: float | None = Field(default=None, ge=0, le=1, description="Default floor.")
    max_cost_usd: float | None = Field(default=None, ge=0, description="Per-request cap.")
    latency_budget_ms: float | None = Field(default=None, gt=0, description="Default budget.")
    pools: list[str] | None = Field(
        default=None, min_length=1, description="Pools this tier may use; all when unset."
    )
    selectable: bool = Field(
        default=False,
        description="A request may ask for this tier itself (`switchyard.tier` or "
        "`x-switchyard-tier`); otherwise only tenants mapped to it and default_tier get it.",
    )


class RoutingConfig(StrictConfig):
    """Everything the routing policy reads."""

    default_strategy: Strategy = Field(
        default="route", description="Strategy when a request does not ask for one."
    )
    rules: RulesConfig = Field(default_factory=RulesConfig, description="Rule patterns.")
    semantic: SemanticConfig = Field(default_factory=SemanticConfig)
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)
    learned: LearnedConfig | None = Field(
        default=None, description="Optional learned router, consulted when no rule matches."
    )
    adaptive: AdaptiveConfig = Field(
        default_factory=AdaptiveConfig, description="Feedback-driven pool choice (a bandit)."
    )
    cascade: CascadeConfig = Field(default_factory=CascadeConfig)
    verifier: VerifierConfig = Field(default_factory=VerifierConfig)
    ensemble: EnsembleConfig = Field(default_factory=EnsembleConfig)
    fallback: FallbackConfig = Field(default_factory=FallbackConfig)
    tiers: dict[str, TierConfig] = Field(
        default_factory=dict, description="Client tiers by name (`switchyard.tier`)."
    )
    tenants: dict[str, str] = Field(
        default_factory=dict,
        description="Tenant id (`x-switchyard-tenant`) -> tier; a mapped tenant cannot "
        f"choose another tier. `{OTHER_TENANT}` is reserved (unknown tenants; default tier).",
    )
    default_tier: str | None = Field(
        default=None, description="Tier of requests that name neither a tenant nor a tier."
    )
    trust_tenant_header: bool = Field(
        default=False,
        description="With `auth.mode: off` only: read the tenant id from "
        "`x-switchyard-tenant`. Set it only when a gateway you trust sets that header and "
        "strips it from clients; otherwise the header is refused (400), since any client "
        "could claim any tenant. With API keys, a gateway key may send it instead.",
    )

    @model_validator(mode="after")
    def _source_is_default(self) -> RoutingConfig:
        for rule in self.cascade.rules:
            if rule.source == rule.target:
                raise ValueError(f"cascade rule escalates {rule.source!r} to itself")
        if OTHER_TENANT in self.tenants:
            raise ValueError(
                f"tenants: {OTHER_TENANT!r} is reserved for tenant names nobody configured; "
                "it gets default_tier"
            )
        named = {*self.tenants.values(), *([self.default_tier] if self.default_tier else [])}
        unknown = sorted(named - set(self.tiers))
        if unknown:
            raise ValueError(f"tenants/default_tier name unknown tiers: {unknown}")
        unknown = sorted(set(self.adaptive.tiers) - set(self.tiers))
        if unknown:
            raise ValueError(f"adaptive.tiers name unknown tiers: {unknown}")
        return self

    def pools_named(self) -> dict[str, list[str]]:
        """Every pool name this config mentions that must be a configured pool.

        Maps each name to the places naming it (e.g. `cascade.source_pool`), for the
        app's cross-check (`deployments.config.AppConfig`) to report. Left out on
        purpose: `rules.code_pool` and `rules.large_pool`, which may name pools an app
        does not have (the planner then uses the default pool), and an unset
        `cascade.source_pool`, see below.
        """
        named: dict[str, list[str]] = {}

        def add(pool: str, where: str) -> None:
            named.setdefault(pool, []).append(where)

        add(self.rules.default_pool, "rules.default_pool")
        # NOTE: the default source pool "small" is checked only when set explicitly. An
        # app without a pool of that name is valid: the planner then skips cascade and
        # speculative (as it routes to the default pool when code_pool or large_pool is
        # absent), while a name someone wrote down is meant to exist and a typo must fail.
        if "source_pool" in self.cascade.model_fields_set:
            add(self.cascade.source_pool, "cascade.source_pool")
        if self.verifier.judge_pool is not None:
            add(self.verifier.judge_pool, "verifier.judge_pool")
        # NOTE: like source_pool, the default members are checked only when written down.
        if "members" in self.ensemble.model_fields_set:
            for i, pool in enumerate(self.ensemble.members):
                add(pool, f"ensemble.members[{i}]")
        for i, rule in enumerate(self.cascade.rules):
            add(rule.source, f"cascade.rules[{i}].source")
            add(rule.target, f"cascade.rules[{i}].target")
        for pool, chain in self.fallback.chains.items():
            add(pool, "fallback.chains")
            for target in chain:
                add(target, f"fallback.chains.{pool}")
        for pool in self.semantic.examples:
            add(pool, "semantic.examples")
        for tier_name, tier in self.tiers.items():
            for pool in tier.pools or []:
                add(pool, f"tiers.{tier_name}.pools")
        # A configured learned router exists to send requests to its strong pool, so that
        # pool must exist whether strong_pool was written or left at its default.
        if self.learned is not None:
            add(self.learned.strong_pool, "learned.strong_pool")
        return named
