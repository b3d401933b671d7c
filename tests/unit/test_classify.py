"""`POST /v1/classify`'s logic (deployments/openai/classify.py) without Ray."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from pydantic import ValidationError

from core.errors import PoolNotAllowedError, PromptError
from deployments.openai.classify import classify_request, learned_reading, semantic_reading
from deployments.openai.errors import to_api_error
from deployments.openai.protocol import ChatRequest, ClassifyRequest
from deployments.openai.serving import OpenAIServing
from routing.choice import ChoicePolicy, PoolQuality, StrongScore
from routing.config import RoutingConfig
from routing.planner import Wishes
from routing.profile import Refusal, RequestProfile
from routing.semantic import SemanticClassifier
from tenancy.gate import QuotaGate
from tests.conftest import fake_app, fake_app_args
from tests.support.keeper import Clock, RemoteKeeper, spend
from tests.support.pools import InProcessPools
from tests.unit.test_serving import WEATHER, serving, tool_args


def body(text: str, **extra: Any) -> ClassifyRequest:
    return ClassifyRequest.model_validate(
        {"messages": [{"role": "user", "content": text}], **extra}
    )


async def test_classifies_and_routes_without_generating() -> None:
    svc, pools = serving()
    answer, headers = await classify_request(
        svc, body("Write a Python function that reverses a string."), Wishes(), None
    )
    assert (answer.task.type, answer.complexity.level) == ("code", "simple")
    assert answer.task.evidence == ["Python", "function"]
    assert answer.features.code_markers == ["Python", "function"]
    assert (answer.rules.pool, answer.rules.reason) == ("code", "code_markers")
    assert (answer.route.pool, answer.route.reason, answer.route.strategy) == (
        "code",
        "code_markers",
        "route",
    )
    assert answer.semantic is None and answer.learned is None  # neither is configured
    assert headers == {}
    assert pools.calls == []  # nothing was generated


async def test_the_route_part_is_what_v1_route_says() -> None:
    svc, _ = serving()
    wishes = Wishes(strategy="speculative")
    text = "Compare Rome and Athens in depth."
    answer, _ = await classify_request(svc, body(text), wishes, None)
    dry = await svc.dry_run(body(text), text, wishes, body(text).needs)
    assert answer.route == dry
    assert (answer.route.strategy, answer.route.target) == ("speculative", "large")
    assert answer.rules.reason == "complex_task"
    assert answer.complexity.level == "complex"
    assert answer.features.complex_markers == ["Compare", "in depth"]


async def test_rules_and_route_can_differ() -> None:
    """The rules want `code`; the client's tier has only `small`: the route says so."""
    svc, _ = serving()
    wishes = Wishes(pools=frozenset({"small"}), tier="free")
    answer, _ = await classify_request(svc, body("def f(x): fix this"), wishes, None)
    assert (answer.rules.pool, answer.route.pool) == ("code", "small")
    with pytest.raises(PoolNotAllowedError):  # pinning outside the tier: the same 403
        await classify_request(svc, body("hi", model="large"), wishes, None)


async def test_a_pinned_model_is_classified_and_pinned() -> None:
    svc, _ = serving()
    asked = body("Translate hi into French", model="big-chat")
    answer, _ = await classify_request(svc, asked, Wishes(), None)
    assert answer.task.type == "translation"
    assert (answer.route.pool, answer.route.reason) == ("large", "pinned_model")


async def test_a_tools_request_routes_to_a_pool_whose_model_has_a_tool_parser() -> None:
    """The rules read code; the code pool's model has no tool parser: the route says so."""
    svc, pools = serving(tool_args())
    text = "Write a Python function that reverses a string."
    plain, _ = await classify_request(svc, body(text), Wishes(), None)
    assert (plain.rules.pool, plain.route.pool) == ("code", "code")
    tools, _ = await classify_request(svc, body(text, tools=[WEATHER]), Wishes(), None)
    assert (tools.rules.pool, tools.route.pool) == ("code", "small")
    assert "code" not in tools.route.fallbacks
    with pytest.raises(PromptError) as err:  # pinned: the 400 a request would get
        await classify_request(svc, body(text, model="code", tools=[WEATHER]), Wishes(), None)
    assert err.value.param == "tools"
    assert pools.calls == []


def test_the_body_is_a_chat_body_with_model_optional() -> None:
    assert body("hi").model == "auto"
    assert body("hi", tools=[WEATHER]).needs == frozenset({"chat", "tools"})
    with pytest.raises(ValidationError) as empty:
        ClassifyRequest.model_validate({"messages": []})
    assert to_api_error(empty.value).param == "messages"
    with pytest.raises(ValidationError) as missing:
        ClassifyRequest.model_validate({"input": "hi"})  # not this endpoint's shape
    assert to_api_error(missing.value).param == "messages"


MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    "sent",
    [
        {"messages": []},
        {"messages": "hi"},
        {"messages": MESSAGES, "n": 0},
        {"messages": MESSAGES, "request_id": "mine"},  # the operator's field
        {"messages": MESSAGES, "switchyard": {"stratgy": "cascade"}},
        {"input": "hi"},
    ],
)
def test_the_body_is_refused_exactly_where_a_chat_body_is(sent: dict[str, Any]) -> None:
    """The classify body is the chat endpoint's body (`ChatRequest`): what the chat
    endpoint refuses before routing, classify refuses with the same 400."""

    def verdict(model: type[ChatRequest]) -> tuple[int, str | None, str | None, str] | None:
        try:
            model.model_validate(sent)
        except ValidationError as exc:
            err = to_api_error(exc)
            return err.status, err.code, err.param, err.message
        return None

    assert verdict(ClassifyRequest) == verdict(ChatRequest)


async def test_a_classification_spends_none_of_the_request_limit_nor_the_budget() -> None:
    """Classifying is metered in the cheap bucket (tenancy/side.py), not as a request."""
    args = fake_app_args()
    args["tenants"] = {"acme": {"limits": {"requests_per_minute": 2}}}
    svc, pools = serving(args)
    clock = Clock()
    keeper = RemoteKeeper(clock)
    svc.gate = QuotaGate(svc.config.quotas(), keeper, clock=clock)
    wishes = Wishes(tenant="acme")
    for _ in range(5):
        await classify_request(svc, body("hi"), wishes, None)
    assert pools.calls == [] and keeper.calls == 0
    await spend(svc.gate, "acme", 0, 0)  # both requests of the minute are still there
    await spend(svc.gate, "acme", 0, 0)


async def test_a_nearly_spent_budget_classifies_frugally() -> None:
    args = fake_app_args()
    args["tenants"] = {"acme": {"budget": {"usd_per_day": 1.0}}}
    svc, _ = serving(args)
    clock = Clock()
    svc.gate = QuotaGate(svc.config.quotas(), RemoteKeeper(clock), clock=clock)
    await spend(svc.gate, "acme", 10, 0.9)
    await svc.gate.flush()
    answer, _ = await classify_request(
        svc, body("hi"), Wishes(tenant="acme", strategy="cascade"), None
    )
    assert answer.route.strategy == "route"
    assert any("frugal routing" in note for note in answer.route.notes)


class KeywordEmbedder:
    """One dimension per keyword, L2-normalised: similarity is keyword overlap."""

    WORDS = ("python", "code", "story", "poem", "hello", "weather")

    def encode(self, texts: Sequence[str]) -> NDArray[np.float32]:
        rows = np.array(
            [[float(w in t.lower()) for w in self.WORDS] + [0.1] for t in texts],
            dtype=np.float32,
        )
        normed: NDArray[np.float32] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
        return normed


async def test_semantic_similarities_with_confidence() -> None:
    args = fake_app_args()
    examples = {"code": ["python code"], "large": ["a story poem"]}
    args["routing"] = {"semantic": {"enabled": True, "min_similarity": 0.5, "examples": examples}}
    config, fake = fake_app(args)
    semantic = SemanticClassifier(KeywordEmbedder(), examples)
    svc = OpenAIServing(config, InProcessPools(config, fake), semantic)
    answer, _ = await classify_request(svc, body("tell me a story poem"), Wishes(), None)
    assert answer.semantic is not None
    assert answer.semantic.pool == "large"
    assert answer.semantic.similarities["large"] > 0.9 > answer.semantic.similarities["code"]
    assert answer.semantic.confidence > 0.99
    assert answer.route.similarities == answer.semantic.similarities  # the same reading
    pinned, _ = await classify_request(svc, body("a story", model="small"), Wishes(), None)
    assert pinned.semantic is None  # routing does not consult it for a pinned model


def profile(**readings: Any) -> RequestProfile:
    readings.setdefault("max_tokens", {})
    return RequestProfile(model="auto", text="x", prompt_tokens=1.0, **readings)


def test_semantic_confidence_is_the_share_of_the_winner() -> None:
    config = RoutingConfig.model_validate({"semantic": {"min_similarity": 0.4}})
    clear = semantic_reading(profile(similarities={"code": 0.8, "large": 0.3}), config)
    close = semantic_reading(profile(similarities={"code": 0.52, "large": 0.5}), config)
    none = semantic_reading(profile(similarities={"code": 0.1, "large": 0.2}), config)
    assert clear is not None and close is not None and none is not None
    assert (clear.pool, close.pool, none.pool) == ("code", "code", None)
    assert clear.confidence > 0.99
    # a 0.02 lead: exp(0.4) : 1 : exp(-2.4) over code, large and "no match"
    assert close.confidence == pytest.approx(0.568, abs=1e-3)
    assert none.confidence > 0.95  # far below min_similarity: surely no match
    assert semantic_reading(profile(), config) is None


def test_learned_scores_per_pool_and_confidence() -> None:
    config = RoutingConfig.model_validate({"learned": {"path": "router.json"}})
    strong = learned_reading(profile(learned=StrongScore(0.9, 0.6, "large")), config)
    weak = learned_reading(profile(learned=StrongScore(0.3, 0.6, "large")), config)
    edge = learned_reading(profile(learned=StrongScore(0.6, 0.6, "large")), config)
    assert strong is not None and weak is not None and edge is not None
    assert strong.scores == {"small": 0.1, "large": 0.9}
    assert (strong.rule, strong.threshold) == ("threshold", 0.6)
    assert (strong.pool, weak.pool, edge.pool) == ("large", "small", "large")
    assert strong.confidence == pytest.approx(0.75)  # (0.9 - 0.6) / (1 - 0.6)
    assert weak.confidence == pytest.approx(0.5)  # (0.6 - 0.3) / 0.6
    assert edge.confidence == 0
    assert learned_reading(profile(), config) is None


def test_an_n_pool_reading_chooses_among_servable_pools() -> None:
    costs = {"small": 1.0, "code": 2.0, "large": 10.0}
    quality = {"small": 0.4, "code": 0.8, "large": 0.9}
    tokens = dict.fromkeys(costs, 16)
    target = PoolQuality(quality, costs, ChoicePolicy("quality_target", 0.6))
    reading = learned_reading(profile(learned=target, max_tokens=tokens), RoutingConfig())
    assert reading is not None
    assert (reading.rule, reading.pool, reading.threshold, reading.lam) == (
        "quality_target", "code", 0.6, None,
    )  # fmt: skip
    assert reading.scores == quality
    assert reading.confidence == pytest.approx(0.5)  # (0.8 - 0.6) / (1 - 0.6)
    # code cannot serve this request: the reading says what the router would do instead
    refused = {"code": Refusal("model", "completion-only")}
    without = learned_reading(
        profile(learned=target, max_tokens=tokens, unservable=refused), RoutingConfig()
    )
    assert without is not None and without.pool == "large"
    tradeoff = PoolQuality(quality, costs, ChoicePolicy("tradeoff", 0.01))
    lead = learned_reading(profile(learned=tradeoff, max_tokens=tokens), RoutingConfig())
    # values: small 0.39, code 0.78, large 0.80: large leads code by 0.02
    assert lead is not None and (lead.pool, lead.lam) == ("large", 0.01)
    assert lead.confidence == pytest.approx(0.02)
