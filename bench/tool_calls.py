"""Tool calling through Switchyard against vLLM's own server, same weights and parser.

An agent's request carries tools; what matters is whether the answer is a tool call the
agent can run (the right tool, arguments that fit its parameters) and how long it takes.
This drives `--requests` such requests (three tools, varied questions, `tool_choice`
`auto` or `required`) at `--concurrency`, one target after the other in one run:

    vllm        vLLM's OpenAI server on the pool's model, `--enable-auto-tool-choice
                --tool-call-parser <the catalog's parser>` (what a user would run instead)
    pinned      Switchyard, `model: <pool>`
    auto        Switchyard, `model: auto` (routing leaves out pools without tool calling)
    cascade     Switchyard, `model: auto`, strategy cascade, the validity check on
    cascade-off the same with `routing.cascade.check_validity: false`

For the cascades to have a cheap pool that can be asked for tools, the bench app gives
the `small` pool's model the same parser (`--small-parser`, default hermes): SmolLM2
then answers tool requests, usually without a call, which is what the validity check
is for. Prints valid-call share and p50/p99 latency per target; JSON under
reports/bench-tools/. Numbers only.

    python bench/tool_calls.py                     # all targets, 200 requests each
    python bench/tool_calls.py --targets vllm pinned --requests 50
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.vllm_peer import BIN, Server, _app_args, _vllm_flags  # noqa: E402
from deployments.config import load_app_config  # noqa: E402
from deployments.llm_config import engine_kwargs  # noqa: E402
from models.prepare import model_dir  # noqa: E402

REPORTS = ROOT / "reports" / "bench-tools"
VLLM_PORT, SWITCHYARD_PORT = 8111, 8112

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "convert_currency",
            "description": "Convert an amount of money from one currency to another.",
            "parameters": {
                "type": "object",
                "properties": {
                    "amount": {"type": "number"},
                    "source": {"type": "string"},
                    "target": {"type": "string"},
                },
                "required": ["amount", "source", "target"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "stock_price",
            "description": "The latest price of a stock by its ticker symbol.",
            "parameters": {
                "type": "object",
                "properties": {"ticker": {"type": "string"}},
                "required": ["ticker"],
            },
        },
    },
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
CITIES = ["Paris", "Tokyo", "Lima", "Oslo", "Cairo", "Perth", "Quito", "Riga", "Seoul", "Accra"]
TICKERS = ["AAPL", "MSFT", "NVDA", "TSLA", "IBM"]


def questions(n: int) -> list[tuple[str, str]]:
    """(question, tool_choice): varied, deterministic, every third one `required`."""
    out = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            text = f"What is the weather like in {CITIES[i % len(CITIES)]} right now?"
        elif kind == 1:
            text = f"How much is {10 * (i % 9 + 1)} US dollars in euros?"
        else:
            text = f"What is the current price of {TICKERS[i % len(TICKERS)]} stock?"
        out.append((text, "required" if i % 3 == 2 else "auto"))
    return out


def valid_call(message: dict[str, Any]) -> bool:
    calls = message.get("tool_calls") or []
    if not calls:
        return False
    for call in calls:
        function = call.get("function") or {}
        schema = SCHEMAS.get(function.get("name"))
        if schema is None:
            return False
        try:
            jsonschema.validate(json.loads(function.get("arguments") or ""), schema)
        except (ValueError, jsonschema.ValidationError):
            return False
    return True


async def drive(
    port: int, model: str, n: int, concurrency: int, extra: dict[str, Any]
) -> dict[str, Any]:
    work = questions(n)
    latencies: list[float] = []
    valid = errors = escalated = 0
    pools: dict[str, int] = {}
    queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    for item in work:
        queue.put_nowait(item)

    async def worker(http: httpx.AsyncClient) -> None:
        nonlocal valid, errors, escalated
        while not queue.empty():
            text, choice = queue.get_nowait()
            body = {
                "model": model, "messages": [{"role": "user", "content": text}],
                "tools": TOOLS, "tool_choice": choice, "temperature": 0, "max_tokens": 96,
                **extra,
            }  # fmt: skip
            started = time.monotonic()
            resp = await http.post("/v1/chat/completions", json=body)
            latencies.append(time.monotonic() - started)
            if resp.status_code != 200:
                errors += 1
                continue
            answer = resp.json()
            valid += valid_call(answer["choices"][0]["message"])
            route = answer.get("switchyard") or {}
            pool = route.get("pool", "-")
            pools[pool] = pools.get(pool, 0) + 1
            escalated += bool(route.get("escalated"))

    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
    latencies.sort()
    return {
        "requests": n, "valid_share": valid / n, "errors": errors, "escalated": escalated,
        "p50_s": statistics.median(latencies),
        "p99_s": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "pools": pools,
    }  # fmt: skip


def bench_config(config: Path, small_parser: str | None, check_validity: bool) -> dict[str, Any]:
    raw = yaml.safe_load(config.read_text())
    raw["http_options"]["port"] = SWITCHYARD_PORT
    args = raw["applications"][0]["args"]
    small_model = args["pools"]["small"]["model"]
    for model in args["models"]:
        if model["id"] == small_model and small_parser:
            model["tool_call_parser"] = small_parser
    cascade = args.setdefault("routing", {}).setdefault("cascade", {})
    cascade["check_validity"] = check_validity
    load_app_config(args)
    return dict(raw)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", type=Path, default=ROOT / "serve_config.yaml")
    p.add_argument("--pool", default="large", help="the pool vLLM's server stands in for")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--small-parser", default="hermes")
    p.add_argument(
        "--targets", nargs="+", default=["vllm", "pinned", "auto", "cascade", "cascade-off"]
    )
    args = p.parse_args(argv)
    REPORTS.mkdir(parents=True, exist_ok=True)
    (ROOT / "reports" / "bench-vllm").mkdir(parents=True, exist_ok=True)  # servers' logs
    app = load_app_config(_app_args(args.config))
    spec = app.model(app.pools[args.pool].model)
    env = dict(app.pools[args.pool].env_vars)
    rows: dict[str, Any] = {}

    def report(label: str, result: dict[str, Any]) -> None:
        rows[label] = result
        print(
            f"{label:12} valid {result['valid_share']:6.1%}  p50 {result['p50_s']:6.2f} s  "
            f"p99 {result['p99_s']:6.2f} s  errors {result['errors']}  "
            f"escalated {result['escalated']}  pools {result['pools']}",
            flush=True,
        )

    if "vllm" in args.targets:
        weights = model_dir(spec.source_name)
        flags = _vllm_flags(engine_kwargs(spec) | {"served_model_name": args.pool})
        argv_ = [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
                 "--model", str(weights), "--host", "127.0.0.1", "--port", str(VLLM_PORT),
                 *flags]  # fmt: skip
        server = Server("vllm-tools", argv_, env, f"http://127.0.0.1:{VLLM_PORT}/health")
        server.start()
        try:
            report(
                "vllm",
                asyncio.run(drive(VLLM_PORT, args.pool, args.requests, args.concurrency, {})),
            )
        finally:
            server.stop()
    runs = {
        "pinned": (args.pool, {}, True),
        "auto": ("auto", {}, True),
        "cascade": ("auto", {"switchyard": {"strategy": "cascade"}}, True),
        "cascade-off": ("auto", {"switchyard": {"strategy": "cascade"}}, False),
    }
    for check in (True, False):
        wanted = [t for t in runs if t in args.targets and runs[t][2] == check]
        if not wanted:
            continue
        raw = bench_config(args.config, args.small_parser, check)
        path = REPORTS / f"serve_validity_{'on' if check else 'off'}.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        argv_ = [str(BIN / "serve"), "run", "--address", "local", str(path)]
        server = Server(
            f"switchyard-{check}", argv_, {}, f"http://127.0.0.1:{SWITCHYARD_PORT}/health"
        )
        server.start(timeout_s=900)
        try:
            for target in wanted:
                model, extra, _ = runs[target]
                report(
                    target,
                    asyncio.run(
                        drive(SWITCHYARD_PORT, model, args.requests, args.concurrency, extra)
                    ),
                )
        finally:
            server.stop()
    out = REPORTS / f"tools-{int(time.time())}.json"
    summary = {"pool": args.pool, "requests": args.requests, "concurrency": args.concurrency}
    out.write_text(json.dumps({**summary, "targets": rows}, indent=2))
    print(f"\nwrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
