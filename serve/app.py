"""The HTTP API: OpenAI-compatible chat and text completions over one Engine, plus the /chat page.

    POST /v1/chat/completions   messages → an assistant answer (stream: server-sent events)
    POST /v1/completions        raw prompt text → its continuation (stream: server-sent events)
    GET  /v1/models             the one model served (the bundle's name)
    GET  /health                liveness and slot use, no auth
    GET  /chat                  the chat page (serve/static/), no auth (it asks for a key if needed)

A request is checked completely (body size, body, model, limits, conversation) before it takes a
generation slot, so a bad one costs no model time and is always a 4xx; a body over the size limit is
refused before it is parsed (serve/limits.py). Streams send one chunk per batch of new text, a
final chunk with finish_reason, a usage chunk if asked (`stream_options.include_usage`), then
`data: [DONE]`. A client that goes away cancels its generation.
"""
from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, RedirectResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from chatpipe.serve import prompts
from chatpipe.serve.auth import Keys
from chatpipe.serve.engine import Busy, Engine, Finish, Generation
from chatpipe.serve.errors import APIError
from chatpipe.serve.limits import DEFAULT_MAX_REQUEST_BYTES, BodyLimit
from chatpipe.serve.sampling import Sampling
from chatpipe.serve.schema import (
    ChatRequest,
    CompletionRequest,
    GenerationRequest,
    unreadable_body,
    validation_error,
)
from chatpipe.tasks.common.errors import ConfigError

STATIC = Path(__file__).parent / "static"
log = logging.getLogger("chatpipe.serve")
PAGE_POLICY = "default-src 'self'; img-src 'self' data:"  # the page fetches from this server only


@dataclass(frozen=True)
class Endpoint:
    """How one endpoint shapes its answers: chat (message/delta) or text completion (text)."""
    object: str
    chunk_object: str
    id_prefix: str
    chat: bool

    def choice(self, text: str, finish_reason: str) -> dict:
        body = {"message": {"role": "assistant", "content": text}} if self.chat else {"text": text}
        return {"index": 0, **body, "logprobs": None, "finish_reason": finish_reason}

    def delta(self, text: str, finish_reason: str | None = None, role: bool = False) -> dict:
        if self.chat:
            body = {"delta": {"role": "assistant", "content": text} if role else {"content": text} if text else {}}
        else:
            body = {"text": text}
        return {"index": 0, **body, "logprobs": None, "finish_reason": finish_reason}


CHAT = Endpoint("chat.completion", "chat.completion.chunk", "chatcmpl-", chat=True)
TEXT = Endpoint("text_completion", "text_completion", "cmpl-", chat=False)


def usage_of(finish: Finish) -> dict:
    return {"prompt_tokens": finish.prompt_tokens, "completion_tokens": finish.completion_tokens,
            "total_tokens": finish.prompt_tokens + finish.completion_tokens}


def create_app(engine: Engine, keys: Keys | None = None, max_prompt_tokens: int | None = None,
               max_tokens: int | None = None, max_request_bytes: int | None = None) -> FastAPI:
    """The app serving `engine`. Limits default to the model's context (block_size - 1 prompt tokens,
    block_size new ones); a prompt plus max_tokens beyond the context ends with finish_reason "length".
    Request bodies: at most max_request_bytes (default 1 MiB)."""
    context = engine.context
    max_prompt_tokens = context - 1 if max_prompt_tokens is None else max_prompt_tokens
    max_tokens = context if max_tokens is None else max_tokens
    if not 1 <= max_prompt_tokens < context:
        raise ConfigError(f"--max-prompt-tokens {max_prompt_tokens}: must be 1 to {context - 1} "
                          f"(the model's context of {context} tokens, minus one for the answer)")
    if max_tokens < 1:
        raise ConfigError(f"--max-tokens {max_tokens}: must be at least 1")
    max_request_bytes = DEFAULT_MAX_REQUEST_BYTES if max_request_bytes is None else max_request_bytes
    if max_request_bytes < 1:
        raise ConfigError(f"--max-request-bytes {max_request_bytes}: must be at least 1")
    keys = keys or Keys(())

    app = FastAPI(title=f"chat-pipeline: {engine.name}", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_exception_handler(APIError, lambda request, e: e.response())
    app.add_exception_handler(RequestValidationError, lambda request, e: validation_error(e.errors()).response())
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)
    app.add_middleware(BodyLimit, max_bytes=max_request_bytes)

    def authorized(request: Request) -> None:
        keys.check(request.headers.get("authorization"))

    def served(body: GenerationRequest) -> Sampling:
        if body.model != engine.name:
            raise APIError(404, f"model: {body.model!r} is not served here; this server serves {engine.name!r}",
                           param="model", code="model_not_found")
        return body.sampling(engine.defaults(), max_tokens)

    async def answer(endpoint: Endpoint, body: GenerationRequest, ids: list[int], sampling: Sampling,
                     request: Request):
        try:
            generation = await engine.start(ids, sampling, chat=endpoint.chat)
        except Busy as e:
            raise APIError(429, str(e), type="rate_limit_error", code="server_busy",
                           headers={"Retry-After": "1"}) from None
        meta = {"id": endpoint.id_prefix + uuid.uuid4().hex, "created": int(time.time()), "model": engine.name}
        if body.stream:
            return StreamingResponse(_events(endpoint, generation, meta, body.include_usage),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await _whole(endpoint, generation, meta, request)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": engine.name, "active": engine.active,
                "max_concurrent": engine.max_concurrent}

    @app.get("/v1/models", dependencies=[Depends(authorized)])
    async def models():
        return {"object": "list", "data": [{"id": engine.name, "object": "model", "owned_by": "chat-pipeline",
                                            "created": int(engine.bundle.path.stat().st_mtime),
                                            "context_length": context}]}

    @app.post("/v1/chat/completions", dependencies=[Depends(authorized)])
    async def chat_completions(body: ChatRequest, request: Request):
        sampling = served(body)
        turns = prompts.conversation([m.plain() for m in body.messages])
        ids = prompts.chat_ids(engine.bundle.chat, engine.encode, turns, sampling.max_tokens, context,
                               max_prompt_tokens)
        return await answer(CHAT, body, ids, sampling, request)

    @app.post("/v1/completions", dependencies=[Depends(authorized)])
    async def completions(body: CompletionRequest, request: Request):
        sampling = served(body)
        return await answer(TEXT, body, prompts.text_ids(engine.encode, body.prompt, max_prompt_tokens),
                            sampling, request)

    @app.get("/chat", include_in_schema=False)
    async def chat_page():
        return FileResponse(STATIC / "chat.html", headers={"Content-Security-Policy": PAGE_POLICY})

    @app.get("/", include_in_schema=False)
    async def root():
        return RedirectResponse("/chat")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _http_error(request: Request, e: HTTPException):
    """Starlette's and FastAPI's own refusals (unknown path, wrong method, a body they could not read)."""
    if e.status_code == 400 and e.__cause__ is not None:  # FastAPI: json.loads failed, not on the syntax
        return unreadable_body(e.__cause__).response()
    return APIError(e.status_code, str(e.detail), type="invalid_request_error" if e.status_code < 500
                    else "server_error", headers=e.headers).response()


async def _internal_error(request: Request, e: Exception):
    """A bug: the client gets an OpenAI-style 500 (uvicorn logs the traceback)."""
    return APIError(500, "internal error in chat-pipeline's server; see its log", type="server_error").response()


def _chunk(endpoint: Endpoint, meta: dict, choices: list[dict], include_usage: bool, usage: dict | None = None) -> str:
    chunk = {**meta, "object": endpoint.chunk_object, "choices": choices}
    if include_usage:
        chunk["usage"] = usage
    return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"


async def _events(endpoint: Endpoint, generation: Generation, meta: dict, include_usage: bool):
    """The server-sent events of one streamed answer; closing the stream cancels the generation."""
    try:
        if endpoint.chat:
            yield _chunk(endpoint, meta, [endpoint.delta("", role=True)], include_usage)
        async for batch in generation.batches():
            events = []
            for event in batch:
                if isinstance(event, Finish):
                    events.append(_chunk(endpoint, meta, [endpoint.delta("", event.reason)], include_usage))
                    if include_usage:
                        events.append(_chunk(endpoint, meta, [], include_usage, usage_of(event)))
                else:
                    events.append(_chunk(endpoint, meta, [endpoint.delta(event)], include_usage))
            yield "".join(events)
    except Exception as e:  # the generation failed after the 200 went out: say so in the stream
        log.error("generation failed: %s: %s", type(e).__name__, e, exc_info=e)
        failure = APIError(500, "generation failed; see the server log", type="server_error")
        yield f"data: {json.dumps(failure.body())}\n\n"
    finally:
        generation.cancel()
    yield "data: [DONE]\n\n"


async def _whole(endpoint: Endpoint, generation: Generation, meta: dict, request: Request) -> dict | None:
    """The complete answer, or None (and the generation cancelled) if the client went away."""
    events = []
    try:
        async for batch in generation.batches():
            events += batch
            if not isinstance(batch[-1], Finish) and await request.is_disconnected():
                return None
    finally:
        generation.cancel()
    *pieces, finish = events
    return {**meta, "object": endpoint.object, "choices": [endpoint.choice("".join(pieces), finish.reason)],
            "usage": usage_of(finish)}
