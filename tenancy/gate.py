"""Each ingress replica's side of budgets and rate limits: reserve, settle, go frugal.

A request is checked against every account that governs it (`tenancy.config.Quotas`):
its tenant (the tenant's own limits, else its assigned tier's, counted per tenant) and
its API key (when that key has limits of its own).

**Reserve before work, settle after.** Before any engine work the request reserves its
worst case (`tenancy.keeper.needed`: one request, one in-flight slot, its plan's
worst-case tokens and USD) out of an *allowance* this replica holds for the account;
only when the allowance is short does it ask the keeper for more (one request per
account at a time; the others wait for that answer). The check and the deduction have no
`await` between them, so concurrent requests cannot both pass on the same room. When
the request ends — answer, error, timeout, fallback, or a client that left — `settle`
charges what it really used and gives the rest back to the allowance. Refusals are
cached until their retry time, so a client hammering a spent limit costs no keeper
calls. Allowances this replica no longer uses go back to the keeper at the next `flush`.

**When the keeper cannot answer** (the keeper or its database is down, or overloaded),
`fail_mode` decides: `local` (the default) keeps enforcing limits from a book of this
replica's own, with each limit scaled to `local_share` (this replica's share of the
cluster), the spend kept and reported once the keeper is back; `closed` refuses with
503. Never unlimited. `mode` says which applies now; the log names the cause.

Bound on overshoot: what requests spend beyond their own worst case (an estimate of the
prompt's tokens that was low). While the keeper is unreachable, each replica admits at
most its local share of each limit.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

from core.errors import (
    AccountingUnavailableError,
    ConcurrencyLimitError,
    QuotaExceededError,
    RateLimitedError,
    RequestExceedsLimitError,
    SwitchyardError,
)
from tenancy.config import QuotaConfig, Quotas, field_by_field
from tenancy.keeper import (
    NOTHING,
    AccountUnavailable,
    Amounts,
    Grant,
    QuotaBook,
    Refusal,
    Settlement,
    allowance,
    needed,
)
from tenancy.quota import PERIODS, Period, budget_state, rate_limit_headers, window

logger = logging.getLogger(__name__)

FailMode = Literal["local", "closed"]
Mode = Literal["keeper", "local", "closed"]

IDLE_RELEASE_S = 1.0  # an allowance unused this long goes back to the keeper
IDLE_EVICT_S = 300.0  # an account unused this long, holding nothing, leaves memory
KEEPER_RETRY_S = 5.0  # while the keeper is down, ask it again at most this often
USAGE_TTL_S = 1.0  # /v1/budget reads the keeper's numbers at most this old
MAX_TRIES = 16  # allowance fetches one request may wait through before giving up


class Keeper(Protocol):
    """The shared book, as the gate reaches it (a Serve handle in the ingress)."""

    async def acquire(
        self, account: str, holder: str, need: Amounts, want: Amounts, policy: QuotaConfig
    ) -> Grant: ...

    async def settle(self, holder: str, items: list[Settlement]) -> dict[str, Grant]: ...

    async def snapshot(self, account: str) -> Grant: ...


@dataclass(frozen=True)
class Part:
    """One account's share of a reservation, and who granted it."""

    account: str
    need: Amounts
    local: bool  # granted by this replica's own book (keeper unreachable)


@dataclass
class Reservation:
    """What one request reserved; `QuotaGate.settle` ends it (once)."""

    created_at: float
    parts: tuple[Part, ...] = ()
    settled: bool = False


@dataclass
class _Account:
    policy: QuotaConfig
    have: Amounts = NOTHING  # allowance held and not reserved
    local: bool = False  # `have` came from the local book
    requests_until: float = 0.0  # requests in `have` are for the minute ending then
    in_flight: int = 0
    local_until: float = 0.0  # (monotonic) the keeper cannot count it until then
    waiting: int = 0  # requests waiting for the allowance being fetched
    active_at: float = 0.0
    refused: tuple[float, Refusal] | None = None
    fetching: asyncio.Future[None] | None = None
    usage: Grant | None = None
    usage_at: float = -math.inf


class QuotaGate:
    def __init__(
        self,
        quotas: Quotas,
        keeper: Keeper,
        *,
        holder: str = "ingress",
        fail_mode: FailMode = "local",
        local_share: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.quotas = quotas
        self.keeper = keeper
        self.holder = holder
        self.fail_mode = fail_mode
        self.local_share = local_share
        self.clock = clock
        self._accounts: dict[str, _Account] = {}
        self._unreported: list[Settlement] = []
        self._local = QuotaBook()  # limits at local_share while the keeper is unreachable
        self._down_since: float | None = None
        self._retry_at = 0.0
        self._last_error_log = -math.inf

    # --- what the rest of the ingress reads -------------------------------------------

    @property
    def mode(self) -> Mode:
        if self._down_since is None:
            now = time.monotonic()
            if not any(state.local_until > now for state in self._accounts.values()):
                return "keeper"
        return "local" if self.fail_mode == "local" else "closed"

    def tracked(self) -> int:
        """Accounts held in memory (bounded: idle ones are evicted at `flush`)."""
        return len(self._accounts)

    def accounts(
        self, tenant: str | None, assigned: str | None, key_id: str | None, chosen: str | None
    ) -> list[tuple[str, QuotaConfig]]:
        return self.quotas.accounts(tenant, assigned, key_id, chosen)

    def frugal(self, accounts: Iterable[tuple[str, QuotaConfig]]) -> str | None:
        """Why routing must save (a budget past `frugal_at`), from the last usage seen."""
        now = self.clock()
        for account, policy in accounts:
            state = self._accounts.get(account)
            if state is None or state.usage is None:
                continue
            level = budget_state(policy.budget, state.usage.used, now)
            if level.level != "ok":
                return level.note()
        return None

    def headers(self, accounts: list[tuple[str, QuotaConfig]]) -> dict[str, str]:
        """`x-ratelimit-*` of the first account with rate limits."""
        now = self.clock()
        for account, policy in accounts:
            state = self._accounts.get(account)
            limits = policy.limits
            if not (limits.requests_per_minute or limits.tokens_per_minute):
                continue
            if state is None or state.usage is None:  # nothing used here yet
                return rate_limit_headers(limits, 0, 0, now)
            grant = state.usage
            requests = max(0, grant.requests - state.have.requests)
            tokens = int(grant.used.get(("tokens", "minute"), 0.0))
            return rate_limit_headers(limits, requests, tokens, now)
        return {}

    # --- reserve and settle -------------------------------------------------------------

    async def reserve(
        self, accounts: list[tuple[str, QuotaConfig]], tokens: float, usd: float
    ) -> Reservation:
        """Reserve one request's worst case on every account, or raise (429, 400 when no
        window could ever admit it, 503 when fail_mode is closed and the keeper is down).
        Nothing stays reserved when it raises."""
        reservation = Reservation(self.clock())
        parts: list[Part] = []
        try:
            for account, policy in accounts:
                need = needed(policy, tokens, usd)
                local = await self._take(account, policy, need)
                parts.append(Part(account, need, local))
        except BaseException:
            for part in parts:  # NOTE: a later account refused: nothing was used
                self._give_back(part, part.need)
            raise
        reservation.parts = tuple(parts)
        return reservation

    def settle(self, reservation: Reservation, tokens: float, usd: float) -> None:
        """Charge what the request really used; the rest of its reservation is free
        again. Idempotent; never raises, never waits."""
        if reservation.settled:
            return
        reservation.settled = True
        for part in reservation.parts:
            need = part.need
            used = Amounts(tokens=min(tokens, need.tokens), usd=min(usd, need.usd))
            unused = Amounts(
                slots=need.slots, tokens=need.tokens - used.tokens, usd=need.usd - used.usd
            )
            self._give_back(part, unused)
            released = NOTHING if part.local else used
            self._unreported.append(
                Settlement(part.account, reservation.created_at, tokens, usd, released)
            )
            if part.local:
                spent = Settlement(part.account, reservation.created_at, tokens, usd, used)
                self._local.settle("local", [spent], self.clock())

    def _give_back(self, part: Part, amounts: Amounts) -> None:
        state = self._accounts.get(part.account)
        if state is None:
            return
        state.in_flight = max(0, state.in_flight - 1)
        if state.local == part.local:
            state.have = state.have + amounts
        elif not part.local:  # granted by the keeper, whose allowance we no longer track
            self._unreported.append(Settlement(part.account, self.clock(), released=amounts))

    async def _take(self, account: str, policy: QuotaConfig, need: Amounts) -> bool:
        """Take `need` out of this replica's allowance, fetching more when short."""
        state = self._accounts.get(account)
        if state is None:
            state = self._accounts[account] = _Account(policy)
        elif state.policy != policy:  # e.g. a chosen tier narrowed it: same allowance
            state.policy, state.refused = policy, None
        for _ in range(MAX_TRIES):
            now = self.clock()
            if state.refused is not None:
                until, refusal = state.refused
                if now >= until:
                    state.refused = None
                elif getattr(need, refusal.amount) > refusal.room:
                    raise self._error(refusal, until - now, policy)
            if state.have.requests and now >= state.requests_until:
                state.have = replace(state.have, requests=0)
            if state.have.covers(need):
                # NOTE: no await between the check above and this deduction.
                state.have = state.have.minus(need)
                state.in_flight += 1
                state.active_at = now
                return state.local
            if state.fetching is not None:
                state.waiting += 1
                try:
                    await asyncio.shield(state.fetching)
                finally:
                    state.waiting -= 1
                continue
            state.fetching = asyncio.get_running_loop().create_future()
            try:
                await self._fetch(account, state, need)
            finally:
                state.fetching.set_result(None)
                state.fetching = None
        raise self._error(Refusal("requests", "minute", 0, 1), 1, policy)

    async def _fetch(self, account: str, state: _Account, need: Amounts) -> None:
        """More allowance from the keeper (or the local book while it is unreachable)."""
        # NOTE: requests waiting for this fetch are served by it too: ask for theirs.
        want = allowance(state.policy, need) + _times(need, state.waiting)
        grant: Grant | None = None
        if not self._keeper_down() and time.monotonic() >= state.local_until:
            try:
                grant = await self.keeper.acquire(account, self.holder, need, want, state.policy)
            except AccountUnavailable as exc:  # this account only: its database is down
                state.local_until = time.monotonic() + KEEPER_RETRY_S
                self._log(f"quota keeper cannot count {account} ({_cause(exc)})")
            except Exception as exc:  # noqa: BLE001 - keeper unreachable: every account
                self._went_down(exc)
            else:
                self._came_back()
                self._local.forget(account)  # NOTE: a next outage starts from the keeper's view
        local = grant is None
        if local:
            if self.fail_mode == "closed":
                raise AccountingUnavailableError(math.ceil(KEEPER_RETRY_S))
            scaled = _scaled(state.policy, self.local_share)
            if not self._local.restored(account):
                self._seed(account, state)
            grant = self._local.acquire(account, "local", need, want, scaled, self.clock())
        assert grant is not None
        now = self.clock()
        if state.local != local:  # NOTE: allowances from the other book are not ours to use
            if not state.local and not state.have.empty():
                self._unreported.append(Settlement(account, now, released=state.have))
            state.have, state.local = NOTHING, local
        state.usage, state.usage_at = grant, now
        if grant.refused is not None:
            state.refused = (now + grant.refused.retry_after_s, grant.refused)
            return
        state.have = state.have + grant.granted
        if grant.granted.requests:
            state.requests_until = now + grant.minute_left_s

    def _error(self, refusal: Refusal, wait_s: float, policy: QuotaConfig) -> SwitchyardError:
        seconds = max(1, math.ceil(wait_s))
        limit = refusal.limit
        if refusal.too_large:
            what = "tokens" if refusal.what == "tokens" else "USD"
            period = refusal.period or "minute"
            return RequestExceedsLimitError(
                f"this request's worst case (its prompt plus max_tokens) is more {what} than "
                f"the account's whole limit of {limit:g} per {period}: lower max_tokens"
            )
        if refusal.what == "in_flight":
            return ConcurrencyLimitError(int(limit), seconds)
        if refusal.period == "minute" and refusal.what in ("requests", "tokens"):
            error = RateLimitedError(refusal.what, int(limit), seconds)
            now = self.clock()
            error.headers = rate_limit_headers(
                policy.limits,
                int(limit) if refusal.what == "requests" else 0,
                int(limit) if refusal.what == "tokens" else 0,
                now,
            )
            return error
        return QuotaExceededError(f"the {refusal.what} per {refusal.period} limit", seconds)

    # --- the keeper's health ------------------------------------------------------------

    def _keeper_down(self) -> bool:
        return self._down_since is not None and time.monotonic() < self._retry_at

    def _went_down(self, exc: BaseException, *, asked: bool = True) -> None:
        """The keeper failed to answer. `asked`: a request was waiting for it, so
        requests go local (without asking again) for KEEPER_RETRY_S; a failed report
        alone does not stop requests from asking."""
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
        if asked:
            self._retry_at = now + KEEPER_RETRY_S
        self._log(f"quota keeper unreachable ({_cause(exc)})")

    def _log(self, what: str) -> None:
        now = time.monotonic()
        if now - self._last_error_log >= 60:
            action = (
                f"limits enforced locally at {self.local_share:.0%} of each"
                if self.fail_mode == "local"
                else "requests with limits refused (fail_mode: closed)"
            )
            logger.warning("%s: %s", what, action)
            self._last_error_log = now

    def _seed(self, account: str, state: _Account) -> None:
        """Start the local book of an account from this replica's share of what the
        keeper last said was used, so local mode does not start from zero."""
        grant, now, share = state.usage, self.clock(), self.local_share
        if grant is None:
            self._local.restore(account, now, {}, 0)
            return
        same_minute = now < state.usage_at + grant.minute_left_s
        totals = {
            period: (grant.used.get(("tokens", period), 0.0) * share,
                     grant.used.get(("usd", period), 0.0) * share)
            for period in PERIODS
            if period != "minute" or same_minute
        }  # fmt: skip
        requests = math.ceil(grant.requests * share) if same_minute else 0
        self._local.restore(account, now, totals, requests)

    def _came_back(self) -> None:
        if self._down_since is not None:
            logger.warning(
                "quota keeper reachable again after %.0f s; limits shared across replicas",
                time.monotonic() - self._down_since,
            )
            self._down_since = None

    # --- background: report, release, evict ----------------------------------------------

    async def flush(self) -> None:
        """Report spend and idle allowances to the keeper (kept for the next try if it
        fails); a heartbeat while this replica holds any allowance; evict idle accounts."""
        now = self.clock()
        holding = False
        for name, state in list(self._accounts.items()):
            idle = state.in_flight == 0 and now - state.active_at >= IDLE_RELEASE_S
            if idle and not state.have.empty():
                if not state.local:
                    self._unreported.append(Settlement(name, now, released=state.have))
                state.have = NOTHING
            if idle and now - state.active_at >= IDLE_EVICT_S and state.fetching is None:
                del self._accounts[name]
                continue
            mine = state.in_flight > 0 or not state.have.empty()
            holding = holding or (not state.local and mine)
        if not self._unreported and not holding:
            return
        batch, self._unreported = self._unreported, []
        try:
            usage = await self.keeper.settle(self.holder, batch)
        except Exception as exc:  # noqa: BLE001 - retried at the next flush
            self._unreported = batch + self._unreported
            self._went_down(exc, asked=False)
            return
        self._came_back()
        now = self.clock()
        for account, grant in usage.items():
            seen = self._accounts.get(account)
            if seen is not None and not seen.local:
                seen.usage, seen.usage_at = grant, now

    # --- GET /v1/budget -----------------------------------------------------------------

    async def budget(self, accounts: list[tuple[str, QuotaConfig]]) -> list[dict[str, object]]:
        """Limits, use per window, what remains, reset times, for each account."""
        now = self.clock()
        found = []
        for account, policy in accounts:
            # NOTE: spent plus reserved: spend this replica has not reported yet is still
            # reserved at the keeper, so it is in these numbers already.
            grant = await self._usage(account)
            used = grant.used
            state = budget_state(policy.budget, used, now)
            found.append(
                {
                    "account": account, "level": state.level,
                    "frugal_at": policy.budget.frugal_at,
                    "windows": _windows(policy, used, grant.requests, now),
                }
            )  # fmt: skip
        return found

    async def _usage(self, account: str) -> Grant:
        state = self._accounts.get(account)
        now = self.clock()
        if state is not None and state.usage is not None and now - state.usage_at < USAGE_TTL_S:
            return state.usage
        grant: Grant | None = None
        if not self._keeper_down():
            try:
                grant = await self.keeper.snapshot(account)
            except Exception as exc:  # noqa: BLE001 - shown from the local book instead
                self._went_down(exc)
        if grant is None:
            grant = self._local.snapshot(account, now)
        if state is not None:
            state.usage, state.usage_at = grant, now
        return grant


def _times(need: Amounts, n: int) -> Amounts:
    return Amounts(need.requests * n, need.slots * n, need.tokens * n, need.usd * n)


def _scaled(policy: QuotaConfig, share: float) -> QuotaConfig:
    """`policy` with every limit at `share` (counts at least 1)."""
    if share >= 1:
        return policy

    def part(name: str, value: Any, _: Any) -> Any:
        if value is None or name == "frugal_at":
            return value
        return max(1, math.floor(value * share)) if isinstance(value, int) else value * share

    return field_by_field(policy, part)


def _cause(exc: BaseException) -> str:
    """The real cause, through Ray's wrapping (a RayTaskError keeps it in `cause`)."""
    inner = getattr(exc, "cause", None) or exc.__cause__ or exc
    if isinstance(inner, TimeoutError) or isinstance(exc, TimeoutError):
        return "no answer in time"
    return f"{type(inner).__name__}: {str(inner)[:200]}"


def _windows(
    policy: QuotaConfig, used: Mapping[tuple[str, Period], float], requests: int, now: float
) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for (what, period), limit in policy.budget.limits().items():
        spent = used.get((what, period), 0.0)
        rows.append(
            {
                "what": what, "period": period, "limit": limit, "used": round(spent, 6),
                "remaining": round(max(0.0, limit - spent), 6),
                "resets_at": int(window(now, period)[1]),
            }
        )  # fmt: skip
    rates, minute_ends = policy.limits, int(window(now, "minute")[1])
    per_minute = (
        ("requests", rates.requests_per_minute, float(requests)),
        ("tokens", rates.tokens_per_minute, used.get(("tokens", "minute"), 0.0)),
    )
    for what, cap, count in per_minute:
        if cap is not None:
            rows.append(
                {
                    "what": what, "period": "minute", "limit": cap, "used": count,
                    "remaining": max(0.0, cap - count), "resets_at": minute_ends,
                }
            )  # fmt: skip
    return rows
