"""The adaptive router in simulation (routing/training/bandit_sim.py): it converges to the
best pool per class, regret grows sub-linearly, it stays inside tier limits and its
exploration cap, and decay lets it re-learn when a pool changes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from routing.training.bandit_sim import Environment, SimResult, main, simulate
from routing.training.cli import SUBCOMMANDS

STEPS = 6000
EXPLORE_SHARE = 0.1


@pytest.fixture(scope="module")
def run() -> SimResult:
    return simulate(STEPS, seed=0, explore_share=EXPLORE_SHARE)


def test_it_converges_to_the_best_eligible_pool_of_every_class(run: SimResult) -> None:
    shares = run.best_share(STEPS - STEPS // 4)
    assert set(shares) == {"chat", "code", "reasoning", "extraction"}
    assert min(shares.values()) >= 0.8, shares
    # Each class has another best pool, so this is learned per context, not one pool.
    best = {run.best[i] for i in range(STEPS) if len(run.stream[i].eligible) == 3}
    assert best == {"small", "large", "code"}


def test_regret_grows_sublinearly_and_far_below_the_baselines(run: SimResult) -> None:
    quarter = STEPS // 4
    first, last = run.slope("bandit", 0, quarter), run.slope("bandit", STEPS - quarter, STEPS)
    assert last < 0.5 * first, (first, last)
    final = run.final()
    assert final["bandit"] < 0.2 * final["fixed"] and final["bandit"] < 0.2 * final["random"]
    # The baselines' regret is linear: their last quarter costs as much as their first.
    assert run.slope("random", STEPS - quarter, STEPS) > 0.7 * run.slope("random", 0, quarter)


def test_it_never_chooses_a_pool_the_request_may_not_use(run: SimResult) -> None:
    assert run.violations == 0
    limited = 0
    for request, pool in zip(run.stream, run.chosen, strict=True):
        assert pool in request.eligible
        if "large" not in request.eligible:
            limited += 1
            assert pool != "large"
    assert limited > STEPS // 5  # the tier limit was really exercised


def test_exploration_stays_within_its_share_and_never_on_frugal_requests(
    run: SimResult,
) -> None:
    assert 0 < run.explore_share() <= EXPLORE_SHARE
    decisions: dict[str, int] = {}
    explorations: dict[str, int] = {}
    for request, explored in zip(run.stream, run.explored, strict=True):
        if request.frugal:
            assert not explored
            continue
        decisions[request.cls] = decisions.get(request.cls, 0) + 1
        explorations[request.cls] = explorations.get(request.cls, 0) + explored
        assert explorations[request.cls] <= EXPLORE_SHARE * decisions[request.cls] + 1e-9
    assert sum(r.frugal for r in run.stream) > STEPS // 20


def test_decay_lets_it_relearn_after_the_environment_flips() -> None:
    env = Environment(flip_at=3000)  # the code pool breaks on code requests
    steps, window = 9000, 1500
    forgetting = simulate(steps, seed=0, env=env, half_life_s=1000.0)
    remembering = simulate(steps, seed=0, env=env, half_life_s=1e12)
    assert forgetting.best_share(0, 3000)["code"] >= 0.9  # code pool, before the flip
    assert {forgetting.best[i] for i in range(steps - window, steps)} >= {"large", "small"}
    relearned = forgetting.best_share(steps - window)["code"]
    stuck = remembering.best_share(steps - window)["code"]
    assert relearned >= 0.8 and stuck < 0.6, (relearned, stuck)
    assert forgetting.violations == remembering.violations == 0


def test_a_run_is_reproducible_from_its_seed() -> None:
    a, b, c = simulate(500, seed=4), simulate(500, seed=4), simulate(500, seed=5)
    assert a.chosen == b.chosen and a.regret == b.regret
    assert a.chosen != c.chosen


def test_the_command_prints_and_writes_the_curve(tmp_path: Path) -> None:
    assert SUBCOMMANDS["bandit-sim"][0] == "routing.training.bandit_sim"
    png, summary = tmp_path / "regret.png", tmp_path / "sim.json"
    args = ["--steps", "400", "--seed", "1", "--plot", str(png), "--json", str(summary)]
    assert main(args) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(summary.read_text())
    assert data["steps"] == 400 and data["violations"] == 0
    assert set(data["final_regret"]) == {"bandit", "random", "fixed"}
