"""What the ledger keeps of a cascade's confidence: its value and what it was computed on
(`switchyard calibrate-cascade` calibrates starts and whole answers apart)."""

from __future__ import annotations

import pytest

from deployments.openai.inflight import InFlight, ledger_entry
from execution.executor import Answer, Outcome


@pytest.mark.parametrize(
    ("streamed", "confidence", "on"),
    [(True, -0.4, "start"), (False, -0.4, "answer"), (False, None, None), (True, None, None)],
)
def test_the_ledger_says_what_a_confidence_was_computed_on(
    streamed: bool, confidence: float | None, on: str | None
) -> None:
    flight = InFlight(id="chatcmpl-1", endpoint="chat", model_asked="auto")
    flight.outcome = Outcome(
        Answer(None, 0, 0), "small", "cascade", ["small"], confidence=confidence,
        streamed=streamed,
    )  # fmt: skip
    entry = ledger_entry(flight, "cascade", "ok", 0.5, None)
    assert (entry.confidence, entry.confidence_on) == (confidence, on)


def test_a_request_without_an_outcome_has_no_confidence() -> None:
    flight = InFlight(id="chatcmpl-2", endpoint="chat", model_asked="auto")
    entry = ledger_entry(flight, "route", "error", 0.1, None)
    assert (entry.confidence, entry.confidence_on) == (None, None)
