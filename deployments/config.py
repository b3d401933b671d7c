"""Typed application config: what `serve_config.yaml` passes as `args` to the builder.

Everything is validated here, in the process that runs `serve run`, before any replica
starts: unknown keys, pools naming models that are not in the catalog, routing rules
pointing at pools that do not exist. A bad config fails in a second with a readable
message instead of after a minute of engine start-up.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, TypeAdapter, ValidationError, model_validator

from core.config import StrictConfig
from deployments.fake_options import FakeEngineOptions
from models.catalog import ModelSpec
from routing.config import RoutingConfig
from routing.planner import AUTO_MODEL
from tenancy.config import (
    AccountingConfig,
    AuthConfig,
    DatabaseConfig,
    FeedbackConfig,
    QuotaConfig,
    Quotas,
    TenantConfig,
)

POOL_NAME = r"^[a-z][a-z0-9_\-]{0,31}$"


class ActorOptions(StrictConfig):
    """The subset of Ray actor options a replica may set."""

    num_cpus: float = Field(default=0.0, ge=0, description="CPUs reserved per replica.")
    num_gpus: float = Field(default=0.0, ge=0, description="GPUs reserved per replica.")
    memory: int | None = Field(default=None, gt=0, description="Bytes of memory reserved.")
    resources: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources, e.g. a node-type label."
    )


POOL_AUTOSCALING_POLICY = "deployments.autoscaling:pool_autoscaling_policy"


class AutoscalingOptions(StrictConfig):
    """Ray Serve autoscaling for one deployment (Serve's `autoscaling_config`).

    `policy: switchyard` (the default) scales on the pool's own queue depth, ongoing
    requests and, for escalation targets, the escalations the ingress expects
    (`deployments/autoscaling.py`); `policy: serve` keeps Serve's built-in policy.
    """

    min_replicas: int = Field(default=1, ge=0, description="Replicas kept at low load.")
    max_replicas: int = Field(default=1, ge=1, description="Upper bound on replicas.")
    initial_replicas: int | None = Field(default=None, ge=0, description="Replicas at start.")
    target_ongoing_requests: float = Field(
        default=4, gt=0, description="Ongoing requests per replica Serve aims for."
    )
    upscale_delay_s: float = Field(default=10.0, ge=0, description="Load must last this long.")
    downscale_delay_s: float = Field(default=120.0, ge=0, description="Idle this long to shrink.")
    downscale_to_zero_delay_s: float | None = Field(
        default=None, ge=0, description="Idle this long before the last replica goes."
    )
    look_back_period_s: float = Field(
        default=10.0, gt=0, description="Window over which load is averaged."
    )
    metrics_interval_s: float | None = Field(
        default=None, gt=0, description="How often replicas report their load (Serve's default)."
    )
    policy: Literal["switchyard", "serve"] = Field(
        default="switchyard", description="Which autoscaling policy decides the replica count."
    )

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingOptions:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")
        if self.initial_replicas is not None and not (
            self.min_replicas <= self.initial_replicas <= self.max_replicas
        ):
            raise ValueError("initial_replicas must lie within [min_replicas, max_replicas]")
        return self

    def serve_config(self) -> dict[str, Any]:
        """Serve's `autoscaling_config` dict."""
        config = self.model_dump(exclude_none=True, exclude={"policy"})
        if self.policy == "switchyard":
            config["policy"] = {"policy_function": POOL_AUTOSCALING_POLICY}
        return config


class DeploymentOptions(StrictConfig):
    """Replica count, concurrency and resources of one Serve deployment."""

    num_replicas: int = Field(default=1, ge=1, description="Fixed replicas (no autoscaling).")
    autoscaling_config: AutoscalingOptions | None = Field(
        default=None, description="Autoscaling; replaces num_replicas when set."
    )
    max_ongoing_requests: int = Field(
        default=32, ge=1, description="Requests one replica handles at once."
    )
    max_queued_requests: int = Field(
        default=-1,
        ge=-1,
        description="Requests waiting for a replica beyond which callers get a 429 "
        "(Retry-After) instead of queueing; -1 = unbounded.",
    )
    ray_actor_options: ActorOptions = Field(default_factory=ActorOptions)
    placement_group_bundles: list[dict[str, float]] | None = Field(
        default=None,
        description="Resource bundles per replica (multi-GPU tensor parallelism on a cluster).",
    )
    placement_group_strategy: Literal["PACK", "STRICT_PACK", "SPREAD", "STRICT_SPREAD"] | None = (
        None
    )
    env_vars: dict[str, str] = Field(
        default_factory=dict,
        description="Environment of the replica and the engine processes it starts "
        "(e.g. vLLM's CPU thread binding).",
    )
    access_log: bool = Field(
        default=True,
        description="Serve's one log line per call to this deployment. Pools default to "
        "off: the ingress already logs every request, and a pool's calls include the "
        "stats poll every second.",
    )

    def max_replicas(self) -> int:
        scaling = self.autoscaling_config
        return scaling.max_replicas if scaling is not None else self.num_replicas

    def serve_options(self) -> dict[str, Any]:
        """Keyword arguments for `Deployment.options`."""
        actor = self.ray_actor_options.model_dump(exclude_none=True)
        if self.env_vars:
            actor["runtime_env"] = {"env_vars": dict(self.env_vars)}
        opts: dict[str, Any] = {
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
            "ray_actor_options": actor,
            "logging_config": {"enable_access_log": self.access_log},
        }
        if self.autoscaling_config is not None:
            opts["autoscaling_config"] = self.autoscaling_config.serve_config()
        else:
            opts["num_replicas"] = self.num_replicas
        if self.placement_group_bundles is not None:
            opts["placement_group_bundles"] = self.placement_group_bundles
            opts["placement_group_strategy"] = self.placement_group_strategy or "STRICT_PACK"
        return opts


class PoolConfig(DeploymentOptions):
    """One pool: a catalog model served by a set of identical replicas."""

    model: str = Field(description="Catalog id of the model this pool serves.")
    access_log: bool = Field(
        default=False, description="Serve's log line per call (stats polls included)."
    )
    quality: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Prior answer quality (0..1) used by the multi-objective route score "
        "and by requests' min_quality.",
    )
    tokens_per_s: float = Field(
        default=20.0,
        gt=0,
        description="Expected generation speed before live measurements exist.",
    )
    cold_start_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="With no replica up (scaled to zero) and no fallback pool, how long a "
        "request waits for the pool to start before a 503.",
    )
    stream_interval_ms: float = Field(
        default=50.0,
        ge=0,
        le=1000,
        description="After the first token, a streaming answer leaves the replica at most "
        "once per this interval, carrying every token produced meanwhile (0: every engine "
        "output separately). Fewer, larger chunks cost less per token between processes; "
        "the first token and the end of an answer are never held back.",
    )


class ApiConfig(StrictConfig):
    """Limits and exposure of the HTTP API: what one client may cost the ingress.

    Every request is held to these before any routing work: a body larger than
    `max_body_bytes` is a 413 (refused from its Content-Length before it is read), a body
    not received within `body_timeout_s` a 408, headers above `max_header_bytes` a 431.
    Beyond `max_active_requests` requests in the ingress replica a request gets a 429 with
    Retry-After at once instead of waiting in a queue; `/health` is never counted.
    """

    max_body_bytes: int = Field(
        default=2 * 1024 * 1024, ge=1024, description="Largest request body accepted (bytes)."
    )
    max_header_bytes: int = Field(
        default=32 * 1024, ge=1024, description="Largest total size of request headers (bytes)."
    )
    body_timeout_s: float = Field(
        default=10.0, gt=0, description="Time a client has to send its whole body (408 after)."
    )
    max_active_requests: int = Field(
        default=512,
        ge=1,
        description="Requests one ingress replica works on at once (waiting for a pool "
        "included); beyond it a 429 with Retry-After, immediately.",
    )
    retry_after_s: int = Field(
        default=1, ge=1, description="Retry-After (seconds) sent with a 429 from the ingress."
    )
    docs: bool = Field(
        default=True, description="Serve /docs, /redoc and /openapi.json (the API schema)."
    )
    metrics_summary: bool = Field(
        default=True,
        description="Serve GET /v1/metrics (traffic, cost and model mix of this replica).",
    )


class AppConfig(StrictConfig):
    """The whole application."""

    engine: Literal["vllm", "fake"] = Field(
        default="vllm",
        description="`vllm` for real engines; `fake` for tests only (its per-pool "
        "behaviour is an argument of `deployments.builder:build_fake_app`).",
    )
    models: list[ModelSpec] = Field(min_length=1, description="The model catalog.")
    pools: dict[str, PoolConfig] = Field(min_length=1, description="Pools by name.")
    routing: RoutingConfig = Field(
        default_factory=RoutingConfig, description="Routing policy: strategies and rules."
    )
    ingress: DeploymentOptions = Field(
        default_factory=lambda: DeploymentOptions(
            max_ongoing_requests=1024, max_queued_requests=256
        ),
        description="The OpenAI ingress deployment.",
    )
    api: ApiConfig = Field(
        default_factory=ApiConfig, description="HTTP limits and which endpoints are exposed."
    )
    auth: AuthConfig = Field(
        default_factory=AuthConfig, description="API keys (`keys`, the default) or `off`."
    )
    database: DatabaseConfig = Field(
        default_factory=DatabaseConfig, description="Where keys, ledger and feedback live."
    )
    feedback: FeedbackConfig = Field(
        default_factory=FeedbackConfig,
        description="`POST /v1/feedback`: one verdict per response, within `window_s` of it.",
    )
    tenants: dict[str, TenantConfig] = Field(
        default_factory=dict, description="Per-tenant limits, budgets and policies."
    )
    accounting: AccountingConfig = Field(
        default_factory=AccountingConfig,
        description="Fail mode of limits when the quota keeper is unreachable; the limit on "
        "endpoints that generate nothing.",
    )
    tier_quotas: dict[str, QuotaConfig] = Field(
        default_factory=dict,
        description="Limits and budget for each tenant on a tier (by tier name) that has "
        "none of its own; every tenant is counted separately.",
    )
    key_quotas: dict[str, QuotaConfig] = Field(
        default_factory=dict,
        description="Limits and budget of single API keys, by key id (`switchyard keys "
        "list`), on top of their tenant's.",
    )

    def quotas(self) -> Quotas:
        return Quotas(self.tenants, self.tier_quotas, self.key_quotas)

    def local_share(self) -> float:
        """Each ingress replica's share of every limit while the keeper is unreachable."""
        share = self.accounting.local_share
        return share if share is not None else 1.0 / self.ingress.max_replicas()

    request_timeout_s: float = Field(
        default=300.0,
        gt=0,
        description="Longest a pool may take for a whole answer, or between two streamed "
        "chunks; past it the request is aborted and the client gets a 504.",
    )

    @model_validator(mode="after")
    def _cross_check(self) -> AppConfig:
        ids = [m.id for m in self.models]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"duplicate model ids: {', '.join(duplicates)}")
        for name, pool in self.pools.items():
            if not re.match(POOL_NAME, name):
                raise ValueError(f"pool name {name!r} must match {POOL_NAME}")
            if pool.model not in ids:
                raise ValueError(
                    f"pool {name!r} serves model {pool.model!r}, which is not in models "
                    f"(known: {', '.join(ids)})"
                )
            _check_gpus(name, pool, self.model(pool.model))
        if self.ingress.max_ongoing_requests <= self.api.max_active_requests:
            raise ValueError(
                "ingress.max_ongoing_requests must exceed api.max_active_requests: the "
                "ingress refuses excess requests itself (429) and needs headroom for /health"
            )
        if (
            self.routing.tenants
            and self.auth.mode == "off"
            and not self.routing.trust_tenant_header
        ):
            raise ValueError(
                "routing.tenants needs a way to tell tenants apart: API keys (auth.mode: keys) "
                "or a gateway that sets x-switchyard-tenant (routing.trust_tenant_header: true)"
            )
        unknown_tiers = sorted(set(self.tier_quotas) - set(self.routing.tiers))
        if unknown_tiers:
            raise ValueError(f"tier_quotas name tiers that routing.tiers lacks: {unknown_tiers}")
        scaling = self.ingress.autoscaling_config
        if scaling is not None and scaling.min_replicas < 1:
            raise ValueError("the ingress cannot scale to zero: it receives every request")
        clashes = sorted((set(self.pools) | {AUTO_MODEL}) & set(ids))
        if clashes:
            raise ValueError(f"model ids must differ from pool names and 'auto': {clashes}")
        unknown = {
            pool: where
            for pool, where in self.routing.pools_named().items()
            if pool not in self.pools
        }
        if unknown:
            listed = "; ".join(
                f"{pool!r} ({', '.join(f'routing.{w}' for w in where)})"
                for pool, where in sorted(unknown.items())
            )
            raise ValueError(
                f"routing names pools that are not configured: {listed}; "
                f"configured: {', '.join(self.pools)}"
            )
        judge = self.routing.verifier.judge_pool
        if judge is not None and not self.model(self.pools[judge].model).chat:
            raise ValueError(
                f"routing.verifier.judge_pool {judge!r} serves a completion-only model; the "
                "judge is asked in chat"
            )
        ensemble = self.routing.ensemble
        first = ensemble.members[0]
        if ensemble.pick == "judge" and judge is None and first in self.pools:
            if not self.model(self.pools[first].model).chat:
                raise ValueError(
                    f"routing.ensemble.pick judge grades with its first member {first!r}, "
                    "which serves a completion-only model; set routing.verifier.judge_pool"
                )
        return self

    def model(self, model_id: str) -> ModelSpec:
        return next(m for m in self.models if m.id == model_id)

    def pool_models(self) -> dict[str, str]:
        return {name: pool.model for name, pool in self.pools.items()}


def _check_gpus(name: str, pool: PoolConfig, spec: ModelSpec) -> None:
    """A replica must reserve exactly the GPUs its engine shards the model over."""
    tp = spec.engine.tensor_parallel_size
    if pool.placement_group_bundles is not None:
        first = pool.placement_group_bundles[0] if pool.placement_group_bundles else {}
        actor = pool.ray_actor_options
        if first.get("CPU", 0) < actor.num_cpus or first.get("GPU", 0) < actor.num_gpus:
            raise ValueError(
                f"pool {name!r}: the first placement group bundle must hold the replica's "
                "ray_actor_options (num_cpus, num_gpus)"
            )
        gpus = sum(b.get("GPU", 0) for b in pool.placement_group_bundles)
    else:
        gpus = pool.ray_actor_options.num_gpus
    if tp > 1 and gpus != tp:
        raise ValueError(
            f"pool {name!r}: model {spec.id!r} uses tensor_parallel_size={tp} but a replica "
            f"reserves {gpus:g} GPUs; give it {tp} (placement_group_bundles with one GPU each)"
        )


class ConfigError(ValueError):
    """The app config is invalid; the message lists every problem, one per line."""


def load_app_config(args: dict[str, Any]) -> AppConfig:
    """Validate builder args, turning pydantic's report into a short readable message."""
    try:
        return AppConfig.model_validate(args)
    except ValidationError as exc:
        raise ConfigError(_readable(exc)) from None


FAKE_OPTIONS = TypeAdapter(dict[str, FakeEngineOptions])
"""The test-only `fake` argument: pool name -> behaviour of that pool's fake engine."""


def load_fake_app_config(
    args: Mapping[str, Any],
) -> tuple[AppConfig, dict[str, FakeEngineOptions]]:
    """Validate the args of the test-only fake app (`deployments.builder:build_fake_app`).

    They are the production args plus `fake: {pool: FakeEngineOptions}`, which stays out
    of `AppConfig` so that no production config can carry test behaviour. `engine` is
    forced to `fake` (given as anything else, it is an error); every pool named under
    `fake` must be configured, and a pool not named there gets the default behaviour.
    """
    rest = dict(args)
    raw_fakes = rest.pop("fake", {})
    engine = rest.setdefault("engine", "fake")
    if engine != "fake":
        raise ConfigError(
            f"invalid Switchyard config:\n  engine: the fake app runs only the fake engine, "
            f"not {engine!r}"
        )
    config = load_app_config(rest)
    try:
        fakes = FAKE_OPTIONS.validate_python(raw_fakes)
    except ValidationError as exc:
        raise ConfigError(_readable(exc, within="fake")) from None
    unknown = sorted(set(fakes) - set(config.pools))
    if unknown:
        raise ConfigError(
            f"invalid Switchyard config:\n  fake: options for pools that are not configured: "
            f"{', '.join(map(repr, unknown))}; configured: {', '.join(config.pools)}"
        )
    return config, fakes


def _readable(exc: ValidationError, within: str = "") -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in (within, *err["loc"]) if p != "") or "args"
        lines.append(f"  {where}: {err['msg'].removeprefix('Value error, ')}")
    return "invalid Switchyard config:\n" + "\n".join(lines)
