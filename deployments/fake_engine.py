"""A deterministic engine for tests: set its latency, answer, logprobs and failures.

A pool replica is Ray Serve LLM's `LLMServer`; given this engine
(`engine_cls=partial(FakeLLMEngine, options=..., pool=...)`) it runs without a model.
Like httpx's `MockTransport`, it lets every layer above the engine be tested exactly: the
answer is known word for word, so tests assert text, token counts, logprobs, tool calls
and errors instead of "something came back". It answers in the OpenAI JSON and SSE that
vLLM's server writes, built from vLLM's own response models, with vLLM's checks and
errors. It is never what a user runs.

Tokens are whitespace-separated words; a chat prompt is rendered as `role: content`
lines (plus the tools' JSON). Importing this module does not start Ray.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import random
import re
import time
from array import array
from collections.abc import AsyncGenerator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from ray.llm._internal.serve.core.configs.llm_config import DiskMultiplexConfig, LLMConfig
from ray.llm._internal.serve.core.configs.openai_api_models import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    ErrorInfo,
    ErrorResponse,
)
from ray.llm._internal.serve.core.engine.protocol import LLMEngine
from ray.llm._internal.serve.core.protocol import RawRequestInfo
from vllm.entrypoints.generate.base.protocol import (
    DeltaFunctionCall,
    DeltaMessage,
    DeltaToolCall,
    FunctionCall,
    ToolCall,
)
from vllm.entrypoints.openai.chat_completion.protocol import (
    ChatCompletionLogProb,
    ChatCompletionLogProbs,
    ChatCompletionLogProbsContent,
    ChatCompletionNamedToolChoiceParam,
    ChatCompletionResponseChoice,
    ChatCompletionResponseStreamChoice,
    ChatCompletionStreamResponse,
    ChatCompletionToolsParam,
    ChatMessage,
)
from vllm.entrypoints.openai.completion.protocol import (
    CompletionLogProbs,
    CompletionResponseChoice,
    CompletionResponseStreamChoice,
    CompletionStreamResponse,
)
from vllm.entrypoints.pooling.embed.protocol import EmbeddingResponseData
from vllm.entrypoints.serve.engine.protocol import UsageInfo

from deployments.fake_options import FakeEngineOptions
from deployments.fake_schema import minimal_instance

DONE = "data: [DONE]\n\n"
_FAILED = "Internal server error"  # vLLM's message for a request failing in its engine
INVALID_ARGUMENTS = '{"broken":'  # the arguments of a call under `tool_calls: invalid`


_Plan = tuple[list[list[str]], list[Any]]
"""An answer: the SSE events of each token (none for a whole response), then its end."""


@dataclass
class _Output:
    """One choice as generated: its tokens and the text the client sees."""

    tokens: list[str]
    text: str  # the tokens joined, cut at a stop string
    finish_reason: str
    stop_reason: str | None = None

    @property
    def steps(self) -> int:
        """Engine outputs it takes (an answer of no tokens still reports its end)."""
        return max(1, len(self.tokens))

    def piece(self, step: int) -> str:
        start = sum(len(token) for token in self.tokens[:step])
        return self.text[start : start + len(self.tokens[step])] if self.tokens else ""


class _Reject(Exception):
    """A request vLLM's server refuses before generating: its ErrorResponse."""

    def __init__(self, code: int, kind: str, message: str, param: str | None = None):
        super().__init__(message)
        info = ErrorInfo(message=message, type=kind, code=code, param=param)
        self.response = ErrorResponse(error=info)

    def plan(self) -> _Plan:
        return [], [self.response]


class FakeLLMEngine(LLMEngine):
    def __init__(
        self, llm_config: LLMConfig, options: FakeEngineOptions | None = None, pool: str = ""
    ) -> None:
        self.options = options or FakeEngineOptions()
        self.model = llm_config.model_id
        self.max_model_len = int(llm_config.engine_kwargs.get("max_model_len", 2048))
        self.reply = self.options.reply.format(pool=pool, model=self.model)
        self.aborted: list[str] = []  # request ids whose consumer left before the end
        self.finished: list[str] = []  # request ids answered in full (failed: neither)

    async def start(self) -> None:
        return None

    async def check_health(self) -> None:
        return None

    def routing_stats(self) -> dict[str, Any]:
        return {}

    async def resolve_lora(self, lora_model: DiskMultiplexConfig) -> None:
        raise NotImplementedError("the fake engine serves no LoRA adapters")

    async def reset_prefix_cache(self) -> None:
        return None

    # Each endpoint returns an async generator, as VLLMEngine's: SSE events or one response
    # object, or one ErrorResponse. Its answer is planned at once, then played at pace.

    def chat(  # type: ignore[override]
        self, request: ChatCompletionRequest, raw_request_info: RawRequestInfo | None = None
    ) -> AsyncGenerator[str | ChatCompletionResponse | ErrorResponse, None]:
        return self._play(request, self._chat)

    def completions(  # type: ignore[override]
        self, request: CompletionRequest, raw_request_info: RawRequestInfo | None = None
    ) -> AsyncGenerator[str | CompletionResponse | ErrorResponse, None]:
        return self._play(request, self._completions)

    def embeddings(  # type: ignore[override]
        self, request: EmbeddingRequest, raw_request_info: RawRequestInfo | None = None
    ) -> AsyncGenerator[EmbeddingResponse | ErrorResponse, None]:
        return self._play(request, self._embeddings)

    def transcriptions(  # type: ignore[override]
        self, request: Any, raw_request_info: RawRequestInfo | None = None
    ) -> AsyncGenerator[ErrorResponse, None]:
        """Not served, as vLLM's endpoints its model lacks; score and (de)tokenize alike."""
        message = "The fake engine serves chat, completions and embeddings only."
        return self._play(request, lambda _: _Reject(400, "invalid_request_error", message).plan())

    score = tokenize = detokenize = transcriptions

    def _chat(self, request: ChatCompletionRequest) -> _Plan:
        prompt = _render_chat(request.messages, request.tools)
        asked, param = request.max_completion_tokens, "max_completion_tokens"
        if asked is None:
            asked, param = request.max_tokens, "max_tokens"
        self._check(request.model)
        prompt_tokens = len(prompt.split())
        limit = self._limit(prompt_tokens, asked, param)
        source, tool = self._chat_source(request)
        out = self._generate(source, limit, request)
        n, rid, created = request.n or 1, f"chatcmpl-{request.request_id}", int(time.time())
        named = isinstance(request.tool_choice, ChatCompletionNamedToolChoiceParam)
        finish = out.finish_reason
        if tool is not None and not named and finish == "stop":
            finish = "tool_calls"  # as vLLM's: a named tool's call finishes with "stop"
        call_ids = [_call_id(rid, i) for i in range(n)]
        usage = _usage(prompt_tokens, n * len(out.tokens))
        if not request.stream:
            forced = named or request.tool_choice == "required"
            choices = [
                ChatCompletionResponseChoice(
                    index=i,
                    message=_chat_message(out.text, tool, call_ids[i], forced),
                    logprobs=self._chat_logprobs(out.tokens, request, 0),
                    finish_reason=finish,
                    stop_reason=out.stop_reason,
                )
                for i in range(n)
            ]
            response = ChatCompletionResponse(
                id=rid, created=created, model=self.model, choices=choices, usage=usage
            )
            return [[]] * out.steps, [response]
        include_usage, continuous = _usage_options(request)

        def chunk(index: int, delta: DeltaMessage, done: int, **choice: Any) -> str:
            data = ChatCompletionStreamResponse(
                id=rid,
                object="chat.completion.chunk",
                created=created,
                model=self.model,
                choices=[ChatCompletionResponseStreamChoice(index=index, delta=delta, **choice)],
            )
            if delta.role:  # vLLM's first chunk has them (null unless asked for)
                data.prompt_token_ids = data.prompt_text = None
            if continuous:
                data.usage = _usage(prompt_tokens, done, completion_tokens_details=None)
            return _sse(data)

        events: list[list[str]] = [[] for _ in range(out.steps)]
        role = DeltaMessage(role="assistant", content="")
        events[0] = [chunk(i, role, 0, logprobs=None, finish_reason=None) for i in range(n)]
        for step, i in itertools.product(range(out.steps), range(n)):
            delta = DeltaMessage(content=out.piece(step))
            if tool is not None:
                if step == 0:  # first the call's id and name, then its arguments
                    call = DeltaFunctionCall(name=tool, arguments="")
                    head = DeltaToolCall(id=call_ids[i], type="function", index=0, function=call)
                    head_delta = DeltaMessage(tool_calls=[head])
                    events[0].append(chunk(i, head_delta, 0, logprobs=None, finish_reason=None))
                arguments = DeltaFunctionCall(arguments=out.piece(step))
                delta = DeltaMessage(tool_calls=[DeltaToolCall(index=0, function=arguments)])
            end: dict[str, Any] = {"finish_reason": None}
            if step == out.steps - 1:
                end = {"finish_reason": finish, "stop_reason": out.stop_reason}
            logprobs = self._chat_logprobs(out.tokens[step : step + 1], request, step)
            done = min(step + 1, len(out.tokens))
            events[step].append(chunk(i, delta, done, logprobs=logprobs, token_ids=None, **end))
        final = ChatCompletionStreamResponse(
            id=rid,
            object="chat.completion.chunk",
            created=created,
            model=self.model,
            choices=[],
            usage=usage,
        )
        return events, [_sse(final, exclude_none=True)] * include_usage + [DONE]

    def _completions(self, request: CompletionRequest) -> _Plan:
        prompts = _prompts(request.prompt)
        self._check(request.model)
        limits = [self._limit(len(p.split()), request.max_tokens, "max_tokens") for p in prompts]
        source, shown, echo = self._structured(request), request.logprobs, bool(request.echo)
        outs = [self._generate(source, limit, request) for limit in limits]
        # choice `prompt_index * n + i` is the i-th answer to that prompt, as in vLLM
        slots = [(p, out) for p, out in zip(prompts, outs, strict=True) for _ in range(request.n)]
        rid, created = f"cmpl-{request.request_id}", int(time.time())
        steps = max(out.steps for out in outs)
        usage = _usage(sum(len(p.split()) for p in prompts), sum(len(o.tokens) for _, o in slots))
        if not request.stream:
            choices = [
                CompletionResponseChoice(
                    index=index,
                    text=(prompt if echo else "") + out.text,
                    logprobs=None
                    if shown is None
                    else self._completion_logprobs(prompt if echo else "", out.tokens, 0, shown, 0),
                    finish_reason=out.finish_reason,
                    stop_reason=out.stop_reason,
                )
                for index, (prompt, out) in enumerate(slots)
            ]
            response = CompletionResponse(
                id=rid, created=created, model=self.model, choices=choices, usage=usage
            )
            return [[]] * steps, [response]
        include_usage, continuous = _usage_options(request)
        events: list[list[str]] = [[] for _ in range(steps)]
        for index, (prompt, out) in enumerate(slots):
            offset = 0
            for step in range(out.steps):
                head, last = (prompt if echo and step == 0 else ""), step == out.steps - 1
                logprobs = None
                if shown is not None:
                    tokens = out.tokens[step : step + 1]
                    logprobs = self._completion_logprobs(head, tokens, step, shown, offset)
                    offset += sum(len(token) for token in logprobs.tokens)
                choice = CompletionResponseStreamChoice(
                    index=index,
                    text=head + out.piece(step),
                    logprobs=logprobs,
                    finish_reason=out.finish_reason if last else None,
                    stop_reason=out.stop_reason if last else None,
                    prompt_token_ids=None,
                    token_ids=None,
                )
                data = CompletionStreamResponse(
                    id=rid,
                    object="text_completion",
                    created=created,
                    model=self.model,
                    choices=[choice],
                )
                if continuous:
                    data.usage = _usage(len(prompt.split()), min(step + 1, len(out.tokens)))
                events[step].append(_sse(data))
        final = CompletionStreamResponse(
            id=rid,
            object="text_completion",
            created=created,
            model=self.model,
            choices=[],
            usage=usage,
        )
        return events, [_sse(final, exclude_none=True)] * include_usage + [DONE]

    def _embeddings(self, request: EmbeddingRequest) -> _Plan:
        messages = getattr(request, "messages", None)
        inputs = _prompts(getattr(request, "input", None))
        texts = [_render_chat(messages, None)] if messages else inputs
        self._check(request.model)
        for text in texts:
            self._limit(len(text.split()), None, "max_tokens", generating=False)
        encoding = request.encoding_format
        if encoding not in ("float", "base64"):
            raise _Reject(400, "BadRequestError", "The fake engine encodes float or base64.")
        dim = request.dimensions or self.options.embedding_dim
        tokens = sum(len(text.split()) for text in texts)
        response = EmbeddingResponse(
            id=f"embd-{request.request_id}",
            created=int(time.time()),
            model=self.model,
            data=[
                EmbeddingResponseData(index=i, embedding=_embedding(text, dim, encoding))
                for i, text in enumerate(texts)
            ],
            usage=UsageInfo(prompt_tokens=tokens, total_tokens=tokens),
        )
        return [[]], [response]

    async def _play(self, request: Any, plan: Callable[[Any], _Plan]) -> AsyncGenerator[Any, None]:
        """Plays the `plan` of a request at an engine's pace: its events of token j
        (SSE events; none for a whole response) after token j's latency, then its ending.
        With `fail_after_tokens` below the answer's length, vLLM's error follows that many
        tokens. Every step really awaits, so concurrent requests interleave. Records the
        request as finished, or as aborted when its consumer leaves first (vLLM aborts
        the request of a client that went away); a refused or failed one in neither."""
        try:
            events, ending = plan(request)
        except _Reject as reject:
            events, ending = reject.plan()
        fail, stream = self.options.fail_after_tokens, bool(getattr(request, "stream", False))
        failing = fail is not None and fail < len(events)
        if fail is not None and failing:
            events, error = [*events[:fail], []], _Reject(500, "InternalServerError", _FAILED)
            ending = (
                [_event(json.dumps(error.response.model_dump())), DONE]
                if stream
                else [error.response]
            )
        done = not events
        try:
            for step, step_events in enumerate(events):
                latency = self.options.first_token_latency_s
                await asyncio.sleep(self.options.token_latency_s if step else latency)
                done = step == len(events) - 1
                for event in step_events:
                    yield event
        finally:
            if not done:
                self.aborted.append(request.request_id)
            elif not failing and events:
                self.finished.append(request.request_id)
        for item in ending:
            yield item

    # -- what vLLM's server does around its engine ---------------------------------------

    def _check(self, model: str | None) -> None:
        """vLLM's first checks: the model's name, then whether the engine is alive."""
        if model and model != self.model:
            message = f"The model `{model}` does not exist. Valid aliases: {self.model}."
            raise _Reject(404, "NotFoundError", message, "model")
        if self.options.fail_requests:
            raise _Reject(500, "InternalServerError", _FAILED)

    def _limit(self, prompt: int, asked: int | None, param: str, generating: bool = True) -> int:
        """vLLM's context checks; the most tokens an answer may have (`asked`, reduced to
        what the context leaves)."""
        most = self.max_model_len
        if asked is not None and asked > most:
            message = f"{param}={asked} cannot be greater than max_model_len={most}. "
            raise _invalid(message + "Please request fewer output tokens.", param, asked)
        if prompt > most:
            message = (
                f"This model's maximum context length is {most} tokens. However, your prompt "
                f"contains {prompt} input tokens, which exceeds this limit even without any "
                "output tokens. Please reduce the length of the input prompt."
            )
            raise _invalid(message, "input_tokens", prompt)
        limit = min(most - prompt, most if asked is None else asked)
        if generating and limit < 1:
            raise _invalid(f"max_tokens must be at least 1, got {limit}.", "max_tokens", limit)
        return limit

    def _chat_source(self, request: ChatCompletionRequest) -> tuple[str, str | None]:
        """What the model writes, and the tool it calls with it (None: it is content)."""
        tool = _chosen_tool(request)
        if tool is None:
            return self._structured(request), None
        arguments = minimal_instance(tool.function.parameters or {"type": "object"})
        if self.options.tool_calls == "text":
            return json.dumps({"name": tool.function.name, "arguments": arguments}), None
        if self.options.tool_calls == "invalid":
            return INVALID_ARGUMENTS, tool.function.name
        return json.dumps(arguments), tool.function.name

    def _reply_to(self, request: ChatCompletionRequest | CompletionRequest) -> str:
        """`replies`' answer to what the last chat message contains, else `reply`."""
        if self.options.replies and isinstance(request, ChatCompletionRequest):
            last = request.messages[-1] if request.messages else {}
            content = last.get("content") if isinstance(last, dict) else None
            text = content if isinstance(content, str) else json.dumps(content)
            for needle, reply in self.options.replies.items():
                if needle in text:
                    return reply
        return self.reply

    def _structured(self, request: ChatCompletionRequest | CompletionRequest) -> str:
        """The answer under a JSON response_format or structured_outputs."""
        wanted = request.extract_structured_outputs()
        if wanted is None or (wanted.json is None and not wanted.json_object):
            return self._reply_to(request)
        if wanted.json is not None:
            schema = json.loads(wanted.json) if isinstance(wanted.json, str) else wanted.json
            answer = json.dumps(minimal_instance(schema))
        else:
            answer = json.dumps({"answer": self.reply})
        return answer if self.options.json_output == "valid" else f"Here is the JSON: {answer}"

    def _generate(
        self, source: str, limit: int, request: ChatCompletionRequest | CompletionRequest
    ) -> _Output:
        """The answer ends where vLLM's sampler ends it: at EOS (the end of `source`), at
        `limit` tokens ("length") or at a stop string; `ignore_eos` and `min_tokens` keep
        it going (here: `source` again)."""
        base = _words(source)
        wanted = limit if request.ignore_eos else max(len(base), request.min_tokens)
        tokens = [base[j % len(base)] for j in range(min(wanted, limit))] if base else []
        for j in range(len(base), len(tokens), len(base) or 1):
            tokens[j] = " " + tokens[j].lstrip()  # the answer again, after a space
        finish = "length" if base and (request.ignore_eos or wanted > limit) else "stop"
        text = "".join(tokens)
        stops = [request.stop] if isinstance(request.stop, str) else request.stop or []
        hits = [(text.index(stop) + len(stop), stop) for stop in stops if stop and stop in text]
        if not hits:
            return _Output(tokens, text, finish)
        end, stop = min(hits)  # the token completing the first stop string is the last
        count = next(j + 1 for j in range(len(tokens)) if len("".join(tokens[: j + 1])) >= end)
        cut = end if request.include_stop_str_in_output else end - len(stop)
        return _Output(tokens[:count], text[:cut], "stop", stop)

    def _logprob(self, position: int) -> float:
        return self.options.logprobs[position % len(self.options.logprobs)]

    def _chat_logprobs(
        self, tokens: list[str], request: ChatCompletionRequest, start: int
    ) -> ChatCompletionLogProbs | None:
        if not request.logprobs:
            return None
        shown, content = request.top_logprobs, []
        for position, token in enumerate(tokens, start):
            top = _top(token, self._logprob(position), shown)
            content.append(
                ChatCompletionLogProbsContent(
                    token=token,
                    logprob=self._logprob(position),
                    bytes=list(token.encode()),
                    top_logprobs=[
                        ChatCompletionLogProb(token=t, logprob=lp, bytes=list(t.encode()))
                        for t, lp in (top if shown == -1 else top[:shown])
                    ],
                )
            )
        return ChatCompletionLogProbs(content=content)

    def _completion_logprobs(
        self, echoed: str, tokens: list[str], start: int, shown: int, offset: int
    ) -> CompletionLogProbs:
        """The legacy shape; echoed prompt tokens first (the very first has no logprob)."""
        entries = [(t, None if j == 0 else self._logprob(j)) for j, t in enumerate(_words(echoed))]
        entries += [(t, self._logprob(j)) for j, t in enumerate(tokens, start)]
        offsets = [offset + sum(len(t) for t, _ in entries[:j]) for j in range(len(entries))]
        return CompletionLogProbs(
            text_offset=offsets,
            token_logprobs=[lp for _, lp in entries],
            tokens=[t for t, _ in entries],
            top_logprobs=[None if lp is None else dict(_top(t, lp, shown)) for t, lp in entries],
        )


def _invalid(message: str, param: str, value: int) -> _Reject:
    """vLLM's `VLLMValidationError`, as its server reports it."""
    return _Reject(400, "BadRequestError", f"{message} (parameter={param}, value={value})", param)


def _event(data: str) -> str:
    return f"data: {data}\n\n"


def _sse(chunk: BaseModel, exclude_none: bool = False) -> str:
    """A stream chunk as vLLM's server writes it: the fields it set, as one SSE event."""
    return _event(chunk.model_dump_json(exclude_unset=True, exclude_none=exclude_none))


def _words(text: str) -> list[str]:
    """Tokens: each word with the whitespace before it."""
    return re.findall(r"\s*\S+", text)


def _top(token: str, logprob: float, shown: int) -> list[tuple[str, float]]:
    """A step's most likely tokens: the chosen one, then made-up, less likely ones."""
    return [(token, logprob)] + [(f"{token}~{k}", logprob - k) for k in range(1, max(shown, 1))]


def _usage(prompt: int, completion: int, **details: Any) -> UsageInfo:
    total = prompt + completion
    return UsageInfo(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=total, **details
    )


def _usage_options(request: ChatCompletionRequest | CompletionRequest) -> tuple[bool, bool]:
    """`stream_options`: usage in a last chunk; also in every chunk (needs the former)."""
    options = request.stream_options
    usage = bool(options and options.include_usage)
    return usage, usage and bool(options and options.continuous_usage_stats)


def _render_chat(messages: Iterable[Any], tools: list[ChatCompletionToolsParam] | None) -> str:
    lines = []
    for message in messages:
        content = message.get("content")
        if content is not None and not isinstance(content, str):
            content = "\n".join(  # as vLLM: a plain string part is text
                part if isinstance(part, str) else part.get("text", "")
                for part in content
                if isinstance(part, str) or part.get("type") == "text"
            )
        lines.append(f"{message.get('role')}: {content or ''}")
        if message.get("tool_calls"):
            lines.append(json.dumps(list(message["tool_calls"])))
    if tools:
        lines.append(json.dumps([tool.model_dump() for tool in tools]))
    return "\n".join(lines)


def _prompts(prompt: str | list[str] | list[int] | list[list[int]] | None) -> list[str]:
    """Completion prompts (and embedding inputs); token ids are written as words.

    An empty list is refused with vLLM's own message (its renderer's ValueError, a 400)."""
    if prompt is None or isinstance(prompt, str):
        return [prompt or ""]
    items: list[Any] = prompt
    if not items:  # as vLLM's renderer refuses it
        raise _Reject(400, "BadRequestError", "You must pass at least one prompt")
    if isinstance(items[0], int):
        items = [items]
    return [p if isinstance(p, str) else " ".join(map(str, p)) for p in items]


def _chosen_tool(request: ChatCompletionRequest) -> ChatCompletionToolsParam | None:
    """The tool the fake calls: the named one, else the first; none when it may choose
    (`auto`) and the conversation ends with a tool's result, which it then answers in
    text, so an agent loop ends as it does with a real model."""
    if not request.tools or request.tool_choice == "none":
        return None
    if isinstance(request.tool_choice, ChatCompletionNamedToolChoiceParam):
        name = request.tool_choice.function.name
        return next((tool for tool in request.tools if tool.function.name == name), None)
    last = request.messages[-1] if request.messages else {}
    if request.tool_choice in (None, "auto") and last.get("role") == "tool":
        return None
    return request.tools[0]


def _chat_message(text: str, tool: str | None, call_id: str, forced: bool) -> ChatMessage:
    if tool is None:
        return ChatMessage(role="assistant", content=text)
    call = ToolCall(id=call_id, function=FunctionCall(name=tool, arguments=text))
    # as vLLM's: a forced call (required, named) has empty content, an automatic one none
    return ChatMessage(role="assistant", content="" if forced else None, tool_calls=[call])


def _call_id(response_id: str, choice: int) -> str:
    """vLLM's tool call id shape (`chatcmpl-tool-` and 16 hex digits), deterministic."""
    return "chatcmpl-tool-" + hashlib.sha256(f"{response_id}:{choice}".encode()).hexdigest()[:16]


def _embedding(text: str, dim: int, encoding: str) -> list[float] | str:
    """A unit vector seeded by the text: equal texts, equal vectors."""
    rng = random.Random(hashlib.sha256(text.encode()).digest())
    vector = [rng.gauss(0.0, 1.0) for _ in range(dim)]
    norm = sum(x * x for x in vector) ** 0.5 or 1.0
    vector = [x / norm for x in vector]
    if encoding == "base64":  # float32 in native byte order, as vLLM's default
        return base64.b64encode(array("f", vector).tobytes()).decode()
    return vector
