"""N-pool routers: the chooser's rules, eligibility, calibration to a budget, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from routing import learned
from routing.learned import ChoicePolicy, PoolRouter, choose_pools
from routing.scorers import LogisticScorer
from routing.training import cli, train
from routing.training.multipool import (
    calibrate_policy,
    costs_from_config,
    parse_costs,
    parse_pools,
)
from tests.support.routing_data import CountingEmbedder, grouped_rows, write_rows

POOLS = ("small", "large", "code")
COSTS = np.array([1.0, 10.0, 3.0])


def fixed_router(policy: ChoicePolicy) -> PoolRouter:
    """P(correct) = sigmoid(coef . x): x = (1, 0) favours small, (0, 1) large and code."""
    coef = np.array([[2.0, -2.0], [1.0, 3.0], [0.0, 2.5]])
    return PoolRouter(
        pools=POOLS,
        costs=COSTS,
        scorer=LogisticScorer(coef, np.zeros(3)),
        policy=policy,
        embedder=CountingEmbedder(),
    )


def test_quality_target_picks_the_cheapest_pool_good_enough() -> None:
    quality = np.array([[0.9, 0.95, 0.7], [0.3, 0.95, 0.85], [0.3, 0.95, 0.6], [0.1, 0.4, 0.5]])
    chosen = choose_pools(quality, COSTS, ChoicePolicy("quality_target", 0.8))
    # small is enough; code (3) is cheaper than large (10); only large; none: the best.
    assert chosen.tolist() == [0, 2, 1, 2]


def test_tradeoff_maximises_quality_minus_lambda_cost() -> None:
    quality = np.array([[0.5, 0.9, 0.6]])
    pick = [
        int(choose_pools(quality, COSTS, ChoicePolicy("tradeoff", lam))[0])
        for lam in (0, 0.01, 0.1)
    ]
    # lam 0: best quality; 0.01: 0.9-0.1=0.8 vs 0.6-0.03=0.57 vs 0.49: large;
    # 0.1: 0.4 (small) vs -0.1 (large) vs 0.3 (code): small.
    assert pick == [1, 1, 0]
    tie = choose_pools(np.array([[0.5, 0.5, 0.5]]), COSTS, ChoicePolicy("tradeoff", 0.0))
    assert tie.tolist() == [0]  # equal value: the cheaper pool


@pytest.mark.parametrize("rule, value", [("quality_target", 0.99), ("tradeoff", 0.0)])
def test_the_choice_is_always_an_eligible_pool(rule: str, value: float) -> None:
    router = fixed_router(ChoicePolicy(rule, value))  # type: ignore[arg-type]
    rng = np.random.default_rng(0)
    for _ in range(200):
        eligible = {p for p in POOLS if rng.random() < 0.5} or {"code"}
        pool, quality = router.choose(rng.normal(size=2), eligible | {"not-a-router-pool"})
        assert pool in eligible
        assert set(quality) == set(POOLS)
        best = max(eligible, key=quality.__getitem__)
        if rule == "tradeoff":
            assert pool == best  # lam 0: the most likely right of the eligible pools


def test_choose_takes_one_row_and_needs_a_known_eligible_pool() -> None:
    router = fixed_router(ChoicePolicy("quality_target", 0.6))
    assert router.choose(np.array([1.0, 0.0]), POOLS)[0] == "small"
    assert router.choose(np.array([[0.0, 1.0]]), POOLS)[0] == "code"  # 0.92 >= 0.6, cheaper
    assert router.choose(np.array([0.0, 1.0]), {"small", "large"})[0] == "large"
    with pytest.raises(ValueError, match="none of the eligible pools"):
        router.choose(np.array([1.0, 0.0]), {"gpu"})
    with pytest.raises(ValueError, match="one embedding row"):
        router.choose(np.ones((2, 2)), POOLS)
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        router.choose(np.ones(3), POOLS)


def plausible_quality(seed: int, n: int = 2000) -> np.ndarray:
    """Random P(correct) where the dearest pool (large) is the best on every prompt, so
    every share from 0 to 1 and every mean cost from 1 to 10 is reachable."""
    rng = np.random.default_rng(seed)
    small, code = rng.random(n), rng.random(n)
    large = np.minimum(np.maximum(small, code) + 0.01 + rng.random(n) * 0.2, 1.0)
    return np.stack([small, large, code], axis=1)


@pytest.mark.parametrize("rule", ["quality_target", "tradeoff"])
@pytest.mark.parametrize("share", [0.0, 0.1, 0.35, 0.6, 1.0])
def test_calibration_hits_a_target_share_of_the_strongest_pool(rule: str, share: float) -> None:
    quality = plausible_quality(seed=1)
    result = calibrate_policy(quality, COSTS, rule, share, metric="share")  # type: ignore[arg-type]
    chosen = choose_pools(quality, COSTS, result.policy)
    achieved = float((chosen == 1).mean())  # large: the dearest pool
    assert achieved == pytest.approx(result.achieved)
    assert abs(achieved - share) <= 0.01


@pytest.mark.parametrize("target", [1.5, 3.0, 6.0])
def test_calibration_hits_a_target_mean_cost(target: float) -> None:
    quality = plausible_quality(seed=2)
    result = calibrate_policy(quality, COSTS, "tradeoff", target, metric="cost")
    chosen = choose_pools(quality, COSTS, result.policy)
    assert COSTS[chosen].mean() == pytest.approx(target, rel=0.02)
    assert sum(result.shares) == pytest.approx(1.0)


def test_calibration_picks_the_cheaper_of_two_equally_close_results() -> None:
    quality = np.array([[0.4, 0.9, 0.1], [0.4, 0.9, 0.1]])  # both move together
    result = calibrate_policy(quality, COSTS, "tradeoff", 0.5, metric="share")
    assert result.achieved == 0.0


def test_costs_by_name_and_from_a_serve_config(tmp_path: Path) -> None:
    assert parse_pools("small, large") == ("small", "large")
    assert parse_costs(["large=0.5", "small=0.1"], ["small", "large"]) == [0.1, 0.5]
    with pytest.raises(ValueError, match=r"missing pools \['large'\]"):
        parse_costs(["small=0.1"], ["small", "large"])
    with pytest.raises(ValueError, match="POOL=COST"):
        parse_costs(["small=-1"], ["small"])
    config = tmp_path / "serve.yaml"
    config.write_text(
        "applications:\n- args:\n"
        "    models:\n"
        "    - {id: tiny, source: 'embedded://smollm2-135m-instruct', default_max_tokens: 100,\n"
        "       cost: {input_per_million: 1.0, output_per_million: 2.0}}\n"
        "    - {id: big, source: 'hf://org/big', default_max_tokens: 200,\n"
        "       cost: {input_per_million: 10.0, output_per_million: 20.0}}\n"
        "    pools: {small: {model: tiny}, large: {model: big}}\n"
    )
    costs = costs_from_config(config, ["small", "large"], ["x" * 400])  # 100 prompt tokens
    assert costs == pytest.approx([(100 * 1 + 100 * 2) / 1e6, (100 * 10 + 200 * 20) / 1e6])
    with pytest.raises(ValueError, match=r"no catalog model for pools \['code'\]"):
        costs_from_config(config, ["small", "code"], ["x"])


def test_cli_trains_calibrates_and_evaluates_a_pool_router(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(train, "default_embedder", lambda: CountingEmbedder(cache_id=None))
    monkeypatch.setattr(learned, "default_embedder", lambda: CountingEmbedder(cache_id=None))
    data = write_rows(tmp_path / "d.csv", grouped_rows(per_subject=30))
    out = tmp_path / "pools.json"
    argv = ["train-router", str(data), "--pools", "small,large,code", "--family", "mf"]
    argv += ["--cost", "small=1", "--cost", "large=10", "--cost", "code=3", "-o", str(out)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "trained on 300 prompts, family mf (pools small, large, code)" in printed
    assert json.loads(out.read_text())["rule"] == "quality_target"

    argv = ["calibrate", str(data), "--router", str(out), "--strong-share", "0.2"]
    assert cli.main([*argv, "--rule", "tradeoff", "--write-router"]) == 0
    printed = capsys.readouterr().out
    assert "(target large share 20.0%)" in printed
    router = PoolRouter.load(out, embedder=CountingEmbedder())
    assert router.policy.rule == "tradeoff"
    prompts = train.read_router_csv(data).prompts
    chosen = choose_pools(router.quality(prompts), router.costs, router.policy)
    assert abs((chosen == 1).mean() - 0.2) <= 0.02

    assert cli.main(["eval", str(data), "--router", str(out)]) == 0
    printed = capsys.readouterr().out
    lines = printed.splitlines()[2:]
    assert [line[:16].strip() for line in lines] == [
        "router",
        "random, same mix",
        "only small",
        "only large",
        "only code",
    ]
    router_accuracy, random_accuracy = (
        float(line[16:].split()[0].rstrip("%")) for line in lines[:2]
    )
    assert router_accuracy > random_accuracy + 5  # the kinds are learnable


def test_cli_pool_router_needs_costs(tmp_path: Path) -> None:
    data = write_rows(tmp_path / "d.csv", grouped_rows(per_subject=3))
    with pytest.raises(SystemExit) as exc:
        cli.main(["train-router", str(data), "--pools", "small,large", "-o", str(tmp_path / "r")])
    assert exc.value.code == 2
