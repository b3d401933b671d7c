"""Fault drill: kill one replica of a pool while load runs, and count what clients saw.

Run against an app that is already running (`make serve`, or a cluster you can
`ray.init(address="auto")` into):

    .venv/bin/python bench/fault_drill.py --pool small --workers 4 --before 20 --after 90

Requests pin the pool (`model: <pool>`), so the pool's fallback chain applies: with the
default chains every request should succeed while the replica is gone. Deploy with
`routing.fallback.chains: {}` to see the other side: requests that hit the dead replica
fail with a clean 503 in the OpenAI error shape. The script prints status counts before
and after the kill, how long Serve took to run the replica again, and any error that is
not OpenAI-shaped (there should be none).
"""

from __future__ import annotations

import argparse
import threading
import time
from collections import Counter
from typing import Any

import httpx


class Load:
    def __init__(self, url: str, body: dict[str, Any], workers: int) -> None:
        self.url, self.body = url, body
        self.codes: Counter[int] = Counter()
        self.malformed: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(workers)]

    def run(self) -> None:
        with httpx.Client(timeout=600) as http:
            while not self.stop.is_set():
                r = http.post(self.url, json=self.body)
                self.codes[r.status_code] += 1
                if r.status_code != 200:
                    try:
                        error = r.json()["error"]
                        assert {"message", "type", "param", "code"} <= set(error)
                    except Exception:  # noqa: BLE001 - anything else is a finding
                        self.malformed.append(r.text[:200])


def running_replicas(app: str, deployment: str) -> int:
    from ray import serve

    states = serve.status().applications[app].deployments[deployment].replica_states
    return int(states.get("RUNNING", 0))  # type: ignore[call-overload]


def kill_one(app: str, deployment: str) -> str:
    import ray

    prefix = f"SERVE_REPLICA::{app}#{deployment}#"
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)]
    victim = next(n for n in names if n.startswith(prefix))
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    return victim


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--app", default="switchyard")
    parser.add_argument("--pool", default="small")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--before", type=float, default=20.0, help="seconds of load first")
    parser.add_argument("--after", type=float, default=90.0, help="longest wait for recovery")
    args = parser.parse_args()

    import ray

    ray.init(address="auto", logging_level="ERROR")
    body = {
        "model": args.pool,
        "messages": [{"role": "user", "content": "Name three colours."}],
        "max_tokens": args.max_tokens,
    }
    deployment = f"pool-{args.pool}"
    load = Load(f"{args.url}/v1/chat/completions", body, args.workers)
    for t in load.threads:
        t.start()
    time.sleep(args.before)
    before = Counter(load.codes)
    replicas = running_replicas(args.app, deployment)
    victim = kill_one(args.app, deployment)
    killed_at = time.monotonic()
    print(f"killed {victim} after {sum(before.values())} requests: {dict(before)}")
    restored, seen_down = None, False
    while time.monotonic() - killed_at < args.after:
        now = running_replicas(args.app, deployment)
        seen_down = seen_down or now < replicas
        if restored is None and seen_down and now >= replicas:
            restored = time.monotonic() - killed_at
        time.sleep(1)
    load.stop.set()
    for t in load.threads:
        t.join()
    after = load.codes - before
    print(f"after the kill ({args.after:.0f} s): {dict(after)}")
    print(f"replica running again after: {restored:.1f} s" if restored else "not restored yet")
    print(f"errors not in the OpenAI shape: {len(load.malformed)}")
    for text in load.malformed[:3]:
        print("  ", text)


if __name__ == "__main__":
    main()
