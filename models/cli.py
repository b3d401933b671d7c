"""The `switchyard` console command: one subcommand per task, each owned by its module.

Subcommands parse their own arguments, so `switchyard prepare ...` and
`python -m models.prepare ...` accept exactly the same options. Each module is imported
only when its subcommand runs, so `switchyard prepare` never pays for (or depends on)
scikit-learn, matplotlib or the sentence-embedding stack the routing tools use.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable, Sequence
from typing import cast

# subcommand -> (module with `main(argv, *, prog)`, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "prepare": ("models.prepare", "download and convert embedded models for vLLM"),
    "train-router": ("routing.learned", "train a learned router from a correctness CSV"),
    "calibrate": ("routing.calibration", "find the threshold for a target strong-model share"),
    "eval": ("routing.evaluation", "evaluate a router: accuracy vs strong calls, APGR, CPT"),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="switchyard", description="Switchyard tools.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in SUBCOMMANDS.items():
        commands.add_parser(name, add_help=False, help=help_text)
    args, rest = parser.parse_known_args(argv)
    module = importlib.import_module(SUBCOMMANDS[args.command][0])
    command_main = cast(Callable[..., int], module.main)
    return command_main(rest, prog=f"{parser.prog} {args.command}")
