"""Train a learned router from labelled prompts; the CSV format all offline tools read.

Data format, shared by `switchyard train-router`, `eval` and `calibrate`: a CSV file with
a header, one `prompt` column and one boolean column per model saying whether that
model's answer to the prompt was correct (`1/0`, `true/false`, `yes/no`, any case), or
an empty cell when nobody knows:

    prompt,small,large
    What is the capital of France?,1,1
    Prove that the square root of 2 is irrational.,0,1
    Write a haiku about autumn.,1,

An empty (or blank) cell is unknown, not wrong: traffic data exported from the ledger
(`switchyard export`) labels only the pools that served a prompt. Any other text is an
error naming the column and line. What each tool does with unknown cells:

- binary routers (`train-router --weak/--strong`, `eval`, `eval --split-by`): the label
  needs both columns, so rows missing either are skipped, with one line saying how many;
- N-pool routers (`train-router --pools`): each pool's head learns from the rows where
  that pool's label is known (rows with no label at all are skipped);
  `eval` of an N-pool router needs the chosen pool's label, so it scores the rows
  labelled for every pool and says how many that is;
- `calibrate` reads prompts (and a scores column), never labels: every row counts.

The weak and the strong model are chosen by column name (`--weak small --strong large`).
Other columns are allowed and ignored, except that `--scores-column NAME` reads a column
of precomputed numeric scores (e.g. a cascade's confidences) instead of a router, and
`eval --split-by NAME` groups folds by a column (e.g. a subject).

Label (binary routers): a prompt is positive when the strong model is right AND the
weak model is wrong, RouteLLM's "strong needed" label. Prompts both models get right,
or both get wrong, are negative: calling the strong model there costs more and changes
nothing, so a router that learns this label spends strong calls only where they buy
accuracy.

N-pool routers (`--pools small,large,code`, costs from `--cost POOL=X` or
`--costs-from serve_config.yaml`) learn P(correct) per pool from each pool's column and
choose by a rule (`--quality-target` or `--lam`; `routing.learned.PoolRouter`).

Features are sentence embeddings (`routing.embedding`, all-MiniLM-L6-v2), cached on disk
by content hash (`routing.training.embedding_cache`), so training again on the same
prompts embeds nothing. `--family` picks the model (`routing.training.families`: lr, the
logistic-regression baseline with balanced class weights, knn, mf or mlp). scikit-learn
is needed here only (the `[train]` extra); the server scores the saved router in numpy.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from routing.embedding import Embedder
from routing.learned import (
    EMBEDDING_MODEL,
    ChoicePolicy,
    LearnedRouter,
    PoolRouter,
    Scores,
    default_embedder,
)
from routing.scorers import FAMILIES, Family
from routing.training.embedding_cache import add_cache_options, embed_texts
from routing.training.families import fit_binary, fit_needed, fit_pools

__all__ = [
    "LabelledRows",
    "RouterData",
    "add_score_source",
    "complete_rows",
    "embed_prompts",
    "fit_router",
    "main",
    "partial_rows",
    "read_router_csv",
    "scores_from_source",
    "strong_needed",
    "train_router",
]

_TRUE = {"1", "true", "yes"}
_FALSE = {"0", "false", "no"}

Mask = NDArray[np.bool_]


@dataclass(frozen=True)
class RouterData:
    """Prompts and the raw text of every other column, parsed on demand by name."""

    prompts: tuple[str, ...]
    columns: Mapping[str, tuple[str, ...]]

    def values(self, name: str) -> tuple[str, ...]:
        """The raw text of a column (e.g. the groups of `eval --split-by`)."""
        if name not in self.columns:
            raise ValueError(f"no column {name!r} (columns: {', '.join(sorted(self.columns))})")
        return self.columns[name]

    def labels(self, model: str) -> tuple[Mask, Mask]:
        """(correct, known) masks of `model`'s column: an empty or blank cell is unknown
        (`correct` False there); any other text not 1/0/true/false/yes/no is an error."""
        correct, known = [], []
        for row, cell in enumerate(self.values(model), start=2):
            text = cell.strip().lower()
            if text and text not in _TRUE | _FALSE:
                raise ValueError(
                    f"column {model!r}, line {row}: {cell!r} is not 1/0/true/false "
                    "(or empty: unknown)"
                )
            correct.append(text in _TRUE)
            known.append(bool(text))
        return np.array(correct, dtype=bool), np.array(known, dtype=bool)

    def label_matrix(self, models: Sequence[str]) -> tuple[Mask, Mask]:
        """(correct, known) of each of `models`, both of shape (n, len(models))."""
        pairs = [self.labels(m) for m in models]
        return (
            np.stack([c for c, _ in pairs], axis=1).reshape(len(self.prompts), len(pairs)),
            np.stack([k for _, k in pairs], axis=1).reshape(len(self.prompts), len(pairs)),
        )

    def correct(self, model: str) -> Mask:
        """The boolean correctness column of `model`, which must have no unknown cell
        (`labels` reads one that may; `complete_rows` keeps the fully labelled rows)."""
        correct, known = self.labels(model)
        if not known.all():
            row = int(np.argmin(known)) + 2
            raise ValueError(f"column {model!r}, line {row}: empty cell (no label)")
        return correct

    def correct_matrix(self, models: Sequence[str]) -> Mask:
        """Correctness of each of `models`, shape (n, len(models)); no unknown cells."""
        return np.stack([self.correct(m) for m in models], axis=1)

    def rows(self, keep: Mask | Sequence[int]) -> RouterData:
        """These rows only: a boolean mask over the rows, or row indices (in that order)."""
        index = np.asarray(keep)
        if index.dtype == np.bool_:
            if index.shape != (len(self.prompts),):
                raise ValueError(f"row mask has shape {index.shape}, data has {len(self)} rows")
            index = np.flatnonzero(index)
        picked = [int(i) for i in index]
        return RouterData(
            prompts=tuple(self.prompts[i] for i in picked),
            columns={name: tuple(cells[i] for i in picked) for name, cells in self.columns.items()},
        )

    def __len__(self) -> int:
        return len(self.prompts)

    def numbers(self, name: str) -> Scores:
        """A numeric column, e.g. precomputed router scores or cascade confidences."""
        try:
            return np.array([float(cell) for cell in self.values(name)], dtype=np.float64)
        except ValueError as exc:
            raise ValueError(f"column {name!r} is not numeric: {exc}") from exc


def read_router_csv(path: str | Path) -> RouterData:
    """Read the CSV format described in the module docstring (column by column, so 10^6
    rows cost their text, not a dict per row)."""
    with Path(path).open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        fields = next(reader, [])
        if "prompt" not in fields:
            raise ValueError(f"{path}: no 'prompt' column (columns: {', '.join(fields)})")
        cells: list[list[str]] = [[] for _ in fields]
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(fields):
                raise ValueError(f"{path}, line {line}: {len(row)} cells, header has {len(fields)}")
            for column, cell in zip(cells, row, strict=True):
                column.append(cell)
    if not cells[0]:
        raise ValueError(f"{path}: no rows")
    named = dict(zip(fields, (tuple(c) for c in cells), strict=True))
    prompts = named.pop("prompt")
    return RouterData(prompts=prompts, columns=named)


def _alternatives(models: Sequence[str], word: str) -> str:
    """("a", "b", "c"), "or" -> "a, b or c"."""
    names = list(models)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} {word} {names[-1]}"


@dataclass(frozen=True)
class LabelledRows:
    """The rows of some data that are labelled for every one (`complete_rows`) or at least
    one (`partial_rows`) of `models`, with their labels."""

    data: RouterData  # those rows only
    correct: Mask  # (rows kept, len(models)); False where unknown
    known: Mask  # (rows kept, len(models)); all True from `complete_rows`
    keep: Mask  # (rows of the original data,): which were kept
    models: tuple[str, ...]
    need: Literal["every", "any"]  # a row was kept with a label for every / any model

    @property
    def skipped(self) -> int:
        return int(self.keep.size - self.keep.sum())

    def note(self) -> str | None:
        """The line the command-line tools print when rows were skipped, else None."""
        if not self.skipped:
            return None
        if self.need == "every":
            which = _alternatives(self.models, "or")
        else:
            which = f"any of {', '.join(self.models)}"
        return f"skipped {self.skipped} of {self.keep.size} rows with no label for {which}"


def complete_rows(data: RouterData, models: Sequence[str]) -> LabelledRows:
    """The rows labelled (no empty cell) for every one of `models`; `ValueError` when no
    row is, or a cell is not a boolean."""
    correct, known = data.label_matrix(models)
    keep: Mask = np.asarray(known.all(axis=1), dtype=bool)
    if not keep.any():
        which = "both" if len(models) == 2 else "every one of"
        raise ValueError(
            f"none of the {len(data)} rows has a label for {which} "
            f"{_alternatives(models, 'and')} (empty cells are unknown)"
        )
    return LabelledRows(data.rows(keep), correct[keep], known[keep], keep, tuple(models), "every")


def partial_rows(data: RouterData, models: Sequence[str]) -> LabelledRows:
    """The rows labelled for at least one of `models`, with (correct, known) per model;
    `ValueError` when no row is, or a cell is not a boolean."""
    correct, known = data.label_matrix(models)
    keep: Mask = np.asarray(known.any(axis=1), dtype=bool)
    if not keep.any():
        raise ValueError(
            f"none of the {len(data)} rows has a label for any of {', '.join(models)} "
            "(empty cells are unknown)"
        )
    return LabelledRows(data.rows(keep), correct[keep], known[keep], keep, tuple(models), "any")


def strong_needed(data: RouterData, weak: str, strong: str) -> Mask:
    """The training label: strong model right and weak model wrong. Every row needs both
    labels (`complete_rows` drops the others first)."""
    return data.correct(strong) & ~data.correct(weak)


def fit_router(
    vectors: NDArray[np.floating],
    labels: Mask,
    *,
    weak: str,
    strong: str,
    known: Mask | None = None,
    embedding_model: str = EMBEDDING_MODEL,
    embedder: Embedder | None = None,
) -> LearnedRouter:
    """The logistic-regression baseline on "strong needed" labels (`families.fit_binary`
    fits any family from the two correctness columns). `known`: the rows whose label is
    known (both models labelled); the others are left out. Default: every row."""
    labels = np.asarray(labels, dtype=bool)
    if known is not None:
        keep = np.asarray(known, dtype=bool)
        if keep.shape != labels.shape:
            raise ValueError(f"known has shape {keep.shape}, labels {labels.shape}")
        if not keep.any():
            raise ValueError("no row has a known label")
        vectors, labels = np.asarray(vectors)[keep], labels[keep]
    return fit_needed(
        "lr", vectors, labels, weak=weak, strong=strong,
        embedding_model=embedding_model, embedder=embedder,
    )  # fmt: skip


def train_router(
    csv_path: str | Path | RouterData,
    weak: str,
    strong: str,
    embedder: Embedder,
    *,
    family: Family = "lr",
    embedding_model: str = EMBEDDING_MODEL,
) -> LearnedRouter:
    """Train on a CSV file (or already-read data); the router keeps `embedder` for scoring.
    Rows without a label for both `weak` and `strong` are left out (`complete_rows`).
    Embeds with no cache (the command line caches; see `embed_prompts`)."""
    data = csv_path if isinstance(csv_path, RouterData) else read_router_csv(csv_path)
    rows = complete_rows(data, (weak, strong))
    vectors = embed_texts(rows.data.prompts, embedder, use_cache=False)
    return fit_binary(
        family,
        vectors,
        rows.correct[:, 0],
        rows.correct[:, 1],
        weak=weak,
        strong=strong,
        embedding_model=embedding_model,
        embedder=embedder,
    )


def add_score_source(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    """`--router FILE` or `--scores-column NAME`: where `eval` and `calibrate` get scores;
    plus the embedding-cache options."""
    source = parser.add_mutually_exclusive_group(required=required)
    source.add_argument(
        "--router", type=Path, metavar="FILE", help="learned router JSON (embeds prompts)"
    )
    source.add_argument(
        "--scores-column", metavar="NAME", help="CSV column of precomputed scores (no embedder)"
    )
    add_cache_options(parser)


def embed_prompts(
    prompts: Sequence[str], embedder: Embedder, args: argparse.Namespace
) -> NDArray[np.float32]:
    """Embed through the cache as the command line's `--cache-dir` / `--no-cache` say."""
    return embed_texts(prompts, embedder, cache_dir=args.cache_dir, use_cache=not args.no_cache)


def scores_from_source(
    data: RouterData,
    router_path: Path | None,
    scores_column: str | None,
    args: argparse.Namespace | None = None,
) -> tuple[Scores, LearnedRouter | None]:
    """Scores for every prompt, from a router file or a CSV column, and the router if any."""
    if scores_column is not None:
        return data.numbers(scores_column), None
    if router_path is None:
        raise ValueError("give a router file or a scores column")
    router = LearnedRouter.load(router_path)
    options = args or argparse.Namespace(cache_dir=None, no_cache=False)
    return router.score_vectors(embed_prompts(data.prompts, router.embedder, options)), router


def _pool_router(
    args: argparse.Namespace,
    prompts: Sequence[str],
    rows: LabelledRows,
    vectors: NDArray[np.float32],
) -> PoolRouter:
    from routing.training.multipool import costs_from_config, parse_costs

    if args.costs_from is not None:
        costs = costs_from_config(args.costs_from, rows.models, prompts)
    else:
        costs = parse_costs(args.cost, rows.models)
    if args.lam is not None:
        policy = ChoicePolicy("tradeoff", args.lam)
    else:
        policy = ChoicePolicy("quality_target", args.quality_target)
    return fit_pools(
        args.family,
        vectors,
        rows.correct,
        known=rows.known,
        pools=rows.models,
        costs=costs,
        policy=policy,
    )


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Train a learned router from a CSV: binary (P(strong model needed)) "
        "with --weak/--strong, or over N pools with --pools.",
    )
    parser.add_argument("data", type=Path, metavar="DATA.csv", help="prompt + correctness CSV")
    parser.add_argument("--weak", help="column of the weak model (binary router)")
    parser.add_argument("--strong", help="column of the strong model (binary router)")
    parser.add_argument("--family", choices=FAMILIES, default="lr", help="router family")
    parser.add_argument("--pools", metavar="A,B,C", help="N-pool router: correctness columns")
    costs = parser.add_mutually_exclusive_group()
    costs.add_argument(
        "--cost", action="append", default=[], metavar="POOL=X", help="cost per request"
    )
    costs.add_argument("--costs-from", type=Path, metavar="YAML", help="Serve config catalog")
    rule = parser.add_mutually_exclusive_group()
    rule.add_argument(
        "--quality-target",
        type=float,
        default=0.5,
        help="N-pool rule: cheapest pool with P(correct) >= this (default 0.5)",
    )
    rule.add_argument("--lam", type=float, help="N-pool rule: max P(correct) - lam * cost")
    parser.add_argument("-o", "--output", type=Path, required=True, help="router JSON to write")
    add_cache_options(parser)
    return parser


def main(
    argv: Sequence[str] | None = None, *, prog: str = "python -m routing.training.train"
) -> int:
    """Command line: train a router from a CSV and save it as JSON (+ .npz)."""
    parser = _parser(prog)
    args = parser.parse_args(argv)
    if args.pools is None and (args.weak is None or args.strong is None):
        parser.error("give --weak and --strong (binary router) or --pools (N-pool router)")
    if args.pools is not None and (args.weak or args.strong):
        parser.error("--pools replaces --weak/--strong")
    if args.pools is not None and not args.cost and args.costs_from is None:
        parser.error("--pools needs --cost POOL=X for every pool, or --costs-from YAML")

    try:
        data = read_router_csv(args.data)
        # Bad columns and cells fail here, before anything is embedded.
        if args.pools is None:
            rows = complete_rows(data, (args.weak, args.strong))
        else:
            from routing.training.multipool import parse_pools

            rows = partial_rows(data, parse_pools(args.pools))
        if (note := rows.note()) is not None:
            print(note)
        vectors = embed_prompts(rows.data.prompts, default_embedder(), args)
        router: LearnedRouter | PoolRouter
        if args.pools is None:
            router = fit_binary(
                args.family,
                vectors,
                rows.correct[:, 0],
                rows.correct[:, 1],
                weak=args.weak,
                strong=args.strong,
            )
        else:
            router = _pool_router(args, data.prompts, rows, vectors)
        router.save(args.output)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"trained on {len(rows.data)} prompts, family {args.family}", end=" ")
    if isinstance(router, PoolRouter):
        _report_pools(router, rows, vectors)
    else:
        _report_binary(router, args, rows.correct[:, 0], rows.correct[:, 1], vectors)
    print(f"wrote {args.output}")
    return 0


def _report_binary(
    router: LearnedRouter,
    args: argparse.Namespace,
    weak_correct: Mask,
    strong_correct: Mask,
    vectors: NDArray[np.float32],
) -> None:
    labels = strong_correct & ~weak_correct
    scores = router.score_vectors(vectors)
    print(f"({args.weak} -> {args.strong})")
    print(f"positive rate (strong needed): {labels.mean():.1%}")
    from sklearn.metrics import roc_auc_score

    print(f"in-sample ROC AUC of the score: {roc_auc_score(labels, scores):.3f}")
    if router.family == "lr":
        # Balanced class weights: 0.5 is the balanced decision point, not a serving threshold.
        print(f"in-sample accuracy at 0.5: {((scores >= 0.5) == labels).mean():.1%}")


def _report_pools(router: PoolRouter, rows: LabelledRows, vectors: NDArray[np.float32]) -> None:
    from routing.learned import choose_pools
    from routing.training.multipool import choice_summary

    print(f"(pools {', '.join(router.pools)})")
    correct, known = rows.correct, rows.known
    for i, pool in enumerate(router.pools):
        labelled = int(known[:, i].sum())
        accuracy = correct[known[:, i], i].mean()
        print(
            f"  {pool}: cost {router.costs[i]:.6g}, accuracy {accuracy:.1%} "
            f"of {labelled} labelled prompts"
        )
    chosen = choose_pools(router.quality_vectors(vectors), router.costs, router.policy)
    shares = [float((chosen == i).mean()) for i in range(len(router.pools))]
    mean_cost = float(router.costs[chosen].mean())
    full = known.all(axis=1)  # the chosen pool's label is known on these
    if full.any():
        accuracy = correct[np.flatnonzero(full), chosen[full]].mean()
        on = "" if full.all() else f" (on the {int(full.sum())} prompts labelled for every pool)"
        print(f"rule: {router.policy.describe()}; in-sample accuracy {accuracy:.1%}{on}")
    else:
        none = "n/a (no prompt is labelled for every pool)"
        print(f"rule: {router.policy.describe()}; in-sample accuracy {none}")
    print(f"in-sample choices: {choice_summary(router.pools, shares, mean_cost)}")


if __name__ == "__main__":
    raise SystemExit(main())
