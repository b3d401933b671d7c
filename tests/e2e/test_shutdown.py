"""`serve run` as a user runs it: it starts, answers, and Ctrl-C leaves nothing behind.

An engine process that outlives its app keeps gigabytes of memory and a CPU busy; the
serving path starts several (Ray's workers, vLLM's EngineCore and its worker), so this
is checked on the real thing.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
STOP_BOUND_S = 90  # generous: a Ctrl-C here took about 13 s


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _session_processes(sid: int) -> list[str]:
    out = subprocess.run(["ps", "-eo", "sid=,pid=,comm="], capture_output=True, text=True)
    return [line for line in out.stdout.splitlines() if line.split()[0] == str(sid)]


def _serving(sid: int) -> list[str]:
    """Engine processes and Serve's actors still alive in the session."""
    names = ("VLLM::", "ServeRepli", "ProxyActor", "ServeContr")  # comm: 15 chars
    return [line for line in _session_processes(sid) if any(n in line for n in names)]


def _ctrl_c_as_in_a_terminal() -> None:
    # NOTE: a shell running this suite in the background ignores SIGINT, and children
    # inherit that; a user's terminal does not.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _one_pool_config(port: int) -> dict[str, object]:
    doc = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    doc["http_options"]["port"] = port
    args = doc["applications"][0]["args"]
    args["pools"] = {"small": args["pools"]["small"]}
    args["models"] = [m for m in args["models"] if m["id"] == args["pools"]["small"]["model"]]
    args["routing"] = {
        "rules": {"default_pool": "small", "large_pool": "small", "code_pool": "small"},
        "fallback": {"chains": {}},
        "cascade": {"source_pool": "small", "rules": []},
    }
    return doc


def test_serve_run_answers_and_ctrl_c_leaves_no_process(tmp_path: Path) -> None:
    port = _free_port()
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump(_one_pool_config(port)))
    env = {
        **os.environ,
        "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "deployments.proxy:middlewares",
    }
    serve = str(Path(sys.executable).parent / "serve")
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [serve, "run", "--address", "local", str(config)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        preexec_fn=_ctrl_c_as_in_a_terminal,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(2)  # the app is not up yet (its engine takes a while to load)
        else:
            pytest.fail("`serve run` did not answer /health within 600 s")
        body = json.dumps(
            {"model": "small", "prompt": "Hello", "max_tokens": 8, "ignore_eos": True}
        ).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/completions", body, {"content-type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=120) as r:
            assert json.loads(r.read())["usage"]["completion_tokens"] == 8
        assert any("VLLM" in line for line in _session_processes(proc.pid))

        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        proc.wait(STOP_BOUND_S)
        # Engines and Serve's actors go with it; Ray's node agents (dashboard, runtime
        # env) notice their raylet is gone on their own schedule, once took over 30 s.
        deadline = time.monotonic() + 30
        while _serving(proc.pid) and time.monotonic() < deadline:
            time.sleep(1)
        assert _serving(proc.pid) == []
        deadline = time.monotonic() + 120
        while _session_processes(proc.pid) and time.monotonic() < deadline:
            time.sleep(1)
        assert _session_processes(proc.pid) == []
    finally:
        if proc.poll() is None or _session_processes(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
