"""Answer confidence from the engine's own token logprobs.

Three methods, all computed from the logprob of each generated token:

    mean_logprob  average token logprob (<= 0); the classic cascade signal
    min_prob      probability of the least likely token (0..1); one bad token flags it
    quantile      a low quantile of token logprobs (the "Chow-Quantile" family of
                  Gupta et al., ICLR 2024): robust to one outlier, sensitive to a tail

An empty answer has no evidence of confidence and scores the lowest possible value, so
a cascade escalates it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

ConfidenceMethod = Literal["mean_logprob", "min_prob", "quantile"]


def confidence(logprobs: Sequence[float], method: ConfidenceMethod, quantile: float = 0.1) -> float:
    """Confidence of one answer; compare against a threshold in the method's units."""
    if not logprobs:
        return 0.0 if method == "min_prob" else -math.inf
    if method == "mean_logprob":
        return sum(logprobs) / len(logprobs)
    if method == "min_prob":
        return math.exp(min(logprobs))
    if method == "quantile":
        return _quantile(sorted(logprobs), quantile)
    raise ValueError(f"unknown confidence method {method!r}")


def _quantile(ordered: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default), without numpy on the hot path."""
    if not 0.0 <= q <= 1.0:
        raise ValueError("quantile must be within [0, 1]")
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)
