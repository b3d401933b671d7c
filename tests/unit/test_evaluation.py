"""RouteLLM metrics: a hand-worked example, the random and oracle routers, table, plot, CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from routing.training import cli
from routing.training.evaluation import evaluate, format_table, plot, random_baseline

# Hand-worked example: 10 prompts, scores i/9 for i = 0..9, so the 11 decile thresholds
# of the scores are 0.0, 0.1, ..., 1.0 and each step down sends one more prompt (the
# next highest score) to the strong model: strong share 0%, 10%, ..., 100%.
#
#   prompt i       0  1  2  3  4  5  6  7  8  9
#   weak right     1  1  1  1  1  0  1  0  0  0    weak accuracy   6/10 = 0.6
#   strong right   1  1  0  1  1  1  1  1  1  0    strong accuracy 8/10 = 0.8
#   strong - weak  0  0 -1  0  0 +1  0 +1 +1  0
#
# Routing the top k prompts to strong adds their (strong - weak) to 6 correct answers;
# PGR = (acc - 0.6) / (0.8 - 0.6):
#
#   k (strong)   0    1    2    3    4    5    6    7    8    9    10
#   added        0    0   +1   +1    0   +1    0    0   -1    0     0   (prompt 10-k)
#   accuracy   0.6  0.6  0.7  0.8  0.8  0.9  0.9  0.9  0.8  0.8   0.8
#   PGR        0.0  0.0  0.5  1.0  1.0  1.5  1.5  1.5  1.0  1.0   1.0
#
# APGR, trapezoids of width 0.1: 0.1 * (0/2 + 0 + .5 + 1 + 1 + 1.5 + 1.5 + 1.5 + 1 + 1 + 1/2)
#   = 0.1 * 9.5 = 0.95.
# CPT(50%): PGR first reaches 0.5 at exactly k = 2 -> 20%.
# CPT(80%): between k = 2 (0.5) and k = 3 (1.0): 0.2 + 0.1 * (0.8 - 0.5) / 0.5 = 26%.
# CPT(20%): between k = 1 (0.0) and k = 2 (0.5): 0.1 + 0.1 * 0.2 / 0.5 = 14%.
SCORES = np.arange(10) / 9
WEAK = [1, 1, 1, 1, 1, 0, 1, 0, 0, 0]
STRONG = [1, 1, 0, 1, 1, 1, 1, 1, 1, 0]


def synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Correctness columns: weak right 55%, strong right 80%, loosely correlated."""
    rng = np.random.default_rng(seed)
    weak = rng.random(n) < 0.55
    strong = np.where(weak, rng.random(n) < 0.9, rng.random(n) < 0.7)
    return weak, strong


def test_hand_worked_example() -> None:
    result = evaluate(SCORES, WEAK, STRONG)
    assert result.weak_accuracy == pytest.approx(0.6, abs=1e-12)
    assert result.strong_accuracy == pytest.approx(0.8, abs=1e-12)
    shares = [p.strong_share for p in result.points]
    assert shares == pytest.approx([k / 10 for k in range(11)], abs=1e-12)
    thresholds = [p.threshold for p in result.points]
    assert thresholds == pytest.approx([1 - k / 10 for k in range(11)], abs=1e-12)
    assert [p.strict for p in result.points] == [True] + [False] * 10
    accuracy = [0.6, 0.6, 0.7, 0.8, 0.8, 0.9, 0.9, 0.9, 0.8, 0.8, 0.8]
    assert [p.accuracy for p in result.points] == pytest.approx(accuracy, abs=1e-12)
    pgr = [0.0, 0.0, 0.5, 1.0, 1.0, 1.5, 1.5, 1.5, 1.0, 1.0, 1.0]
    assert [p.pgr for p in result.points] == pytest.approx(pgr, abs=1e-12)
    assert result.apgr == pytest.approx(0.95, abs=1e-12)
    assert result.cpt(0.5) == pytest.approx(0.20, abs=1e-12)
    assert result.cpt(0.8) == pytest.approx(0.26, abs=1e-12)
    assert result.cpt(0.2) == pytest.approx(0.14, abs=1e-12)


def test_cpt_is_nan_when_the_target_is_never_reached() -> None:
    assert np.isnan(evaluate(SCORES, WEAK, STRONG).cpt(1.6))


def test_random_router_recovers_about_half_the_gap() -> None:
    weak, strong = synthetic(2000, seed=1)
    baseline = random_baseline(weak, strong, draws=10, seed=0)
    assert baseline.apgr == pytest.approx(0.5, abs=0.1)
    assert baseline.points[0].strong_share == 0.0 and baseline.points[-1].strong_share == 1.0
    assert baseline.cpt(0.5) == pytest.approx(0.5, abs=0.15)


def test_random_baseline_is_reproducible() -> None:
    weak, strong = synthetic(300, seed=2)
    first, again = (random_baseline(weak, strong, seed=3) for _ in range(2))
    assert first.apgr == again.apgr
    assert [p.accuracy for p in first.points] == [p.accuracy for p in again.points]
    assert first.apgr != random_baseline(weak, strong, seed=4).apgr


def test_oracle_router_recovers_nearly_all_of_the_gap() -> None:
    weak, strong = synthetic(2000, seed=1)
    needed = strong & ~weak
    jitter = np.random.default_rng(0).random(needed.size) * 0.01  # break ties, keep order
    oracle = evaluate(needed + jitter, weak, strong, name="oracle")
    assert oracle.apgr > 0.9
    assert oracle.cpt(0.8) < needed.mean()  # 80% of the gap for fewer calls than positives


def test_constant_scores_route_all_or_nothing() -> None:
    result = evaluate(np.full(10, 0.3), WEAK, STRONG)
    assert {p.strong_share for p in result.points} == {0.0, 1.0}
    assert result.apgr == pytest.approx(0.5)  # a straight line from (0, 0) to (1, 1)


@pytest.mark.parametrize(
    ("scores", "weak", "strong", "message"),
    [
        (SCORES, WEAK, WEAK, "no gap to recover"),
        (SCORES[:5], WEAK, STRONG, "expected"),
        ([], [], [], "non-empty"),
        ([0.1, float("nan")], [0, 1], [1, 1], "finite"),
    ],
)
def test_bad_inputs_raise(scores: object, weak: object, strong: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        evaluate(scores, weak, strong)  # type: ignore[arg-type]


def test_table_lists_every_threshold_and_both_summaries() -> None:
    result = evaluate(SCORES, WEAK, STRONG, name="mine")
    table = format_table(result, random_baseline(WEAK, STRONG), weak="small", strong="large")
    lines = table.splitlines()
    assert lines[0].split() == ["threshold", "strong", "%", "accuracy", "PGR"]
    assert lines[1].split() == [">", "1.0000", "0.0%", "60.0%", "0.000"]
    assert lines[11].split() == [">=", "0.0000", "100.0%", "80.0%", "1.000"]
    assert "small (weak) accuracy 60.0%, large (strong) accuracy 80.0%" in table
    assert lines[-2].split() == ["mine", "0.950", "20.0%", "26.0%"]
    assert lines[-1].split()[0] == "random"


def test_plot_writes_a_png(tmp_path: Path) -> None:
    path = tmp_path / "curve.png"
    plot(evaluate(SCORES, WEAK, STRONG), random_baseline(WEAK, STRONG), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def write_scored_csv(path: Path) -> Path:
    rows = ["prompt,small,large,score"]
    rows += [
        f"prompt {i},{w},{s},{x:.6f}"
        for i, (w, s, x) in enumerate(zip(WEAK, STRONG, SCORES, strict=True))
    ]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_cli_eval_with_a_scores_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, png = write_scored_csv(tmp_path / "d.csv"), tmp_path / "out.png"
    argv = ["eval", str(data), "--scores-column", "score", "--weak", "small", "--strong", "large"]
    assert cli.main([*argv, "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "10 prompts, weak=small, strong=large" in out
    summary = next(line for line in out.splitlines() if line.startswith("score "))
    assert summary.split() == ["score", "0.950", "20.0%", "26.0%"]
    assert any(line.startswith("random ") for line in out.splitlines())
    assert png.stat().st_size > 0


def test_cli_eval_needs_model_names_without_a_router(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_scored_csv(tmp_path / "d.csv")
    assert cli.main(["eval", str(data), "--scores-column", "score"]) == 1
    assert "--weak and --strong are required" in capsys.readouterr().err


def test_cli_eval_needs_a_score_source(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["eval", str(write_scored_csv(tmp_path / "d.csv"))])
    assert exc.value.code == 2
