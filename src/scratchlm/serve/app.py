"""The FastAPI app: OpenAI-compatible completions and chat completions (streamed as server-sent events),
model list, health, and the chat page at `/`.

Every error is a JSON body in OpenAI's shape, {"error": {"message", "type", "param", "code"}}: 400 for a
malformed or invalid request (bad JSON, unknown fields, a prompt or max_tokens beyond the context), 404 for
an unknown model or path, 503 when the server is at capacity. A streaming client that disconnects has its
request aborted, which frees its engine slot.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from scratchlm.inference.engine import Completion, Engine, EngineConfig, SamplingParams, StepOutput, request_seed
from scratchlm.serve.chat_format import format_chat
from scratchlm.serve.schemas import ChatRequest, CompletionRequest, SamplingFields
from scratchlm.serve.worker import EngineWorker, Handle, QueueFull
from scratchlm.tokenizer import Tokenizer

EOT = "<|endoftext|>"


@dataclass(kw_only=True)
class ServeConfig:
    host: str = "127.0.0.1"  # loopback only unless asked: the API has no authentication
    port: int = 8000
    max_queue: int = 64  # requests waiting for a slot; more get 503
    model_name: str = "scratchlm"
    shutdown_timeout: float = 30.0  # seconds in-flight requests get to finish on SIGINT/SIGTERM

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if self.max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {self.max_queue}")


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.body = status, {"error": {"message": message, "type": type_, "param": param, "code": code}}


def build_app(model: torch.nn.Module, tokenizer: Tokenizer, engine_config: EngineConfig | None = None,
              config: ServeConfig | None = None) -> FastAPI:
    config = config or ServeConfig()
    worker = EngineWorker(Engine(model, engine_config, tokenizer), config.max_queue)
    return create_app(worker, tokenizer, config)


def create_app(worker: EngineWorker, tokenizer: Tokenizer, config: ServeConfig) -> FastAPI:
    """The app; its lifespan starts the worker thread and stops it (after uvicorn drained the requests)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker.start()
        yield
        worker.stop()

    app = FastAPI(title="scratchlm", lifespan=lifespan)
    app.state.worker = worker
    service = _Service(worker, tokenizer, config)
    _add_error_handlers(app)

    @app.get("/", response_class=HTMLResponse)
    async def chat_page() -> str:
        return resources.files("scratchlm.serve").joinpath("static/chat.html").read_text(encoding="utf-8")

    @app.get("/health")
    async def health() -> dict:
        engine = worker.engine
        return {"status": "ok", "running": engine.num_running, "waiting": engine.num_waiting,
                "in_flight": worker.in_flight, "max_batch": engine.config.max_slots,
                "max_queue": worker.capacity - engine.config.max_slots}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": config.model_name, "object": "model", "created": service.created,
                                            "owned_by": "scratchlm", "max_model_len": worker.engine.max_len}]}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest) -> Any:
        service.check_model(body.model)
        if isinstance(body.prompt, str):
            prompt = service.encode(body.prompt, "prompt")
        else:
            prompt = service.check_ids(body.prompt)
        params = service.params(body, len(prompt), body.max_tokens, extra_stop=(), param="prompt",
                                top_logprobs=body.logprobs or 0)
        return await service.respond(body, prompt, params, _CompletionFormat(service, body.logprobs))

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest) -> Any:
        service.check_model(body.model)
        try:
            text, stop = format_chat([m.model_dump() for m in body.messages], service.tokenizer)
        except ValueError as e:
            raise APIError(400, str(e), param="messages") from None
        prompt = service.encode(text, "messages")
        if body.top_logprobs and not body.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        params = service.params(body, len(prompt), body.max_completion_tokens or body.max_tokens, stop, "messages",
                                top_logprobs=body.top_logprobs or 0)
        return await service.respond(body, prompt, params, _ChatFormat(service, body.logprobs))

    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError) -> JSONResponse:
        return JSONResponse(e.body, status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        problems = []
        for err in e.errors():
            where = ".".join(str(p) for p in err["loc"] if p != "body")
            problems.append(f"{where}: {err['msg']}" if where else err["msg"])
        first = e.errors()[0]["loc"] if e.errors() else ()
        param = ".".join(str(p) for p in first if p != "body") or None
        return JSONResponse(APIError(400, "; ".join(problems), param=param).body, status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        code = "not_found" if e.status_code == 404 else None
        return JSONResponse(APIError(e.status_code, str(e.detail), code=code).body, status_code=e.status_code)

    @app.exception_handler(QueueFull)
    async def full(request: Request, e: QueueFull) -> JSONResponse:
        return JSONResponse(APIError(503, str(e), "server_overloaded", code="queue_full").body, status_code=503)


class _Service:
    """Turns validated requests into engine requests and engine outputs into OpenAI responses."""

    def __init__(self, worker: EngineWorker, tokenizer: Tokenizer, config: ServeConfig):
        self.worker, self.tokenizer, self.config = worker, tokenizer, config
        self.max_len = worker.engine.max_len
        self.eot = tokenizer.special_ids.get(EOT)
        self.longest_token = max(len(b) for b in tokenizer.vocab.values())
        self.created = int(time.time())

    def check_model(self, name: str) -> None:
        if name != self.config.model_name:
            raise APIError(404, f"the model {name!r} does not exist; this server serves {self.config.model_name!r}",
                           param="model", code="model_not_found")

    def encode(self, text: str, param: str) -> list[int]:
        # a text of more bytes than max_len tokens can hold cannot fit: refuse before spending time encoding it
        if len(text.encode("utf-8")) > self.max_len * self.longest_token:
            raise APIError(400, f"the {param} is longer than this model's context of {self.max_len} tokens",
                           param=param, code="context_length_exceeded")
        ids = self.tokenizer.encode(text)
        if not ids:
            raise APIError(400, f"the {param} is empty", param=param)
        return ids

    def check_ids(self, ids: list[int]) -> list[int]:
        vocab = self.worker.engine.vocab_size
        if not ids or min(ids) < 0 or max(ids) >= vocab:
            raise APIError(400, f"a token-id prompt needs at least one id, each in [0, {vocab})", param="prompt")
        return ids

    def params(self, body: SamplingFields, prompt_len: int, max_tokens: int | None, extra_stop: tuple[str, ...],
               param: str, top_logprobs: int = 0) -> SamplingParams:
        room = self.max_len - prompt_len
        requested = max_tokens if max_tokens is not None else room
        if room < 1 or requested > room:
            raise APIError(400, f"This model's maximum context length is {self.max_len} tokens. However, you "
                                f"requested {prompt_len + max(requested, 1)} tokens ({prompt_len} in the {param}, "
                                f"{max(requested, 1)} for the completion). Please reduce the length of the "
                                f"{param} or of max_tokens.",
                           param="max_tokens" if room >= 1 else param, code="context_length_exceeded")
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if any(not s for s in stop):
            raise APIError(400, "stop strings must be non-empty", param="stop")
        if body.stream and body.n > 1:
            raise APIError(400, "stream=true supports n=1 only", param="n")
        return SamplingParams(max_tokens=requested, temperature=body.temperature, top_k=body.top_k,
                              top_p=body.top_p if body.top_p < 1 else None, repetition_penalty=body.repetition_penalty,
                              stop=tuple(stop) + tuple(extra_stop), seed=body.seed, top_logprobs=top_logprobs,
                              stop_token_ids=() if self.eot is None else (self.eot,))

    def token_text(self, token: int) -> str:
        return self.tokenizer.decode_bytes([token]).decode("utf-8", errors="replace")

    async def respond(self, body: SamplingFields, prompt: list[int], params: SamplingParams,
                      fmt: _CompletionFormat | _ChatFormat) -> Any:
        """Submit n requests (seeds: request_seed(seed, i)), then stream or collect them."""
        each = [params if params.seed is None or body.n == 1 else
                dataclasses.replace(params, seed=request_seed(params.seed, i)) for i in range(body.n)]
        handles: list[Handle] = []
        try:
            for p in each:
                handles.append(self.worker.submit(prompt, p))
        except QueueFull:
            for h in handles:
                self.worker.cancel(h)
            raise
        meta = {"id": f"{fmt.prefix}-{uuid.uuid4().hex}", "created": int(time.time()), "model": self.config.model_name}
        usage = body.stream_options is not None and body.stream_options.include_usage
        if body.stream:
            return StreamingResponse(self._stream(handles[0], len(prompt), meta, fmt, usage),
                                     media_type="text/event-stream")
        try:
            done = [await self._collect(h, prompt) for h in handles]
        except QueueFull as e:  # the server began shutting down
            raise APIError(503, str(e), "server_overloaded") from None
        except RuntimeError as e:  # the engine failed
            raise APIError(500, str(e), "server_error") from None
        finally:
            for h in handles:
                self.worker.cancel(h)
        completion_tokens = sum(len(c.token_ids) for c in done)
        return {**meta, "object": fmt.object, "choices": [fmt.choice(i, c) for i, c in enumerate(done)],
                "usage": _usage(len(prompt), completion_tokens)}

    @staticmethod
    async def _collect(handle: Handle, prompt: list[int]) -> Completion:
        completion = Completion(-1, prompt)
        while not completion.finish_reason:
            completion.add(await handle.next())
        return completion

    async def _stream(self, handle: Handle, prompt_len: int, meta: dict, fmt: _CompletionFormat | _ChatFormat,
                      usage: bool) -> AsyncIterator[str]:
        """Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`. The `finally` runs when the
        client disconnects too (the response task is cancelled): the request is aborted and its slot freed."""
        chunk = {**meta, "object": fmt.chunk_object}
        generated = 0
        try:
            for first in fmt.opening():
                yield _sse({**chunk, "choices": [first]})
            while True:
                try:
                    out = await handle.next()
                except (QueueFull, RuntimeError) as e:  # shutting down, or the engine failed
                    yield _sse(APIError(503 if isinstance(e, QueueFull) else 500, str(e), "server_error").body)
                    break
                generated += len(out.token_ids)
                if out.text or (fmt.logprobs and out.token_ids):
                    yield _sse({**chunk, "choices": [fmt.delta(out)]})
                if out.finished:
                    yield _sse({**chunk, "choices": [fmt.closing(out.finish_reason)]})
                    if usage:
                        yield _sse({**chunk, "choices": [], "usage": _usage(prompt_len, generated)})
                    break
            yield "data: [DONE]\n\n"
        finally:
            self.worker.cancel(handle)


class _CompletionFormat:
    prefix, object, chunk_object = "cmpl", "text_completion", "text_completion"

    def __init__(self, service: _Service, logprobs: int | None):
        self.service, self.logprobs = service, logprobs is not None

    def _logprobs(self, out: Completion | StepOutput) -> dict | None:
        if not self.logprobs:
            return None
        text = self.service.token_text
        tokens = [text(t) for t in out.token_ids]
        offsets = [sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
        top = [{text(t): lp for t, lp in alternatives} for alternatives in out.top_logprobs] or None
        return {"tokens": tokens, "token_logprobs": out.logprobs, "top_logprobs": top, "text_offset": offsets}

    def choice(self, index: int, c: Completion) -> dict:
        return {"index": index, "text": c.text, "logprobs": self._logprobs(c), "finish_reason": c.finish_reason}

    def opening(self) -> list[dict]:
        return []

    def delta(self, out: StepOutput) -> dict:
        return {"index": 0, "text": out.text, "logprobs": self._logprobs(out), "finish_reason": None}

    def closing(self, reason: str) -> dict:
        return {"index": 0, "text": "", "logprobs": None, "finish_reason": reason}


class _ChatFormat:
    prefix, object, chunk_object = "chatcmpl", "chat.completion", "chat.completion.chunk"

    def __init__(self, service: _Service, logprobs: bool):
        self.service, self.logprobs = service, logprobs

    def _entry(self, token: int, logprob: float) -> dict:
        return {"token": self.service.token_text(token), "logprob": logprob,
                "bytes": list(self.service.tokenizer.decode_bytes([token]))}

    def _logprobs(self, out: Completion | StepOutput) -> dict | None:
        if not self.logprobs:
            return None
        alternatives = out.top_logprobs or [[] for _ in out.token_ids]
        return {"content": [{**self._entry(t, lp), "top_logprobs": [self._entry(a, alp) for a, alp in top]}
                            for t, lp, top in zip(out.token_ids, out.logprobs, alternatives, strict=True)]}

    def choice(self, index: int, c: Completion) -> dict:
        return {"index": index, "message": {"role": "assistant", "content": c.text},
                "logprobs": self._logprobs(c), "finish_reason": c.finish_reason}

    def opening(self) -> list[dict]:
        return [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}]

    def delta(self, out: StepOutput) -> dict:
        return {"index": 0, "delta": {"content": out.text}, "logprobs": self._logprobs(out),
                "finish_reason": None}

    def closing(self, reason: str) -> dict:
        return {"index": 0, "delta": {}, "logprobs": None, "finish_reason": reason}


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"
