"""Calibrate a routing threshold to a target share of strong-model traffic.

A router's raw score means little to an operator; "send 30% of traffic to the large
model" is a budget. `threshold_for_strong_share` turns the budget into a threshold on a
sample of scores (ideally recent real prompts), and `switchyard calibrate` writes it into
the router JSON (`threshold`) and/or a Serve config. For an N-pool router it picks the
rule's knob (lam, or the quality target) for a target mean cost or share of the
strongest pool instead (`routing.training.multipool`) and writes it into the router file.

Direction. Learned-router scores are "higher = needs the strong model": strong when
score >= threshold. Cascade confidences run the other way (escalate when the cheap
model is unsure), so with `lower_is_stronger` the scores are negated, calibrated, and the
threshold is negated back: escalate when confidence < threshold, in confidence units.

Ties and placement. The threshold is put halfway between the last score sent to the
strong model and the next one down (or just past the extreme score for 0% and 100%), so
no calibration score sits on it, `>=` and `>` agree, and new scores near the boundary
are split evenly. Prompts with equal scores always go the same way, so with ties the
share moves in steps; we pick the achievable share closest to the target, and the lower
one when two are equally close (fewer strong calls is the cheaper mistake).

YAML. The config is read and written with PyYAML (`ruamel.yaml` is not a dependency),
so comments in the file are lost and flow-style mappings may be reformatted; the values
and key order are kept. The value goes under the first application's `args` at a dotted
key such as `routing.learned.threshold`, creating missing mappings on the way.

Labels. Calibration reads the prompts (or a scores column) and never the correctness
columns, so a CSV with empty (unknown) label cells, e.g. `switchyard export` without
`--complete`, is calibrated on every row.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from routing.config import ConfidenceRule
from routing.learned import PoolRouter, load_router
from routing.training.train import (
    RouterData,
    add_score_source,
    embed_prompts,
    read_router_csv,
    scores_from_source,
)

__all__ = ["main", "set_cascade_threshold", "set_config_value", "threshold_for_strong_share"]

DEFAULT_KEY = "routing.learned.threshold"


def threshold_for_strong_share(
    scores: ArrayLike, share: float, *, lower_is_stronger: bool = False
) -> float:
    """The threshold that sends `share` of these scores to the strong model.

    Strong when score >= threshold, or, with `lower_is_stronger`, when score < threshold.
    Without ties the achieved share is within half a prompt of the target.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or s.size == 0 or not np.all(np.isfinite(s)):
        raise ValueError("scores must be a non-empty 1-d array of finite numbers")
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must be in [0, 1], got {share}")
    if lower_is_stronger:
        return -threshold_for_strong_share(-s, share)

    values, counts = np.unique(s, return_counts=True)
    values, counts = values[::-1], counts[::-1]  # descending
    # options[k]: strong calls when the threshold sits just below the k-th highest value.
    options = np.concatenate([[0], np.cumsum(counts)])
    best = int(np.argmin(np.abs(options - share * s.size)))  # first = fewer strong calls
    if best == 0:
        return float(np.nextafter(values[0], np.inf))
    if best == len(values):
        return float(np.nextafter(values[-1], -np.inf))
    return float((values[best - 1] + values[best]) / 2.0)


def _load_args(path: Path) -> tuple[Any, dict[str, Any]]:
    """The YAML document and its first application's `args` mapping (created if absent)."""
    import yaml

    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from exc
    applications = document.get("applications") if isinstance(document, dict) else None
    if not isinstance(applications, list) or not applications:
        raise ValueError(f"{path}: no 'applications' list")
    if not isinstance(applications[0], dict):
        raise ValueError(f"{path}: the first application is not a mapping")
    args = applications[0].setdefault("args", {})
    if not isinstance(args, dict):
        raise ValueError(f"{path}: args is not a mapping")
    return document, args


def _walk(node: dict[str, Any], parts: Sequence[str], path: Path) -> dict[str, Any]:
    """The mapping at `parts` under `node`, creating missing ones."""
    walked = "args"
    for part in parts:
        node = node.setdefault(part, {})
        walked = f"{walked}.{part}"
        if not isinstance(node, dict):
            raise ValueError(f"{path}: {walked} is not a mapping")
    return node


def _save(path: Path, document: Any) -> None:
    import yaml

    text = yaml.safe_dump(document, sort_keys=False, width=100)
    # Write a sibling temp file and rename, so a failure never leaves half a config.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def set_config_value(path: str | Path, dotted_key: str, value: Any) -> None:
    """Set `applications[0].args.<dotted_key>` in a Serve YAML config, in place.

    PyYAML round trip: comments are not kept (see the module docstring).
    """
    path = Path(path)
    parts = dotted_key.split(".")
    if not all(parts):
        raise ValueError(f"bad key {dotted_key!r}: expected names separated by dots")
    document, args = _load_args(path)
    _walk(args, parts[:-1], path)[parts[-1]] = value
    _save(path, document)


def set_cascade_threshold(
    path: str | Path, source: str, target: str, field: str, value: float
) -> None:
    """Set `field` (`threshold` or `stream_threshold`) of the cascade rule for (source,
    target) under `args.routing.cascade.rules`, adding the rule when there is none (a
    rule's omitted source/target are `ConfidenceRule`'s defaults)."""
    path = Path(path)
    document, args = _load_args(path)
    cascade = _walk(args, ("routing", "cascade"), path)
    rules = cascade.setdefault("rules", [])
    if not isinstance(rules, list) or not all(isinstance(r, dict) for r in rules):
        raise ValueError(f"{path}: args.routing.cascade.rules is not a list of mappings")
    defaults = ConfidenceRule.model_fields
    for rule in rules:
        pair = (
            rule.get("source", defaults["source"].default),
            rule.get("target", defaults["target"].default),
        )
        if pair == (source, target):
            rule[field] = value
            break
    else:
        rules.append({"source": source, "target": target, field: value})
    _save(path, document)


def main(
    argv: Sequence[str] | None = None, *, prog: str = "python -m routing.training.calibration"
) -> int:
    """Command line: print (and optionally write) the threshold for a strong-call share,
    or, for an N-pool router, the rule's knob for a target cost or strong-pool share."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Find the routing threshold for a target strong-model share (binary "
        "routers, scores), or an N-pool router's lam / quality target for a target mean "
        "cost or share of the strongest pool.",
    )
    parser.add_argument("data", type=Path, metavar="DATA.csv", help="CSV with a prompt column")
    add_score_source(parser)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--strong-share", type=float, help="target fraction (0-1) for strong (or --strong-pool)"
    )
    target.add_argument(
        "--target-cost", type=float, help="N-pool router: target mean cost per request"
    )
    parser.add_argument(
        "--lower-is-stronger",
        action="store_true",
        help="low scores mean escalate (cascade confidences): strong when score < threshold",
    )
    parser.add_argument(
        "--rule",
        choices=("tradeoff", "quality_target"),
        help="N-pool router: rule to calibrate (default: the file's)",
    )
    parser.add_argument(
        "--strong-pool", help="N-pool router: pool of --strong-share (default: the dearest)"
    )
    parser.add_argument(
        "--write-router", action="store_true", help="store the result in the --router file"
    )
    parser.add_argument("--write-config", type=Path, metavar="YAML", help="Serve config to edit")
    parser.add_argument(
        "--key", default=DEFAULT_KEY, help=f"dotted key under args (default: {DEFAULT_KEY})"
    )
    args = parser.parse_args(argv)
    if args.write_router and args.router is None:
        parser.error("--write-router needs --router")
    if args.lower_is_stronger and args.router is not None:
        parser.error("--lower-is-stronger is for --scores-column; router scores are higher=strong")

    try:
        data = read_router_csv(args.data)
        router = load_router(args.router) if args.router is not None else None
        if isinstance(router, PoolRouter):
            if args.write_config is not None:
                raise ValueError("an N-pool router's rule lives in its file: use --write-router")
            return _calibrate_pools(router, data, args)
        if args.strong_share is None:
            raise ValueError("--target-cost is for N-pool routers; give --strong-share")
        if router is not None:
            scores = router.score_vectors(embed_prompts(data.prompts, router.embedder, args))
        else:
            scores, _ = scores_from_source(data, None, args.scores_column, args)
        threshold = threshold_for_strong_share(
            scores, args.strong_share, lower_is_stronger=args.lower_is_stronger
        )
        strong = scores < threshold if args.lower_is_stronger else scores >= threshold
        rule = "score < " if args.lower_is_stronger else "score >= "
        print(
            f"threshold {threshold:.6g}: {strong.mean():.1%} of {len(scores)} prompts "
            f"({int(strong.sum())}) go to the strong model (target {args.strong_share:.1%}); "
            f"rule: strong when {rule}{threshold:.6g}"
        )
        if args.write_router and router is not None:
            router.with_threshold(threshold).save(args.router)
            print(f"wrote threshold into {args.router}")
        if args.write_config is not None:
            set_config_value(args.write_config, args.key, threshold)
            print(
                f"wrote args.{args.key} = {threshold:.6g} into {args.write_config} "
                "(PyYAML: comments are not kept)"
            )
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _calibrate_pools(router: PoolRouter, data: RouterData, args: argparse.Namespace) -> int:
    """`calibrate --router pools.json --target-cost X | --strong-share S`."""
    from routing.training.multipool import calibrate_policy, choice_summary

    strong = None
    if args.strong_pool is not None:
        if args.strong_pool not in router.pools:
            raise ValueError(f"--strong-pool {args.strong_pool!r} is not one of {router.pools}")
        strong = router.pools.index(args.strong_pool)
    quality = router.quality_vectors(embed_prompts(data.prompts, router.embedder, args))
    share = args.strong_share is not None
    result = calibrate_policy(
        quality,
        router.costs,
        args.rule or router.policy.rule,
        args.strong_share if share else args.target_cost,
        metric="share" if share else "cost",
        strong=strong,
    )
    named = router.pools[strong if strong is not None else int(router.costs.argmax())]
    wanted = f"{named} share {args.strong_share:.1%}" if share else f"cost {args.target_cost:.6g}"
    got = f"{result.achieved:.1%}" if share else f"{result.achieved:.6g}"
    print(f"{result.policy.describe()}: {got} on {len(quality)} prompts (target {wanted})")
    print(f"choices: {choice_summary(router.pools, result.shares, result.mean_cost)}")
    if args.write_router:
        router.with_policy(result.policy).save(args.router)
        print(f"wrote the rule into {args.router}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
