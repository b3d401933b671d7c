from __future__ import annotations

import math

import pytest

from routing.confidence import confidence

LOGPROBS = [-0.1, -0.2, -3.0, -0.05, -0.4]  # sorted: -3.0, -0.4, -0.2, -0.1, -0.05


def test_mean_logprob() -> None:
    assert confidence(LOGPROBS, "mean_logprob") == pytest.approx(-3.75 / 5)


def test_min_prob_is_probability_of_the_worst_token() -> None:
    assert confidence(LOGPROBS, "min_prob") == pytest.approx(math.exp(-3.0))


def test_quantile_interpolates_like_numpy() -> None:
    # q=0.1 over 5 values: position 0.4 between -3.0 and -0.4 -> -3.0 + 0.4 * 2.6
    assert confidence(LOGPROBS, "quantile", 0.1) == pytest.approx(-1.96)
    assert confidence(LOGPROBS, "quantile", 0.5) == pytest.approx(-0.2)
    assert confidence(LOGPROBS, "quantile", 0.0) == pytest.approx(-3.0)
    assert confidence(LOGPROBS, "quantile", 1.0) == pytest.approx(-0.05)


def test_one_outlier_moves_min_prob_more_than_the_mean() -> None:
    steady = [-0.1] * 20
    spiky = [-0.1] * 19 + [-5.0]
    assert confidence(spiky, "mean_logprob") > -0.4  # the mean barely notices
    assert confidence(spiky, "min_prob") < 0.01  # the minimum does
    assert confidence(steady, "min_prob") > 0.9


def test_empty_answer_is_never_confident() -> None:
    assert confidence([], "mean_logprob") == -math.inf
    assert confidence([], "quantile") == -math.inf
    assert confidence([], "min_prob") == 0.0


def test_bad_quantile() -> None:
    with pytest.raises(ValueError):
        confidence([-1.0], "quantile", 1.5)
