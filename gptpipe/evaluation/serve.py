"""`gptpipe serve PATH`: a saved model behind an OpenAI-compatible HTTP API, and a chat page at `/`.

`/v1/chat/completions` turns the messages into the HH text `gptpipe chat` builds (each user turn
`\\n\\nHuman: …`, each assistant turn ` …` after its `\\n\\nAssistant:`, ending in `\\n\\nAssistant:`)
and answers it with the same `generate` and stop rules as `gptpipe generate` and `gptpipe chat`,
one request a batch of one. The seed of a reply is chat's: `prompt_seed(seed, turns so far)`, so a
request replays the chat with the same seed and messages.

Generation runs on worker threads behind a semaphore (the model is CPU/GPU-bound; more at once
only share the cores), so the event loop keeps answering `/v1/models` and rejecting bad requests
while one is generated. Every request is bounded before any work: body bytes, messages, max_tokens.

`stream: true` sends each piece of text as the decode loop makes it (generate's on_token hook),
holding back only bytes that may yet turn out to be a stop or half a character.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from transformers import PreTrainedModel

from gptpipe.data.hh import ASSISTANT, HUMAN
from gptpipe.data.tokenizer import Gpt2Bpe, Tokenizer
from gptpipe.evaluation.generate import STOP_TEXT, Answer, Sampling, generate, prompt_seed
from gptpipe.evaluation.serve_page import PAGE

FINISH = {"eot": "stop", "human": "stop", "length": "length"}  # our stop reasons in OpenAI's words


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 64 * 1024
    max_messages: int = 64
    max_tokens: int = 256  # the most a request may ask for; also bounded by the model's positions
    concurrency: int = 1  # requests generated at once


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["user", "assistant"]  # HH has two speakers; a system prompt has no place in it
    content: str


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields we do not use (user, …)
    model: str
    messages: list[Message] = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    seed: int | None = Field(default=None, ge=0)
    stream: bool = False
    n: int = Field(default=1, ge=1, le=1)


class BadRequest(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def hh_prompt(messages: list[Message]) -> str:
    """The text `gptpipe chat` would have built for this conversation (chat.Conversation)."""
    text = ""
    for m in messages:
        if m.role == "user":
            text += f"{HUMAN} {m.content.strip()}"
        else:  # chat's Conversation.add: " reply" after the turn's "\n\nAssistant:", nothing if empty
            reply = m.content.strip()
            text += f"{ASSISTANT} {reply}" if reply else ASSISTANT
    return text + ASSISTANT


def _check(req: ChatRequest, name: str, limits: Limits) -> None:
    if req.model != name:
        raise BadRequest(404, f"model {req.model!r}: not served here; GET /v1/models lists {name!r}", "model", "model_not_found")
    if len(req.messages) > limits.max_messages:
        raise BadRequest(400, f"messages: {len(req.messages)}; at most {limits.max_messages}", "messages")
    if req.messages[-1].role != "user":
        raise BadRequest(400, "messages: the last message must be the user's (the model answers it)", "messages")
    wanted = req.max_completion_tokens or req.max_tokens
    if wanted is not None and wanted > limits.max_tokens:
        raise BadRequest(400, f"max_tokens: {wanted}; this server allows at most {limits.max_tokens}", "max_tokens")


def _sampling(req: ChatRequest, defaults: Sampling, limits: Limits) -> Sampling:
    return Sampling(
        max_new_tokens=req.max_completion_tokens or req.max_tokens or min(defaults.max_new_tokens, limits.max_tokens),
        temperature=defaults.temperature if req.temperature is None else req.temperature,
        top_p=defaults.top_p if req.top_p is None else req.top_p,
        top_k=defaults.top_k,
    )


async def _body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BadRequest(413, f"request body: {declared} bytes; at most {limit}")
    body = b""
    async for chunk in request.stream():  # a chunked body has no length to trust
        body += chunk
        if len(body) > limit:
            raise BadRequest(413, f"request body: over {limit} bytes")
    return body


def _parse(body: bytes) -> ChatRequest:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise BadRequest(400, f"request body: not JSON ({err})") from None
    try:
        return ChatRequest.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise BadRequest(400, f"{where}: {first['msg']}", where) from None


def _error(err: BadRequest) -> JSONResponse:
    kind = "invalid_request_error" if err.status < 500 else "server_error"
    return JSONResponse({"error": {"message": err.message, "type": kind, "param": err.param, "code": err.code}}, err.status)


class _Shown:
    """The part of an answer that is sure to stay as tokens arrive: decoded UTF-8 up to the last whole
    character, cut at "\n\nHuman:", holding back a tail that may yet begin it (answer_of's rules)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.data, self.sent, self.tokenizer = b"", "", tokenizer

    def add(self, token: int) -> str:
        if token == self.tokenizer.eot_id:
            return ""
        self.data += self.tokenizer.decode_bytes([token])
        cut = self.data.find(STOP_TEXT)
        data = self.data[:cut] if cut >= 0 else self.data[: len(self.data) - _stop_prefix(self.data)]
        text = data.decode("utf-8", errors="ignore") if _whole(data) else data[: _last_whole(data)].decode("utf-8", errors="ignore")
        if not text.startswith(self.sent) or len(text) <= len(self.sent):
            return ""
        piece, self.sent = text[len(self.sent):], text
        return piece


def _stop_prefix(data: bytes) -> int:
    """The longest tail of data that is a beginning of "\n\nHuman:"."""
    return next((n for n in range(min(len(STOP_TEXT) - 1, len(data)), 0, -1) if data.endswith(STOP_TEXT[:n])), 0)


def _whole(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _last_whole(data: bytes) -> int:
    return next((n for n in range(len(data), max(len(data) - 4, 0) - 1, -1) if _whole(data[:n])), 0)


def create_app(model: PreTrainedModel, name: str, defaults: Sampling, limits: Limits,
               tokenizer: Tokenizer | None = None) -> FastAPI:
    """tokenizer: the model's (load_tokenizer(model folder)); None is GPT-2's BPE."""
    tokenizer = tokenizer or Gpt2Bpe()
    encode = lambda text: tokenizer.encode_batch([text])[0]  # noqa: E731
    app = FastAPI(title="gptpipe", docs_url=None, redoc_url=None)
    busy = asyncio.Semaphore(limits.concurrency)
    created = int(time.time())

    async def answer(req: ChatRequest, on_token=None) -> Answer:
        prompt = encode(hh_prompt(req.messages))
        turns = sum(m.role == "assistant" for m in req.messages)
        seed = prompt_seed(req.seed or 0, str(turns))  # chat's per-exchange seed
        sampling = _sampling(req, defaults, limits)
        async with busy:
            run = lambda: generate(model, [prompt], sampling, [seed], 1, on_token=on_token, tokenizer=tokenizer)  # noqa: E731
            return (await asyncio.to_thread(run)).answers[0]

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return PAGE.replace("{model}", name)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": created, "owned_by": "gptpipe"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        try:
            req = _parse(await _body(request, limits.max_body_bytes))
            _check(req, name, limits)
        except BadRequest as err:
            return _error(err)
        ident = f"chatcmpl-{uuid.uuid4().hex}"
        head = {"id": ident, "created": int(time.time()), "model": name}
        if req.stream:
            return StreamingResponse(_events(req, head, answer, tokenizer), media_type="text/event-stream")
        reply = await answer(req)
        usage = {"prompt_tokens": len(encode(hh_prompt(req.messages))), "completion_tokens": reply.tokens}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return {**head, "object": "chat.completion", "usage": usage, "choices": [{
            "index": 0, "message": {"role": "assistant", "content": reply.text}, "finish_reason": FINISH[reply.stopped]}]}

    return app


async def _events(req: ChatRequest, head: dict, answer, tokenizer: Tokenizer):
    """Server-sent events: each piece of text as the decode loop makes it (heard from the worker
    thread through a queue), then whatever the final answer adds, the finish reason and [DONE]."""

    def event(delta: dict, finish: str | None = None) -> str:
        chunk = {**head, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return f"data: {json.dumps(chunk)}\n\n"

    loop, pieces, shown = asyncio.get_running_loop(), asyncio.Queue(), _Shown(tokenizer)
    heard = lambda _row, token: loop.call_soon_threadsafe(pieces.put_nowait, shown.add(token))  # noqa: E731
    task = asyncio.ensure_future(answer(req, heard))
    task.add_done_callback(lambda _: pieces.put_nowait(None))
    yield event({"role": "assistant", "content": ""})
    while (piece := await pieces.get()) is not None:
        if piece:
            yield event({"content": piece})
    reply = task.result()
    if reply.text[len(shown.sent):]:  # a tail held back that the stop rules kept after all
        yield event({"content": reply.text[len(shown.sent):]})
    yield event({}, FINISH[reply.stopped])
    yield "data: [DONE]\n\n"
