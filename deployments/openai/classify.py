"""`POST /v1/classify`: what routing reads in a request, and what it would do with it.

A dry run like `POST /v1/route`, reusing its planning (`deployments.openai.planning`:
the same profile, the same one embedding for both classifiers, the same planner), with the
readings behind the decision laid out: the taxonomy (`routing.taxonomy`: task type and
complexity level), the rule features and the rules' own choice, the semantic
classifier's similarities and the learned router's scores, each with a confidence.

Cheap but not free: it passes the limit on endpoints that generate nothing
(`accounting.side_requests_per_minute`, tenancy/side.py), spends no tokens, no money and
none of the tenant's requests per minute, and leaves no ledger record: nothing was served.
A tenant near the end of its budget sees the frugal decision a request would get.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace

from deployments.openai.protocol import (
    ClassifyRequest,
    ClassifyResponse,
    ComplexityReading,
    LearnedReading,
    RuleFeatures,
    RuleReading,
    SemanticReading,
    TaskReading,
)
from deployments.openai.serving import OpenAIServing
from routing.choice import StrongScore
from routing.config import RoutingConfig
from routing.planner import Wishes
from routing.profile import RequestProfile
from routing.rules import decide, extract_features
from routing.taxonomy import classify

__all__ = ["classify_request", "learned_reading", "semantic_reading"]

# Cosine similarities of MiniLM sit in a narrow band: a softmax at this temperature makes
# a 0.1 lead over the runner-up (or over min_similarity) about 88% (as CLIP's scaled
# cosine logits do).
SEMANTIC_TEMPERATURE = 0.05
NO_MATCH = ""  # the softmax's "none of the pools" option


async def classify_request(
    serving: OpenAIServing, body: ClassifyRequest, wishes: Wishes, key_id: str | None
) -> tuple[ClassifyResponse, Mapping[str, str]]:
    """The classification, and the `x-ratelimit-*` headers of a rate-limited tenant."""
    headers: Mapping[str, str] = {}
    if serving.gate is not None:
        accounts = serving.gate.accounts(wishes.tenant, wishes.assigned_tier, key_id, wishes.tier)
        headers = serving.gate.headers(accounts)
        frugal = serving.gate.frugal(accounts)
        if frugal:
            wishes = replace(wishes, frugal=frugal)
    text = body.text
    routing = serving.config.routing
    reading = classify(text, routing.rules)
    decided, profile = await serving.planning.plan(
        body, text, wishes, body.needs, task=reading.task
    )
    features = extract_features(text, routing.rules)
    rules = decide(features, routing.rules)
    answer = ClassifyResponse(
        task=TaskReading(
            type=reading.task,
            confidence=reading.task_confidence,
            evidence=list(reading.task_evidence),
            scores=dict(reading.task_scores),
        ),
        complexity=ComplexityReading(
            level=reading.complexity,
            confidence=reading.complexity_confidence,
            score=reading.complexity_score,
            evidence=list(reading.complexity_evidence),
        ),
        features=RuleFeatures(
            approx_tokens=features.approx_tokens,
            code_markers=list(features.code_markers),
            complex_markers=list(features.complex_markers),
        ),
        rules=RuleReading(pool=rules.pool, reason=rules.reason, detail=rules.detail),
        semantic=semantic_reading(profile, routing),
        learned=learned_reading(profile, routing),
        route=serving.planning.describe(decided, profile),
    )
    return answer, headers


def semantic_reading(profile: RequestProfile, config: RoutingConfig) -> SemanticReading | None:
    """The semantic classifier's verdict: the most similar pool at or above
    `min_similarity` (None: no match), and how clearly it leads.

    Confidence is that option's share of a softmax over every pool's similarity and
    `min_similarity` itself (the "no match" option), at SEMANTIC_TEMPERATURE.
    """
    if not profile.similarities:  # a pinned model: routing did not consult it
        return None
    floor = config.semantic.min_similarity
    sims = dict(profile.similarities)
    above = [p for p, s in sims.items() if s >= floor]
    pool = max(above, key=lambda p: sims[p]) if above else None
    options = {**sims, NO_MATCH: floor}
    best = max(options.values())
    weights = {k: math.exp((v - best) / SEMANTIC_TEMPERATURE) for k, v in options.items()}
    share = weights[pool if pool is not None else NO_MATCH] / sum(weights.values())
    return SemanticReading(
        similarities=sims, min_similarity=floor, pool=pool, confidence=round(share, 3)
    )


def learned_reading(profile: RequestProfile, config: RoutingConfig) -> LearnedReading | None:
    """The learned router's scores per pool and what it alone would choose, among the
    pools that can serve the request.

    Confidence is how far the deciding number is from flipping the choice, over the room
    on its side (0: on the edge, 1: as far as it can be): the score against the
    threshold (binary), the chosen pool's P(correct) against the quality target, or its
    lead in P(correct) - lam * cost over the runner-up (tradeoff).
    """
    reading = profile.learned
    if reading is None:
        return None
    if isinstance(reading, StrongScore):
        score, threshold = reading.score, reading.threshold
        scores = {config.rules.default_pool: round(1.0 - score, 4), reading.strong: round(score, 4)}
        chosen = reading.strong if score >= threshold else config.rules.default_pool
        return LearnedReading(
            rule="threshold", scores=scores, threshold=threshold, pool=chosen,
            confidence=_margin(score, threshold),
        )  # fmt: skip
    servable = [p for p in reading.quality if profile.servable(p) and p in profile.max_tokens]
    pool = reading.choose(servable)
    quality = {p: round(q, 4) for p, q in reading.quality.items()}
    policy = reading.policy
    if pool is None:
        confidence = 0.0
    elif policy.rule == "quality_target":
        confidence = _margin(reading.quality[pool], policy.value)
    else:
        value = {p: reading.quality[p] - policy.value * reading.costs[p] for p in servable}
        rest = [v for p, v in value.items() if p != pool]
        confidence = min(1.0, value[pool] - max(rest)) if rest else 1.0
    return LearnedReading(
        rule=policy.rule, scores=quality, pool=pool, confidence=round(confidence, 3),
        threshold=policy.value if policy.rule == "quality_target" else None,
        lam=policy.value if policy.rule == "tradeoff" else None,
    )  # fmt: skip


def _margin(value: float, threshold: float) -> float:
    room = 1.0 - threshold if value >= threshold else threshold
    return round(min(1.0, abs(value - threshold) / room) if room > 0 else 1.0, 3)
