"""The routing policy: which pool serves a request, given what the client asked for.

`model="auto"` lets the rules decide; a pool name or a catalog model id pins the pool.
Pure like the rules it calls: the ingress hands in the request text and the pool table,
and gets a `RouteDecision` or `UnknownModelError` back.
"""

from __future__ import annotations

from collections.abc import Mapping

from routing.rules import RouteDecision, RulesConfig, decide, extract_features

AUTO_MODEL = "auto"


class UnknownModelError(LookupError):
    """The requested model is neither `auto`, a pool name, nor a served model id."""

    def __init__(self, model: str, known: list[str]) -> None:
        super().__init__(f"model {model!r} does not exist; available: {', '.join(known)}")
        self.model = model
        self.known = known


def choose_pool(
    model: str, text: str, pool_models: Mapping[str, str], rules: RulesConfig
) -> RouteDecision:
    """Pick the pool for one request.

    `pool_models` maps pool name to the model id it serves (in config order, so a model
    served by several pools pins to the first).
    """
    if model == AUTO_MODEL:
        decision = decide(extract_features(text, rules), rules)
        if decision.pool not in pool_models:
            # NOTE: a profile may leave a pool out (e.g. no code pool); the rule still
            # explains what it saw, the default pool serves.
            return RouteDecision(
                rules.default_pool,
                decision.reason,
                f"{decision.detail}; pool {decision.pool!r} is not configured",
            )
        return decision
    if model in pool_models:
        return RouteDecision(model, "pinned_pool", f"client asked for pool {model!r}")
    for pool, served in pool_models.items():
        if served == model:
            return RouteDecision(pool, "pinned_model", f"client asked for model {model!r}")
    known = [AUTO_MODEL, *pool_models, *dict.fromkeys(pool_models.values())]
    raise UnknownModelError(model, known)
