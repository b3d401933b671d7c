"""The domain errors: what went wrong, in words every layer shares.

Raised where the fact is known (an engine, the planner, the executor, the Serve
boundary) and turned into an HTTP response in exactly one place,
`deployments/openai/errors.py`. Each class says what the rest of the system needs to
know about it, so nobody re-derives it from a status code:

    retryable               another pool may succeed: the executor tries the next one
    counts_against_circuit  the pool misbehaved: its circuit breaker counts it
    outcome                 the `outcome` label of the request in metrics
    reason                  the `reason` label when a request moves to another pool

    SwitchyardError                          message is safe to show to clients
    ├── ClientError                          the request itself is wrong; no pool helps
    │   ├── PromptError                      cannot be served as asked (400)
    │   │   ├── ContextLengthError           prompt + max_tokens exceed the context
    │   │   └── EngineRefusedError           vLLM's serving layer refused it (its 4xx)
    │   ├── UnknownTierError                 no such tier (400)
    │   ├── NotFoundError                    no such thing (404)
    │   │   ├── UnknownModelError            no such model or pool
    │   │   └── UnknownResponseError         feedback on an id the ledger does not know
    │   ├── ConflictError                    not possible in the current state (409)
    │   │   └── FeedbackWindowClosedError    feedback too long after the response
    │   ├── AuthenticationError              no key, or not a valid one (401)
    │   ├── PromptError
    │   │   └── RequestExceedsLimitError     one request's worst case > a whole limit (400)
    │   ├── RateLimitedError                 over the tenant's requests/tokens per minute (429)
    │   │   └── ConcurrencyLimitError        too many requests in flight at once (429)
    │   ├── QuotaExceededError               the tenant's budget is spent (429)
    │   └── NotAllowedError                  the client may not do this (403)
    │       ├── TierNotAllowedError          a tier it may not choose
    │       ├── PoolNotAllowedError          a pool outside its tier
    │       └── ForeignResponseError         feedback on another tenant's response
    ├── AccountingUnavailableError           limits cannot be checked, fail_mode closed (503)
    └── PoolError                            one pool could not answer; retryable
        ├── PoolOverloadedError              queue full (429 + Retry-After)
        ├── ColdStartError                   scaled to zero, starting (503 + Retry-After)
        ├── CircuitOpenError                 recent failures; not tried (503)
        ├── PoolTimeoutError                 no answer in time (504)
        └── EngineError                      the engine failed (500)
            └── EngineUnavailableError       dead, unreachable, not started (503)
                └── AllPoolsFailedError      every pool of the chain failed (503)

Messages are fixed or built from our own values; the original exception stays in
`__cause__` for the logs. Every error pickles with all its fields: pool replicas raise
them and Ray carries them to the ingress.
"""

from __future__ import annotations

from typing import Any, ClassVar


class SwitchyardError(Exception):
    """Base of every domain error; `message` is safe to show to clients."""

    default_code: ClassVar[str | None] = None
    error_type: ClassVar[str | None] = None  # OpenAI's `type`, when not the status's default
    default_param: ClassVar[str | None] = None
    retryable: ClassVar[bool] = False
    counts_against_circuit: ClassVar[bool] = False
    outcome: ClassVar[str] = "error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.param = param or self.default_param
        self.retry_after_s = retry_after_s
        self.headers: dict[str, str] = {}  # extra response headers (e.g. x-ratelimit-*)

    @property
    def reason(self) -> str:
        """Why a request left this pool for the next (a metrics label)."""
        return self.outcome

    def __reduce__(self) -> tuple[Any, ...]:
        # NOTE: subclasses take different constructor arguments; rebuild from the state.
        return (_restore, (type(self), self.args, self.__dict__))


def _restore(cls: type[SwitchyardError], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    exc = cls.__new__(cls)
    exc.args = args
    exc.__dict__.update(state)
    return exc


# --- the client's request -----------------------------------------------------------


class ClientError(SwitchyardError):
    """The request is wrong as sent; another pool would refuse it too."""

    outcome = "client_error"


class PromptError(ClientError):
    """The request cannot be served as asked (too many tokens, a chat to a base model)."""


class ContextLengthError(PromptError):
    default_code = "context_length_exceeded"
    default_param = "messages"


class EngineRefusedError(PromptError):
    """vLLM's own validation refused the request: its status, message and param.

    Raised at the Serve boundary from the `ErrorResponse` a pool's server returns, so a
    client gets what vLLM's server would have answered (bounded in length)."""

    def __init__(
        self, status: int, message: str, *, code: str | None = None, param: str | None = None
    ) -> None:
        super().__init__(message[:1000], code=code, param=param)
        self.status = status if 400 <= status < 500 else 400


class UnknownTierError(ClientError):
    default_code = "unknown_tier"
    default_param = "switchyard.tier"

    def __init__(self, tier: str, known: list[str]) -> None:
        super().__init__(f"unknown tier {tier[:64]!r} (known: {', '.join(known) or 'none'})")


class NotFoundError(ClientError):
    """What the request names does not exist."""


class UnknownModelError(NotFoundError):
    """The requested model is neither `auto`, a pool name, nor a served model id."""

    default_code = "model_not_found"
    default_param = "model"

    def __init__(self, model: str, known: list[str]) -> None:
        super().__init__(f"model {model!r} does not exist; available: {', '.join(known)}")


class UnknownResponseError(NotFoundError):
    default_code = "response_not_found"
    default_param = "id"

    def __init__(self, request_id: str) -> None:
        super().__init__(f"no response with id {request_id[:64]!r} in the ledger")


class ConflictError(ClientError):
    """The request is well formed, but what it names no longer allows it."""


class FeedbackWindowClosedError(ConflictError):
    """Feedback arrived more than `feedback.window_s` after the response: a verdict on an
    old answer says little about the pool as it is now, and an open-ended window would
    let a tenant rate its whole history at once."""

    default_code = "feedback_window_closed"
    default_param = "id"

    def __init__(self, window_s: float) -> None:
        super().__init__(
            f"feedback on a response is accepted for {window_s:g} s after it; this "
            "response is older"
        )


class AuthenticationError(ClientError):
    """The request carries no API key, or one that is unknown, revoked or malformed."""

    default_code = "invalid_api_key"
    outcome = "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message)


class RateLimitedError(ClientError):
    """The tenant sent more requests (or tokens) this minute than its limit allows."""

    default_code = "rate_limit_exceeded"
    outcome = "rejected"

    def __init__(self, what: str, limit: int, retry_after_s: int) -> None:
        super().__init__(
            f"rate limit reached: {limit} {what} per minute for this tenant; retry in "
            f"{retry_after_s} s",
            retry_after_s=retry_after_s,
        )


class ConcurrencyLimitError(RateLimitedError):
    """The account already has as many requests in flight as its tier allows."""

    def __init__(self, limit: int, retry_after_s: int) -> None:  # noqa: D107
        ClientError.__init__(
            self,
            f"concurrency limit reached: {limit} requests in flight at once for this "
            f"account; retry when one ends",
            retry_after_s=retry_after_s,
        )


class RequestExceedsLimitError(PromptError):
    """One request's worst case (prompt + max_tokens) is more than a limit allows in a
    whole window: no retry can admit it, so it is a 400, not a 429."""

    default_code = "request_exceeds_limit"
    default_param = "max_tokens"


class QuotaExceededError(ClientError):
    """The tenant's budget for the current window is spent: no engine work is done."""

    default_code = "insufficient_quota"
    error_type = "insufficient_quota"
    outcome = "rejected"

    def __init__(self, what: str, retry_after_s: int) -> None:
        super().__init__(
            f"budget exhausted: {what}; it resets in {retry_after_s} s",
            retry_after_s=retry_after_s,
        )


class NotAllowedError(ClientError):
    """The client may not do what it asked (its tier forbids it)."""


class TierNotAllowedError(NotAllowedError):
    default_code = "tier_not_allowed"
    default_param = "switchyard.tier"


class PoolNotAllowedError(NotAllowedError):
    """A request pinned a pool its tier may not use."""

    default_code = "pool_not_allowed"
    default_param = "model"

    def __init__(self, pool: str, tier: str | None) -> None:
        super().__init__(f"tier {tier!r} may not use pool {pool!r}")


class ForeignResponseError(NotAllowedError):
    """Feedback on a response that belongs to another tenant."""

    default_code = "response_not_allowed"
    default_param = "id"

    def __init__(self) -> None:
        super().__init__("this response belongs to another tenant")


class AccountingUnavailableError(SwitchyardError):
    """The quota keeper cannot be reached and `quota.fail_mode` is `closed`: nothing is
    admitted whose limits cannot be checked."""

    default_code = "accounting_unavailable"
    outcome = "unavailable"

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(
            "limits cannot be checked right now (accounting unavailable); retry shortly",
            retry_after_s=retry_after_s,
        )


# --- one pool's failure -------------------------------------------------------------


class PoolError(SwitchyardError):
    """A pool could not answer; the next pool of the fallback chain may."""

    retryable = True


class PoolOverloadedError(PoolError):
    """Every replica's queue is full. Being busy is not being broken: no circuit count."""

    default_code = "pool_overloaded"
    outcome = "rejected"

    def __init__(self, pool: str) -> None:
        super().__init__(f"pool {pool!r} is at capacity; retry shortly", retry_after_s=1)


class ColdStartError(PoolError):
    """The pool is at zero replicas and starting one; the request did not wait for it."""

    default_code = "cold_start"
    outcome = "unavailable"

    def __init__(self, pool: str) -> None:
        super().__init__(
            f"pool {pool!r} is scaled to zero and starting a replica; retry shortly",
            retry_after_s=30,
        )

    @property
    def reason(self) -> str:
        return "cold_start"


class CircuitOpenError(PoolError):
    """Recent failures opened the pool's circuit: it was not called."""

    default_code = "circuit_open"
    outcome = "unavailable"

    def __init__(self, pool: str, retry_after_s: int) -> None:
        super().__init__(
            f"pool {pool!r} is failing and rests for a while; retry shortly",
            retry_after_s=retry_after_s,
        )

    @property
    def reason(self) -> str:
        return "circuit_open"


class PoolTimeoutError(PoolError):
    default_code = "timeout"
    counts_against_circuit = True
    outcome = "timeout"

    def __init__(self, pool: str, timeout_s: float) -> None:
        super().__init__(f"pool {pool!r} did not finish within {timeout_s:g} s")


class EngineError(PoolError):
    """An engine failed while serving a request."""

    default_code = "engine_error"
    counts_against_circuit = True

    def __init__(self, message: str = "the model engine failed to serve the request") -> None:
        super().__init__(message)


class EngineUnavailableError(EngineError):
    """The engine or its replica is dead, unreachable, or not started."""

    default_code = "pool_unavailable"
    outcome = "unavailable"

    def __init__(self, message: str = "the model engine is not available") -> None:
        super().__init__(message)


class AllPoolsFailedError(EngineUnavailableError):
    """Every pool of a fallback chain failed: nothing left to try, nothing to count."""

    retryable = False
    counts_against_circuit = False

    def __init__(self, tried: list[str]) -> None:
        super().__init__(f"no pool could serve the request (tried: {', '.join(tried)})")
