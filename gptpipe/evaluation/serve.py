"""`gptpipe serve PATH`: a saved model behind an OpenAI-compatible HTTP API, and a chat page at `/`.

`/v1/chat/completions` turns the messages into the HH text `gptpipe chat` builds (each user turn
`\\n\\nHuman: …`, each assistant turn ` …` after its `\\n\\nAssistant:`, ending in `\\n\\nAssistant:`)
and answers it with the same `generate` and stop rules as `gptpipe generate` and `gptpipe chat`,
one request a batch of one. The seed of a reply is chat's: `prompt_seed(seed, turns so far)`, so a
request replays the chat with the same seed and messages.

Generation runs on worker threads behind a semaphore (the model is CPU/GPU-bound; more at once
only share the cores), so the event loop keeps answering `/v1/models` and rejecting bad requests
while one is generated. Every request is bounded before any work: body bytes, messages, max_tokens.

TODO: `stream: true` sends the answer as server-sent events once it is generated (one event per
token), not as each token is made: that needs a per-token hook in generate's decode loop.
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
from gptpipe.data.tokenizer import encode, gpt2_encoding
from gptpipe.evaluation.generate import Answer, Sampling, generate, prompt_seed
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


def _chunks(answer: Answer) -> list[str]:
    """The answer's text one token at a time (bytes held back until they decode as UTF-8)."""
    pieces, pending, text = [], b"", ""
    for token in answer.ids:
        pending += gpt2_encoding().decode_single_token_bytes(token)
        try:
            piece = pending.decode("utf-8")
        except UnicodeDecodeError:
            continue
        pending = b""
        if answer.text.startswith(text + piece):
            pieces.append(piece)
            text += piece
        else:  # the cut before "\n\nHuman:" or the end-of-text: the rest of the text, then stop
            break
    if text != answer.text:  # what the token walk could not place (a stop mid-token, bad bytes)
        pieces.append(answer.text[len(text):])
    return [p for p in pieces if p]


def create_app(model: PreTrainedModel, name: str, defaults: Sampling, limits: Limits) -> FastAPI:
    app = FastAPI(title="gptpipe", docs_url=None, redoc_url=None)
    busy = asyncio.Semaphore(limits.concurrency)
    created = int(time.time())

    async def answer(req: ChatRequest) -> Answer:
        prompt = encode(hh_prompt(req.messages))
        turns = sum(m.role == "assistant" for m in req.messages)
        seed = prompt_seed(req.seed or 0, str(turns))  # chat's per-exchange seed
        sampling = _sampling(req, defaults, limits)
        async with busy:
            return (await asyncio.to_thread(generate, model, [prompt], sampling, [seed], 1)).answers[0]

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
        reply = await answer(req)
        ident = f"chatcmpl-{uuid.uuid4().hex}"
        head = {"id": ident, "created": int(time.time()), "model": name}
        usage = {"prompt_tokens": len(encode(hh_prompt(req.messages))), "completion_tokens": reply.tokens}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if not req.stream:
            return {**head, "object": "chat.completion", "usage": usage, "choices": [{
                "index": 0, "message": {"role": "assistant", "content": reply.text}, "finish_reason": FINISH[reply.stopped]}]}

        def event(delta: dict, finish: str | None = None) -> str:
            chunk = {**head, "object": "chat.completion.chunk",
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            return f"data: {json.dumps(chunk)}\n\n"

        def events():
            yield event({"role": "assistant", "content": ""})
            for piece in _chunks(reply):
                yield event({"content": piece})
            yield event({}, FINISH[reply.stopped])
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app
