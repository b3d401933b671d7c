"""The learned router: data format, training, numpy scoring, the JSON file, the CLI.

Serving side in `routing.learned`; training and the CLI in `routing.training`.

No MiniLM here: `HashingEmbedder` hashes words into 16 buckets, which is deterministic,
instant, and enough to tell "Prove that ..." from "Hello Ana!".
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from routing import learned
from routing.learned import LearnedRouter
from routing.training import cli, train
from routing.training.train import (
    RouterData,
    fit_router,
    read_router_csv,
    strong_needed,
    train_router,
)
from tests.support.routing_data import CountingEmbedder

SAMPLE = Path(__file__).parents[1] / "data" / "router_sample.csv"


class HashingEmbedder(CountingEmbedder):
    """Bag of words, each word hashed (crc32) into one of 16 buckets, L2-normalised; no
    cache id, so the embedding cache leaves it alone."""

    dimension = 16

    def __init__(self) -> None:
        super().__init__(cache_id=None)


def subset(data: RouterData, rows: Sequence[int]) -> RouterData:
    return RouterData(
        prompts=tuple(data.prompts[i] for i in rows),
        columns={name: tuple(col[i] for i in rows) for name, col in data.columns.items()},
    )


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def router() -> LearnedRouter:
    return train_router(SAMPLE, "small", "large", HashingEmbedder())


def test_csv_accepts_boolean_spellings_and_extra_columns(tmp_path: Path) -> None:
    data = read_router_csv(
        write_csv(tmp_path / "d.csv", "prompt,small,large,note\na,1,TRUE,x\nb,false,no,y\n")
    )
    assert data.prompts == ("a", "b")
    assert data.correct("small").tolist() == [True, False]
    assert data.correct("large").tolist() == [True, False]


@pytest.mark.parametrize(
    ("text", "column", "message"),
    [
        ("text,small\na,1\n", "small", "no 'prompt' column"),
        ("prompt,small\na,maybe\n", "small", "line 2: 'maybe' is not 1/0/true/false"),
        ("prompt,small\na,1\n", "large", "no column 'large'"),
        ("prompt,small\n", "small", "no rows"),
        ("prompt,small\na,1\nb,1,0\n", "small", "line 3: 3 cells, header has 2"),
    ],
)
def test_csv_errors_name_the_problem(tmp_path: Path, text: str, column: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        read_router_csv(write_csv(tmp_path / "d.csv", text)).correct(column)


def test_label_is_strong_right_and_weak_wrong(tmp_path: Path) -> None:
    data = read_router_csv(
        write_csv(tmp_path / "d.csv", "prompt,small,large\nab,1,1\nbb,0,1\ncb,1,0\ndb,0,0\n")
    )
    # Both right, both wrong, and "weak right, strong wrong" are all label 0.
    assert strong_needed(data, "small", "large").tolist() == [False, True, False, False]


def test_router_separates_easy_from_hard_on_held_out_rows() -> None:
    data = read_router_csv(SAMPLE)
    train, test = subset(data, range(0, 120, 2)), subset(data, range(1, 120, 2))
    router = train_router(train, "small", "large", HashingEmbedder())
    scores = router.score(test.prompts)
    hard = np.array([g == "hard" for g in test.columns["group"]])
    assert scores[hard].mean() - scores[~hard].mean() > 0.2
    # Most held-out hard prompts rank above most easy ones (ROC AUC).
    auc = (scores[hard][:, None] > scores[~hard][None, :]).mean()
    assert auc > 0.9


def test_numpy_scores_match_scikit_learn() -> None:
    from sklearn.linear_model import LogisticRegression

    data = read_router_csv(SAMPLE)
    vectors = HashingEmbedder().encode(data.prompts)
    labels = strong_needed(data, "small", "large")
    x = vectors.astype(np.float64)  # fit both on the same float64 input
    reference = LogisticRegression(class_weight="balanced", max_iter=1000).fit(x, labels)
    router = fit_router(vectors, labels, weak="small", strong="large")
    expected = reference.predict_proba(x)[:, 1]
    np.testing.assert_allclose(router.score_vectors(vectors), expected, rtol=1e-12)


def test_save_load_round_trips_to_identical_scores(router: LearnedRouter, tmp_path: Path) -> None:
    path = tmp_path / "router.json"
    router.with_threshold(0.42).save(path)
    document = json.loads(path.read_text())
    assert (document["format_version"], document["family"]) == (2, "lr")
    assert (document["weak"], document["strong"]) == ("small", "large")
    assert document["embedding_model"] == "all-MiniLM-L6-v2"
    assert document["dimension"] == 16 == len(document["params"]["coef"][0])
    assert document["threshold"] == 0.42
    assert "arrays" not in document  # the baseline stays one readable file

    loaded = LearnedRouter.load(path, embedder=HashingEmbedder())
    prompts = read_router_csv(SAMPLE).prompts
    assert np.array_equal(loaded.score(prompts), router.score(prompts))
    assert loaded.threshold == 0.42


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format_version": 3}, "format_version"),
        ({"dimension": 15}, "coef has 16 values, dimension is 15"),
        ({"strong": "small"}, "weak and strong name the same model"),
        ({"surprise": True}, "surprise"),
        ({"params": {"coef": "oops", "intercept": [0.0]}}, "coef must be numbers"),
        ({"params": {"coef": [1.0] * 16, "intercept": [0.0]}}, "coef must be 2-d"),
        ({"family": "forest"}, "family"),
        ({"target": "correct"}, "scorer has 1 heads, the file names 2"),
        ({"pools": ["small", "large"]}, "binary .* or N-pool"),
    ],
)
def test_bad_router_file_raises_value_error(
    router: LearnedRouter, tmp_path: Path, change: dict[str, object], message: str
) -> None:
    document = json.loads(router.to_json())
    document.update(change)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(document))
    with pytest.raises(ValueError, match=message):
        LearnedRouter.load(path, embedder=HashingEmbedder())


def test_version_1_files_still_load_and_score_the_same(
    router: LearnedRouter, tmp_path: Path
) -> None:
    coef = router.scorer.params()["coef"][0]
    intercept = router.scorer.params()["intercept"][0]
    version_1 = {
        "format_version": 1,
        "weak": "small",
        "strong": "large",
        "embedding_model": "all-MiniLM-L6-v2",
        "dimension": 16,
        "coef": coef,
        "intercept": intercept,
        "threshold": 0.3,
    }
    path = tmp_path / "old.json"
    path.write_text(json.dumps(version_1))
    loaded = LearnedRouter.load(path, embedder=HashingEmbedder())
    prompts = read_router_csv(SAMPLE).prompts
    assert (loaded.family, loaded.threshold) == ("lr", 0.3)
    assert np.array_equal(loaded.score(prompts), router.score(prompts))
    path.write_text(json.dumps({**version_1, "dimension": 15}))
    with pytest.raises(ValueError, match="coef has 16 values, dimension is 15"):
        LearnedRouter.load(path, embedder=HashingEmbedder())


def test_file_that_is_not_json_raises_value_error(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "bad.json", "prompt,small\n")
    with pytest.raises(ValueError, match="not a valid router file"):
        LearnedRouter.load(path)


def test_foreign_embedding_model_needs_an_explicit_embedder(
    router: LearnedRouter, tmp_path: Path
) -> None:
    path = tmp_path / "router.json"
    path.write_text(router.to_json().replace("all-MiniLM-L6-v2", "other-model"))
    with pytest.raises(ValueError, match="trained on 'other-model' embeddings"):
        LearnedRouter.load(path)
    assert LearnedRouter.load(path, embedder=HashingEmbedder()).embedding_model == "other-model"


def test_score_vectors_of_the_embeddings_equals_score(router: LearnedRouter) -> None:
    # The ingress embeds each request once and hands the vector to score_vectors.
    texts = list(read_router_csv(SAMPLE).prompts[:10])
    embedder = HashingEmbedder()
    assert np.array_equal(router.score_vectors(embedder.encode(texts)), router.score(texts))
    single = router.score_vectors(embedder.encode(texts[:1]))
    assert single.shape == (1,) and single.dtype == np.float64


def test_default_embedder_is_created_on_first_score_only(
    router: LearnedRouter, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    created: list[HashingEmbedder] = []

    def make() -> HashingEmbedder:
        created.append(HashingEmbedder())
        return created[-1]

    monkeypatch.setattr(learned, "default_embedder", make)
    path = tmp_path / "router.json"
    router.save(path)
    loaded = LearnedRouter.load(path)
    loaded.score_vectors(np.zeros((1, 16)))  # vectors in hand: no embedder needed
    assert created == []
    assert np.array_equal(loaded.score(["Hello Ana!"]), router.score(["Hello Ana!"]))
    assert loaded.embedder is created[0] and len(created) == 1


def test_vectors_of_the_wrong_dimension_are_refused(router: LearnedRouter) -> None:
    with pytest.raises(ValueError, match=r"shape \(n, 16\)"):
        router.score_vectors(np.zeros((2, 384), dtype=np.float32))


def test_one_class_labels_cannot_be_trained() -> None:
    with pytest.raises(ValueError, match="labels are all the same"):
        fit_router(np.eye(3), np.zeros(3, dtype=bool), weak="small", strong="large")


def test_cli_train_eval_calibrate_with_a_router_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Training embeds through `train`'s import; routers loaded without an embedder
    # (eval, calibrate) create theirs in `learned`.
    monkeypatch.setattr(train, "default_embedder", HashingEmbedder)
    monkeypatch.setattr(learned, "default_embedder", HashingEmbedder)
    out = tmp_path / "router.json"
    argv = ["train-router", str(SAMPLE), "--weak", "small", "--strong", "large", "-o", str(out)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "trained on 120 prompts, family lr (small -> large)" in printed
    assert "positive rate (strong needed): 44.2%" in printed  # 53 of 120, see the CSV
    assert "in-sample accuracy" in printed and "ROC AUC" in printed

    assert cli.main(["eval", str(SAMPLE), "--router", str(out)]) == 0  # names from the file
    printed = capsys.readouterr().out
    assert "weak=small, strong=large" in printed and "APGR" in printed

    argv = ["calibrate", str(SAMPLE), "--router", str(out), "--strong-share", "0.3"]
    assert cli.main([*argv, "--write-router"]) == 0
    threshold = json.loads(out.read_text())["threshold"]
    scores = LearnedRouter.load(out, embedder=HashingEmbedder()).score(
        read_router_csv(SAMPLE).prompts
    )
    assert abs((scores >= threshold).sum() - 36) <= 1


def test_cli_train_reports_bad_columns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train-router", str(SAMPLE), "--weak", "tiny", "--strong", "large"]
    assert cli.main([*argv, "-o", str(tmp_path / "r.json")]) == 1
    assert "error: no column 'tiny'" in capsys.readouterr().err


def test_help_lists_the_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--help"])
    assert exited.value.code == 0
    printed = capsys.readouterr().out
    for name in ("prepare", "train-router", "calibrate", "eval", "keys"):
        assert re.search(rf"^\s+{name}\s", printed, re.MULTILINE), (name, printed)


def test_missing_train_extra_gets_an_install_hint(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(train, "default_embedder", HashingEmbedder)
    monkeypatch.setitem(sys.modules, "sklearn.linear_model", None)  # import fails
    argv = ["train-router", str(SAMPLE), "--weak", "small", "--strong", "large"]
    assert cli.main([*argv, "-o", str(tmp_path / "r.json")]) == 1
    assert 'pip install -e ".[train]"' in capsys.readouterr().err


def test_prepare_list_still_works_and_imports_no_routing_stack(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from routing.training import cli\n"
        "assert cli.main(['prepare', '--list']) == 0\n"
        "heavy = {'sklearn', 'matplotlib', 'sentence_transformers'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"SWITCHYARD_CACHE_DIR": str(tmp_path), "PATH": ""},
        cwd=Path(__file__).parents[2],
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "smollm2-135m-instruct" in result.stdout and "missing" in result.stdout
