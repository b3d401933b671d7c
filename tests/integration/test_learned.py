"""A learned N-pool router on the real app (Serve, fake engines, the real MiniLM
embedder in the ingress): it picks any pool, the cascade's escalation target too, and a
new router file is served without a restart."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from routing.choice import ChoicePolicy
from routing.learned import PoolRouter
from routing.scorers import LogisticScorer
from tests.conftest import delete_app, fake_app_args, run_app

APP = "learnedapp"
QUESTION = "Is it true?"  # no rule matches: the learned router decides


def pool_router(**logits: float) -> PoolRouter:
    """P(correct) = sigmoid(logit) for every prompt, per pool; the cheapest pool with
    P(correct) >= 0.6 is chosen."""
    pools = list(logits)
    scorer = LogisticScorer(np.zeros((len(pools), 384)), np.array(list(logits.values())))
    costs = {"small": 0.0001, "code": 0.0002, "large": 0.001}
    return PoolRouter(
        pools=pools, costs=[costs[p] for p in pools], scorer=scorer,
        policy=ChoicePolicy("quality_target", 0.6),
    )  # fmt: skip


def post(http: httpx.Client, path: str, text: str, **extra: Any) -> httpx.Response:
    body = {"model": "auto", "messages": [{"role": "user", "content": text}], **extra}
    resp = http.post(path, json=body)
    assert resp.status_code == 200, resp.text
    return resp


def test_an_n_pool_router_routes_escalates_and_reloads(serve_port: int, tmp_path: Path) -> None:
    path = tmp_path / "pools.json"
    # P(correct): small 0.27, code 0.73, large 0.88 -> code
    pool_router(small=-1.0, code=1.0, large=2.0).save(path)
    args = fake_app_args()
    args["routing"] = {"learned": {"path": str(path), "reload_s": 0.5}}
    run_app(args, APP)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{serve_port}/{APP}/v1", timeout=60) as http:
            served = post(http, "/chat/completions", QUESTION, max_tokens=8)
            assert served.headers["x-switchyard-pool"] == "code"
            assert served.headers["x-switchyard-route"] == "learned"
            classified = post(http, "/classify", QUESTION).json()["learned"]
            assert (classified["rule"], classified["pool"]) == ("quality_target", "code")
            assert classified["scores"]["large"] == 0.8808  # sigmoid(2)
            # the cascade starts on small and escalates to the pool the router picks
            switchyard = {"strategy": "cascade"}
            route = post(http, "/route", QUESTION, switchyard=switchyard).json()
            assert (route["strategy"], route["pool"], route["target"]) == (
                "cascade", "small", "code",
            )  # fmt: skip
            # rules come first: the router does not override a rule's pick
            assert post(http, "/route", "Fix my python function").json()["reason"] == "code_markers"
            # a new file: small now reaches the target (0.73), so it gets the request
            pool_router(small=1.0, code=1.5, large=2.0).save(path)
            st = path.stat()
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                pool = post(http, "/route", QUESTION).json()["pool"]
                if pool == "small":
                    break
                time.sleep(0.5)
            assert pool == "small"
    finally:
        delete_app(APP)
