"""Partial labels: empty CSV cells are unknown, not wrong.

Binary routers and `eval` skip the rows missing a label they need (and say so); N-pool
routers learn each head from the rows its pool is labelled on; the CSV `switchyard
export` writes without `--complete` trains, calibrates and evaluates end to end.
No Ray, no MiniLM.
"""

from __future__ import annotations

import csv
import random
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from routing import learned
from routing.learned import ChoicePolicy, PoolRouter, load_router
from routing.scorers import FAMILIES, Family, KnnScorer, LogisticScorer, MlpScorer
from routing.training import cli, train
from routing.training.families import (
    FamilyOptions,
    fit_pools,
    fit_scorer,
    merge_mlps,
    mlp_classifier,
)
from routing.training.train import (
    complete_rows,
    fit_router,
    partial_rows,
    read_router_csv,
    strong_needed,
    train_router,
)
from tenancy.db import connect, migrate
from tenancy.export import export_csv
from tenancy.ledger import LedgerEntry, LedgerWriter, add_feedback
from tests.support.routing_data import P_CORRECT, CountingEmbedder, grouped_rows, write_rows
from tests.unit.test_learned import HashingEmbedder

OPTIONS = FamilyOptions(knn_neighbours=16, mlp_hidden=(32,))
COSTS = ["--cost", "small=1", "--cost", "large=10", "--cost", "code=3"]


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def embedders(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(train, "default_embedder", lambda: CountingEmbedder(cache_id=None))
    monkeypatch.setattr(learned, "default_embedder", lambda: CountingEmbedder(cache_id=None))


# --- the CSV ---------------------------------------------------------------------------


def test_empty_and_blank_cells_are_unknown(tmp_path: Path) -> None:
    text = "prompt,small,large\na,1,\nb, ,0\nc,no,Yes\n"
    data = read_router_csv(write_csv(tmp_path / "d.csv", text))
    correct, known = data.labels("small")
    assert (correct.tolist(), known.tolist()) == ([True, False, False], [True, False, True])
    correct, known = data.label_matrix(["small", "large"])
    assert correct.tolist() == [[True, False], [False, False], [False, True]]
    assert known.tolist() == [[True, False], [False, True], [True, True]]
    # `correct` stays strict for callers that need a complete column.
    with pytest.raises(ValueError, match=re.escape("column 'large', line 2: empty cell")):
        data.correct("large")


@pytest.mark.parametrize("cell", ["maybe", "2", "?", "n/a"])
def test_text_that_is_neither_a_label_nor_empty_is_still_refused(tmp_path: Path, cell: str) -> None:
    data = read_router_csv(write_csv(tmp_path / "d.csv", f"prompt,small\na,1\nb,\nc,{cell}\n"))
    with pytest.raises(ValueError, match=re.escape(f"column 'small', line 4: {cell!r} is not")):
        data.labels("small")


def test_rows_takes_a_mask_or_indices(tmp_path: Path) -> None:
    data = read_router_csv(write_csv(tmp_path / "d.csv", "prompt,small,g\na,1,x\nb,,y\nc,0,z\n"))
    kept = data.rows(np.array([True, False, True]))
    assert (kept.prompts, kept.values("g"), len(kept)) == (("a", "c"), ("x", "z"), 2)
    assert data.rows([2, 0]).prompts == ("c", "a")
    with pytest.raises(ValueError, match="row mask has shape"):
        data.rows(np.array([True, False]))


def test_complete_and_partial_rows_count_what_they_skip(tmp_path: Path) -> None:
    text = "prompt,small,large,code\na,1,0,\nb,,,1\nc,,,\nd,0,1,1\n"
    data = read_router_csv(write_csv(tmp_path / "d.csv", text))
    both = complete_rows(data, ["small", "large"])
    assert both.data.prompts == ("a", "d")
    assert both.correct.tolist() == [[True, False], [False, True]]
    assert both.note() == "skipped 2 of 4 rows with no label for small or large"
    every = complete_rows(data, ["small", "large", "code"])
    assert every.data.prompts == ("d",)
    assert every.note() == "skipped 3 of 4 rows with no label for small, large or code"
    some = partial_rows(data, ["small", "large", "code"])
    assert some.data.prompts == ("a", "b", "d")
    assert some.known.tolist() == [[True, True, False], [False, False, True], [True] * 3]
    assert some.note() == "skipped 1 of 4 rows with no label for any of small, large, code"
    assert complete_rows(data.rows([0, 3]), ["small", "large"]).note() is None
    with pytest.raises(ValueError, match="none of the 3 rows has a label for both code and small"):
        complete_rows(data.rows([0, 1, 2]), ["code", "small"])
    with pytest.raises(ValueError, match="none of the 1 rows has a label for any of small"):
        partial_rows(data.rows([2]), ["small", "large"])


# --- binary routers ------------------------------------------------------------------


def blanked(path: Path, per_subject: int = 30) -> tuple[Path, int]:
    """The grouped data with some small and some large cells emptied; how many rows
    miss one of the two."""
    rows = grouped_rows(per_subject=per_subject)
    skipped = 0
    for i, row in enumerate(rows):
        if i % 5 == 0:
            row["large"] = ""
        if i % 7 == 0:
            row["small"] = " "
        skipped += i % 5 == 0 or i % 7 == 0
    return write_rows(path, rows), skipped


def test_train_router_learns_from_the_rows_with_both_labels_only(tmp_path: Path) -> None:
    path, skipped = blanked(tmp_path / "d.csv")
    data = read_router_csv(path)
    router = train_router(data, "small", "large", HashingEmbedder())
    keep = complete_rows(data, ("small", "large")).keep
    assert int((~keep).sum()) == skipped
    reference = train_router(data.rows(keep), "small", "large", HashingEmbedder())
    prompts = data.prompts[:50]
    np.testing.assert_array_equal(router.score(prompts), reference.score(prompts))


def test_fit_router_leaves_out_rows_whose_label_is_unknown(tmp_path: Path) -> None:
    path, _ = blanked(tmp_path / "d.csv")
    data = read_router_csv(path)
    rows = complete_rows(data, ("small", "large"))
    vectors = HashingEmbedder().encode(data.prompts)
    correct, _ = data.label_matrix(["small", "large"])
    labels = correct[:, 1] & ~correct[:, 0]  # unknown cells read as False here
    router = fit_router(vectors, labels, known=rows.keep, weak="small", strong="large")
    reference = fit_router(
        vectors[rows.keep], strong_needed(rows.data, "small", "large"), weak="small", strong="large"
    )
    np.testing.assert_array_equal(router.score_vectors(vectors), reference.score_vectors(vectors))


def test_binary_cli_train_and_eval_skip_incomplete_rows_and_say_so(
    embedders: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, skipped = blanked(tmp_path / "d.csv")
    out = tmp_path / "router.json"
    argv = ["train-router", str(path), "--weak", "small", "--strong", "large", "-o", str(out)]
    assert cli.main([*argv, "--no-cache"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"skipped {skipped} of 300 rows with no label for small or large"
    assert printed[1] == f"trained on {300 - skipped} prompts, family lr (small -> large)"

    assert cli.main(["eval", str(path), "--router", str(out), "--no-cache"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"skipped {skipped} of 300 rows with no label for small or large"
    assert printed[1] == f"{300 - skipped} prompts, weak=small, strong=large"

    argv = ["eval", str(path), "--split-by", "subject", "--folds", "3", "--families", "lr"]
    assert cli.main([*argv, "--weak", "small", "--strong", "large", "--no-cache"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"skipped {skipped} of 300 rows with no label for small or large"
    assert f"10 groups, {300 - skipped} prompts" in printed[1]


def test_binary_cli_without_a_complete_row_is_an_error(
    embedders: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_csv(tmp_path / "d.csv", "prompt,small,large\na,1,\nb,,0\nc,,\n")
    out = tmp_path / "router.json"
    argv = ["train-router", str(path), "--weak", "small", "--strong", "large", "-o", str(out)]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: none of the 3 rows has a label for both small and large")
    argv = ["eval", str(path), "--scores-column", "small", "--weak", "small", "--strong", "large"]
    assert cli.main(argv) == 1
    assert "none of the 3 rows has a label for both" in capsys.readouterr().err
    assert not out.exists()


# --- N-pool routers: each head learns from its known rows -----------------------------


def pool_data(
    n: int = 800, seed: int = 7
) -> tuple[NDArray[np.float32], NDArray[np.bool_], NDArray[np.bool_]]:
    """Two pools. small: right on "easy" rows (x0 < 0), labelled on 80% of the rows.
    large: right on 90% of hard and 75% of easy rows, labelled on a random 30% only, so
    its unknown cells (False here) read as 0 would make large look wrong everywhere
    (P ~ 0.25). 10% of the rows have no label at all."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    easy = x[:, 0] < 0
    small = np.where(easy, rng.random(n) < 0.9, rng.random(n) < 0.1)
    large = np.where(easy, rng.random(n) < 0.75, rng.random(n) < 0.9)
    known = np.stack([rng.random(n) < 0.8, rng.random(n) < 0.3], axis=1)
    known[rng.random(n) < 0.1] = False
    correct = np.stack([small, large], axis=1) & known
    return x, correct, known


def fit(family: Family, correct: NDArray[np.bool_], known: NDArray[np.bool_]) -> PoolRouter:
    x, _, _ = pool_data()
    return fit_pools(
        family,
        x,
        correct,
        known=known,
        pools=["small", "large"],
        costs=[1.0, 10.0],
        policy=ChoicePolicy("quality_target", 0.6),
        options=OPTIONS,
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_a_head_learns_only_from_its_known_rows(family: Family) -> None:
    x, correct, known = pool_data()
    router = fit(family, correct, known)
    test, _, _ = pool_data(seed=8)
    quality = router.quality_vectors(test)
    easy = test[:, 0] < 0
    # large is right on ~80% of all prompts; its unknown cells read as 0 would say ~25%.
    assert quality[:, 1].mean() > 0.6, (family, quality[:, 1].mean())
    assert quality[~easy, 1].mean() > 0.6
    # small, well labelled, still separates easy from hard.
    assert quality[easy, 0].mean() - quality[~easy, 0].mean() > 0.25
    # Whatever an unknown cell holds is never read: flipping them all changes nothing.
    flipped = fit(family, correct | ~known, known)
    np.testing.assert_allclose(flipped.quality_vectors(test), quality, rtol=0, atol=1e-12)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_partially_labelled_pool_router_round_trips_its_file(
    family: Family, tmp_path: Path
) -> None:
    _, correct, known = pool_data()
    router = fit(family, correct, known)
    router.save(tmp_path / "pools.json")
    loaded = load_router(tmp_path / "pools.json")
    assert isinstance(loaded, PoolRouter) and loaded.scorer.family == family
    test, _, _ = pool_data(seed=9)
    assert np.array_equal(loaded.quality_vectors(test), router.quality_vectors(test))


def test_lr_heads_equal_a_regression_on_their_known_rows() -> None:
    from sklearn.linear_model import LogisticRegression

    x, correct, known = pool_data()
    scorer = fit("lr", correct, known).scorer
    assert isinstance(scorer, LogisticScorer)
    x64 = x.astype(np.float64)
    for head in range(2):
        rows = known[:, head]
        model = LogisticRegression(max_iter=1000).fit(x64[rows], correct[rows, head])
        np.testing.assert_allclose(scorer.coef[head], model.coef_[0], rtol=1e-10, atol=1e-12)


def test_knn_stores_labelled_rows_and_fills_unknown_cells_with_the_head_prior() -> None:
    _, correct, known = pool_data()
    scorer = fit("knn", correct, known).scorer
    assert isinstance(scorer, KnnScorer)
    kept = known.any(axis=1)
    labels = scorer.arrays()["labels"]
    assert labels.shape == (int(kept.sum()), 2)  # rows with no label at all are dropped
    k = known[kept]
    for head in range(2):
        prior = correct[known[:, head], head].mean()
        np.testing.assert_allclose(labels[~k[:, head], head], prior, rtol=1e-6)
        assert set(labels[k[:, head], head].tolist()) == {0.0, 1.0}


def test_the_mlp_of_partial_labels_is_one_network_per_head_on_its_known_rows() -> None:
    from sklearn.exceptions import ConvergenceWarning

    x, correct, known = pool_data()
    scorer = fit("mlp", correct, known).scorer
    assert isinstance(scorer, MlpScorer)
    assert [w.shape for w in scorer.weights] == [(8, 64), (64, 2)]  # two 32-unit blocks
    x64 = x.astype(np.float64)
    for head in range(2):
        rows = known[:, head]
        model = mlp_classifier(int(rows.sum()), OPTIONS)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(x64[rows], correct[rows, head].astype(np.int64))
        expected = model.predict_proba(x64)[:, 1]
        np.testing.assert_allclose(scorer.predict(x64)[:, head], expected, rtol=0, atol=1e-9)


def test_merged_mlps_predict_exactly_what_the_separate_networks_do() -> None:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 6))
    targets = [x[:, 0] > 0, x[:, 1] + x[:, 2] > 0.3, x[:, 3] * x[:, 4] > 0]
    models, scorers = [], []
    for seed, (hidden, y) in enumerate(zip([(7, 5), (4, 3), (6, 2)], targets, strict=True)):
        model = MLPClassifier(hidden_layer_sizes=hidden, max_iter=300, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(x, y.astype(np.int64))
        models.append(model)
        scorers.append(MlpScorer(tuple(model.coefs_), tuple(model.intercepts_)))
    merged = merge_mlps(scorers)
    assert (merged.dimension, merged.heads, len(merged.weights)) == (6, 3, 3)
    assert [w.shape for w in merged.weights] == [(6, 17), (17, 10), (10, 3)]
    probe = rng.normal(size=(200, 6))
    for head, model in enumerate(models):
        expected = model.predict_proba(probe)[:, 1]
        np.testing.assert_allclose(merged.predict(probe)[:, head], expected, rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="same number of layers"):
        merge_mlps([scorers[0], MlpScorer((np.ones((6, 1)),), (np.zeros(1),))])


def test_complete_labels_keep_the_single_multi_label_mlp() -> None:
    x, correct, _ = pool_data()
    full = np.ones_like(correct)
    scorer = fit_scorer("mlp", x, correct, known=full, options=OPTIONS)
    assert isinstance(scorer, MlpScorer)
    assert [w.shape for w in scorer.weights] == [(8, 32), (32, 2)]  # one shared hidden layer


@pytest.mark.parametrize("family", FAMILIES)
def test_a_pool_needs_both_classes_among_its_known_rows(family: Family) -> None:
    _, correct, known = pool_data()
    always = correct.copy()
    always[:, 1] = known[:, 1]  # large right wherever it is known; wrong (0) elsewhere
    with pytest.raises(ValueError, match=r"pool 'large' correctness \(\d+ labelled prompts\)"):
        fit(family, always, known)
    nothing = known.copy()
    nothing[:, 1] = False
    with pytest.raises(ValueError, match="pool 'large' correctness: no prompt has a label"):
        fit(family, correct, nothing)


def test_pool_cli_trains_on_single_labels_calibrates_but_cannot_eval_without_full_rows(
    embedders: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = grouped_rows(per_subject=30)
    for i, row in enumerate(rows):  # one label per row, as traffic gives
        for j, pool in enumerate(("small", "large", "code")):
            if i % 3 != j:
                row[pool] = ""
    rows[0].update(small="", large="", code="")  # no label at all
    path = write_rows(tmp_path / "d.csv", rows)
    out = tmp_path / "pools.json"
    argv = ["train-router", str(path), "--pools", "small,large,code", *COSTS, "-o", str(out)]
    assert cli.main([*argv, "--no-cache"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("skipped 1 of 300 rows with no label for any of small, large, code")
    assert "trained on 299 prompts" in printed
    assert "  code: cost 3, accuracy" in printed and "of 100 labelled prompts" in printed
    assert "in-sample accuracy n/a (no prompt is labelled for every pool)" in printed

    argv = ["calibrate", str(path), "--router", str(out), "--target-cost", "3", "--no-cache"]
    assert cli.main(argv) == 0
    assert "on 300 prompts" in capsys.readouterr().out  # calibration reads no label

    assert cli.main(["eval", str(path), "--router", str(out), "--no-cache"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: eval scores the prompts labelled for every pool: none of")


# --- end to end: the ledger's export, without --complete ------------------------------


def test_export_without_complete_trains_calibrates_and_evaluates_a_pool_router(
    embedders: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    engine = connect(f"sqlite:///{tmp_path / 'state.db'}")
    migrate(engine)
    rng = random.Random(5)
    pools = ("small", "large", "code")
    writer = LedgerWriter(engine)
    feedback: list[tuple[str, float]] = []
    kinds: dict[str, str] = {}
    at = 1_800_000_000.0
    for n, row in enumerate(grouped_rows(per_subject=24, seed=11)):
        prompt, kind = row["prompt"], row["kind"]
        kinds[prompt] = kind
        # A quarter of the prompts were served by every pool, the rest by one.
        served = pools if n % 4 == 0 else (pools[n % 3],)
        for pool in served:
            at += 1
            entry = LedgerEntry(
                id=f"chatcmpl-{n}-{pool}", created_at=at, endpoint="chat", model_asked="auto",
                strategy="route", outcome="ok", latency_s=0.1, tenant="acme",
                pools_tried=pool, pool=pool, prompt=prompt,
            )  # fmt: skip
            writer.record(entry)
            right = rng.random() < P_CORRECT[kind][pools.index(pool)]
            feedback.append((entry.id, 1.0 if right else 0.0))
    writer.flush()
    for rid, score in feedback:
        add_feedback(engine, rid, "acme", score)
    path = tmp_path / "traffic.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        export_csv(engine, f, pools=list(pools))  # no `complete`
    with path.open(newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    full = sum(all(r[p] for p in pools) for r in table)
    assert (len(table), full) == (240, 60)  # 180 rows have empty cells
    both = sum(bool(r["small"] and r["large"]) for r in table)

    out = tmp_path / "pools.json"
    argv = ["train-router", str(path), "--pools", "small,large,code", "--family", "lr"]
    assert cli.main([*argv, *COSTS, "-o", str(out), "--no-cache"]) == 0
    printed = capsys.readouterr().out
    assert "trained on 240 prompts, family lr (pools small, large, code)" in printed
    assert "in-sample accuracy" in printed and "(on the 60 prompts labelled for every" in printed
    router = PoolRouter.load(out, embedder=CountingEmbedder())
    quality = router.quality([p for p, k in kinds.items() if k == "code"])
    assert quality[:, 2].mean() > quality[:, 0].mean() + 0.3  # code beats small on code
    quality = router.quality([p for p, k in kinds.items() if k == "hard"])
    assert quality[:, 1].mean() > quality[:, 0].mean() + 0.3  # large beats small on maths

    argv = ["calibrate", str(path), "--router", str(out), "--target-cost", "4"]
    assert cli.main([*argv, "--write-router", "--no-cache"]) == 0
    assert "on 240 prompts (target cost 4)" in capsys.readouterr().out

    assert cli.main(["eval", str(path), "--router", str(out), "--no-cache"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "skipped 180 of 240 rows with no label for small, large or code"
    assert lines[1].startswith("60 prompts, pools small, large, code;")
    assert [line[:16].strip() for line in lines[3:]] == [
        "router",
        "random, same mix",
        "only small",
        "only large",
        "only code",
    ]

    binary = tmp_path / "router.json"
    argv = ["train-router", str(path), "--weak", "small", "--strong", "large"]
    assert cli.main([*argv, "-o", str(binary), "--no-cache"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"skipped {240 - both} of 240 rows with no label for small or")
    assert f"trained on {both} prompts" in printed
