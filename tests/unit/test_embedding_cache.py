"""The on-disk embedding cache: same vectors back, nothing embedded twice, opt-outs."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from routing import learned
from routing.training import cli, train
from routing.training.embedding_cache import (
    FILE_NAME,
    CachedEmbedder,
    EmbeddingCache,
    default_cache_dir,
    embed_texts,
)
from tests.support.routing_data import CountingEmbedder, grouped_rows, write_rows

TEXTS = [f"prompt number {i} about {'maths ' * (i % 5)}" for i in range(300)]


def test_second_pass_returns_identical_vectors_and_embeds_nothing(tmp_path: Path) -> None:
    embedder = CountingEmbedder()
    first = embed_texts(TEXTS, embedder, cache_dir=tmp_path)
    assert len(embedder.embedded) == 300
    again = CountingEmbedder()
    second = embed_texts(TEXTS, again, cache_dir=tmp_path)
    assert again.embedded == []
    assert second.dtype == np.float32 and np.array_equal(first, second)
    assert np.array_equal(first, CountingEmbedder().encode(TEXTS))
    assert EmbeddingCache(tmp_path).count() == 300


def test_only_new_texts_are_embedded_and_duplicates_once(tmp_path: Path) -> None:
    embed_texts(TEXTS[:100], CountingEmbedder(), cache_dir=tmp_path)
    embedder = CountingEmbedder()
    texts = [*TEXTS[50:150], "fresh", "fresh"]
    vectors = embed_texts(texts, embedder, cache_dir=tmp_path)
    assert sorted(embedder.embedded) == sorted([*TEXTS[100:150], "fresh"])
    assert np.array_equal(vectors, CountingEmbedder().encode(texts))


def test_vectors_of_different_models_never_mix(tmp_path: Path) -> None:
    embed_texts(TEXTS[:10], CountingEmbedder("model-a"), cache_dir=tmp_path)
    other = CountingEmbedder("model-b")
    embed_texts(TEXTS[:10], other, cache_dir=tmp_path)
    assert len(other.embedded) == 10
    assert EmbeddingCache.key("model-a", "x") != EmbeddingCache.key("model-b", "x")


def test_no_cache_and_embedders_without_an_identity_bypass_it(tmp_path: Path) -> None:
    embed_texts(TEXTS[:5], CountingEmbedder(), cache_dir=tmp_path, use_cache=False)
    embed_texts(TEXTS[:5], CountingEmbedder(cache_id=None), cache_dir=tmp_path)
    assert not (tmp_path / FILE_NAME).exists()


def test_a_torn_row_is_a_miss_not_an_error(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path)
    cached = CachedEmbedder(CountingEmbedder(), cache, "counting-64")
    cached.encode(TEXTS[:3])
    with sqlite3.connect(cache.path) as db:
        db.execute("UPDATE vectors SET vector = x'00'")
    inner = CountingEmbedder()
    vectors = CachedEmbedder(inner, cache, "counting-64").encode(TEXTS[:3])
    assert len(inner.embedded) == 3
    assert np.array_equal(vectors, CountingEmbedder().encode(TEXTS[:3]))
    again = CountingEmbedder()  # the torn rows were replaced
    CachedEmbedder(again, cache, "counting-64").encode(TEXTS[:3])
    assert again.embedded == []


def test_the_default_folder_is_under_the_switchyard_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SWITCHYARD_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path / "embeddings" / "vectors"


def test_training_twice_on_the_same_csv_embeds_nothing_the_second_time(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SWITCHYARD_CACHE_DIR", str(tmp_path / "cache"))
    made: list[CountingEmbedder] = []

    def embedder() -> CountingEmbedder:
        made.append(CountingEmbedder())
        return made[-1]

    monkeypatch.setattr(train, "default_embedder", embedder)
    monkeypatch.setattr(learned, "default_embedder", embedder)
    data = write_rows(tmp_path / "d.csv", grouped_rows(per_subject=6))
    argv = ["train-router", str(data), "--weak", "small", "--strong", "large"]
    assert cli.main([*argv, "-o", str(tmp_path / "a.json")]) == 0
    assert cli.main([*argv, "--family", "knn", "-o", str(tmp_path / "b.json")]) == 0
    assert [len(e.embedded) for e in made] == [60, 0]
    assert cli.main(["eval", str(data), "--router", str(tmp_path / "b.json")]) == 0
    argv = ["calibrate", str(data), "--router", str(tmp_path / "a.json"), "--strong-share", "0.3"]
    assert cli.main(argv) == 0
    assert [len(e.embedded) for e in made] == [60, 0, 0, 0]
    assert (tmp_path / "cache" / "embeddings" / "vectors" / FILE_NAME).exists()
    capsys.readouterr()
