"""One request in flight, and the ledger record it leaves when it ends.

`InFlight` is created when a request arrives and filled in as it is planned, admitted
and served; metrics, the quota gate and the ledger all read it at the end, so each fact
about the request is computed once.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from deployments.metrics import Finished
from deployments.openai.adaptive import Pick
from execution.executor import Call, Outcome
from routing.planner import Plan
from tenancy.config import QuotaConfig
from tenancy.gate import Reservation
from tenancy.ledger import LedgerEntry


@dataclass
class InFlight:
    """One request from arrival to its end: what metrics and the ledger need then."""

    id: str
    endpoint: str  # "chat" | "completions"
    model_asked: str
    tenant: str | None = None
    key_id: str | None = None
    started: float = field(default_factory=time.monotonic)
    created_at: float = field(default_factory=time.time)
    plan: Plan | None = None
    pool: str | None = None
    tried: list[str] = field(default_factory=list)
    ttft_s: float | None = None
    outcome: Outcome | None = None
    prompt: str | None = None  # kept only for tenants that opted in
    headers: Mapping[str, str] = field(default_factory=dict)  # rate-limit headers
    policies: list[tuple[str, QuotaConfig]] = field(default_factory=list)  # quota accounts
    reservation: Reservation | None = None  # its worst case, held until it ends
    prompt_estimate: float = 0.0  # prompt tokens as routing estimated them
    calls: list[Call] = field(default_factory=list)  # every pool call: the bill
    choices: int = 1  # answers each call generates (`n`, batched prompts)
    charged_usd: float = 0.0  # what a request that failed was charged
    ended: bool = False  # counted, recorded and settled (exactly once)
    pick: Pick | None = None  # the adaptive router's (context, pool), when it routed it


def ledger_entry(
    flight: InFlight, strategy: str, ended: str, latency_s: float, done: Finished | None
) -> LedgerEntry:
    """What the ledger keeps of a request that ended (`done`: None when no answer began)."""
    outcome, plan = flight.outcome, flight.plan
    return LedgerEntry(
        id=flight.id,
        created_at=flight.created_at,
        endpoint=flight.endpoint,
        model_asked=flight.model_asked[:256],
        strategy=strategy,
        outcome=ended,
        latency_s=round(latency_s, 6),
        tenant=flight.tenant,
        key_id=flight.key_id,
        pools_tried=",".join(flight.tried),
        pool=flight.pool,
        model=done.model if done else None,
        reason=plan.reason if plan else None,
        prompt_tokens=done.prompt_tokens if done else 0,
        completion_tokens=done.completion_tokens if done else 0,
        cost_usd=done.cost_usd if done else flight.charged_usd,
        large_cost_usd=done.large_cost_usd if done else 0.0,
        discarded_tokens=outcome.discarded_tokens if outcome else 0,
        discarded_engine_s=outcome.discarded_engine_s if outcome else 0.0,
        ttft_s=flight.ttft_s,
        confidence=outcome.confidence if outcome else None,
        confidence_on=_confidence_on(outcome),
        escalated=int(outcome.escalated) if outcome else 0,
        prompt=flight.prompt,
        route_class=flight.pick.context if flight.pick else None,
    )


def _confidence_on(outcome: Outcome | None) -> str | None:
    """What the outcome's confidence was computed on: a streaming cascade's first tokens
    ("start") or a whole answer ("answer"); the two are calibrated apart."""
    if outcome is None or outcome.confidence is None:
        return None
    return "start" if outcome.streamed else "answer"
