"""Adaptive routing from feedback: Thompson sampling over (route class, pool).

Pure: evidence and the clock in, a pool out. No Ray, no I/O; the shared state lives in
the database (`tenancy.bandit`), and each ingress replica keeps an in-memory copy.

**Context and arms.** A context is a route class: the rule/taxonomy class of the request
(`code`, `complex_task`, `default` today; any short string fits, so the richer taxonomy
does too), optionally x tier (`context_key`). The arms are the pools.

**Model.** Per (context, pool) a Beta posterior over "the answer is good": a feedback
score r in 0..1 adds r successes and 1 - r failures (fractional updates keep the
posterior mean on the mean score). A request's cost is *known* before it runs (the
catalog's estimate), so it is not learned: the score of a pool is
``theta - cost_weight * cost / max(cost)`` with theta sampled from its posterior (Thompson)
or its posterior mean (the greedy choice). We rejected a Gaussian on quality - lambda*cost:
it would learn a quantity half of which is known, with noise from request length, and
its sufficient statistics would not have a meaningful prior; Beta counts are two numbers
per arm that add across replicas.

**Forgetting.** Evidence decays with a half-life (`half_life_s`): counts are kept with
the time they refer to (`ArmStats.at`) and multiplied by 2^(-dt/half_life) whenever they
are read or merged. So a pool that changes (a new model, a broken deployment) is
re-learned: its old evidence fades, its posterior widens, and Thompson samples try it
again. Decay by wall time, not by request count, so replicas with different traffic
agree on what an old observation weighs.

**Bounded exploration.** "Exploring" means choosing another pool than the greedy one
(best posterior mean - cost penalty). Each non-frugal decision of a context earns
`explore_share` of credit (at most `EXPLORE_BURST` saved up); an exploration spends one.
So in every prefix of a replica's decisions of a context, explorations <= explore_share
x decisions, and in any window of n decisions at most explore_share * n + EXPLORE_BURST.
Frugal requests (a budget near its limit) never explore and earn nothing. The pool is
always one of `eligible`, which the caller computes (tier pools, servability, budget,
availability): the bandit never widens the set, it only orders it.

**Signals** (`feedback_reward`, `outcome_reward`): an explicit score counts with weight 1;
a cascade verdict (escalated: the small answer was not good enough, 0; accepted: 1) with
`IMPLICIT_WEIGHT`, since a confidence threshold is a weaker judge than a person; an
engine error or timeout is a 0. A pool that was unavailable (circuit open, cold start)
gives no evidence: availability is the eligible set's business, and punishing it would
keep a pool avoided long after it is back.

**Whose evidence counts for whom.** What the system observes itself (errors, timeouts,
cascade verdicts: `outcome_reward`) goes into the shared context: every tenant's routing
learns from it, and nobody can forge it. A feedback score is a tenant's opinion, and a
tenant can send as much of it as it has responses, so it goes into that tenant's
*overlay* (`overlay_key(context, tenant)`: the context plus a hash of the tenant), a
context of its own. Choosing for a request of tenant T, a pool's posterior is the prior
+ the shared context's evidence + T's overlay's (`overlay=`), so a tenant's feedback
steers its own requests at full weight and nobody else's at all. Requests without a
tenant (authentication off: one trust domain) use the shared context only, and their
feedback goes there. Each response takes one verdict as evidence (the first; a later
one only replaces the stored row, see `tenancy.ledger.add_feedback`).

**How the request path calls it** (to be wired into the ingress; the planner is
untouched). Each ingress replica holds one `tenancy.bandit.SharedBandit` (this router,
its pending increments, a sync thread started with the replica and closed on shutdown):

1. The planner plans as today. When `routing.adaptive.covers(tier)`, the plan's strategy
   is `route`, the model is `auto` and the plan has more than one candidate, the ingress
   calls ``shared.choose(context, eligible, costs=..., frugal=wishes.frugal is not None,
   overlay=overlay_key(context, wishes.tenant))`` (no overlay without a tenant)
   with ``context = context_key(route_class, tier if adaptive.per_tier else None)``,
   `eligible` = the plan's candidates (tier pools that can serve the request, available,
   meeting its constraints) in the planner's order of preference (ties go to the first),
   and `costs` = each pool's `PoolView.cost_per_request`. The returned pool replaces
   `plan.pool` (fallbacks recomputed for it); `explored` goes into the notes.
2. It keeps (context, pool) with the request (in memory, and in its ledger record so
   that late feedback finds the arm): at the end of the request
   ``outcome_reward(outcome, escalated)`` into the context, on the first
   `POST /v1/feedback` on the response ``feedback_reward(score)`` into the overlay of
   the request's tenant, each (when not None) passed to ``shared.observe``.
3. `choose` and `observe` are in memory only (tens of microseconds); the sync thread
   writes the replica's increments and reloads everyone's every `refresh_s`. No database
   call is on the request path.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from routing.config import AdaptiveConfig

Arm = tuple[str, str]  # (context, pool)

CONTEXT_CHARS = 128  # a route class, or a class and a tier; or a tenant's overlay of one
OVERLAY_DIGEST_CHARS = 12  # hex digits of the tenant's SHA-256 in its overlay's key
SHARED_CONTEXT_CHARS = CONTEXT_CHARS - 1 - OVERLAY_DIGEST_CHARS  # room for "#<digest>"
PRIOR = (1.0, 1.0)  # Beta(1, 1): uniform, nothing known yet
EXPLORE_BURST = 3.0  # exploration credit a context may save up while it exploits
IMPLICIT_WEIGHT = 0.5  # a cascade verdict weighs half an explicit feedback score
FAILED_OUTCOMES = frozenset({"error", "timeout"})  # the pool answered badly or not in time


def context_key(route_class: str, tier: str | None = None) -> str:
    """The bandit's context: the route class, or the class on one tier (`class@tier`)."""
    key = route_class if tier is None else f"{route_class}@{tier}"
    if not route_class or len(key) > SHARED_CONTEXT_CHARS:
        raise ValueError(
            f"a bandit context is 1..{SHARED_CONTEXT_CHARS} characters, got {len(key)}"
        )
    return key


def overlay_key(context: str, tenant: str) -> str:
    """The tenant's private context on top of `context` (`context#<digest>`): where its
    feedback goes. A stable hash (SHA-256, not Python's per-process `hash`), so every
    replica and every restart names the same overlay; the tenant's name stays out of the
    shared table."""
    if not context or len(context) > SHARED_CONTEXT_CHARS:
        raise ValueError(f"a bandit context is 1..{SHARED_CONTEXT_CHARS} characters")
    digest = hashlib.sha256(tenant.encode("utf-8")).hexdigest()[:OVERLAY_DIGEST_CHARS]
    return f"{context}#{digest}"


@dataclass(frozen=True)
class Reward:
    """One observation: how good the answer was (0..1), and how much evidence it is."""

    value: float
    weight: float = 1.0


def feedback_reward(score: float) -> Reward:
    """An explicit `POST /v1/feedback` score."""
    return Reward(min(1.0, max(0.0, score)), 1.0)


def outcome_reward(outcome: str, escalated: bool | None = None) -> Reward | None:
    """What the end of a request says about its pool, or None when it says nothing.

    `escalated` is the cascade's verdict on the pool that answered first (None when no
    cascade ran). Outcomes are the ledger's (`ok`, `error`, `timeout`, ...).
    """
    if outcome in FAILED_OUTCOMES:
        return Reward(0.0, 1.0)
    if outcome != "ok" or escalated is None:
        return None
    return Reward(0.0 if escalated else 1.0, IMPLICIT_WEIGHT)


@dataclass(frozen=True)
class ArmStats:
    """The sufficient statistics of one arm: decayed successes and failures as of `at`."""

    successes: float = 0.0
    failures: float = 0.0
    at: float = 0.0  # unix time the counts refer to

    def decayed(self, now: float, half_life_s: float) -> ArmStats:
        """The counts as of `now` (never grown: a clock behind `at` decays nothing)."""
        factor = 0.5 ** (max(0.0, now - self.at) / half_life_s)
        return ArmStats(self.successes * factor, self.failures * factor, max(now, self.at))

    def merged(self, other: ArmStats, half_life_s: float) -> ArmStats:
        """Both brought to the later time and added: commutative and associative, so
        replicas' increments can be merged in any order."""
        later = max(self.at, other.at)
        a, b = self.decayed(later, half_life_s), other.decayed(later, half_life_s)
        return ArmStats(a.successes + b.successes, a.failures + b.failures, later)


class Choice(NamedTuple):
    """A decision: the pool, whether it deviates from the greedy pool, and each eligible
    pool's score (sampled, or the posterior mean when it could not explore), cost
    penalty included."""

    pool: str
    explored: bool
    scores: dict[str, float]


class ThompsonRouter:
    """Thompson sampling with Beta posteriors per (context, pool), decayed, with capped
    exploration. Holds the statistics in memory; not thread-safe (`SharedBandit` locks)."""

    def __init__(
        self,
        *,
        half_life_s: float = 3600.0,
        explore_share: float = 0.1,
        cost_weight: float = 0.3,
        prior: tuple[float, float] = PRIOR,
    ) -> None:
        if half_life_s <= 0 or not 0 <= explore_share <= 1 or cost_weight < 0:
            raise ValueError("half_life_s > 0, 0 <= explore_share <= 1, cost_weight >= 0")
        if min(prior) <= 0:
            raise ValueError("the Beta prior's parameters must be positive")
        self.half_life_s = half_life_s
        self.explore_share = explore_share
        self.cost_weight = cost_weight
        self.prior = prior
        self._stats: dict[Arm, ArmStats] = {}
        self._credit: dict[str, float] = {}  # exploration credit per context

    @classmethod
    def from_config(cls, config: AdaptiveConfig) -> ThompsonRouter:
        return cls(
            half_life_s=config.half_life_s,
            explore_share=config.explore_share,
            cost_weight=config.cost_weight,
        )

    # --- evidence -----------------------------------------------------------------

    def posterior(
        self, context: str, pool: str, now: float | None = None, overlay: str | None = None
    ) -> tuple[float, float]:
        """Beta(alpha, beta) of the arm as of `now`: the prior plus the decayed counts of
        the shared `context` and, when given, of the tenant's `overlay` of it."""
        when = _now(now)
        successes = failures = 0.0
        for key in (context,) if overlay is None else (context, overlay):
            stats = self._stats.get((key, pool))
            if stats is not None:
                decayed = stats.decayed(when, self.half_life_s)
                successes += decayed.successes
                failures += decayed.failures
        return self.prior[0] + successes, self.prior[1] + failures

    def mean(
        self, context: str, pool: str, now: float | None = None, overlay: str | None = None
    ) -> float:
        alpha, beta = self.posterior(context, pool, now, overlay)
        return alpha / (alpha + beta)

    def update(
        self,
        context: str,
        pool: str,
        reward: float,
        *,
        weight: float = 1.0,
        now: float | None = None,
    ) -> ArmStats:
        """Add one observation; returns it as an increment (what a replica must share)."""
        if not 0.0 <= reward <= 1.0 or not weight > 0 or not math.isfinite(weight):
            raise ValueError("reward must be in 0..1 and weight positive")
        increment = ArmStats(weight * reward, weight * (1.0 - reward), _now(now))
        self.merge({(context, pool): increment})
        return increment

    def merge(self, increments: Mapping[Arm, ArmStats]) -> None:
        """Add increments (e.g. another replica's) to the statistics."""
        for arm, increment in increments.items():
            old = self._stats.get(arm)
            self._stats[arm] = increment if old is None else old.merged(increment, self.half_life_s)

    def snapshot(self) -> dict[Arm, ArmStats]:
        return dict(self._stats)

    def replace(self, stats: Mapping[Arm, ArmStats]) -> None:
        """Take a fresh snapshot (the database's); exploration credit is kept."""
        self._stats = dict(stats)

    # --- decisions ----------------------------------------------------------------

    def choose(
        self,
        context: str,
        eligible: Sequence[str],
        rng: random.Random,
        *,
        costs: Mapping[str, float] | None = None,
        frugal: bool = False,
        now: float | None = None,
        overlay: str | None = None,
    ) -> Choice:
        """One of `eligible` for a request of `context` (of the tenant whose `overlay`
        is given: its own evidence counts on top of the shared).

        `costs`: this request's estimated cost on each pool (any unit; pools beyond the
        eligible ones may be given), divided by the largest so that `cost_weight` is
        unitless and a pool's penalty does not depend on which others are eligible.
        Ties go to the earlier pool of `eligible`. Exploration credit is the shared
        context's: the bound on exploring holds over all of a context's requests.
        """
        pools = list(dict.fromkeys(eligible))
        if not pools:
            raise ValueError("choose needs at least one eligible pool")
        when = _now(now)
        penalty = self._penalties(pools, costs)
        means = {p: self.mean(context, p, when, overlay) - penalty[p] for p in pools}
        greedy = max(pools, key=lambda p: means[p])
        if frugal or len(pools) == 1:
            return Choice(greedy, False, _rounded(means))
        credit = min(EXPLORE_BURST, self._credit.get(context, 0.0) + self.explore_share)
        self._credit[context] = credit
        if credit < 1.0:  # no exploration allowed now: no need to sample
            return Choice(greedy, False, _rounded(means))
        samples = {
            p: rng.betavariate(*self.posterior(context, p, when, overlay)) - penalty[p]
            for p in pools
        }
        sampled = max(pools, key=lambda p: samples[p])
        if sampled == greedy:
            return Choice(greedy, False, _rounded(samples))
        self._credit[context] = credit - 1.0
        return Choice(sampled, True, _rounded(samples))

    def _penalties(
        self, pools: Sequence[str], costs: Mapping[str, float] | None
    ) -> dict[str, float]:
        if not costs or self.cost_weight == 0:
            return dict.fromkeys(pools, 0.0)
        top = max(costs.values())
        if top <= 0:
            return dict.fromkeys(pools, 0.0)
        return {p: self.cost_weight * max(0.0, costs.get(p, top)) / top for p in pools}


def _now(now: float | None) -> float:
    return time.time() if now is None else now


def _rounded(scores: Mapping[str, float]) -> dict[str, float]:
    return {p: round(s, 4) for p, s in scores.items()}
