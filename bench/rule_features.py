"""Routing rules on large and hostile prompts: does their cost stay linear in the size?

    .venv/bin/python bench/rule_features.py [--repeats 5] [--python-re]

Every `model="auto"` request runs the rule patterns over its whole text on the ingress's
event loop, before any limit on work per request applies, so a client controls how
long they take. This times, for prompts of 1 KB, 100 KB and 1 MB:

    rules  `routing.rules.extract_features` + `decide` with a default `RulesConfig()`
    plan   `routing.planner.plan(profile, ...)` as `OpenAIServing.plan` calls it: the same
           rules plus the pool table (`PoolView`s built like `OpenAIServing.views` on an
           idle app) and the route score

on ordinary prose and on texts made to hurt a backtracking regex engine: all newlines,
all spaces, "function " repeated, "import " lines, one long word, and "\\n import"
repeated. The rules read only the head and tail of a long prompt (`scan_chars`), so a
third column runs them over the whole text, to show the matcher itself is linear (flat
ms per MB). It prints the median ms per call over `--repeats` runs and ms per MB, and
checks the goal "a 1 MB prompt costs <= 50 ms of routing work" (slowest kind, `plan`).

`--python-re` also times the patterns the rules had before RE2 (Python's `re`, as in
the commit before the switch) on 10, 20 and 40 KB of newlines, where `^\\s*(import|from)`
backtracks over every line start: quadratic, 5-8 s at 20 KB, so it stops at 40 KB.
Numbers only, no assertions.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

# NOTE: the script's own folder comes first on sys.path, and bench/routing.py would
# shadow the `routing` package; put the repository root before it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from routing.config import RoutingConfig  # noqa: E402
from routing.planner import PoolView, plan  # noqa: E402
from routing.profile import RequestProfile  # noqa: E402
from routing.rules import (  # noqa: E402
    DEFAULT_CODE_PATTERNS,
    DEFAULT_COMPLEX_PATTERNS,
    RulesConfig,
    decide,
    extract_features,
)

GOAL_MS = 50.0
MB = 1024 * 1024
SIZES = {"1 KB": 1024, "100 KB": 100 * 1024, "1 MB": MB}
PYTHON_RE_SIZES = {"10 KB": 10 * 1024, "20 KB": 20 * 1024, "40 KB": 40 * 1024}
MAX_TOKENS = 256  # the ingress's default when a request names none

# A piece repeated (and cut) to the size asked for.
KINDS = {
    "prose": "What is the capital of France, and which rivers run through it? ",
    "newlines": "\n",
    "spaces": " ",
    "function": "function ",
    "import lines": "import \n",
    "one long word": "a",
    "\\n import mix": "\n import",
}

# The patterns did not change when the rules moved to RE2, only the engine running them:
# `--python-re` runs the same ones with Python's backtracking `re`, as before.
OLD_PATTERNS = [*DEFAULT_CODE_PATTERNS, *DEFAULT_COMPLEX_PATTERNS]

# Pool name -> (quality, USD per million input tokens, per million output, tokens/s):
# the shape of a three-pool profile; the numbers only feed the score.
POOLS = {
    "small": (0.5, 0.01, 0.03, 20.0),
    "large": (0.85, 0.3, 0.9, 8.0),
    "code": (0.8, 0.05, 0.15, 8.0),
}
POOL_MODELS = {"small": "tiny-chat", "large": "big-chat", "code": "coder"}


def make_text(piece: str, size: int) -> str:
    return (piece * (size // len(piece) + 1))[:size]


def views(prompt_chars: int, max_tokens: int, chars_per_token: float) -> dict[str, PoolView]:
    """Pool views as `OpenAIServing.views` builds them for an idle app (no live load)."""
    prompt_tokens = prompt_chars / chars_per_token
    return {
        name: PoolView(
            name=name,
            quality=quality,
            cost_per_request=(prompt_tokens * price_in + max_tokens * price_out) / 1e6,
            expected_latency_s=max_tokens / tokens_per_s,
        )
        for name, (quality, price_in, price_out, tokens_per_s) in POOLS.items()
    }


def median_ms(call: Callable[[], object], repeats: int, size: int) -> float:
    """Median ms of one call; small inputs are looped so the clock can see them."""
    loops = max(1, 64 * 1024 // size)
    call()  # warm-up: compiles patterns, fills caches
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(loops):
            call()
        samples.append((time.perf_counter() - started) * 1000 / loops)
    return statistics.median(samples)


def bench_rules(repeats: int) -> float:
    rules = RulesConfig()
    routing = RoutingConfig()
    # The same patterns over the whole text (no head-and-tail window), to show that the
    # matcher itself is linear: without the window, time per MB stays flat.
    whole = RulesConfig(scan_chars=2 * MB) if "scan_chars" in RulesConfig.model_fields else None
    print(
        f"{'prompt':16} {'size':>7} {'rules ms':>10} {'ms/MB':>7} {'plan ms':>9} {'ms/MB':>7}"
        f" {'whole text ms':>14} {'ms/MB':>7}"
    )
    worst_1mb = 0.0
    for kind, piece in KINDS.items():
        for label, size in SIZES.items():
            text = make_text(piece, size)

            def rules_call(text: str = text) -> object:
                return decide(extract_features(text, rules), rules)

            def plan_call(text: str = text) -> object:
                table = views(len(text), MAX_TOKENS, routing.rules.chars_per_token)
                facts = RequestProfile(
                    "auto",
                    text,
                    len(text) / routing.rules.chars_per_token,
                    dict.fromkeys(POOL_MODELS, MAX_TOKENS),
                )
                return plan(facts, table, POOL_MODELS, routing)

            def whole_call(text: str = text) -> object:
                assert whole is not None
                return decide(extract_features(text, whole), whole)

            rules_ms = median_ms(rules_call, repeats, size)
            plan_ms = median_ms(plan_call, repeats, size)
            per_mb = MB / size
            line = (
                f"{kind:16} {label:>7} {rules_ms:10.3f} {rules_ms * per_mb:7.1f}"
                f" {plan_ms:9.3f} {plan_ms * per_mb:7.1f}"
            )
            if whole is not None:
                whole_ms = median_ms(whole_call, repeats, size)
                line += f" {whole_ms:14.3f} {whole_ms * per_mb:7.1f}"
            print(line, flush=True)
            if size == MB:
                worst_1mb = max(worst_1mb, plan_ms)
    return worst_1mb


def bench_python_re() -> None:
    """The old patterns (Python `re`) against today's rules, on newlines only."""
    old = [re.compile(p, re.IGNORECASE | re.MULTILINE) for p in OLD_PATTERNS]
    rules = RulesConfig()
    print("\nnewline prompt, old patterns (Python re) vs the rules now; one call each")
    print(f"{'size':>7} {'python re s':>12} {'rules now ms':>13}")
    for label, size in PYTHON_RE_SIZES.items():
        text = "\n" * size
        started = time.perf_counter()
        tuple(dict.fromkeys(m.group(0).strip() for p in old if (m := p.search(text))))
        old_s = time.perf_counter() - started
        started = time.perf_counter()
        decide(extract_features(text, rules), rules)
        now_ms = (time.perf_counter() - started) * 1000
        print(f"{label:>7} {old_s:12.2f} {now_ms:13.3f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per cell (median)")
    parser.add_argument(
        "--python-re",
        action="store_true",
        help="also time the old Python `re` patterns on 10-40 KB of newlines (~45 s)",
    )
    args = parser.parse_args()

    scan = RulesConfig().scan_chars
    print(
        f"routing rules, default RulesConfig (scan_chars={scan}); median of {args.repeats} runs\n"
    )
    worst = bench_rules(args.repeats)
    verdict = "MET" if worst <= GOAL_MS else "NOT MET"
    print(
        f"\ngoal: a 1 MB prompt costs <= {GOAL_MS:g} ms of routing work: {verdict}"
        f" (slowest 1 MB prompt: {worst:.2f} ms in plan)"
    )
    if args.python_re:
        bench_python_re()


if __name__ == "__main__":
    main()
