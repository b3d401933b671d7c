"""Route vs cascade vs speculative on a running Switchyard (e.g. `make serve`).

Prints, per strategy, median end-to-end latency, how often it escalated, and the work
thrown away (tokens and engine-seconds of rejected or aborted answers). Sequential
requests, temperature 0; numbers only, no assertions.

    python bench/strategies_real.py [--url http://127.0.0.1:8000/v1] [--max-tokens 48]
"""

from __future__ import annotations

import argparse
import statistics
import time

import openai

PROMPTS = [
    "What is the capital of France?",
    "Tell me a short story about a cat.",
    "What is 12 times 12?",
    "Why do leaves change colour in autumn?",
    "Name three primary colours.",
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--max-tokens", type=int, default=48)
    args = parser.parse_args()
    client = openai.OpenAI(base_url=args.url, api_key="unused", max_retries=0)
    for prompt in PROMPTS:  # warm every pool once
        client.chat.completions.create(
            model="large", messages=[{"role": "user", "content": prompt}], max_tokens=4
        )
    print("strategy     median s  escalated  discarded tok  discarded engine-s  served by")
    for strategy in ("route", "cascade", "speculative"):
        times, escalated, tokens, engine_s, served = [], 0, 0, 0.0, []
        for prompt in PROMPTS:
            started = time.perf_counter()
            resp = client.chat.completions.create(
                model="auto",
                messages=[{"role": "user", "content": prompt}],
                max_tokens=args.max_tokens,
                temperature=0,
                extra_body={"switchyard": {"strategy": strategy}},
            )
            times.append(time.perf_counter() - started)
            info = (resp.model_extra or {})["switchyard"]
            escalated += info["escalated"]
            tokens += info["discarded_tokens"]
            engine_s += info["discarded_engine_s"]
            served.append(info["pool"])
        print(
            f"{strategy:12} {statistics.median(times):8.2f}  {escalated:>4}/{len(PROMPTS)}"
            f"  {tokens:13d}  {engine_s:18.2f}  {','.join(served)}"
        )


if __name__ == "__main__":
    main()
