"""Router families: each learns a separable set, round-trips its file exactly, and the
server side refuses files that do not add up.

No MiniLM: vectors are synthetic (`tests/support/routing_data.py`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from routing.learned import ChoicePolicy, LearnedRouter, PoolRouter, load_router
from routing.scorers import FAMILIES, Family
from routing.training.evaluation import evaluate, random_baseline
from routing.training.families import FamilyOptions, fit_binary, fit_pools, parse_families
from tests.support.routing_data import separable

OPTIONS = FamilyOptions(knn_neighbours=16, mlp_hidden=(32,))


def binary(family: Family, n: int = 600) -> LearnedRouter:
    x, weak, strong = separable(n, seed=1, dimension=8)
    return fit_binary(family, x, weak, strong, weak="small", strong="large", options=OPTIONS)


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_beats_a_random_router_on_held_out_rows(family: Family) -> None:
    router = binary(family)
    x, weak, strong = separable(400, seed=2, dimension=8)
    result = evaluate(router.score_vectors(x), weak, strong)
    baseline = random_baseline(weak, strong)
    assert baseline.apgr == pytest.approx(0.5, abs=0.06)
    assert result.apgr > 0.68, (family, result.apgr)  # the oracle: ~0.8 (label noise)
    assert result.cpt(0.8) < baseline.cpt(0.8) - 0.2


@pytest.mark.parametrize("family", FAMILIES)
def test_binary_file_round_trips_to_identical_scores(family: Family, tmp_path: Path) -> None:
    router = binary(family).with_threshold(0.3)
    path = tmp_path / "router.json"
    router.save(path)
    document = json.loads(path.read_text())
    assert (document["format_version"], document["family"]) == (2, family)
    assert ("arrays" in document) == (family != "lr")  # lr stays one readable file
    loaded = LearnedRouter.load(path, embedder=None)
    x, _, _ = separable(50, seed=3, dimension=8)
    assert np.array_equal(loaded.score_vectors(x), router.score_vectors(x))
    assert (loaded.family, loaded.threshold, loaded.target) == (family, 0.3, router.target)


def test_mf_models_each_models_correctness() -> None:
    router = binary("mf")
    assert router.target == "correct" and router.scorer.heads == 2
    x, _, _ = separable(300, seed=4, dimension=8)
    p = router.scorer.predict(x)
    np.testing.assert_allclose(router.score_vectors(x), p[:, 1] * (1 - p[:, 0]))
    hard = x[:, 0] > 0
    # The weak model's accuracy is 0.15 on hard rows, 0.9 on easy ones.
    assert p[hard, 0].mean() < 0.35 and p[~hard, 0].mean() > 0.7


@pytest.mark.parametrize("family", FAMILIES)
def test_pool_file_round_trips_to_identical_quality(family: Family, tmp_path: Path) -> None:
    x, weak, strong = separable(600, seed=5)
    router = fit_pools(
        family,
        x,
        np.stack([weak, strong], axis=1),
        pools=["small", "large"],
        costs=[1.0, 10.0],
        policy=ChoicePolicy("tradeoff", 0.02),
        options=OPTIONS,
    )
    path = tmp_path / "pools.json"
    router.save(path)
    loaded = load_router(path)
    assert isinstance(loaded, PoolRouter)
    assert (loaded.pools, loaded.costs.tolist(), loaded.policy) == (
        ("small", "large"),
        [1.0, 10.0],
        ChoicePolicy("tradeoff", 0.02),
    )
    assert np.array_equal(loaded.quality_vectors(x[:40]), router.quality_vectors(x[:40]))
    with pytest.raises(ValueError, match="an N-pool router"):
        LearnedRouter.load(path)


def saved(tmp_path: Path, family: Family = "knn") -> Path:
    path = tmp_path / "router.json"
    binary(family).save(path)
    return path


def test_a_changed_npz_is_refused_by_its_checksum(tmp_path: Path) -> None:
    path = saved(tmp_path)
    npz = tmp_path / "router.npz"
    data = bytearray(npz.read_bytes())
    data[len(data) // 2] ^= 0xFF
    npz.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum mismatch"):
        LearnedRouter.load(path)


def test_a_missing_npz_is_an_os_error_naming_it(tmp_path: Path) -> None:
    path = saved(tmp_path)
    (tmp_path / "router.npz").unlink()
    with pytest.raises(FileNotFoundError, match="router.npz"):
        LearnedRouter.load(path)


def test_arrays_of_the_wrong_shape_are_refused_even_with_a_matching_checksum(
    tmp_path: Path,
) -> None:
    path = saved(tmp_path, "mf")
    npz = tmp_path / "router.npz"
    with np.load(npz) as stored:
        arrays = {name: stored[name] for name in stored.files}
    arrays["projection"] = arrays["projection"][:, :-1]  # one input dimension short
    np.savez(npz, **arrays)
    document = json.loads(path.read_text())
    document["arrays"]["sha256"] = hashlib.sha256(npz.read_bytes()).hexdigest()
    path.write_text(json.dumps(document))
    with pytest.raises(ValueError, match=r"mf projection has shape \(64, 7\), expected \(64, 8\)"):
        LearnedRouter.load(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"arrays": {"file": "../elsewhere.npz", "sha256": "0" * 64}}, "file"),
        ({"arrays": None}, r"knn router arrays are \[\], expected \['labels', 'vectors'\]"),
        ({"params": {"neighbours": "many", "temperature": 0.05, "smoothing": 1.0}}, "neighbours"),
        ({"params": {"neighbours": 0, "temperature": 0.05, "smoothing": 1.0}}, "neighbours >= 1"),
    ],
)
def test_inconsistent_knn_documents_are_refused(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    path = saved(tmp_path)
    document = json.loads(path.read_text())
    document.update(change)
    if document["arrays"] is None:
        del document["arrays"]
    path.write_text(json.dumps(document))
    with pytest.raises(ValueError, match=message):
        LearnedRouter.load(path)


def test_non_finite_weights_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "router.json"
    binary("lr").save(path)
    document = json.loads(path.read_text())
    document["params"]["coef"][0][3] = float("inf")
    path.write_text(json.dumps(document))
    with pytest.raises(ValueError, match="finite"):
        LearnedRouter.load(path)


def test_knn_keeps_at_most_max_points() -> None:
    x, weak, strong = separable(500, seed=6)
    options = FamilyOptions(knn_max_points=100)
    router = fit_binary("knn", x, weak, strong, weak="w", strong="s", options=options)
    assert router.scorer.arrays()["vectors"].shape == (100, 16)
    norms = np.linalg.norm(router.scorer.arrays()["vectors"], axis=1)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)


def test_family_names_are_parsed_and_checked() -> None:
    assert parse_families("mlp, lr") == ("lr", "mlp")
    with pytest.raises(ValueError, match="unknown families"):
        parse_families("lr,forest")


def test_mlp_learns_a_weak_rare_label_at_thousands_of_rows() -> None:
    """Regression: scikit-learn's early stopping watches validation *accuracy*, which a
    rare, noisy label leaves at the majority class from the first epoch; at >= 5,000
    rows the old settings stopped after ~6 epochs with a held-out ROC AUC of 0.57 here
    (real prompts: below a random router). Held back by L2 instead, it ranks them."""
    from sklearn.metrics import roc_auc_score

    from routing.training.families import fit_scorer

    rng = np.random.default_rng(0)
    x = rng.normal(size=(6000, 384))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    signal = x @ rng.normal(size=384)
    y = rng.random(6000) < 1 / (1 + np.exp(-(signal / signal.std() - 1.5)))
    assert 0.15 < y.mean() < 0.3
    scorer = fit_scorer("mlp", x[:5000], y[:5000, None], balanced=True)
    assert roc_auc_score(y[5000:], scorer.predict(x[5000:])[:, 0]) > 0.62
