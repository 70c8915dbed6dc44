"""The OpenAI-compatible HTTP API over one loaded model (Starlette routes, sse-starlette streams).

    GET  /health                 model loaded, RSS, queue depth, slots (no key needed: for probes)
    GET  /metrics                Prometheus text: requests, queue, slots, tokens, latency histograms (metrics.py)
    GET  /v1/models[/{id}]       the one model
    POST /v1/chat/completions    messages -> the model's chat template -> generation (SSE stream or one JSON)
    POST /v1/completions         raw prompt -> generation

Every error is OpenAI's ``{"error": {...}}`` JSON with its status; nothing a client sends stops the server.
The event loop only moves bytes: parsing, the chat template and tokenizing run on preparation threads
(worker.Preparer), generation on the worker thread (one request at a time: worker.Worker; with a GGUF
loaded for N > 1 sequences, N at once: slots.BatchWorker), so /health answers while either is busy. Host and
Origin are checked before any route (guard.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psutil
from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from edge_run.core.errors import ClusterError, EdgeRunError
from edge_run.runtime.backends import Backend, GenerationParams, GenerationResult
from edge_run.runtime.serve.guard import AccessGuard, AccessPolicy
from edge_run.runtime.serve.metrics import JobClock, Metrics
from edge_run.runtime.serve.schema import (
    MAX_BODY_BYTES,
    MAX_MESSAGES,
    ApiError,
    ChatRequest,
    CompletionRequest,
    SamplingRequest,
    parse_chat,
    parse_completion,
    parse_json,
)
from edge_run.runtime.serve.slots import BatchWorker
from edge_run.runtime.serve.worker import Job, Preparer, QueueFull, ShuttingDown, Worker

SHUTDOWN_GRACE_S = 5.0  # how long a stream may take to end after shutdown began (it ends within one token)
PREPARE_THREADS = 2  # requests parsed / rendered / tokenized at once; more wait (up to the queue size)
FINISH_REASONS = {"stop": "stop", "length": "length", "cancelled": "length"}  # cut short = truncated


@dataclass
class ServerConfig:
    model_id: str
    api_key: str | None = None
    max_waiting: int = 16
    max_body_bytes: int = MAX_BODY_BYTES
    access: AccessPolicy = field(default_factory=lambda: AccessPolicy(bound="127.0.0.1"))


class ServerState:
    def __init__(self, backend: Backend, config: ServerConfig) -> None:
        self.backend = backend
        self.config = config
        self.worker: Worker | BatchWorker
        if getattr(backend, "n_seq", 1) > 1:
            self.worker = BatchWorker(backend, config.max_waiting)  # type: ignore[arg-type]
        else:
            self.worker = Worker(backend, config.max_waiting)
        self.metrics = Metrics()
        self.preparer = Preparer(PREPARE_THREADS, config.max_waiting)
        # compared as digests: constant time whatever the header's length or bytes
        self._key_digest = hashlib.sha256(config.api_key.encode()).digest() if config.api_key else None
        self.created = int(time.time())
        self.process = psutil.Process()

    # -- checks -----------------------------------------------------------------------------------
    def check_auth(self, request: Request) -> None:
        if self._key_digest is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        digest = hashlib.sha256(token.strip().encode("latin-1")).digest()  # headers arrive as latin-1
        if not hmac.compare_digest(digest, self._key_digest) or scheme.lower() != "bearer":
            raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer KEY'", "invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})

    def check_model(self, model: str) -> None:
        if model != self.config.model_id:
            shown = model if len(model) <= 80 else model[:80] + "..."
            raise ApiError(404, f"the model '{shown}' does not exist; this server has '{self.config.model_id}'",
                           "model_not_found", "model")

    async def read_body(self, request: Request) -> bytes:
        """The raw body of a JSON POST: Content-Type application/json (a browser cannot send that cross-site
        without a preflight), at most max_body_bytes."""
        media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media_type != "application/json":
            shown = media_type[:60] or "none"
            raise ApiError(415, f"the request body must be sent as 'Content-Type: application/json' (got {shown})",
                           "unsupported_media_type")
        limit = self.config.max_body_bytes
        length = request.headers.get("content-length", "")
        if _DIGITS.fullmatch(length) and int(length) > limit:
            raise ApiError(413, f"the request body is {int(length)} bytes; the limit is {limit}",
                           "request_too_large")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"the request body is over the limit of {limit} bytes", "request_too_large")
            chunks.append(chunk)
        return b"".join(chunks)

    def params(self, req: SamplingRequest, n_prompt: int) -> GenerationParams:
        n_ctx = self.backend.n_ctx
        room = n_ctx - n_prompt
        if room <= 0 or (req.max_tokens is not None and req.max_tokens > room):
            wanted = f" + {req.max_tokens} to generate" if req.max_tokens is not None else ""
            raise ApiError(400, f"the prompt has {n_prompt} tokens{wanted}, but the context holds {n_ctx} tokens; "
                           "shorten the messages or lower max_tokens", "context_length_exceeded",
                           "max_tokens" if room > 0 else "messages")
        return GenerationParams(max_tokens=req.max_tokens or room, temperature=req.temperature, top_p=req.top_p,
                                seed=req.seed, stop=req.stop)

    def enqueue(self, tokens: list[int], params: GenerationParams) -> Job:
        job = Job(tokens=tokens, params=params, loop=asyncio.get_running_loop(), metrics=self.metrics)
        try:
            self.worker.submit(job)
        except QueueFull as e:
            self.metrics.ended(job.clock, "rejected")
            raise ApiError(503, f"the server is busy ({self.worker.max_waiting} requests waiting); retry later",
                           "queue_full", type_="server_error", headers={"Retry-After": str(e.retry_after_s)}) from e
        except ShuttingDown as e:
            self.metrics.ended(job.clock, "shutdown")
            raise _shutting_down() from e
        return job

    async def prepare(self, fn: Callable[[bytes], T], raw: bytes) -> T:
        """``fn(raw)`` on a preparation thread: the event loop never parses, renders or tokenizes."""
        try:
            return await self.preparer.run(fn, raw)
        except QueueFull as e:
            self.metrics.ended(JobClock(), "rejected")
            raise ApiError(503, "the server is busy preparing other requests; retry later", "queue_full",
                           type_="server_error", headers={"Retry-After": str(e.retry_after_s)}) from e
        except ShuttingDown as e:
            raise _shutting_down() from e

    def prepare_chat(self, raw: bytes) -> tuple[ChatRequest, list[int]]:
        """(preparation thread) The request checked, its messages rendered with the chat template and tokenized;
        at most one message per context token (each costs at least one), the prompt checked against the
        context afterwards (``params``)."""
        req = parse_chat(parse_json(raw), min(MAX_MESSAGES, self.backend.n_ctx))
        self.check_model(req.model)
        return req, self._tokens("messages", self.backend.chat_prompt_messages, req.messages)

    def prepare_completion(self, raw: bytes) -> tuple[CompletionRequest, list[int]]:
        req = parse_completion(parse_json(raw))
        self.check_model(req.model)
        return req, self._tokens("prompt", self.backend.tokenize, req.prompt, True)

    def _tokens(self, param: str, fn: Callable[..., list[int]], *args: Any) -> list[int]:
        if self.preparer.closing:  # the model is about to be closed
            raise ShuttingDown
        try:
            return fn(*args)
        except EdgeRunError as e:  # e.g. a chat template refusing the conversation (roles must alternate)
            raise ApiError(400, e.one_line(), "invalid_prompt", param) from e

    def close(self) -> None:
        """Shutdown began (maybe in a signal handler): no new work, pending requests end with 503."""
        self.preparer.close()
        self.worker.close()

    def health(self) -> dict[str, Any]:
        report = {"status": "ok", "model": self.config.model_id, "model_loaded": True,
                  "rss_mib": round(self.process.memory_info().rss / 2**20, 1), "queue_depth": self.worker.queue_depth,
                  "generating": self.worker.busy, "completed": self.worker.completed, "n_ctx": self.backend.n_ctx}
        if isinstance(self.worker, BatchWorker):
            active, total = self.worker.slots
            report["slots"] = {"active": active, "total": total}
        cluster_health = getattr(self.backend, "cluster_health", None)
        if cluster_health is not None:  # serve --cluster: which worker is gone (runtime/cluster/recover.py)
            report["cluster"] = cluster_health()
            report["status"] = report["cluster"]["status"]
        return report

    def metrics_text(self) -> str:
        active, total = self.worker.slots if isinstance(self.worker, BatchWorker) else (int(self.worker.busy), 1)
        draft_counts = getattr(self.worker if isinstance(self.worker, BatchWorker) else self.backend, "draft_counts",
                               None)
        drafted, accepted = draft_counts() if draft_counts is not None else (0, 0)
        return self.metrics.render({
            "queue_depth": ("Requests waiting for a slot.", self.worker.queue_depth),
            "slots_active": ("Slots generating now.", active),
            "slots_total": ("Slots (serve --parallel).", total),
            "draft_tokens_total": ("Draft tokens evaluated by speculative decoding.", drafted),
            "draft_tokens_accepted_total": ("Draft tokens kept (equal to the model's own).", accepted),
            "draft_acceptance_ratio": ("Kept / evaluated draft tokens (0 without drafts).",
                                       accepted / drafted if drafted else 0.0),
            "process_resident_memory_bytes": ("Resident set size.", self.process.memory_info().rss),
        })

    def model_card(self) -> dict[str, Any]:
        return {"id": self.config.model_id, "object": "model", "created": self.created, "owned_by": "edge-run"}


_DIGITS = re.compile(r"[0-9]{1,20}")
T = TypeVar("T")


def _shutting_down() -> ApiError:
    return ApiError(503, "the server is shutting down", "shutting_down", type_="server_error",
                    headers={"Retry-After": "5"})


def _usage(result: GenerationResult | None, n_prompt: int) -> dict[str, Any]:
    completion = result.completion_tokens if result else 0
    cached = result.cached_tokens if result else 0
    return {"prompt_tokens": n_prompt, "completion_tokens": completion, "total_tokens": n_prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


def _finish(result: GenerationResult | None) -> str:
    return FINISH_REASONS.get(result.finish_reason, "stop") if result else "length"


async def _watch_disconnect(request: Request, state: ServerState, job: Job) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            state.worker.cancel(job)
            job.emit("done", None)  # wakes the waiting handler if the job never started
            return


async def _collect(request: Request, state: ServerState, job: Job) -> tuple[str, GenerationResult | None]:
    """Wait for a non-streamed job; a client that leaves cancels it."""
    watcher = asyncio.create_task(_watch_disconnect(request, state, job))
    parts: list[str] = []
    try:
        while True:
            kind, value = await job.events.get()
            if kind == "text":
                parts.append(value)
            elif kind == "done":
                return "".join(parts), value
            else:
                raise _job_error(value)
    finally:
        watcher.cancel()


def _job_error(error: Exception) -> ApiError:
    if isinstance(error, ShuttingDown):
        return _shutting_down()
    if isinstance(error, ClusterError):  # serve --cluster: a worker was lost; the next request reconnects
        return ApiError(503, error.one_line(), "cluster_unavailable", type_="server_error",
                        headers={"Retry-After": "5"})
    if isinstance(error, EdgeRunError):
        return ApiError(400, error.one_line(), "invalid_request")
    return ApiError(500, f"internal error ({type(error).__name__}: {error})", "internal_error", type_="server_error")


async def _events(state: ServerState, job: Job, chunk: Callable[..., dict[str, Any]], first: dict[str, Any] | None,
                  include_usage: bool) -> AsyncIterator[dict[str, str]]:
    """SSE events of one streamed job: chunks, the final chunk, usage if asked, then [DONE]."""
    finished = False
    try:
        if first is not None:
            yield {"data": json.dumps(first)}
        while True:
            kind, value = await job.events.get()
            if kind == "text":
                yield {"data": json.dumps(chunk(value, None))}
            elif kind == "done":
                yield {"data": json.dumps(chunk(None, _finish(value)))}
                if include_usage:
                    yield {"data": json.dumps({**chunk(None, None), "choices": [],
                                               "usage": _usage(value, len(job.tokens))})}
                break
            else:
                yield {"data": json.dumps(_job_error(value).body())}
                break
        finished = True
        yield {"data": "[DONE]"}
    finally:
        if not finished:  # the client went away (or the response was torn down): free the worker
            state.worker.cancel(job)


def _sse(events: AsyncIterator[dict[str, str]]) -> EventSourceResponse:
    return EventSourceResponse(events, sep="\n", ping=15, shutdown_grace_period=SHUTDOWN_GRACE_S)


def build_app(state: ServerState) -> ASGIApp:
    async def health(request: Request) -> Response:
        return JSONResponse(state.health())

    async def metrics(request: Request) -> Response:
        return PlainTextResponse(state.metrics_text(), media_type="text/plain; version=0.0.4")

    async def models(request: Request) -> Response:
        state.check_auth(request)
        return JSONResponse({"object": "list", "data": [state.model_card()]})

    async def model(request: Request) -> Response:
        state.check_auth(request)
        state.check_model(request.path_params["model"])
        return JSONResponse(state.model_card())

    async def chat_completions(request: Request) -> Response:
        state.check_auth(request)
        req, tokens = await state.prepare(state.prepare_chat, await state.read_body(request))
        job = state.enqueue(tokens, state.params(req, len(tokens)))
        rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        head = {"id": rid, "created": created, "model": req.model}
        if req.stream:
            def chunk(text: str | None, finish: str | None) -> dict[str, Any]:
                delta = {"content": text} if text is not None else {}
                return {**head, "object": "chat.completion.chunk",
                        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

            first = {**chunk(None, None)}
            first["choices"][0]["delta"] = {"role": "assistant", "content": ""}
            return _sse(_events(state, job, chunk, first, req.include_usage))
        text, result = await _collect(request, state, job)
        return JSONResponse({**head, "object": "chat.completion", "choices": [{
            "index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
            "finish_reason": _finish(result)}], "usage": _usage(result, len(tokens))})

    async def completions(request: Request) -> Response:
        state.check_auth(request)
        req, tokens = await state.prepare(state.prepare_completion, await state.read_body(request))
        job = state.enqueue(tokens, state.params(req, len(tokens)))
        head = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": req.model,
                "object": "text_completion"}
        if req.stream:
            def chunk(text: str | None, finish: str | None) -> dict[str, Any]:
                return {**head, "choices": [{"index": 0, "text": text or "", "logprobs": None,
                                             "finish_reason": finish}]}

            return _sse(_events(state, job, chunk, None, req.include_usage))
        text, result = await _collect(request, state, job)
        return JSONResponse({**head, "choices": [{"index": 0, "text": text, "logprobs": None,
                                                  "finish_reason": _finish(result)}],
                             "usage": _usage(result, len(tokens))})

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = {404: f"no such endpoint: {request.method} {request.url.path}",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(exc.status_code, exc.detail)
        return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                       "code": code}}, status_code=exc.status_code, headers=exc.headers)

    async def internal_error(request: Request, exc: Exception) -> Response:
        return JSONResponse(ApiError(500, f"internal error ({type(exc).__name__})", "internal_error",
                                     type_="server_error").body(), status_code=500)

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{model:path}", model, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
    ]
    app = Starlette(routes=routes, exception_handlers={
        ApiError: api_error, HTTPException: http_error, Exception: internal_error})
    guarded: ASGIApp = AccessGuard(app, state.config.access)
    return guarded
