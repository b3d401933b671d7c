"""The request taxonomy (`routing.taxonomy.classify`) on large and hostile prompts.

    .venv/bin/python bench/taxonomy.py [--repeats 20]

`POST /v1/classify` runs the taxonomy on the ingress's event loop, beside the rules, so
a client controls what it reads. This times `classify` and, for scale, the rules'
`extract_features` (what every `model="auto"` request already pays), on prompts of
1 KB, 100 KB and 1 MB: repeated shapes that hurt regex engines (newlines, spaces, one
long word, question marks, list lines, "def f(" and a mix of the taxonomy's own
markers) and texts that are new on every call (random printable ASCII, random
fragments of markers, random English words), which keep the RE2 Set's DFA building
states instead of reusing cached ones: its worst case. Both read at most `scan_chars`
of a prompt, so 1 MB costs what 64 KB does.

It prints p50 and max ms per call over `--repeats` calls, and the first call in the
process (patterns compiled, no DFA state cached yet). Numbers only, no assertions.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

# NOTE: the script's own folder comes first on sys.path, and bench/routing.py would
# shadow the `routing` package; put the repository root before it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from routing.rules import RulesConfig, extract_features  # noqa: E402
from routing.taxonomy import classify  # noqa: E402

MB = 1024 * 1024
SIZES = {"1 KB": 1024, "100 KB": 100 * 1024, "1 MB": MB}
REPEATED = {
    "prose": "What is the capital of France, and which rivers run through it? ",
    "newlines": "\n",
    "spaces": " ",
    "one long word": "a",
    "question marks": "?",
    "list lines": "1. x\n",
    "def f(": "def f(",
    "marker mix": "step by step? translate summary def f( 2+2 if then ",
}
FRAGMENTS = [
    "step by step ", "?", "\n", " ", "1. ", "- x\n", "def f(", "2+2=", "é", "漢", "translate ",
    "if ", " then ", "first ", "```", "{", ";\n", "\\frac", "x^2", "why ", "summary", "a",
    "import os\n", "Error: ", "hi\n", "what is it?\n", "step", "sum", "tra", "fi", "th", "wh",
    "3x", "f(x)", "-", "*", "class X:", "tl;dr", "must ", "at least ", "prove ", "lock-free",
]  # fmt: skip
WORDS = (
    "the of and to a in is it you that he was for on are with as I his they be at one "
    "have this from or had by word but what some we can out other were all there when up "
    "use your how said an each she which do their time if will way about many then them "
    "write would like so these her long make thing see him two has look more day could "
    "go come did number sound no most people my over know water than call first who may"
).split()
FRESH: dict[str, Callable[[random.Random, int], str]] = {
    "random ASCII": lambda rng, n: "".join(chr(rng.randint(32, 126)) for _ in range(n)),
    "random markers": lambda rng, n: "".join(rng.choice(FRAGMENTS) for _ in range(n // 4))[:n],
    "random words": lambda rng, n: " ".join(rng.choice(WORDS) for _ in range(n // 4))[:n],
}


def repeated(piece: str, size: int) -> str:
    return (piece * (size // len(piece) + 1))[:size]


def timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000


def row(kind: str, label: str, texts: list[str], rules: RulesConfig) -> tuple[float, float]:
    ours = [timed(partial(classify, text, rules)) for text in texts]
    theirs = [timed(partial(extract_features, text, rules)) for text in texts]
    print(
        f"{kind:15} {label:>7} {statistics.median(ours):9.3f} {max(ours):9.3f}"
        f" {statistics.median(theirs):10.3f} {max(theirs):9.3f}",
        flush=True,
    )
    return statistics.median(ours), max(ours)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20, help="calls per cell")
    args = parser.parse_args()
    rules = RulesConfig()
    rng = random.Random(0)
    first = timed(lambda: classify(FRESH["random markers"](rng, 64 * 1024), rules))
    print(f"taxonomy vs rules, default RulesConfig (scan_chars={rules.scan_chars})")
    print(f"first call in the process (64 KB of random markers, cold DFA): {first:.2f} ms\n")
    print(
        f"{'prompt':15} {'size':>7} {'p50 ms':>9} {'max ms':>9} {'rules p50':>10} {'rules max':>9}"
    )
    worst = (0.0, 0.0)
    for kind, piece in REPEATED.items():
        for label, size in SIZES.items():
            result = row(kind, label, [repeated(piece, size)] * args.repeats, rules)
            worst = max(worst, result) if size == MB else worst
    for kind, make in FRESH.items():
        for label, size in SIZES.items():
            result = row(kind, label, [make(rng, size) for _ in range(args.repeats)], rules)
            worst = max(worst, result) if size == MB else worst
    print(f"\nslowest 1 MB kind: p50 {worst[0]:.2f} ms, max {worst[1]:.2f} ms per classify")


if __name__ == "__main__":
    main()
