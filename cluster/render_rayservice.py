"""Copy cluster/serve_config.gpu.yaml into cluster/rayservice.yaml's `serveConfigV2`.

KubeRay takes the Serve config as one YAML string inside the RayService. A second,
hand-edited copy would drift from the file `serve deploy` uses, so this script owns that
block: it replaces everything indented under `serveConfigV2: |` with the GPU serve config
(minus its leading comment header) and leaves the rest of the manifest, comments
included, as written. tests/unit/test_cluster.py fails when the committed manifest is not
what this script would write.

    python cluster/render_rayservice.py           # rewrite cluster/rayservice.yaml
    python cluster/render_rayservice.py --check   # exit 1 if it is out of date
"""

from __future__ import annotations

import sys
from pathlib import Path

CLUSTER = Path(__file__).resolve().parent
MANIFEST = CLUSTER / "rayservice.yaml"
SERVE_CONFIG = CLUSTER / "serve_config.gpu.yaml"

KEY = "  serveConfigV2: |\n"
INDENT = "    "  # the block scalar's content sits two spaces deeper than its key


def serve_config_body(text: str) -> str:
    """The serve config without the comment header that explains the file itself."""
    lines = text.splitlines(keepends=True)
    while lines and (lines[0].startswith("#") or not lines[0].strip()):
        lines.pop(0)
    return "".join(lines)


def render(manifest: str, serve_config: str) -> str:
    """`manifest` with its serveConfigV2 block replaced by `serve_config`'s body."""
    before, key, rest = manifest.partition(KEY)
    if not key:
        raise ValueError(f"no line {KEY.strip()!r} at two-space indent in the manifest")
    old = rest.splitlines(keepends=True)
    end = 0
    while end < len(old) and (old[end].startswith(INDENT) or not old[end].strip()):
        end += 1
    block = "".join(
        INDENT + line if line.strip() else "\n"
        for line in serve_config_body(serve_config).splitlines(keepends=True)
    )
    return before + key + block + "".join(old[end:])


def main(argv: list[str]) -> int:
    current = MANIFEST.read_text()
    wanted = render(current, SERVE_CONFIG.read_text())
    if "--check" in argv:
        if wanted != current:
            print(f"{MANIFEST.name} is out of date: run python cluster/render_rayservice.py")
            return 1
        return 0
    if wanted != current:
        MANIFEST.write_text(wanted)
        print(f"updated {MANIFEST.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
