"""The one shared book of what each account (a tenant, or a key) used and holds.

Owned by a single `QuotaKeeper` replica (deployments/quota.py); every ingress replica
(a *holder*) acquires *allowances* from it and settles what its requests really spent.
Pure: the keeper's own clock is passed in, the ledger's totals are handed to `restore`
before an account's first use.

**Reserve, then settle.** Four amounts are limited per account:

    requests  requests per minute: consumed when granted (unused ones are returned)
    slots     requests in flight at once: returned when a request ends
    tokens    worst-case tokens of requests not ended yet, then what they really used,
              against tokens per minute/day/month
    usd       the same in USD, against the budgets per hour/day/month

An ingress takes a request's worst case (its plan's prompt + `max_tokens`, priced on every
pool the plan may run) out of an allowance it holds, before any engine work; at the end
the real cost is charged and the rest goes back to the allowance. The keeper grants an
allowance only when, for every limit, *used + everything held by every holder + the
grant* stays within the limit, in one synchronous step (no await between check and
record), so concurrent requests on any number of replicas cannot together pass a limit:
what can be spent beyond it is what requests spend beyond their own worst case.

**Clock.** The keeper trusts only its own clock, and windows only roll forward: a replica
whose clock is ahead cannot open a new minute early for everyone.

**Holders** send a settlement (possibly empty) at least every few seconds; a holder not
heard from for `HOLDER_TTL_S` (a dead replica) loses what it held. Accounts idle for
`IDLE_EVICT_S` with nothing held are dropped; their next use restores them from the
ledger, so the book's memory is bounded by the accounts in use, not by all ever seen.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from tenancy.config import QuotaConfig
from tenancy.quota import PERIODS, Period, window

HOLDER_TTL_S = 30.0  # a holder silent this long is gone: its allowance returns
IDLE_EVICT_S = 600.0  # an account unused this long, holding nothing, leaves memory
BLOCKED_RETRY_S = 1  # retry-after when only other holders' allowances stand in the way
SHARE = 20  # an allowance is at most 1/SHARE of a limit (or one request's need)


class AccountUnavailable(RuntimeError):
    """The keeper cannot count this account now (its usage could not be restored: the
    database is unreachable); other accounts are unaffected."""


@dataclass(frozen=True)
class Amounts:
    """Requests, in-flight slots, tokens and USD: what is needed, held or granted."""

    requests: int = 0
    slots: int = 0
    tokens: float = 0.0
    usd: float = 0.0

    def __add__(self, other: Amounts) -> Amounts:
        return Amounts(
            self.requests + other.requests,
            self.slots + other.slots,
            self.tokens + other.tokens,
            self.usd + other.usd,
        )

    def minus(self, other: Amounts) -> Amounts:
        """`self - other`, never below zero in any amount."""
        return Amounts(
            max(0, self.requests - other.requests),
            max(0, self.slots - other.slots),
            max(0.0, self.tokens - other.tokens),
            max(0.0, self.usd - other.usd),
        )

    def covers(self, need: Amounts) -> bool:
        return (
            self.requests >= need.requests
            and self.slots >= need.slots
            and self.tokens >= need.tokens - 1e-9
            and self.usd >= need.usd - 1e-12
        )

    def empty(self) -> bool:
        return not (self.requests or self.slots or self.tokens or self.usd)


NOTHING = Amounts()


def needed(policy: QuotaConfig, tokens: float, usd: float) -> Amounts:
    """What one request must reserve under `policy`: only the amounts it limits."""
    limits, budget = policy.limits, policy.budget.limits()
    return Amounts(
        requests=1 if limits.requests_per_minute else 0,
        slots=1 if limits.max_in_flight else 0,
        tokens=tokens if limits.tokens_per_minute or any(w == "tokens" for w, _ in budget) else 0.0,
        usd=usd if any(w == "usd" for w, _ in budget) else 0.0,
    )


def allowance(policy: QuotaConfig, need: Amounts) -> Amounts:
    """What to ask for when `need` does not fit what is held: 1/SHARE of each limit, at
    least the need, so most requests are decided without asking the keeper."""
    caps = _caps(policy)
    return Amounts(
        requests=max(need.requests, _part(caps.get("requests"))) if need.requests else 0,
        slots=max(need.slots, _part(caps.get("slots"))) if need.slots else 0,
        tokens=max(need.tokens, (caps.get("tokens") or 0) / SHARE) if need.tokens else 0.0,
        usd=max(need.usd, (caps.get("usd") or 0) / SHARE) if need.usd else 0.0,
    )


def _part(limit: float | None) -> int:
    return max(1, math.floor((limit or 0) / SHARE))


def _caps(policy: QuotaConfig) -> dict[str, float]:
    """The smallest limit of each amount (for allowance sizes)."""
    limits, caps = policy.limits, {}
    if limits.requests_per_minute:
        caps["requests"] = float(limits.requests_per_minute)
    if limits.max_in_flight:
        caps["slots"] = float(limits.max_in_flight)
    for (what, _), limit in _limits_by_window(policy).items():
        caps[what] = min(caps.get(what, limit), limit)
    return caps


def _limits_by_window(policy: QuotaConfig) -> dict[tuple[str, Period], float]:
    found = dict(policy.budget.limits())
    if policy.limits.tokens_per_minute:
        found["tokens", "minute"] = float(policy.limits.tokens_per_minute)
    return found


@dataclass(frozen=True)
class Refusal:
    """Why a grant was refused: which limit, and when to retry (keeper-relative)."""

    what: str  # "requests", "tokens", "in_flight", or a budget's "usd"/"tokens"
    period: Period | None  # None for in-flight
    limit: float
    retry_after_s: float
    too_large: bool = False  # one request's worst case exceeds the limit itself
    amount: str = "requests"  # which of `Amounts` did not fit
    room: float = 0.0  # how much of it was left: a smaller need may still fit


@dataclass(frozen=True)
class Grant:
    """The keeper's answer to `acquire`: an allowance, or a refusal; and the account's
    usage (used + held by everyone) for frugal routing and `/v1/budget`."""

    granted: Amounts
    refused: Refusal | None
    used: dict[tuple[str, Period], float]
    requests: int  # requests granted this minute, cluster-wide
    minute_left_s: float


@dataclass(frozen=True)
class Settlement:
    """What a holder's ended requests spent on one account (`tokens`, `usd`: charged to
    the windows that contain `created_at`), and what of its allowance it gives up
    (`released`: the part of the spend that came out of it, and anything returned
    unused). Spend admitted while the keeper was unreachable is reported with nothing
    released: it reconciles the book."""

    account: str
    created_at: float
    tokens: float = 0.0
    usd: float = 0.0
    released: Amounts = NOTHING


@dataclass
class Usage:
    """One account's usage in the current windows."""

    windows: dict[Period, float] = field(default_factory=dict)  # period -> window start
    requests: int = 0  # granted this minute
    tokens: dict[Period, float] = field(default_factory=dict)
    usd: dict[Period, float] = field(default_factory=dict)

    def roll(self, now: float) -> None:
        """Start new windows whose period has passed (never goes back)."""
        for period in PERIODS:
            start = window(now, period)[0]
            if start > self.windows.get(period, -math.inf):
                self.windows[period] = start
                self.tokens[period] = 0.0
                self.usd[period] = 0.0
                if period == "minute":
                    self.requests = 0

    def add(self, created_at: float, tokens: float, usd: float) -> None:
        """Spend of a request that arrived at `created_at` (only windows it falls in)."""
        for period in PERIODS:
            start = self.windows.get(period)
            if start is not None and start <= created_at:
                self.tokens[period] = self.tokens.get(period, 0.0) + tokens
                self.usd[period] = self.usd.get(period, 0.0) + usd

    def amounts(self, held: Amounts = NOTHING) -> dict[tuple[str, Period], float]:
        """(what, period) -> used (+ `held`), as `tenancy.quota.budget_state` reads it."""
        used: dict[tuple[str, Period], float] = {}
        for period in PERIODS:
            used["usd", period] = self.usd.get(period, 0.0) + held.usd
            used["tokens", period] = self.tokens.get(period, 0.0) + held.tokens
        return used


@dataclass
class _Account:
    usage: Usage = field(default_factory=Usage)
    held: dict[str, Amounts] = field(default_factory=dict)  # holder -> allowance
    minute: dict[str, float] = field(default_factory=dict)  # holder -> minute of its requests
    last_used: float = 0.0

    def total_held(self) -> Amounts:
        total = NOTHING
        for amounts in self.held.values():
            total = total + amounts
        return total


class QuotaBook:
    """Usage and allowances per account: `tenant:<id>` or `key:<id>`. Limits come with
    each `acquire` (the ingress resolves which policy applies); the book counts."""

    def __init__(self) -> None:
        self._accounts: dict[str, _Account] = {}
        self._seen: dict[str, float] = {}  # holder -> when last heard from
        self._now = -math.inf  # the latest instant seen: windows never roll back

    def _clock(self, now: float) -> float:
        self._now = max(self._now, now)
        return self._now

    def _of(self, account: str, now: float) -> _Account:
        acc = self._accounts.get(account)
        if acc is None:
            acc = self._accounts[account] = _Account()
        acc.usage.roll(now)
        acc.last_used = now
        return acc

    def restored(self, account: str) -> bool:
        return account in self._accounts

    def accounts(self) -> int:
        return len(self._accounts)

    def forget(self, account: str) -> None:
        self._accounts.pop(account, None)

    def restore(
        self, account: str, now: float, totals: Mapping[Period, tuple[float, float]], requests: int
    ) -> None:
        """The ledger's totals of this account's current windows, once, before first use
        (`totals`: period -> (tokens, usd); `requests`: admitted this minute)."""
        usage = self._of(account, self._clock(now)).usage
        usage.requests = max(usage.requests, requests)
        for period, (tokens, usd) in totals.items():
            usage.tokens[period] = max(usage.tokens.get(period, 0.0), tokens)
            usage.usd[period] = max(usage.usd.get(period, 0.0), usd)

    def acquire(
        self,
        account: str,
        holder: str,
        need: Amounts,
        want: Amounts,
        policy: QuotaConfig,
        now: float,
    ) -> Grant:
        """Grant `holder` between `need` and `want` of each limited amount, or refuse
        outright when `need` does not fit (see the module docstring)."""
        now = self._clock(now)
        self._heard(holder, now)
        acc = self._of(account, now)
        self._roll_minute(acc)
        usage, held = acc.usage, acc.total_held()
        granted, refused = NOTHING, None
        free = self._free(acc, held, policy)
        for name, (room, refusal) in free.items():
            if getattr(need, name) > room + 1e-9:
                refused = self._why(refusal, usage, policy, now, getattr(need, name))
                refused = replace(refused, amount=name, room=max(0.0, room))
                break
        if refused is None:
            granted = Amounts(
                requests=min(want.requests, int(free["requests"][0])) if need.requests else 0,
                slots=min(want.slots, int(free["slots"][0])) if need.slots else 0,
                tokens=min(want.tokens, free["tokens"][0]) if need.tokens else 0.0,
                usd=min(want.usd, free["usd"][0]) if need.usd else 0.0,
            )
            granted = Amounts(
                max(granted.requests, need.requests),
                max(granted.slots, need.slots),
                max(granted.tokens, need.tokens),
                max(granted.usd, need.usd),
            )
            usage.requests += granted.requests
            acc.held[holder] = acc.held.get(holder, NOTHING) + replace(granted, requests=0)
            acc.minute[holder] = usage.windows["minute"]
            held = held + replace(granted, requests=0)
        return self._grant(acc, granted, refused, held, now)

    def _free(
        self, acc: _Account, held: Amounts, policy: QuotaConfig
    ) -> dict[str, tuple[float, tuple[str, Period | None, float]]]:
        """Per amount: room left under its tightest limit, and that limit."""
        usage, limits = acc.usage, policy.limits
        free: dict[str, tuple[float, tuple[str, Period | None, float]]] = {
            "requests": (math.inf, ("requests", "minute", math.inf)),
            "slots": (math.inf, ("in_flight", None, math.inf)),
            "tokens": (math.inf, ("tokens", "minute", math.inf)),
            "usd": (math.inf, ("usd", "day", math.inf)),
        }
        if limits.requests_per_minute:
            rpm = limits.requests_per_minute
            free["requests"] = (rpm - usage.requests, ("requests", "minute", rpm))
        if limits.max_in_flight:
            cap = limits.max_in_flight
            free["slots"] = (cap - held.slots, ("in_flight", None, cap))
        for (what, period), limit in _limits_by_window(policy).items():
            spent = (usage.tokens if what == "tokens" else usage.usd).get(period, 0.0)
            room = limit - spent - (held.tokens if what == "tokens" else held.usd)
            if room < free[what][0]:
                free[what] = (room, (what, period, limit))
        return free

    def _why(
        self,
        limit: tuple[str, Period | None, float],
        usage: Usage,
        policy: QuotaConfig,
        now: float,
        need: float,
    ) -> Refusal:
        what, period, cap = limit
        if what == "in_flight" or period is None:
            return Refusal("in_flight", None, cap, BLOCKED_RETRY_S)
        if need > cap:
            return Refusal(what, period, cap, window(now, period)[1] - now, too_large=True)
        if what == "requests":
            spent = float(usage.requests)
        else:
            spent = (usage.tokens if what == "tokens" else usage.usd).get(period, 0.0)
        # Spent alone leaves no room: until the window ends. Otherwise others' allowances
        # (returned within seconds) or in-flight reservations stand in the way.
        blocked_by_spend = spent + need > cap
        wait = window(now, period)[1] - now if blocked_by_spend else BLOCKED_RETRY_S
        if what == "requests" and policy.limits.requests_per_minute:
            wait = window(now, "minute")[1] - now
        return Refusal(what, period, cap, wait)

    def _grant(
        self, acc: _Account, granted: Amounts, refused: Refusal | None, held: Amounts, now: float
    ) -> Grant:
        left = window(now, "minute")[1] - now
        return Grant(granted, refused, acc.usage.amounts(held), acc.usage.requests, left)

    def _roll_minute(self, acc: _Account) -> None:
        """A holder's unused requests of a past minute are not returned into this one."""
        start = acc.usage.windows["minute"]
        for holder, minute in list(acc.minute.items()):
            if minute != start:
                del acc.minute[holder]

    def settle(self, holder: str, items: Iterable[Settlement], now: float) -> dict[str, Grant]:
        """Charge what `holder`'s ended requests spent and take back what it returns;
        an empty settlement keeps its allowances alive. Returns the usage of each
        account settled, so the holder's view of it stays fresh."""
        now = self._clock(now)
        self._heard(holder, now)
        touched: set[str] = set()
        for item in items:
            touched.add(item.account)
            acc = self._of(item.account, now)
            acc.usage.add(item.created_at, item.tokens, item.usd)
            back = item.released
            if back.requests and acc.minute.get(holder) == acc.usage.windows["minute"]:
                acc.usage.requests = max(0, acc.usage.requests - back.requests)
            held = acc.held.get(holder)
            if held is not None:
                left = held.minus(replace(back, requests=0))
                if left.empty():
                    del acc.held[holder]
                else:
                    acc.held[holder] = left
        return {account: self.snapshot(account, now) for account in touched}

    def _heard(self, holder: str, now: float) -> None:
        self._seen[holder] = now
        gone = [h for h, seen in self._seen.items() if now - seen > HOLDER_TTL_S]
        for h in gone:
            del self._seen[h]
            for acc in self._accounts.values():
                acc.held.pop(h, None)
                acc.minute.pop(h, None)

    def snapshot(self, account: str, now: float) -> Grant:
        """The account's usage, nothing granted."""
        now = self._clock(now)
        acc = self._of(account, now)
        return self._grant(acc, NOTHING, None, acc.total_held(), now)

    def evict(self, now: float) -> int:
        """Forget accounts idle for `IDLE_EVICT_S` that hold nothing; returns how many."""
        now = self._clock(now)
        idle = [
            name
            for name, acc in self._accounts.items()
            if not acc.held and now - acc.last_used > IDLE_EVICT_S
        ]
        for name in idle:
            del self._accounts[name]
        return len(idle)
