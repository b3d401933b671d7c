"""The learned-router file: a JSON document, plus an `.npz` of large arrays beside it.

Version 2 (written now) names the router's `family` (`routing.scorers`) and is either a
binary router (`weak`, `strong`, optional `threshold`: P(strong needed)) or an N-pool
router (`pools`, `costs` and the choice rule: `rule`, `quality_target` or `lam`; see
`routing.learned.PoolRouter`). Small parameters sit in `params` (a logistic regression's
weights stay readable and diffable in review); large arrays (kNN's stored vectors, MLP
and MF weights) go to `<name>.npz` in the same folder, referenced in `arrays` by file name
and sha256, so a JSON file paired with a stale or foreign `.npz` is refused.

Version 1 (logistic regression only: `weak`, `strong`, `coef`, `intercept`, `threshold`)
is still read, as an `lr` binary router.

Validation is strict: unknown fields, a version we do not know, shapes that disagree
with `dimension`, non-finite weights or a checksum mismatch all raise `ValueError`.
Writes go to temporary files renamed into place, arrays first, so a reader never sees a
JSON file whose arrays are missing or half written.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from routing.scorers import FAMILIES, Arrays, Family, Scorer, scorer_from_parts

__all__ = [
    "FORMAT_VERSION",
    "BinaryTarget",
    "ChoiceRule",
    "LoadedRouter",
    "RouterDocument",
    "read_router_file",
    "render_router",
    "write_router_file",
]

FORMAT_VERSION: Literal[2] = 2

BinaryTarget = Literal["strong_needed", "correct"]
"""What a binary router's heads predict: one head P(strong right and weak wrong), or two
heads P(correct) for (weak, strong), combined into P(strong right) * P(weak wrong)."""

ChoiceRule = Literal["quality_target", "tradeoff"]


class _V1(BaseModel):
    """Version 1: a logistic regression, before families existed."""

    model_config = ConfigDict(extra="forbid")

    format_version: Literal[1]
    weak: str = Field(min_length=1)
    strong: str = Field(min_length=1)
    embedding_model: str
    dimension: int = Field(gt=0)
    coef: list[float]
    intercept: float
    threshold: float | None = None


class _ArraysRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    file: str = Field(
        pattern=r"^[^/\\.][^/\\]*\.npz$",
        description="Name of the .npz in the router file's folder (no path).",
    )
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Checksum of that file.")


class RouterDocument(BaseModel):
    """Version 2 of the router JSON (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    format_version: Literal[2] = Field(description="File format version.")
    family: Family = Field(description=f"Scorer family: one of {', '.join(FAMILIES)}.")
    embedding_model: str = Field(description="Sentence-embedding model of the features.")
    dimension: int = Field(gt=0, description="Embedding dimension.")
    weak: str | None = Field(default=None, min_length=1, description="Binary: weak model.")
    strong: str | None = Field(default=None, min_length=1, description="Binary: strong model.")
    target: BinaryTarget | None = Field(default=None, description="Binary: what heads predict.")
    threshold: float | None = Field(
        default=None, description="Binary: route to strong when score >= threshold."
    )
    pools: list[str] | None = Field(default=None, description="N-pool: pool names, one head each.")
    costs: list[float] | None = Field(default=None, description="N-pool: cost of each pool.")
    rule: ChoiceRule | None = Field(default=None, description="N-pool: how a pool is chosen.")
    quality_target: float | None = Field(
        default=None, ge=0, le=1, description="N-pool: cheapest pool with P(correct) >= this."
    )
    lam: float | None = Field(default=None, ge=0, description="N-pool: max P(correct) - lam*cost.")
    params: dict[str, Any] = Field(description="Family parameters small enough for JSON.")
    arrays: _ArraysRef | None = Field(default=None, description="The .npz of large arrays.")

    @model_validator(mode="after")
    def _one_kind(self) -> RouterDocument:
        binary = (self.weak, self.strong, self.target)
        pooled = (self.pools, self.costs, self.rule)
        if all(v is not None for v in binary) and all(v is None for v in pooled):
            if self.weak == self.strong:
                raise ValueError("weak and strong name the same model")
            if self.quality_target is not None or self.lam is not None:
                raise ValueError("quality_target and lam are for N-pool routers")
            return self
        if all(v is not None for v in pooled) and all(v is None for v in binary):
            return self._check_pools()
        raise ValueError(
            "a router file is binary (weak, strong, target) or N-pool (pools, costs, rule)"
        )

    def _check_pools(self) -> RouterDocument:
        assert self.pools is not None and self.costs is not None
        if len(self.pools) < 2 or len(set(self.pools)) != len(self.pools) or "" in self.pools:
            raise ValueError("pools must be at least two distinct non-empty names")
        if len(self.costs) != len(self.pools):
            raise ValueError(f"{len(self.costs)} costs for {len(self.pools)} pools")
        if not all(math.isfinite(c) and c >= 0 for c in self.costs):
            raise ValueError("costs must be finite and >= 0")
        if self.threshold is not None:
            raise ValueError("threshold is for binary routers")
        if self.rule == "quality_target" and (self.quality_target is None or self.lam is not None):
            raise ValueError("rule quality_target needs quality_target (and no lam)")
        if self.rule == "tradeoff" and (self.lam is None or self.quality_target is not None):
            raise ValueError("rule tradeoff needs lam (and no quality_target)")
        return self

    @property
    def heads(self) -> int:
        if self.pools is not None:
            return len(self.pools)
        return 2 if self.target == "correct" else 1


@dataclass(frozen=True)
class LoadedRouter:
    document: RouterDocument
    scorer: Scorer


def _from_v1(raw: dict[str, Any]) -> RouterDocument:
    old = _V1.model_validate(raw)
    if len(old.coef) != old.dimension:
        raise ValueError(f"coef has {len(old.coef)} values, dimension is {old.dimension}")
    return RouterDocument(
        format_version=FORMAT_VERSION,
        family="lr",
        embedding_model=old.embedding_model,
        dimension=old.dimension,
        weak=old.weak,
        strong=old.strong,
        target="strong_needed",
        threshold=old.threshold,
        params={"coef": [old.coef], "intercept": [old.intercept]},
    )


def _read_arrays(folder: Path, ref: _ArraysRef) -> Arrays:
    data = (folder / ref.file).read_bytes()
    if hashlib.sha256(data).hexdigest() != ref.sha256:
        raise ValueError(f"{ref.file}: checksum mismatch (stale or foreign arrays file)")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as stored:
            return {name: stored[name] for name in stored.files}
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{ref.file}: not a readable .npz: {exc}") from exc


def read_router_file(path: str | Path) -> LoadedRouter:
    """Read, validate and rebuild a router file of either version; `ValueError` if bad."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError("the top level is not an object")
        version = raw.get("format_version")
        if version == 1:
            document = _from_v1(raw)
        elif version == FORMAT_VERSION:
            document = RouterDocument.model_validate(raw)
        else:
            raise ValueError(f"format_version {version!r} is not 1 or {FORMAT_VERSION}")
        arrays = _read_arrays(path.parent, document.arrays) if document.arrays else {}
        scorer = scorer_from_parts(
            document.family, document.params, arrays, document.dimension, document.heads
        )
    except (ValueError, ValidationError) as exc:  # JSONDecodeError is a ValueError
        raise ValueError(f"{path}: not a valid router file:\n{exc}") from exc
    return LoadedRouter(document, scorer)


def _replace_atomically(target: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def render_router(
    fields: dict[str, Any], scorer: Scorer, arrays_file: str
) -> tuple[str, bytes | None]:
    """The JSON text and the `.npz` bytes (None when the scorer has no large arrays).

    `fields` are the kind-specific fields (weak, strong, target, threshold, or pools,
    costs, rule, ...); the document is validated before anything is returned.
    """
    arrays = scorer.arrays()
    data = ref = None
    if arrays:
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)  # type: ignore[arg-type]
        data = buffer.getvalue()
        ref = _ArraysRef(file=arrays_file, sha256=hashlib.sha256(data).hexdigest())
    document = RouterDocument(
        format_version=FORMAT_VERSION,
        family=scorer.family,
        dimension=scorer.dimension,
        params=scorer.params(),
        arrays=ref,
        **fields,
    )
    return json.dumps(document.model_dump(exclude_none=True), indent=1) + "\n", data


def write_router_file(path: str | Path, fields: dict[str, Any], scorer: Scorer) -> None:
    """Write the JSON, and the scorer's large arrays beside it as `<stem>.npz`."""
    path = Path(path)
    npz = path.with_suffix(".npz")
    text, data = render_router(fields, scorer, npz.name)
    if data is not None:
        _replace_atomically(npz, lambda f: f.write(data))
    _replace_atomically(path, lambda f: f.write(text.encode("utf-8")))
