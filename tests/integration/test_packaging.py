"""The server runs without the `[train]` extra: its import path never loads the tools.

scikit-learn and matplotlib are only in the `[train]` extra (the offline tools in
`routing.training`), so a serving install may not have them. A fresh interpreter imports
every module the Serve application loads and checks none of them pulled in either
package, nor `routing.training` itself.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).parents[2]
TRAIN_EXTRA = ("sklearn", "matplotlib")

SERVING_MODULES = (
    "deployments.builder",
    "deployments.ingress",
    "deployments.proxy",
    "routing.embedding",
    "routing.learned",
    "routing.semantic",
)

CHECK = """\
import importlib, sys
for name in {modules!r}:
    importlib.import_module(name)
loaded = sorted(
    m for m in sys.modules
    if m.partition(".")[0] in {extra!r} or m.startswith("routing.training")
)
print("\\n".join(loaded))
"""


def test_serving_imports_load_no_training_stack() -> None:
    code = CHECK.format(modules=SERVING_MODULES, extra=TRAIN_EXTRA)
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [], f"serving imports loaded: {result.stdout.split()}"


def test_training_packages_are_only_in_the_train_extra() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]

    def names(requirements: list[str]) -> set[str]:
        return {r.split(">")[0].split("=")[0].split("[")[0].strip() for r in requirements}

    assert names(project["dependencies"]).isdisjoint({"scikit-learn", "matplotlib"})
    assert {"scikit-learn", "matplotlib"} <= names(project["optional-dependencies"]["train"])
    assert project["scripts"]["switchyard"] == "routing.training.cli:main"
