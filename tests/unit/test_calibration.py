"""Threshold calibration to a strong-call share, the YAML writer, and the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from routing.training import cli
from routing.training.calibration import set_config_value, threshold_for_strong_share

SCORES = np.random.default_rng(5).random(101)

CONFIG = """\
# a comment PyYAML will drop
proxy_location: HeadOnly
applications:
  - name: switchyard
    import_path: deployments.builder:build_app
    args:
      engine: fake
      routing:
        default_pool: small
        long_prompt_tokens: 384
      pools:
        small: {model: tiny}
"""


@pytest.mark.parametrize("share", [0.0, 0.05, 0.3, 0.5, 0.77, 1.0])
def test_threshold_sends_the_requested_share(share: float) -> None:
    threshold = threshold_for_strong_share(SCORES, share)
    strong = int((SCORES >= threshold).sum())
    assert abs(strong - share * SCORES.size) <= 1  # within one prompt
    assert strong == int((SCORES > threshold).sum())  # no score sits on the threshold


def test_threshold_sits_between_the_two_neighbouring_scores() -> None:
    scores = [0.1, 0.2, 0.6, 0.8, 0.9]
    assert threshold_for_strong_share(scores, 0.4) == pytest.approx(0.7)  # 0.8, 0.9 strong
    assert threshold_for_strong_share(scores, 0.0) > 0.9
    assert threshold_for_strong_share(scores, 1.0) < 0.1


def test_lower_is_stronger_escalates_the_least_confident() -> None:
    confidence = np.array([-0.1, -2.0, -0.5, -1.5, -0.05, -3.0, -0.7, -0.2])  # mean logprobs
    threshold = threshold_for_strong_share(confidence, 0.25, lower_is_stronger=True)
    assert sorted(confidence[confidence < threshold]) == [-3.0, -2.0]
    assert -2.0 < threshold < -1.5


def test_tied_scores_move_together_and_ties_prefer_fewer_strong_calls() -> None:
    scores = [0.5] * 6 + [0.1] * 4
    # Options: 0, 6 or 10 strong calls. Target 3: 0 and 6 are equally far -> 0.
    assert (np.array(scores) >= threshold_for_strong_share(scores, 0.3)).sum() == 0
    # Target 4: 6 is closest.
    assert (np.array(scores) >= threshold_for_strong_share(scores, 0.4)).sum() == 6


@pytest.mark.parametrize(
    ("scores", "share", "message"),
    [([0.1, 0.2], 1.5, "share must be in"), ([], 0.5, "non-empty"), ([np.inf], 0.5, "finite")],
)
def test_bad_inputs_raise(scores: list[float], share: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        threshold_for_strong_share(scores, share)


def test_config_value_lands_at_the_key_and_keeps_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "serve_config.yaml"
    path.write_text(CONFIG)
    before = yaml.safe_load(CONFIG)
    set_config_value(path, "routing.learned.threshold", 0.615)
    after = yaml.safe_load(path.read_text())
    assert after["applications"][0]["args"]["routing"]["learned"] == {"threshold": 0.615}
    del after["applications"][0]["args"]["routing"]["learned"]
    assert after == before
    assert list(after["applications"][0]["args"]) == ["engine", "routing", "pools"]  # key order
    set_config_value(path, "routing.learned.threshold", 0.5)  # overwrite in place
    assert yaml.safe_load(path.read_text())["applications"][0]["args"]["routing"]["learned"] == {
        "threshold": 0.5
    }


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        (CONFIG, "routing.long_prompt_tokens.threshold", "args.routing.long_prompt_tokens is not"),
        (CONFIG, "routing..threshold", "bad key"),
        ("proxy_location: HeadOnly\n", "x", "no 'applications' list"),
        ("applications: [\n", "x", "not valid YAML"),
    ],
)
def test_config_errors_leave_the_file_alone(
    tmp_path: Path, text: str, key: str, message: str
) -> None:
    path = tmp_path / "serve_config.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        set_config_value(path, key, 0.5)
    assert path.read_text() == text
    assert [p.name for p in tmp_path.iterdir()] == ["serve_config.yaml"]


def write_confidences(path: Path) -> Path:
    rows = ["prompt,small,large,confidence"] + [
        f"prompt {i},1,1,{c:.6f}" for i, c in enumerate(-3 * SCORES)
    ]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_cli_calibrates_cascade_confidences_into_a_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, config = write_confidences(tmp_path / "d.csv"), tmp_path / "serve_config.yaml"
    config.write_text(CONFIG)
    argv = ["calibrate", str(data), "--scores-column", "confidence", "--lower-is-stronger"]
    argv += ["--strong-share", "0.2", "--write-config", str(config)]
    assert cli.main([*argv, "--key", "routing.cascade.threshold"]) == 0
    out = capsys.readouterr().out
    assert "go to the strong model (target 20.0%)" in out and "strong when score < " in out
    written = yaml.safe_load(config.read_text())["applications"][0]["args"]["routing"]
    threshold = written["cascade"]["threshold"]
    confidence = np.round(-3 * SCORES, 6)  # as written to the CSV
    assert abs((confidence < threshold).sum() - 20) <= 1


def test_cli_write_router_needs_a_router(tmp_path: Path) -> None:
    data = write_confidences(tmp_path / "d.csv")
    argv = ["calibrate", str(data), "--scores-column", "confidence", "--strong-share", "0.3"]
    with pytest.raises(SystemExit) as exc:
        cli.main([*argv, "--write-router"])
    assert exc.value.code == 2
