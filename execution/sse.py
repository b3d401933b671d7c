"""What a streaming cascade reads of a pool's SSE events: each generated token's logprob,
and whether the answer has ended.

A pool streams vLLM's own events (`data: {...}\\n\\n`); a cascade that decides mid-stream
asked for logprobs and reads them here, event by event, until it has enough tokens to
judge. Chat events carry `logprobs.content` (one entry per token), completion events
OpenAI's legacy `logprobs.token_logprobs`. One `json.loads` per event, only for the
first tokens of a cascade stream; a `route` stream never comes here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

__all__ = ["TokenReader"]

_DATA = "data: "
_DONE = "data: [DONE]"


@dataclass
class TokenReader:
    """Reads the first choice's token logprobs from events, in order."""

    logprobs: list[float] = field(default_factory=list)
    ended: bool = False  # a finish reason, [DONE] or an error was seen
    failed: bool = False  # an error event was seen

    def read(self, events: list[str]) -> None:
        for event in events:
            if not event.startswith(_DATA):
                continue
            if event.startswith(_DONE):
                self.ended = True
                continue
            try:
                payload = json.loads(event[len(_DATA) :])
            except ValueError:
                continue
            if "error" in payload:
                self.ended = self.failed = True
                continue
            for choice in payload.get("choices") or []:
                if choice.get("index", 0) != 0:
                    continue
                self._tokens(choice.get("logprobs"))
                if choice.get("finish_reason") is not None:
                    self.ended = True

    def _tokens(self, shown: object) -> None:
        if not isinstance(shown, dict):
            return
        content = shown.get("content")
        if isinstance(content, list):  # chat
            self.logprobs.extend(
                float(e["logprob"]) for e in content if isinstance(e, dict) and "logprob" in e
            )
            return
        legacy = shown.get("token_logprobs")
        if isinstance(legacy, list):  # completions
            self.logprobs.extend(float(lp) for lp in legacy if lp is not None)
