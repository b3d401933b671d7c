"""Strategies that judge answers: `verify` (a judge pool grades the cheap answer),
`ensemble` (several answers, one picked) and the mid-stream cascade (a stream judged on
its first tokens), through OpenAIServing on in-process fake engines."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai.types.chat import ChatCompletionChunk

from core.errors import PromptError
from routing.planner import Wishes
from tests.conftest import fake_app_args
from tests.unit.test_serving import WEATHER, body, chat, events, serving, text_of, tool_args

VERIFY = Wishes(strategy="verify")
ENSEMBLE = Wishes(strategy="ensemble")
CASCADE = Wishes(strategy="cascade")
YES = {"reply": "Yes"}
NO = {"reply": "No"}
UNSURE = {"logprobs": [-2.0]}


def args(routing: dict[str, Any], **fakes: dict[str, Any]) -> dict[str, Any]:
    made = fake_app_args(**fakes)
    made["routing"] = routing
    return made


def judged_by_code(**fakes: dict[str, Any]) -> dict[str, Any]:
    return args({"verifier": {"judge_pool": "code"}}, **fakes)


def info(routed: Any) -> dict[str, Any]:
    return body(routed)["switchyard"]  # type: ignore[no-any-return]


# --- verify ----------------------------------------------------------------------------


async def test_verify_keeps_the_cheap_answer_the_judge_accepts() -> None:
    svc, pools = serving(judged_by_code(code=YES))
    answer = body(await svc.generate(chat(text="What is 2 + 2?"), VERIFY))
    got = answer["switchyard"]
    assert (got["pool"], got["strategy"], got["escalated"]) == ("small", "verify", False)
    assert (got["judge_pool"], got["judge_score"]) == ("code", 1.0)
    assert answer["choices"][0]["message"]["content"] == "small answer from tiny-chat"
    assert [p for p, _ in pools.calls] == ["small", "code"]
    (graded,) = pools.requests("code")
    prompt = graded["messages"][0]["content"]
    assert "What is 2 + 2?" in prompt and "small answer from tiny-chat" in prompt
    assert (graded["max_completion_tokens"], graded["top_logprobs"]) == (1, 5)
    assert graded["request_id"] != pools.requests("small")[0]["request_id"]


async def test_verify_escalates_the_answer_the_judge_rejects() -> None:
    svc, pools = serving(judged_by_code(code=NO))
    answer = body(await svc.generate(chat(), VERIFY))
    got = answer["switchyard"]
    assert (got["pool"], got["escalated"], got["judge_score"]) == ("large", True, 0.0)
    assert got["pools_tried"] == ["small", "large"]
    assert got["discarded_tokens"] == 4  # the rejected small answer
    assert [p for p, _ in pools.calls] == ["small", "code", "large"]
    assert answer["choices"][0]["message"]["content"] == "large answer from big-chat"
    assert svc.metrics.counts["escalations"] == 1


async def test_verify_retries_with_a_new_sample_before_escalating() -> None:
    routing = {"verifier": {"judge_pool": "code", "retries": 1, "retry_temperature": 0.9}}
    svc, pools = serving(args(routing, code=NO))
    got = info(await svc.generate(chat(temperature=0), VERIFY))
    assert [p for p, _ in pools.calls] == ["small", "code", "small", "code", "large"]
    first, again = pools.requests("small")
    assert (first["temperature"], again["temperature"]) == (0, 0.9)
    assert again["seed"] != first.get("seed") and again["request_id"] != first["request_id"]
    assert got["pools_tried"] == ["small", "small", "large"]


async def test_a_judge_that_cannot_tell_or_fails_rejects() -> None:
    # The default judge is the cheap pool itself: its fake reply is neither yes nor no.
    svc, pools = serving()
    got = info(await svc.generate(chat(), VERIFY))
    assert (got["pool"], got["judge_pool"], got["judge_score"]) == ("large", "small", None)
    assert any("neither yes nor no" in n for n in got["notes"])
    assert [p for p, _ in pools.calls] == ["small", "small", "large"]
    svc, _ = serving(judged_by_code(code={"fail_requests": True}))
    got = info(await svc.generate(chat(), VERIFY))
    assert got["pool"] == "large"
    assert any("judge 'code' failed" in n for n in got["notes"])


async def test_verify_reserves_the_judge_and_retries() -> None:
    svc, _ = serving(judged_by_code())
    plan, _ = await svc.planning.plan(chat(), "hello", VERIFY, frozenset())
    cascade, _ = await svc.planning.plan(chat(), "hello", CASCADE, frozenset())
    verify_tokens, _ = svc._worst_case(plan, 10)
    cascade_tokens, _ = svc._worst_case(cascade, 10)
    # the judge reads the prompt, the answer (64 on small) and its instruction; writes 1
    assert verify_tokens == cascade_tokens + 10 + 64 + 200 + 1
    svc, _ = serving(args({"verifier": {"judge_pool": "code", "retries": 2}}))
    plan, _ = await svc.planning.plan(chat(), "hello", VERIFY, frozenset())
    assert svc._worst_case(plan, 10)[0] == cascade_tokens + 2 * (10 + 64) + 3 * (10 + 64 + 201)


async def test_verify_streams_only_the_accepted_answer() -> None:
    svc, _ = serving(judged_by_code(code=NO))
    chunks = await events(await svc.generate(chat(stream=True), VERIFY))
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)
    assert text_of(chunks) == "large answer from big-chat"
    assert "small" not in json.dumps(chunks[1:])
    assert chunks[0]["switchyard"]["judge_score"] == 0.0


async def test_verify_and_ensemble_judge_one_answer() -> None:
    svc, _ = serving()
    for wishes in (VERIFY, ENSEMBLE):
        with pytest.raises(PromptError, match="judges one answer"):
            await svc.generate(chat(n=2), wishes)


# --- ensemble --------------------------------------------------------------------------


async def test_ensemble_majority_aborts_the_answer_it_no_longer_needs() -> None:
    routing = {"ensemble": {"members": ["small", "small", "large"]}}
    svc, pools = serving(args(routing, large={"token_latency_s": 0.2}))
    answer = body(await svc.generate(chat(), ENSEMBLE))
    got = answer["switchyard"]
    assert (got["pool"], got["strategy"], got["votes"], got["answers"]) == (
        "small", "ensemble", 2, 2,
    )  # fmt: skip
    assert got["pools_tried"] == ["small", "small", "large"]
    (large,) = pools.requests("large")
    assert pools.engines["large"].aborted == [large["request_id"]]
    assert any("1 of 3 answers not awaited" in n for n in got["notes"])
    first, second = pools.requests("small")
    assert first["request_id"] != second["request_id"]
    assert first.get("seed") != second["seed"]  # a repeat is another sample


async def test_ensemble_by_logprob_keeps_the_most_confident_answer() -> None:
    routing = {"ensemble": {"members": ["small", "large"], "pick": "logprob"}}
    svc, pools = serving(args(routing, small={"logprobs": [-2.0]}, large={"logprobs": [-0.2]}))
    got = info(await svc.generate(chat(), ENSEMBLE))
    assert (got["pool"], got["confidence"], got["answers"]) == ("large", -0.2, 2)
    assert got["discarded_tokens"] == 4
    assert pools.engines["large"].aborted == pools.engines["small"].aborted == []


async def test_ensemble_without_agreement_keeps_the_most_confident() -> None:
    routing = {"ensemble": {"members": ["small", "large", "code"]}}
    fakes = {"small": {"logprobs": [-1.0]}, "large": {"logprobs": [-0.3]}, "code": UNSURE}
    svc, _ = serving(args(routing, **fakes))
    got = info(await svc.generate(chat(), ENSEMBLE))
    assert (got["pool"], got["votes"], got["answers"]) == ("large", 1, 3)


async def test_ensemble_survives_a_failing_member() -> None:
    routing = {"ensemble": {"members": ["small", "large"]}}
    svc, _ = serving(args(routing, small={"fail_requests": True}))
    got = info(await svc.generate(chat(), ENSEMBLE))
    assert (got["pool"], got["answers"]) == ("large", 1)


async def test_ensemble_with_one_member_left_is_routed() -> None:
    routing = {"ensemble": {"members": ["small", "base"]}}
    made = args(routing)
    made["pools"]["base"] = {"model": "base-lm"}
    svc, pools = serving(made)
    # a chat request cannot go to the completion-only pool: one member left
    got = info(await svc.generate(chat(), ENSEMBLE))
    assert got["strategy"] == "route"
    assert any("ensemble skipped" in n for n in got["notes"])
    assert len(pools.calls) == 1


async def test_ensemble_by_judge_keeps_the_answer_the_judge_grades_best() -> None:
    # Two small samples agree; the judge accepts only the large answer, which wins.
    routing = {
        "ensemble": {"members": ["small", "small", "large"], "pick": "judge"},
        "verifier": {"judge_pool": "code"},
    }
    judge = {"reply": "No", "replies": {"large answer": "Yes"}}
    svc, pools = serving(args(routing, code=judge))
    got = info(await svc.generate(chat(), ENSEMBLE))
    assert (got["pool"], got["judge_pool"], got["judge_score"]) == ("large", "code", 1.0)
    assert (got["votes"], got["answers"]) == (1, 3)
    # the two small samples answer alike: judged once, so two judgements in all
    graded = [r["messages"][0]["content"] for r in pools.requests("code")]
    assert len(graded) == 2 and sum("large answer" in g for g in graded) == 1
    assert got["discarded_tokens"] == 8  # both small answers, billed


async def test_ensemble_by_judge_without_a_grade_falls_back_to_the_majority() -> None:
    routing = {"ensemble": {"members": ["small", "small", "large"], "pick": "judge"}}
    # the default judge is the first member, whose fake reply is neither yes nor no
    svc, _ = serving(args(routing))
    got = info(await svc.generate(chat(), ENSEMBLE))
    assert (got["pool"], got["votes"], got["judge_score"]) == ("small", 2, None)
    assert sum("neither yes nor no" in n for n in got["notes"]) == 1  # two answers judged


async def test_ensemble_by_judge_reserves_a_judgement_per_member() -> None:
    routing = {"ensemble": {"members": ["small", "large"], "pick": "judge"}}
    svc, _ = serving(args({**routing, "verifier": {"judge_pool": "code"}}))
    judged, _ = await svc.planning.plan(chat(), "hello", ENSEMBLE, frozenset())
    svc, _ = serving(args({"ensemble": {"members": ["small", "large"]}}))
    voted, _ = await svc.planning.plan(chat(), "hello", ENSEMBLE, frozenset())
    assert (judged.judge, voted.judge) == ("code", None)
    extra = svc._worst_case(judged, 10)[0] - svc._worst_case(voted, 10)[0]
    caps = [judged.max_tokens.get(p) for p in ("small", "large")]
    assert extra == sum(10 + cap + 200 + 1 for cap in caps if cap is not None)


# --- mid-stream cascade ----------------------------------------------------------------


def midstream(**fakes: dict[str, Any]) -> dict[str, Any]:
    return args({"cascade": {"stream_decide_tokens": 2}}, **fakes)


async def test_midstream_cascade_streams_on_when_the_first_tokens_are_sure() -> None:
    # Sure on its first 2 tokens, unsure after: the decision reads the first 2 only.
    svc, pools = serving(midstream(small={"logprobs": [-0.1, -0.1, -3.0, -3.0]}))
    chunks = await events(await svc.generate(chat(stream=True), CASCADE))
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk)
    got = chunks[0]["switchyard"]
    assert (got["pool"], got["escalated"], got["confidence"]) == ("small", False, -0.1)
    assert text_of(chunks) == "small answer from tiny-chat"
    assert all(c["choices"][0].get("logprobs") is None for c in chunks if c["choices"])
    assert [p for p, _ in pools.calls] == ["small"]
    assert pools.engines["small"].aborted == []


async def test_midstream_cascade_aborts_an_unsure_start_and_streams_the_target() -> None:
    svc, pools = serving(midstream(small={"logprobs": [-2.0], "token_latency_s": 0.05}))
    chunks = await events(await svc.generate(chat(stream=True), CASCADE))
    got = chunks[0]["switchyard"]
    assert (got["pool"], got["escalated"], got["discarded_tokens"]) == ("large", True, 2)
    assert got["pools_tried"] == ["small", "large"]
    assert text_of(chunks) == "large answer from big-chat"
    assert "small" not in json.dumps(chunks[1:])  # the unsure start is never shown
    (small,) = pools.requests("small")
    assert pools.engines["small"].aborted == [small["request_id"]]


async def test_midstream_cascade_escalates_a_cheap_stream_that_fails_before_the_decision() -> None:
    svc, pools = serving(midstream(small={"logprobs": [-0.1], "fail_after_tokens": 1}))
    chunks = await events(await svc.generate(chat(stream=True), CASCADE))
    got = chunks[0]["switchyard"]
    assert (got["pool"], got["escalated"]) == ("large", True)
    assert text_of(chunks) == "large answer from big-chat"
    assert [p for p, _ in pools.calls] == ["small", "large"]


async def test_midstream_cascade_decides_an_answer_shorter_than_its_window() -> None:
    svc, _ = serving(midstream(small={"reply": "Paris", "logprobs": [-0.1]}))
    chunks = await events(await svc.generate(chat(stream=True), CASCADE))
    got = chunks[0]["switchyard"]
    assert (got["pool"], got["escalated"], got["confidence"]) == ("small", False, -0.1)
    assert text_of(chunks) == "Paris"


async def test_midstream_cascade_keeps_logprobs_the_client_asked_for() -> None:
    svc, _ = serving(midstream(small={"logprobs": [-0.1]}))
    routed = await svc.generate(chat(stream=True, logprobs=True), CASCADE)
    chunks = await events(routed)
    shown = [c["choices"][0]["logprobs"] for c in chunks[1:] if c["choices"]]
    assert any(s and s["content"] for s in shown)


async def test_midstream_cascade_with_tools_holds_the_answer_back() -> None:
    """A tool call is only checkable whole: the validity cascade holds it back."""
    fakes = tool_args(small={"tool_calls": "text", "logprobs": [-0.1]})
    fakes["routing"] = {"cascade": {"stream_decide_tokens": 2}}
    svc, _ = serving(fakes)
    chunks = await events(await svc.generate(chat(tools=[WEATHER], stream=True), CASCADE))
    assert chunks[0]["switchyard"]["pool"] == "large"
    assert chunks[0]["switchyard"]["invalid"] is not None


# --- the dry run and the counters ------------------------------------------------------


async def test_dry_run_shows_the_judge_the_members_and_the_stream_decision() -> None:
    routing = {
        "verifier": {"judge_pool": "code"},
        "ensemble": {"members": ["small", "large"]},
        "cascade": {"stream_decide_tokens": 8},
    }
    svc, pools = serving(args(routing))
    request = chat()
    shown = await svc.dry_run(request, "hello there", VERIFY, request.needs)
    assert (shown.strategy, shown.pool, shown.target, shown.judge) == (
        "verify", "small", "large", "code",
    )  # fmt: skip
    shown = await svc.dry_run(request, "hello there", ENSEMBLE, request.needs)
    assert (shown.strategy, shown.members) == ("ensemble", ["small", "large"])
    shown = await svc.dry_run(request, "hello there", CASCADE, request.needs)
    assert shown.stream_decide_tokens == 8
    assert pools.calls == []


async def test_ensemble_losers_are_counted_per_pool() -> None:
    routing = {"ensemble": {"members": ["small", "large"], "pick": "logprob"}}
    svc, _ = serving(args(routing, small=UNSURE))
    await svc.generate(chat(), ENSEMBLE)
    assert svc.metrics.counts["strategy.ensemble"] == 1
    assert svc.metrics.counts["served.large"] == 1
    assert svc.metrics.counts["discarded_tokens"] == 4


async def test_midstream_cascade_holds_the_start_to_its_own_threshold() -> None:
    """A start scored -0.8 escalates under the whole-answer threshold (-0.6) and streams
    on under a stream threshold of -1.0."""
    rules = [{"source": "small", "target": "large", "stream_threshold": -1.0}]
    fakes = {"small": {"logprobs": [-0.8]}}
    for routing, pool, threshold in [
        ({"cascade": {"stream_decide_tokens": 2}}, "large", -0.6),
        ({"cascade": {"stream_decide_tokens": 2, "rules": rules}}, "small", -1.0),
    ]:
        svc, _ = serving(args(routing, **fakes))
        chunks = await events(await svc.generate(chat(stream=True), CASCADE))
        got = chunks[0]["switchyard"]
        assert (got["pool"], got["threshold"]) == (pool, threshold)
        # a whole (unstreamed) answer keeps the whole-answer threshold
        assert info(await svc.generate(chat(), CASCADE))["threshold"] == -0.6
