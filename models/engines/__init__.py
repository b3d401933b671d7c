"""Engines behind one interface; `create_engine` picks one from config, not from imports."""

from __future__ import annotations

from core.errors import EngineUnavailableError
from models.catalog import ModelSpec
from models.engines.base import Engine
from models.engines.fake import FakeEngine, FakeEngineOptions

__all__ = ["create_engine", "model_location"]


def model_location(spec: ModelSpec) -> str:
    """Where vLLM loads the model from: a prepared embedded folder, a hub id or a path."""
    if spec.source_scheme == "embedded":
        from models.prepare import is_prepared, model_dir

        if not is_prepared(spec.source_name):
            raise EngineUnavailableError(
                f"embedded model {spec.source_name!r} is not prepared; run "
                f"`switchyard prepare {spec.source_name}` (or `make serve`)"
            )
        return str(model_dir(spec.source_name))
    return spec.source_name


def create_engine(
    kind: str, spec: ModelSpec, *, pool: str, fake: FakeEngineOptions | None = None
) -> Engine:
    if kind == "fake":
        return FakeEngine(
            fake or FakeEngineOptions(),
            max_model_len=spec.engine.max_model_len,
            pool=pool,
            model=spec.id,
        )
    if kind == "vllm":
        from models.engines.vllm_engine import VLLMEngine

        return VLLMEngine(spec, model_location(spec))
    raise ValueError(f"unknown engine kind {kind!r}")
