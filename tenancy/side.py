"""The cheap limit on endpoints that generate nothing: `/v1/route`, `/v1/classify`,
`/v1/metrics`, `/v1/budget`, `/v1/feedback`.

They spend no tokens and no budget, so they do not go through the quota keeper; but each
costs the ingress real work (an embedding, a database query), so one caller must not be
able to call them without end. A token bucket per caller (its tenant; one shared bucket
for anonymous callers), per ingress replica, refilled at `per_minute`. Memory is bounded:
at most `max_callers` buckets, the least recently used dropped first (a dropped bucket
was refilling anyway; the tenant names reaching here are bounded too, see
`deployments.openai.wishes`).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable

from core.errors import RateLimitedError

ANONYMOUS = ""


class SideCalls:
    def __init__(
        self,
        per_minute: int,
        *,
        max_callers: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_minute = per_minute
        self.max_callers = max_callers
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, when

    def take(self, caller: str | None) -> None:
        """One call by `caller` (a tenant, or None), or a 429 `rate_limit_exceeded`."""
        key = caller or ANONYMOUS
        now = self.clock()
        rate = self.per_minute / 60.0
        tokens, when = self._buckets.pop(key, (float(self.per_minute), now))
        tokens = min(float(self.per_minute), tokens + (now - when) * rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            wait = math.ceil((1.0 - tokens) / rate)
            raise RateLimitedError(
                "calls to endpoints that generate nothing", self.per_minute, wait
            )
        self._buckets[key] = (tokens - 1.0, now)
        while len(self._buckets) > self.max_callers:
            self._buckets.popitem(last=False)

    def __len__(self) -> int:
        return len(self._buckets)
