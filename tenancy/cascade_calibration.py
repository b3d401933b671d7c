"""`switchyard calibrate-cascade`: a cascade rule's threshold from the confidences the
ledger logged.

A cascade escalates when the cheap answer's confidence is below its rule's threshold;
what a threshold means depends on the model, the traffic and what it is computed on: a
streaming cascade judges the first K tokens (`stream_decide_tokens`), which score
differently from whole answers. The ledger records every cascade's confidence and what
it was computed on (`RequestRecord.confidence_on`: "start" or "answer") for every
tenant, prompt text or not, so the threshold that escalates a chosen share of real
traffic (`--strong-share`, e.g. the share the whole-answer cascade escalated) is read off
it (`routing.training.calibration.threshold_for_strong_share`) and, with
`--write-config`, written into the rule (`stream_threshold` for starts, `threshold` for
answers).

The ledger does not record the confidence method (mean logprob, quantile, ...): calibrate
on records made since the rule's method last changed (`--since`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from routing.training.calibration import set_cascade_threshold, threshold_for_strong_share

__all__ = ["main"]


def main(
    argv: Sequence[str] | None = None, *, prog: str = "python -m tenancy.cascade_calibration"
) -> int:
    from tenancy.db import connect, database_url, migrate
    from tenancy.export import cascade_confidences, parse_since

    parser = argparse.ArgumentParser(
        prog=prog,
        description="Calibrate a cascade rule's threshold on the confidences the ledger "
        "logged: the threshold that escalates a target share of them.",
    )
    parser.add_argument(
        "--on",
        choices=("start", "answer"),
        required=True,
        help="'start': a streaming cascade's first tokens (the rule's stream_threshold); "
        "'answer': whole answers (its threshold)",
    )
    parser.add_argument(
        "--strong-share", type=float, required=True, help="share (0-1) of cascades to escalate"
    )
    parser.add_argument(
        "--rule", default="small:large", metavar="SOURCE:TARGET", help="default small:large"
    )
    parser.add_argument(
        "--database-url",
        help="SQLAlchemy URL (default: $SWITCHYARD_DATABASE_URL, else the embedded SQLite file)",
    )
    parser.add_argument("--since", help="only records from then on: 7d, 12h, 2026-11-01")
    parser.add_argument(
        "--write-config", type=Path, metavar="YAML", help="Serve config whose rule to set"
    )
    args = parser.parse_args(argv)
    source, _, target = args.rule.partition(":")
    if not source or not target:
        parser.error(f"--rule {args.rule!r}: expected SOURCE:TARGET")
    try:
        since = parse_since(args.since) if args.since else None
    except ValueError as exc:
        parser.error(str(exc))
    try:
        engine = connect(database_url(args.database_url))
        migrate(engine)
        scores = cascade_confidences(engine, on=args.on, source=source, since=since)
        if not scores:
            raise ValueError(
                f"the ledger has no confidences of {source!r} cascades on the {args.on} "
                "(a streaming cascade's are on the start)"
            )
        threshold = threshold_for_strong_share(scores, args.strong_share, lower_is_stronger=True)
        escalated = float(np.mean(np.asarray(scores) < threshold))
        field = "stream_threshold" if args.on == "start" else "threshold"
        print(
            f"{field} {threshold:.6g}: {escalated:.1%} of {len(scores)} logged {source} -> "
            f"{target} cascades would escalate (target {args.strong_share:.1%}); rule: "
            f"escalate when confidence < {threshold:.6g}"
        )
        if args.write_config is not None:
            set_cascade_threshold(args.write_config, source, target, field, threshold)
            print(
                f"wrote routing.cascade.rules[{source} -> {target}].{field} into "
                f"{args.write_config} (PyYAML: comments are not kept)"
            )
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
