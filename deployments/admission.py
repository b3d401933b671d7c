"""How many requests the proxy edge lets through at once: an adaptive concurrency limit.

Under overload the expensive part of a refusal is getting it to where the answer is
known. A 429 from a pool costs Serve's proxy and the ingress several milliseconds of CPU
each (measured: ~170 requests/s through both on 2 cores, so at 2,000 clients every
refusal waited 8 s in line). The edge can refuse in microseconds, but only if it knows
when to: this limit learns it from the answers, the way TCP learns a window (AIMD):

- a 429 that says the pools (or the ingress) are full — it carries
  `x-switchyard-capacity: full` — drops the limit to 90% of what was in flight, at most
  once per round trip (only a request admitted after the last drop can cause the next
  one, so a burst of refusals counts once). Other answers do not count: a tenant's own
  rate limit or budget (429 `rate_limit_exceeded` / `insufficient_quota`) says nothing
  about capacity, and learning from it let one tenant hammering its limit shrink
  admission for everyone; a 503 says a replica died or is starting, and shrinking on it
  turned away requests for 8-12 s after an ingress replica was killed;
- every successful answer raises it by 1/limit, so it grows by about one per round
  trip of a full window and finds the pools' capacity again.

Pure: no I/O, no clock of its own (the caller passes `now`), unit-tested as arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["AdaptiveLimit"]


@dataclass
class AdaptiveLimit:
    limit: float
    minimum: int = 8
    maximum: int = 4096
    backoff: float = 0.9
    inflight: int = 0
    dropped_at: float = float("-inf")  # when the limit was last lowered

    def __post_init__(self) -> None:
        self.limit = float(min(max(self.limit, self.minimum), self.maximum))

    def admit(self) -> bool:
        return self.inflight < int(self.limit)

    def answered(self, status: int, admitted_at: float, now: float, *, full: bool) -> None:
        """Learn from the answer to a request admitted at `admitted_at`; `full`: the
        answer said the pools or the ingress are at capacity."""
        if status == 429 and full:
            if admitted_at > self.dropped_at:  # once per round trip
                self.limit = max(self.minimum, min(self.limit, self.inflight) * self.backoff)
                self.dropped_at = now
        elif 200 <= status < 300:
            self.limit = min(self.maximum, self.limit + 1 / self.limit)
