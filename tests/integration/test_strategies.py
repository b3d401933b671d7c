"""Cascade (whole and mid-stream), speculative, verify, ensemble and fallback on Ray Serve
with fake engines, via the openai client."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import client, delete_app, fake_app_args, fresh_health, run_app


def ask(text: str = "hello there") -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def apps(serve_port: int) -> Iterator[dict[str, openai.OpenAI]]:
    # NOTE: small's first token waits 0.3 s so a speculative race's large request has
    # reached its engine when small wins (one cancelled before it starts never ran, so
    # there is nothing to abort); large takes ~2 s, so small still wins.
    confident = fake_app_args(
        small={"logprobs": [-0.1], "first_token_latency_s": 0.3},
        large={"token_latency_s": 0.5},
        code={"token_latency_s": 0.05},
    )
    unsure = fake_app_args(
        small={"logprobs": [-0.3, -2.0], "token_latency_s": 0.2},
        large={"token_latency_s": 0.01},
    )
    unsure["routing"] = {"cascade": {"stream_decide_tokens": 2}}
    flaky = fake_app_args(small={"fail_requests": True})
    flaky["routing"] = {"fallback": {"failure_threshold": 2, "cooldown_s": 600}}
    # verify: code judges and says No; ensemble: two small samples agree before large ends
    judged = fake_app_args(
        small={"logprobs": [-0.1], "first_token_latency_s": 0.3},
        large={"token_latency_s": 0.5},
        code={"reply": "No"},
    )
    judged["routing"] = {
        "verifier": {"judge_pool": "code"},
        "ensemble": {"members": ["small", "small", "large"]},
    }
    names = {"confident": confident, "unsure": unsure, "flaky": flaky, "judged": judged}
    for name, args in names.items():
        run_app(args, name)
    yield {name: client(serve_port, name) for name in names}
    for name in names:
        delete_app(name)


def health(port: int, app: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"http://127.0.0.1:{port}/{app}/health").json()
    return body


def after_abort(port: int, app: str, pool: str, before: int) -> dict[str, Any]:
    """`pool`'s /health entry once its abort count passed `before` and nothing runs: the
    abort reaches the replica asynchronously (a bounded wait)."""
    for _ in range(50):
        stats: dict[str, Any] = health(port, app)["pools"][pool]
        if stats["aborted"] > before and stats["running"] == 0:
            break
        time.sleep(0.2)
    return stats


def info(raw: Any) -> dict[str, Any]:
    extra: dict[str, Any] = raw.parse().model_extra["switchyard"]
    return extra


def test_cascade_keeps_confident_small_answer(apps: dict[str, openai.OpenAI]) -> None:
    raw = apps["confident"].chat.completions.with_raw_response.create(
        model="auto", messages=ask(), extra_body={"switchyard": {"strategy": "cascade"}}
    )
    assert raw.headers["x-switchyard-strategy"] == "cascade"
    assert raw.headers["x-switchyard-pool"] == "small"
    sy = info(raw)
    assert (sy["escalated"], sy["confidence"], sy["pools_tried"]) == (False, -0.1, ["small"])


def test_cascade_escalates_low_confidence(apps: dict[str, openai.OpenAI]) -> None:
    raw = apps["unsure"].chat.completions.with_raw_response.create(
        model="auto", messages=ask(), extra_headers={"x-switchyard-strategy": "cascade"}
    )
    sy = info(raw)
    assert raw.headers["x-switchyard-pool"] == "large"
    assert sy["escalated"] is True
    assert sy["confidence"] == pytest.approx((-0.3 - 2.0 - 0.3 - 2.0) / 4)
    assert sy["pools_tried"] == ["small", "large"]
    assert raw.parse().choices[0].message.content == "large answer from big-chat"


def test_speculative_aborts_the_loser_in_its_engine(
    serve_port: int, apps: dict[str, openai.OpenAI]
) -> None:
    # `before` from a stats sample of `large` taken now, not one older than earlier tests
    sampled = fresh_health(f"http://127.0.0.1:{serve_port}/confident", "large")
    before = sampled["pools"]["large"]["aborted"]
    raw = apps["confident"].chat.completions.with_raw_response.create(
        model="auto", messages=ask(), extra_body={"switchyard": {"strategy": "speculative"}}
    )
    sy = info(raw)
    assert (sy["pool"], sy["speculative_winner"]) == ("small", "source")
    assert sy["discarded_engine_s"] > 0
    large = after_abort(serve_port, "confident", "large", before)
    assert large["aborted"] == before + 1
    assert large["running"] == 0


def test_speculative_unsure_small_returns_large(apps: dict[str, openai.OpenAI]) -> None:
    raw = apps["unsure"].chat.completions.with_raw_response.create(
        model="auto", messages=ask(), extra_body={"switchyard": {"strategy": "speculative"}}
    )
    sy = info(raw)
    assert (sy["pool"], sy["speculative_winner"], sy["escalated"]) == ("large", "target", True)


def test_streaming_cascade_and_speculative(apps: dict[str, openai.OpenAI]) -> None:
    for strategy, app, expected in [
        ("cascade", "unsure", "large answer from big-chat"),
        ("speculative", "confident", "small answer from tiny-chat"),
    ]:
        stream = apps[app].chat.completions.create(
            model="auto",
            messages=ask(),
            stream=True,
            extra_body={"switchyard": {"strategy": strategy}},
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert text == expected, strategy


def test_fallback_and_breaker(serve_port: int, apps: dict[str, openai.OpenAI]) -> None:
    for _ in range(2):
        raw = apps["flaky"].chat.completions.with_raw_response.create(model="auto", messages=ask())
        assert raw.headers["x-switchyard-pool"] == "large"
        assert info(raw)["pools_tried"] == ["small", "large"]
    assert health(serve_port, "flaky")["pools"]["small"]["circuit"] == "open"
    raw = apps["flaky"].chat.completions.with_raw_response.create(model="auto", messages=ask())
    # small's circuit is open: not tried; the lowest score of the others (their live
    # latency included, so either) serves
    assert info(raw)["pools_tried"] in (["large"], ["code"])
    stream = apps["flaky"].chat.completions.create(model="small", messages=ask(), stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def test_route_dry_run(serve_port: int, apps: dict[str, openai.OpenAI]) -> None:
    resp = httpx.post(
        f"http://127.0.0.1:{serve_port}/confident/v1/route",
        json={
            "model": "auto",
            "messages": ask("write a python function"),
            "switchyard": {"strategy": "cascade"},
        },
    )
    assert resp.status_code == 200
    plan = resp.json()
    assert (plan["strategy"], plan["pool"], plan["target"]) == ("cascade", "small", "code")
    assert plan["confidence_method"] == "mean_logprob"


def test_bad_extension_is_400(serve_port: int, apps: dict[str, openai.OpenAI]) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        apps["confident"].chat.completions.create(
            model="auto", messages=ask(), extra_body={"switchyard": {"stratgy": "cascade"}}
        )
    assert err.value.body["param"] == "switchyard.stratgy"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        apps["confident"].chat.completions.create(
            model="auto", messages=ask(), extra_headers={"x-switchyard-strategy": "yolo"}
        )


def test_verify_escalates_what_the_judge_rejects_and_accounts_the_judge(
    serve_port: int, apps: dict[str, openai.OpenAI]
) -> None:
    base = f"http://127.0.0.1:{serve_port}/judged"
    before = fresh_health(base, "code")["pools"]["code"]["request_s"]
    raw = apps["judged"].chat.completions.with_raw_response.create(
        model="auto", messages=ask(), extra_headers={"x-switchyard-strategy": "verify"}
    )
    sy = info(raw)
    assert (sy["strategy"], sy["pool"], sy["escalated"]) == ("verify", "large", True)
    assert (sy["judge_pool"], sy["judge_score"]) == ("code", 0.0)
    assert raw.parse().choices[0].message.content == "large answer from big-chat"
    assert health(serve_port, "judged")["counters"]["verify.rejected"] >= 1
    # the judge's call ran on the code pool's engine and is in its engine time
    assert fresh_health(base, "code")["pools"]["code"]["request_s"] > before


def test_ensemble_majority_aborts_the_slow_member_in_its_engine(
    serve_port: int, apps: dict[str, openai.OpenAI]
) -> None:
    base = f"http://127.0.0.1:{serve_port}/judged"
    before = fresh_health(base, "large")["pools"]["large"]["aborted"]
    raw = apps["judged"].chat.completions.with_raw_response.create(
        model="auto", messages=ask(), extra_body={"switchyard": {"strategy": "ensemble"}}
    )
    sy = info(raw)
    assert (sy["strategy"], sy["pool"], sy["votes"], sy["answers"]) == ("ensemble", "small", 2, 2)
    assert raw.parse().choices[0].message.content == "small answer from tiny-chat"
    assert after_abort(serve_port, "judged", "large", before)["aborted"] == before + 1


def test_midstream_cascade_aborts_an_unsure_start(
    serve_port: int, apps: dict[str, openai.OpenAI]
) -> None:
    """The unsure app judges a cascade stream on its first 2 tokens (mean -1.15): the
    small stream is aborted in its engine after them, and large's answer streams."""
    base = f"http://127.0.0.1:{serve_port}/unsure"
    before = fresh_health(base, "small")["pools"]["small"]["aborted"]
    stream = apps["unsure"].chat.completions.create(
        model="auto",
        messages=ask(),
        stream=True,
        extra_body={"switchyard": {"strategy": "cascade"}},
    )
    chunks = list(stream)
    sy = chunks[0].model_extra["switchyard"]
    assert (sy["pool"], sy["escalated"], sy["discarded_tokens"]) == ("large", True, 2)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "large answer from big-chat"
    )
    assert after_abort(serve_port, "unsure", "small", before)["aborted"] == before + 1
