"""The `switchyard` console command: one subcommand per task, each owned by its module.

It lives in `routing.training` because most of its subcommands (`train-router`,
`calibrate`, `eval`, `make-data`, ...) are the offline routing tools of this package;
`prepare` is dispatched to `models.prepare`, `keys` to `tenancy.keys`, `export` and
`calibrate-cascade` to `tenancy`. Subcommands parse their own arguments, so
`switchyard prepare ...` and `python -m models.prepare ...` accept exactly the same
options. Each module is imported only when its subcommand runs, so `switchyard prepare`
never pays for (or depends on) scikit-learn, matplotlib or the sentence-embedding stack
the routing tools use, and works without the `[train]` extra.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import cast

# subcommand -> (module with `main(argv, *, prog)`, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "prepare": ("models.prepare", "download and convert embedded models for vLLM"),
    "train-router": ("routing.training.train", "train a learned router from a correctness CSV"),
    "calibrate": (
        "routing.training.calibration",
        "find the threshold for a target strong-model share",
    ),
    "eval": (
        "routing.training.evaluation",
        "evaluate a router: accuracy vs strong calls, APGR, CPT",
    ),
    "keys": ("tenancy.keys", "create, list and revoke API keys"),
    "bandit-sim": ("routing.training.bandit_sim", "simulate adaptive routing: regret curve"),
    "export": ("tenancy.export", "export opted-in prompts and labels as a training CSV"),
    "calibrate-cascade": (
        "tenancy.cascade_calibration",
        "a cascade rule's threshold from the confidences the ledger logged",
    ),
    "make-data": (
        "routing.training.dataset",
        "grade embedded models on MMLU or arithmetic: a training CSV",
    ),
}

# Top-level packages of the `[train]` extra: missing ones get an install hint, not a trace.
TRAIN_EXTRA = frozenset({"sklearn", "matplotlib"})


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="switchyard", description="Switchyard tools.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in SUBCOMMANDS.items():
        commands.add_parser(name, add_help=False, help=help_text)
    args, rest = parser.parse_known_args(argv)
    module = importlib.import_module(SUBCOMMANDS[args.command][0])
    command_main = cast(Callable[..., int], module.main)
    try:
        return command_main(rest, prog=f"{parser.prog} {args.command}")
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in TRAIN_EXTRA:
            raise
        print(
            f"error: {args.command} needs {exc.name}, from the [train] extra: "
            'pip install -e ".[train]"',
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
