"""A new learned router file is served without a restart; a bad one keeps the old router."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

from deployments.openai.serving import OpenAIServing
from deployments.router_reload import WatchedRouterFile
from routing.choice import ChoicePolicy
from routing.learned import LearnedRouter, PoolRouter, load_serving_router
from routing.planner import Wishes
from routing.scorers import LogisticScorer
from tests.conftest import fake_app_args
from tests.unit.test_learned import HashingEmbedder
from tests.unit.test_serving import chat, serving

EMBEDDER = HashingEmbedder()


def router(bias: float, threshold: float | None = None) -> LearnedRouter:
    """A router whose score is sigmoid(bias) for every prompt (all weights zero):
    -3 -> 0.047, 1 -> 0.731, 2 -> 0.881, 3 -> 0.953, 5 -> 0.993."""
    return LearnedRouter(
        weak="small", strong="large", coef=np.zeros(EMBEDDER.dimension), intercept=bias,
        threshold=threshold, embedder=EMBEDDER,
    )  # fmt: skip


def score(r: LearnedRouter | None) -> float:
    """The router's score (the same for every prompt), rounded: tells the versions apart."""
    assert r is not None
    return round(float(r.score_vectors(np.zeros((1, EMBEDDER.dimension)))[0]), 3)


def watched(path: Path) -> WatchedRouterFile[LearnedRouter]:
    return WatchedRouterFile(path, lambda p: LearnedRouter.load(p, embedder=EMBEDDER))


def bump_mtime(path: Path) -> None:
    """Make the next poll see a new mtime even on a coarse-clock filesystem."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_an_unchanged_or_merely_touched_file_is_not_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "router.json"
    router(-3.0).save(path)
    file = watched(path)
    assert score(file.load()) == 0.047
    assert file.poll() is None
    bump_mtime(path)  # touched, same bytes
    assert file.poll() is None
    router(-3.0).save(path)  # written again, same bytes
    bump_mtime(path)
    assert (file.poll(), file.reloads) == (None, 0)


def test_new_content_is_loaded_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "router.json"
    router(-3.0).save(path)
    file = watched(path)
    file.load()
    router(2.0, threshold=0.4).save(path)
    bump_mtime(path)
    with caplog.at_level(logging.INFO, logger="deployments.router_reload"):
        new = file.poll()
    assert (score(new), new and new.threshold) == (0.881, 0.4)
    assert "learned router reloaded" in caplog.text
    assert (file.poll(), file.reloads) == (None, 1)


@pytest.mark.parametrize(
    "broken",
    [
        lambda text: text[: len(text) // 2],  # a copy caught half-way
        lambda text: text.replace('"dimension": 16', '"dimension": 8'),  # inconsistent
        lambda text: text.replace('"weak": "small"', '"weak": "large"'),  # weak == strong
        lambda text: "",  # truncated to nothing
    ],
)
def test_an_invalid_file_keeps_the_old_router_until_a_valid_one_arrives(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, broken: object
) -> None:
    path = tmp_path / "router.json"
    router(-3.0).save(path)
    file = watched(path)
    file.load()
    damaged = broken(router(5.0).to_json())  # type: ignore[operator]
    assert damaged != router(5.0).to_json()
    path.write_text(damaged)
    bump_mtime(path)
    with caplog.at_level(logging.WARNING, logger="deployments.router_reload"):
        assert file.poll() is None
        assert file.poll() is None  # tried again, but warned about once
    assert caplog.text.count("still serving the router loaded before") == 1
    path.write_text(router(5.0).to_json())  # the copy completes
    bump_mtime(path)
    new = file.poll()
    assert score(new) == 0.993


def test_a_deleted_file_keeps_the_router_and_its_return_is_noticed(tmp_path: Path) -> None:
    path = tmp_path / "router.json"
    router(-3.0).save(path)
    file = watched(path)
    file.load()
    path.unlink()
    assert file.poll() is None
    router(1.0).save(path)
    new = file.poll()
    assert score(new) == 0.731


def test_a_file_that_never_loaded_fails_start_up(tmp_path: Path) -> None:
    path = tmp_path / "router.json"
    path.write_text("{}")
    with pytest.raises(ValueError):
        watched(path).load()


def learned_serving(path: Path, threshold: float | None = None) -> OpenAIServing:
    args = fake_app_args()
    learned = {"path": str(path)} if threshold is None else {"path": str(path), "threshold": 0.9}
    args.setdefault("routing", {})["learned"] = learned
    svc, _ = serving(args)
    svc.planning.use_learned(LearnedRouter.load(path, embedder=EMBEDDER))
    return svc


async def test_the_swapped_router_decides_the_next_request(tmp_path: Path) -> None:
    path = tmp_path / "router.json"
    router(-3.0).save(path)  # P(strong needed) = 0.05 for every prompt
    svc = learned_serving(path)
    first = await svc.generate(chat(text="Is it true?"))
    assert first.route.pool == "small"
    file = watched(path)
    file.load()
    router(3.0).save(path)  # 0.95: everything needs the strong pool
    bump_mtime(path)
    new = file.poll()
    assert new is not None
    svc.planning.use_learned(new)
    second = await svc.generate(chat(text="Is it true?"))
    assert (second.route.pool, second.route.reason) == ("large", "learned")


def test_the_new_files_threshold_applies_unless_the_config_sets_one(tmp_path: Path) -> None:
    path = tmp_path / "router.json"
    router(0.0, threshold=0.3).save(path)
    svc = learned_serving(path)
    assert svc.planning.learned_threshold == 0.3
    svc.planning.use_learned(router(0.0, threshold=0.7))
    assert svc.planning.learned_threshold == 0.7
    pinned = learned_serving(path, threshold=0.9)
    pinned.planning.use_learned(router(0.0, threshold=0.2))
    assert pinned.planning.learned_threshold == 0.9


def pool_router(**logits: float) -> PoolRouter:
    """An N-pool router whose P(correct) per pool is sigmoid(logit) for every prompt."""
    pools = list(logits)
    scorer = LogisticScorer(
        np.zeros((len(pools), EMBEDDER.dimension)), np.array(list(logits.values()))
    )
    costs = {"small": 0.0001, "code": 0.0002, "large": 0.001}
    return PoolRouter(
        pools=pools, costs=[costs[p] for p in pools], scorer=scorer,
        policy=ChoicePolicy("quality_target", 0.6), embedder=EMBEDDER,
    )  # fmt: skip


async def test_an_n_pool_router_file_replaces_a_binary_one_and_can_pick_code(
    tmp_path: Path,
) -> None:
    path = tmp_path / "router.json"
    router(-3.0).save(path)
    svc = learned_serving(path)
    assert (await svc.generate(chat(text="Is it true?"))).route.pool == "small"
    # P(correct): small 0.27, code 0.73, large 0.88: code is the cheapest reaching 0.6
    pool_router(small=-1.0, code=1.0, large=2.0).save(path)
    bump_mtime(path)
    served = load_serving_router(path, ["small", "large", "code"], embedder=EMBEDDER)
    svc.planning.use_learned(served)
    routed = await svc.generate(chat(text="Is it true?"))
    assert (routed.route.pool, routed.route.reason) == ("code", "learned")
    # the same reading picks the cascade's escalation target: code, not the default large
    wishes = Wishes(strategy="cascade")
    request = chat(text="Is it true?")
    decided, _ = await svc.planning.plan(request, request.text, wishes, request.needs)
    assert (decided.pool, decided.target) == ("small", "code")


def test_an_n_pool_router_for_other_pools_is_refused_before_it_is_served(tmp_path: Path) -> None:
    path = tmp_path / "router.json"
    pool_router(small=0.0, code=1.0, large=2.0).save(path)
    with pytest.raises(ValueError, match="serves small; it needs at least two"):
        load_serving_router(path, ["small", "tiny"], embedder=EMBEDDER)
    assert load_serving_router(path, ["small", "code"], embedder=EMBEDDER).family == "lr"
