"""The adaptive router on the request path: the bandit reorders a plan's candidates.

`routing.bandit` learns, per route class (the taxonomy's task type, optionally per
tier), which pool gives good answers for what it costs; `tenancy.bandit.SharedBandit`
shares that evidence between ingress replicas through the database. This module is the
glue `OpenAIServing` calls, Ray-free:

- `choose`: for a covered request (`routing.adaptive.covers(tier)`, `model: auto`,
  strategy `route`, more than one candidate) the bandit picks among the plan's
  candidates — the pools the policy found the request may use and that meet its
  constraints — and `routing.planner.adapt` makes that the plan. The bandit never widens
  the set. Until the bandit has `MIN_EVIDENCE` observations of both pools it defers to
  the policy's pick except when it explores (bounded by `explore_share`): with no
  evidence at all its greedy choice would be merely the cheapest pool, overriding the
  rules (code markers -> `code`) on no grounds.
- `finished`: the end of a request is evidence about the pool that was chosen (errors
  and timeouts are 0; a cascade's verdict on its cheap pool counts at half weight), in
  the shared context: the system saw it, every tenant's routing learns from it.
- `feedback`: the first `POST /v1/feedback` score on a response is evidence about the
  pool that served it, at full weight, in the context recorded with the request in the
  ledger (`route_class`) - but only in the overlay of the request's tenant
  (`routing.bandit.overlay_key`), never in the shared context. A score is the tenant's
  own say and costs it nothing to send, so it may steer that tenant's requests and no
  one else's: `choose` adds the requesting tenant's overlay to the shared evidence, and
  the `MIN_EVIDENCE` check counts both. Requests without a tenant (authentication off)
  use, and their feedback goes to, the shared context alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from routing.bandit import (
    Choice,
    Reward,
    context_key,
    feedback_reward,
    outcome_reward,
    overlay_key,
)
from routing.config import AdaptiveConfig, RoutingConfig
from routing.planner import AUTO_MODEL, Plan, PoolView, Wishes, adapt

__all__ = ["MIN_EVIDENCE", "AdaptiveRouting", "Pick", "Bandit"]

MIN_EVIDENCE = 5.0  # observations of a pool in a context before it may displace the policy


class Bandit(Protocol):
    """What the request path needs of `tenancy.bandit.SharedBandit`."""

    def choose(
        self,
        context: str,
        eligible: Sequence[str],
        *,
        costs: Mapping[str, float] | None = None,
        frugal: bool = False,
        overlay: str | None = None,
    ) -> Choice: ...

    def observe(self, context: str, pool: str, reward: Reward) -> None: ...

    def evidence(self, context: str, pool: str, overlay: str | None = None) -> float: ...


@dataclass(frozen=True)
class Pick:
    """What a request was: its bandit context and the pool it was given."""

    context: str
    pool: str


class AdaptiveRouting:
    def __init__(self, config: AdaptiveConfig, bandit: Bandit) -> None:
        self.config = config
        self.bandit = bandit

    def context(self, task: str, model: str, wishes: Wishes) -> str | None:
        """The request's context, or None when the bandit does not route it."""
        if model != AUTO_MODEL or not self.config.covers(wishes.tier):
            return None
        return context_key(task, wishes.tier if self.config.per_tier else None)

    def choose(
        self,
        decided: Plan,
        context: str,
        views: Mapping[str, PoolView],
        routing: RoutingConfig,
        wishes: Wishes,
        *,
        explore: bool = True,
    ) -> tuple[Plan, Pick]:
        """The plan, maybe with another of its candidates; and the arm to learn about.
        `explore=False` (a dry run) gives the best pool known, as for a frugal request."""
        if decided.strategy != "route" or len(decided.candidates) < 2:
            return decided, Pick(context, decided.pool)
        costs = {p: views[p].cost_per_request for p in decided.candidates}
        greedy = wishes.frugal is not None or not explore
        overlay = overlay_key(context, wishes.tenant) if wishes.tenant is not None else None
        choice = self.bandit.choose(
            context, decided.candidates, costs=costs, frugal=greedy, overlay=overlay
        )
        pool = choice.pool
        if pool != decided.pool and not choice.explored:
            known = min(self.bandit.evidence(context, p, overlay) for p in (pool, decided.pool))
            if known < MIN_EVIDENCE:
                pool = decided.pool
        if pool == decided.pool:
            return decided, Pick(context, pool)
        what = "exploring" if choice.explored else "better for"
        note = f"adaptive: {what} {context!r} requests ({pool!r} over {decided.pool!r})"
        return adapt(decided, pool, views, routing, note), Pick(context, pool)

    def finished(self, arm: Pick, outcome: str, escalated: bool | None) -> None:
        reward = outcome_reward(outcome, escalated)
        if reward is not None:
            self.bandit.observe(arm.context, arm.pool, reward)

    def feedback(self, arm: Pick, score: float, *, tenant: str | None) -> None:
        """The first verdict on a response of `tenant` (the request's): evidence in that
        tenant's overlay only; in the shared context when the request had no tenant."""
        context = arm.context if tenant is None else overlay_key(arm.context, tenant)
        self.bandit.observe(context, arm.pool, feedback_reward(score))
