"""What the ingress counts: Prometheus metrics through Ray, and the `/v1/metrics` summary.

Metrics go through Ray Serve's metrics API (`ray.serve.metrics`), not a second HTTP
exporter: Ray already exports every process's metrics on each node's metrics port
(`ray start --metrics-export-port`), prefixed `ray_`, and adds the deployment, replica
and application labels. Counters appear as `ray_switchyard_<name>_total`.

`RequestMetrics` is created in the ingress constructor (never at import) and takes
`export=False` in unit tests, where only the in-memory summary is kept. It is the one
set of counters: `/v1/metrics` shows its summary, `/health` its `counts`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Protocol

from execution.executor import Outcome

LATENCY_BUCKETS_S = [0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128]
TTFT_BUCKETS_S = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32]
CIRCUIT_STATES = {"closed": 0, "half_open": 1, "open": 2}
QUOTA_MODES = {"keeper": 0, "local": 1, "closed": 2}


@dataclass(frozen=True)
class Finished:
    """One request as the metrics see it."""

    strategy: str
    outcome: str
    latency_s: float
    pool: str = ""  # empty when no pool answered
    model: str = ""
    ttft_s: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0  # served answer plus discarded work
    large_cost_usd: float = 0.0  # the same tokens on the large pool's model
    tenant: str = ""  # the API key's tenant ("" without keys, or when refused before)


class _Metric(Protocol):
    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None: ...


class RequestMetrics:
    def __init__(self, export: bool = True) -> None:
        self.requests: Counter[str] = Counter()  # outcome -> count
        self.served: Counter[str] = Counter()  # model -> answers
        # strategy.<s>, served.<pool>, escalations, fallbacks, speculative.<winner>_won,
        # discarded_tokens, refused.<outcome>: shown by /health
        self.counts: Counter[str] = Counter()
        self.cost_usd = 0.0
        self.large_cost_usd = 0.0
        self.completion_tokens = 0
        self._ray: dict[str, Any] = _ray_metrics() if export else {}

    # --- events -------------------------------------------------------------------

    def finished(self, done: Finished) -> None:
        self.requests[done.outcome] += 1
        if done.outcome == "ok":
            self.served[done.model] += 1
            self.cost_usd += done.cost_usd
            self.large_cost_usd += done.large_cost_usd
            self.completion_tokens += done.completion_tokens
        if not self._ray:
            return
        tags = {"pool": done.pool, "model": done.model}
        # NOTE: tenants come from the key store or the config, so `tenant` stays bounded.
        mine = {**tags, "tenant": done.tenant}
        self._ray["requests"].inc(tags={**mine, "strategy": done.strategy, "outcome": done.outcome})
        self._ray["latency"].observe(done.latency_s, tags={**tags, "strategy": done.strategy})
        if done.ttft_s is not None:
            self._ray["ttft"].observe(done.ttft_s, tags=tags)
        if done.outcome == "ok":
            self._inc("tokens", done.prompt_tokens, {**mine, "direction": "in"})
            self._inc("tokens", done.completion_tokens, {**mine, "direction": "out"})
            # NOTE: a saving can be negative (discarded work), a counter cannot: the
            # dashboard subtracts the two counters.
            self._inc("cost", done.cost_usd, mine)
            self._inc("large_cost", done.large_cost_usd, tags)

    def refused(self, outcome: str) -> None:
        """A generation request refused before serving saw it (its body or a header):
        counted here (`/health` shows `refused.<outcome>`) and in Prometheus as a
        request of strategy `none`, never a ledger row: refusals cost the client nothing
        to send, so each must cost the router no more than a counter. `outcome` is one of
        `outcome_of`'s few labels; the tenant label stays empty (nothing is known yet)."""
        self.counts[f"refused.{outcome}"] += 1
        self.finished(Finished("none", outcome, 0.0))

    def answered(self, outcome: Outcome) -> None:
        """A strategy produced its answer: who served it, escalations, discarded work."""
        c = self.counts
        c[f"served.{outcome.pool}"] += 1
        if outcome.escalated:  # cascade escalated, or speculative kept the strong answer
            c["escalations"] += 1
            tags = {"source": outcome.tried[0], "target": outcome.pool}
            self._inc("escalations", 1, tags)
        if outcome.strategy == "route" and len(outcome.tried) > 1:
            c["fallbacks"] += 1
        if outcome.winner:
            c[f"speculative.{outcome.winner}_won"] += 1
            self._inc("speculative", 1, {"winner": outcome.winner})
        if outcome.discarded_pool is not None:
            c["discarded_tokens"] += outcome.discarded_tokens
            tags = {"pool": outcome.discarded_pool, "strategy": outcome.strategy}
            self._inc("discarded_tokens", outcome.discarded_tokens, tags)
            self._inc("discarded_engine_s", outcome.discarded_engine_s, tags)
        for pool, tokens in outcome.losers:  # ensemble: every answer not kept
            c["discarded_tokens"] += tokens
            self._inc("discarded_tokens", tokens, {"pool": pool, "strategy": outcome.strategy})
        if outcome.judge_pool is not None:  # verify: the judge's last verdict
            verdict = "rejected" if outcome.escalated else "accepted"
            c[f"verify.{verdict}"] += 1
            self._inc("verdicts", 1, {"judge": outcome.judge_pool, "verdict": verdict})
        if outcome.votes is not None:
            agreed = "majority" if outcome.votes * 2 > (outcome.answers or 0) else "none"
            c[f"ensemble.{agreed}"] += 1
            self._inc("ensemble_picks", 1, {"pool": outcome.pool, "agreement": agreed})

    def fell_back(self, from_pool: str, to_pool: str, reason: str) -> None:
        self._inc("fallbacks", 1, {"from_pool": from_pool, "to_pool": to_pool, "reason": reason})

    def downgraded(self, strategy: str, reason: str) -> None:
        self._inc("downgrades", 1, {"strategy": strategy, "reason": reason})

    def decided(self, strategy: str, pool: str, reason: str) -> None:
        self.counts[f"strategy.{strategy}"] += 1
        self._inc("decisions", 1, {"pool": pool, "reason": reason})

    def pool_state(
        self, pool: str, circuit: str, ongoing: float, queued: float, replicas: int | None
    ) -> None:
        if not self._ray:
            return
        tags = {"pool": pool}
        self._ray["circuit"].set(CIRCUIT_STATES.get(circuit, 0), tags=tags)
        self._ray["ongoing"].set(ongoing, tags=tags)
        self._ray["queued"].set(queued, tags=tags)
        if replicas is not None:
            self._ray["replicas"].set(replicas, tags=tags)

    def quota_mode(self, mode: str) -> None:
        """Which way limits are enforced now (`tenancy.gate.QuotaGate.mode`)."""
        if self._ray:
            self._ray["quota_mode"].set(QUOTA_MODES.get(mode, 0))

    def _inc(self, name: str, value: float, tags: dict[str, str]) -> None:
        # NOTE: Ray rejects a counter increment of 0 or less.
        if self._ray and value > 0:
            metric: _Metric = self._ray[name]
            metric.inc(value, tags=tags)

    # --- summary ------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """`GET /v1/metrics`: this ingress replica's counts since it started."""
        total = sum(self.requests.values())
        ok = self.requests["ok"]
        saved = self.large_cost_usd - self.cost_usd
        return {
            "requests": total,
            "outcomes": dict(self.requests),
            "success_rate": round(ok / total, 4) if total else None,
            "model_distribution": {
                model: round(n / ok, 4) for model, n in self.served.most_common()
            },
            "escalations": self.counts["escalations"],
            "completion_tokens": self.completion_tokens,
            "cost_usd": round(self.cost_usd, 6),
            "always_large_cost_usd": round(self.large_cost_usd, 6),
            "cost_saved_usd": round(saved, 6),
            "cost_saved_ratio": (
                round(saved / self.large_cost_usd, 4) if self.large_cost_usd else None
            ),
        }


def _ray_metrics() -> dict[str, Any]:
    from ray.serve import metrics

    m: Any = metrics  # NOTE: Ray annotates tag_keys as a 1-tuple; any length works.

    def counter(name: str, description: str, *tags: str) -> Any:
        return m.Counter(f"switchyard_{name}", description=description, tag_keys=tags)

    return {
        "requests": counter(
            "requests", "Requests by outcome", "pool", "model", "tenant", "strategy", "outcome"
        ),
        "latency": m.Histogram(
            "switchyard_request_latency_seconds",
            description="End-to-end request latency",
            boundaries=LATENCY_BUCKETS_S,
            tag_keys=("pool", "model", "strategy"),
        ),
        "ttft": m.Histogram(
            "switchyard_ttft_seconds",
            description="Time to the first token of streamed answers",
            boundaries=TTFT_BUCKETS_S,
            tag_keys=("pool", "model"),
        ),
        "tokens": counter(
            "tokens",
            "Prompt (in) and completion (out) tokens",
            "pool",
            "model",
            "tenant",
            "direction",
        ),
        "escalations": counter(
            "escalations", "Answers served by the escalation target", "source", "target"
        ),
        "speculative": counter("speculative_outcomes", "Speculative races by winner", "winner"),
        "discarded_tokens": counter(
            "discarded_tokens", "Tokens generated and thrown away", "pool", "strategy"
        ),
        "discarded_engine_s": counter(
            "discarded_engine_seconds", "Engine time of thrown-away answers", "pool", "strategy"
        ),
        "verdicts": counter("verify_verdicts", "Verify: the judge's verdicts", "judge", "verdict"),
        "ensemble_picks": counter(
            "ensemble_picks", "Ensemble: answers kept, by majority or none", "pool", "agreement"
        ),
        "fallbacks": counter(
            "fallbacks", "Moves to the next pool", "from_pool", "to_pool", "reason"
        ),
        "downgrades": counter(
            "downgrades", "Speculation or escalation skipped", "strategy", "reason"
        ),
        "decisions": counter("route_decisions", "Routing decisions", "pool", "reason"),
        "cost": counter("cost_usd", "Estimated cost of served requests", "pool", "model", "tenant"),
        "large_cost": counter(
            "always_large_cost_usd", "Estimated cost had the large pool served", "pool", "model"
        ),
        "circuit": m.Gauge(
            "switchyard_circuit_state",
            description="0 closed, 1 half-open, 2 open",
            tag_keys=("pool",),
        ),
        "ongoing": m.Gauge(
            "switchyard_pool_ongoing_requests",
            description="Running in the engines",
            tag_keys=("pool",),
        ),
        "queued": m.Gauge(
            "switchyard_pool_queued_requests",
            description="Waiting in the engines",
            tag_keys=("pool",),
        ),
        "replicas": m.Gauge(
            "switchyard_pool_replicas", description="Running replicas", tag_keys=("pool",)
        ),
        "quota_mode": m.Gauge(
            "switchyard_quota_mode",
            description="How limits are enforced: 0 through the shared quota keeper, "
            "1 locally (keeper unreachable, fail_mode local), 2 refusing (fail_mode closed)",
        ),
    }
