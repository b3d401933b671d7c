"""Grouped K-fold comparison of families (`switchyard eval --split-by`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from routing.training import cli
from routing.training.crossval import cross_validate, grouped_folds
from tests.support.routing_data import SUBJECTS, CountingEmbedder, grouped_rows, write_rows


def test_no_group_is_ever_in_both_train_and_test() -> None:
    rng = np.random.default_rng(0)
    groups = [f"g{int(g)}" for g in rng.integers(0, 13, size=500)]
    folds = grouped_folds(groups, 5)
    assert len(folds) == 5
    held_out: list[int] = []
    for train, test in folds:
        train_groups = {groups[i] for i in train}
        test_groups = {groups[i] for i in test}
        assert train_groups.isdisjoint(test_groups)
        assert train_groups | test_groups == set(groups)
        held_out.extend(test.tolist())
    assert sorted(held_out) == list(range(500))  # every row held out exactly once


@pytest.mark.parametrize(
    ("groups", "folds", "message"), [(["a", "b"], 3, "2 distinct"), (["a"], 1, "2 folds")]
)
def test_too_few_groups_or_folds_are_refused(groups: list[str], folds: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        grouped_folds(groups, folds)


def test_families_beat_random_on_unseen_subjects() -> None:
    rows = grouped_rows(per_subject=30)
    embedder = CountingEmbedder()
    vectors = embedder.encode([r["prompt"] for r in rows])
    weak = np.array([r["small"] == "1" for r in rows])
    strong = np.array([r["large"] == "1" for r in rows])
    report = cross_validate(
        vectors,
        weak,
        strong,
        [r["subject"] for r in rows],
        families=("lr", "knn"),
        folds=5,
        split_by="subject",
        progress=False,
    )
    names = [f.name for f in report.families]
    assert names == ["lr", "knn", "random"]
    assert all(len(f.results) == 5 for f in report.families)
    by_name = {f.name: f for f in report.families}
    assert by_name["random"].mean("apgr") == pytest.approx(0.5, abs=0.1)
    for family in ("lr", "knn"):
        assert by_name[family].mean("apgr") > by_name["random"].mean("apgr") + 0.15
    # The table's rows are the means over folds.
    line = next(x for x in report.table("small", "large").splitlines() if x.startswith("lr "))
    assert line.split()[1] == f"{by_name['lr'].mean('apgr'):.3f}"


def test_cli_eval_split_by_prints_every_family_and_writes_json(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("routing.learned.default_embedder", CountingEmbedder)
    data = write_rows(tmp_path / "d.csv", grouped_rows(per_subject=15))
    out = tmp_path / "folds.json"
    argv = ["eval", str(data), "--split-by", "subject", "--folds", "4", "--weak", "small"]
    argv += ["--strong", "large", "--json", str(out), "--cache-dir", str(tmp_path / "cache")]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert f"grouped 4-fold by 'subject': {len(SUBJECTS)} groups, 150 prompts" in printed
    rows = [line.split()[0] for line in printed.splitlines()[2 : 6 + 1]]
    assert rows == ["lr", "knn", "mf", "mlp", "random"]
    report = json.loads(out.read_text())
    assert set(report["families"]) == {"lr", "knn", "mf", "mlp", "random"}
    assert len(report["families"]["mf"]["folds"]) == 4 and sum(report["fold_sizes"]) == 150
    assert all(0.0 <= f["apgr"] <= 2.0 for f in report["families"]["lr"]["folds"])


def test_cli_eval_split_by_needs_the_model_columns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_rows(tmp_path / "d.csv", grouped_rows(per_subject=3))
    assert cli.main(["eval", str(data), "--split-by", "subject", "--no-cache"]) == 1
    assert "--split-by needs --weak and --strong" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["eval", str(data), "--split-by", "subject", "--scores-column", "small"])
