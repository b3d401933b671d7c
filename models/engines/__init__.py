"""Where a pool's engine loads its model from; the fake engine for tests lives here too.

The engine itself is vLLM, hosted by Ray Serve LLM (`deployments/pool.py`).
"""

from __future__ import annotations

from core.errors import EngineUnavailableError
from models.catalog import ModelSpec

__all__ = ["model_location"]


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
