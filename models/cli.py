"""The `switchyard` console command: one subcommand per task, each owned by its module.

Subcommands parse their own arguments, so `switchyard prepare ...` and
`python -m models.prepare ...` accept exactly the same options.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from models import prepare


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="switchyard", description="Switchyard tools.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "prepare", add_help=False, help="download and convert embedded models for vLLM"
    )
    args, rest = parser.parse_known_args(argv)
    return prepare.main(rest, prog=f"{parser.prog} {args.command}")
