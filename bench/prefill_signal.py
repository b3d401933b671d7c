"""Does the cheap model's own reading of a prompt tell a router what the embedding does not?

    python bench/prefill_signal.py DATA.csv [--model smollm2-135m-instruct]

A learned router sees a sentence embedding of the prompt, which says what the prompt is
about, not whether the cheap model can answer it. The cheap model can say something
about that itself, for the price of one prefill (on a GPU a fraction of decoding): here,
one generated token with the 20 most likely first tokens and the prompt's own token
log-probabilities, from offline vLLM on the prompt as the chat template renders it:

    top1      log-probability of the most likely first answer token
    entropy   entropy of the first token over its 20 most likely (renormalised)
    mean_lp   mean log-probability of the prompt's tokens (how familiar it reads)
    n_tokens  the prompt's length in tokens (no model needed: the embedding, a mean over
              tokens, does not carry it)

Then a logistic-regression router ("strong needed", balanced classes, as `lr`) is
scored with RouteLLM's APGR on grouped folds, by `subject` (5 folds) and by `domain`
(one fold per domain), on the embedding alone, the probe's features alone, and both
(features standardised on each training fold). DATA.csv is `switchyard make-data`'s
output (prompt, small, large, subject, domain). Features are cached beside the CSV
(`.prefill-<model>.json`). Numbers only; nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import sys
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FEATURES = ("top1", "entropy", "mean_lp", "n_tokens")
SETS = {
    "embedding": (),
    "probe (top1, entropy)": ("top1", "entropy"),
    "embedding + probe (top1, entropy)": ("top1", "entropy"),
    "embedding + n_tokens": ("n_tokens",),
    "embedding + all four": FEATURES,
    "all four alone": FEATURES,
}


def _probe(model: str, prompts: list[str], out: str) -> None:
    """In a process of its own (vLLM's engine may hang at exit: `os._exit`)."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams

    from models.prepare import model_dir

    path = str(model_dir(model))
    tokenizer = AutoTokenizer.from_pretrained(path)
    rendered = [
        str(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
            )
        )
        for p in prompts
    ]
    llm = LLM(model=path, dtype="float32", enforce_eager=True, max_model_len=2048, seed=0)
    params = SamplingParams(temperature=0.0, max_tokens=1, logprobs=20, prompt_logprobs=0)
    rows = []
    for output in llm.generate(rendered, params):
        pairs = zip(output.prompt_token_ids or [], output.prompt_logprobs or [], strict=True)
        seen = [d[t].logprob for t, d in pairs if d and t in d]
        first = sorted((v.logprob for v in output.outputs[0].logprobs[0].values()), reverse=True)
        mass = [math.exp(x) for x in first]
        total = sum(mass)
        rows.append(
            {
                "top1": first[0],
                "entropy": -sum(m / total * math.log(m / total) for m in mass),
                "mean_lp": sum(seen) / max(1, len(seen)),
                "n_tokens": len(output.prompt_token_ids or []),
            }
        )
    Path(out).write_text(json.dumps(rows))
    llm.llm_engine.engine_core.shutdown(timeout=10)
    os._exit(0)


def probe(model: str, prompts: list[str], cache: Path) -> list[dict[str, float]]:
    if not cache.exists():
        child = multiprocessing.get_context("spawn").Process(
            target=_probe, args=(model, prompts, str(cache))
        )
        child.start()
        child.join()
        if child.exitcode != 0 or not cache.exists():
            raise SystemExit(f"the probe with {model} failed (exit code {child.exitcode})")
    rows = json.loads(cache.read_text())
    if len(rows) != len(prompts):
        raise SystemExit(f"{cache} holds {len(rows)} rows for {len(prompts)} prompts: delete it")
    return list(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("data", type=Path)
    p.add_argument("--model", default="smollm2-135m-instruct", help="the cheap pool's model")
    p.add_argument("--weak", default="small")
    p.add_argument("--strong", default="large")
    args = p.parse_args(argv)

    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    from routing.learned import default_embedder
    from routing.training.crossval import grouped_folds
    from routing.training.embedding_cache import embed_texts
    from routing.training.evaluation import evaluate, random_baseline
    from routing.training.train import complete_rows, read_router_csv

    rows = complete_rows(read_router_csv(args.data), (args.weak, args.strong))
    prompts = list(rows.data.prompts)
    weak, strong = rows.correct[:, 0], rows.correct[:, 1]
    needed = strong & ~weak
    cache = args.data.with_suffix(f".prefill-{args.model}.json")
    found = probe(args.model, prompts, cache)
    table = np.array([[r[k] for k in FEATURES] for r in found], dtype=np.float64)
    vectors = embed_texts(prompts, default_embedder(), cache_dir=None, use_cache=True)
    print(f"{len(prompts)} prompts, strong needed on {needed.mean():.1%}")
    print("ROC AUC of each feature, for 'strong needed' and for 'cheap model right':")
    for i, name in enumerate(FEATURES):
        print(
            f"  {name:9} {roc_auc_score(needed, table[:, i]):.3f}  "
            f"{roc_auc_score(weak, table[:, i]):.3f}"
        )

    def features(names: tuple[str, ...], train: np.ndarray, rows_: np.ndarray) -> np.ndarray:
        if not names:
            return np.zeros((rows_.size, 0))
        cols = [FEATURES.index(n) for n in names]
        scaler = StandardScaler().fit(table[np.ix_(train, cols)])
        return np.asarray(scaler.transform(table[np.ix_(rows_, cols)]))

    lines = []
    domains = len(set(rows.data.values("domain")))
    for split, folds in (("subject", 5), ("domain", domains)):
        splits = grouped_folds(rows.data.values(split), folds)
        rnd = [random_baseline(weak[te], strong[te]).apgr for _, te in splits]
        lines.append(f"\ngrouped {folds}-fold by {split}: mean APGR, lowest fold, each fold")
        lines.append(f"  {'random':36} {np.mean(rnd):.3f} {min(rnd):.3f}")
        for name, names in SETS.items():
            apgr = []
            for train, test in splits:
                use_vectors = name.startswith("embedding")
                parts_tr = [vectors[train]] if use_vectors else []
                parts_te = [vectors[test]] if use_vectors else []
                x_tr = np.hstack([*parts_tr, features(names, train, train)])
                x_te = np.hstack([*parts_te, features(names, train, test)])
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    model = LogisticRegression(class_weight="balanced", max_iter=2000)
                    model.fit(x_tr, needed[train])
                scores = model.predict_proba(x_te)[:, 1]
                apgr.append(evaluate(scores, weak[test], strong[test], name=name).apgr)
            each = " ".join(f"{a:.3f}" for a in apgr)
            lines.append(f"  {name:36} {np.mean(apgr):.3f} {min(apgr):.3f}  {each}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
