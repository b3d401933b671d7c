"""Ray Serve LLM's own OpenAI app on one Switchyard pool's `LLMConfig`.

`bench/vllm_peer.py --targets rayllm` serves it next to vLLM's server and Switchyard,
so one table separates what the layer Switchyard stands on costs (Ray Serve's proxy,
router and replica hops, its stream batching) from what Switchyard adds above it
(ingress, routing, accounting). The `LLMConfig` is the one Switchyard's builder makes
for the pool (`deployments.llm_config.pool_llm_config`), so engine settings, placement
and stream batching are the same.

    serve run bench.rayllm_app:build config=serve_config.yaml pool=small
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from ray.serve import Application


def build(args: dict[str, Any]) -> Application:
    from ray.serve.llm import build_openai_app

    from deployments.config import load_app_config
    from deployments.llm_config import pool_llm_config
    from models.prepare import model_location

    raw = yaml.safe_load(Path(args["config"]).read_text())
    config = load_app_config(raw["applications"][0]["args"])
    name = str(args.get("pool", "small"))
    pool = config.pools[name]
    spec = config.model(pool.model)
    llm = pool_llm_config(name, pool, spec, model_location(spec))
    return build_openai_app({"llm_configs": [llm]})
