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

A client that goes away stops its generation at the next token (the on_token hook raises), so an
abandoned request does not hold a generation slot; past `max_waiting` queued requests the server
answers 503 at once. A conversation longer than the model's positions is cut from the left, as
`gptpipe chat` cuts it; `usage.prompt_tokens` counts what the model saw.
"""

from __future__ import annotations

import asyncio
import json
import threading
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
from gptpipe.evaluation.serve_page import page_for

FINISH = {"eot": "stop", "human": "stop", "length": "length"}  # our stop reasons in OpenAI's words


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 64 * 1024
    max_messages: int = 64
    max_tokens: int = 256  # the most a request may ask for; also bounded by the model's positions
    concurrency: int = 1  # requests generated at once
    max_waiting: int = 16  # requests queued behind those; one more is answered 503
    max_stops: int = 4  # `stop` strings a request may give (OpenAI's limit)


SYSTEM_ROLES = ("system", "developer")  # text before the first turn, as the data formats render it


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields we do not use (user, …)
    model: str
    messages: list[Message] = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0, le=2)  # OpenAI's range
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    seed: int | None = Field(default=None, ge=0)
    stream: bool = False
    n: int = Field(default=1, ge=1, le=1)
    stop: str | list[str] | None = None

    @property
    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class BadRequest(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def hh_prompt(messages: list[Message]) -> str:
    """The text `gptpipe chat` would have built for this conversation (chat.Conversation), after
    the system texts, unlabelled, as the data formats render a system prompt (formats._render)."""
    text = "\n\n".join(m.content.strip() for m in messages if m.role in SYSTEM_ROLES and m.content.strip())
    for m in messages:
        if m.role in SYSTEM_ROLES:
            continue
        if m.role == "user":
            text += f"{HUMAN} {m.content.strip()}"
        else:  # chat's Conversation.add: " reply" after the turn's "\n\nAssistant:", nothing if empty
            reply = m.content.strip()
            text += f"{ASSISTANT} {reply}" if reply else ASSISTANT
    return text + ASSISTANT


def _check(req: ChatRequest, name: str, limits: Limits, positions: int) -> None:
    if req.model != name:
        raise BadRequest(404, f"model {req.model!r}: not served here; GET /v1/models lists {name!r}", "model", "model_not_found")
    if len(req.messages) > limits.max_messages:
        raise BadRequest(400, f"messages: {len(req.messages)}; at most {limits.max_messages}", "messages")
    if req.messages[-1].role != "user":
        raise BadRequest(400, "messages: the last message must be the user's (the model answers it)", "messages")
    turns = [i for i, m in enumerate(req.messages) if m.role not in SYSTEM_ROLES]
    late = next((i for i, m in enumerate(req.messages) if m.role in SYSTEM_ROLES and i > turns[0]), None)
    if late is not None:
        raise BadRequest(400, f"messages.{late}.role: a {req.messages[late].role} message goes before the first "
                              "user message (the model's dialogue text has no place for one later)", f"messages.{late}.role")
    wanted = req.max_completion_tokens or req.max_tokens
    most = min(limits.max_tokens, positions - 1)  # a prompt needs one position at least
    if wanted is not None and wanted > most:
        why = "this server allows" if most == limits.max_tokens else f"the model has {positions} positions and the prompt needs one, so"
        raise BadRequest(400, f"max_tokens: {wanted}; {why} at most {most}", "max_tokens")
    stops = req.stops
    if len(stops) > limits.max_stops or any(not s or len(s) > 64 for s in stops):
        raise BadRequest(400, f"stop: {len(stops)} strings; give at most {limits.max_stops}, each 1 to 64 characters", "stop")


def _sampling(req: ChatRequest, defaults: Sampling, limits: Limits, positions: int) -> Sampling:
    return Sampling(
        max_new_tokens=req.max_completion_tokens or req.max_tokens or min(defaults.max_new_tokens, limits.max_tokens, positions - 1),
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
    except RecursionError:
        raise BadRequest(400, "request body: JSON nested too deeply") from None
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
    """The part of an answer that is sure to stay as tokens arrive: its UTF-8 decoded as answer_of
    decodes it, up to any character still incomplete, cut at "\n\nHuman:" or a request's stop,
    holding back a tail that may yet begin one (answer_of's rules, and the stops')."""

    def __init__(self, tokenizer: Tokenizer, stops: list[str] = ()) -> None:
        self.data, self.sent, self.tokenizer = b"", "", tokenizer
        self.stops = [STOP_TEXT, *(s.encode() for s in stops)]

    def add(self, token: int) -> str:
        if token == self.tokenizer.eot_id:
            return ""
        self.data += self.tokenizer.decode_bytes([token])
        cuts = [at for at in (self.data.find(stop) for stop in self.stops) if at >= 0]
        data = self.data[:min(cuts)] if cuts else self.data[: len(self.data) - max(_stop_prefix(self.data, s) for s in self.stops)]
        text = data[: _complete(data)].decode("utf-8", errors="replace")
        if not text.startswith(self.sent) or len(text) <= len(self.sent):
            return ""
        piece, self.sent = text[len(self.sent):], text
        return piece


def _stop_prefix(data: bytes, stop: bytes) -> int:
    """The longest tail of data that is a beginning of stop."""
    return next((n for n in range(min(len(stop) - 1, len(data)), 0, -1) if data.endswith(stop[:n])), 0)


def _complete(data: bytes) -> int:
    """Where data's last character ends: before a trailing lead byte whose continuation bytes have
    not all arrived. An invalid byte is complete (it decodes to U+FFFD whatever follows), so one
    stray byte never holds back the rest of the answer."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 != 0x80:  # not a continuation byte: the last character starts here
            need = 2 if byte >> 5 == 0b110 else 3 if byte >> 4 == 0b1110 else 4 if byte >> 3 == 0b11110 else 1
            return len(data) - back if need > back else len(data)
    return len(data)


def until_stop(answer: Answer, stops: list[str]) -> tuple[str, str]:
    """The answer's text cut before the first of a request's stops, and OpenAI's finish reason."""
    cuts = [at for at in (answer.text.find(stop) for stop in stops) if at >= 0]
    return (answer.text[:min(cuts)], "stop") if cuts else (answer.text, FINISH[answer.stopped])


class _Gone(Exception):
    """The client of a request went away: its generation stops at the next token."""


class _Slots:
    """Generation slots (`concurrency`) and a bounded queue before them (`max_waiting`)."""

    def __init__(self, limits: Limits) -> None:
        self.busy, self.limits, self.held = asyncio.Semaphore(limits.concurrency), limits, 0

    def admit(self) -> None:
        if self.held >= self.limits.concurrency + self.limits.max_waiting:
            raise BadRequest(503, f"server busy: {self.held - self.limits.concurrency} requests waiting "
                                  f"(at most {self.limits.max_waiting}); retry later")


def create_app(model: PreTrainedModel, name: str, defaults: Sampling, limits: Limits,
               tokenizer: Tokenizer | None = None) -> FastAPI:
    """tokenizer: the model's (load_tokenizer(model folder)); None is GPT-2's BPE."""
    tokenizer = tokenizer or Gpt2Bpe()
    encode = lambda text: tokenizer.encode_batch([text])[0]  # noqa: E731
    app = FastAPI(title="gptpipe", docs_url=None, redoc_url=None)
    slots, positions = _Slots(limits), model.config.max_position_embeddings
    created = int(time.time())

    async def answer(req: ChatRequest, gone: threading.Event, on_token=None) -> tuple[Answer, int]:
        """The answer, and the prompt tokens the model saw (generate cuts a long prompt from the
        left to leave max_new_tokens their positions)."""
        prompt = encode(hh_prompt(req.messages))
        turns = sum(m.role == "assistant" for m in req.messages)
        seed = prompt_seed(req.seed or 0, str(turns))  # chat's per-exchange seed
        sampling = _sampling(req, defaults, limits, positions)

        def heard(row: int, token: int) -> None:
            if gone.is_set():
                raise _Gone
            if on_token is not None:
                on_token(row, token)

        slots.held += 1
        try:
            async with slots.busy:
                if gone.is_set():
                    raise _Gone
                run = lambda: generate(model, [prompt], sampling, [seed], 1, on_token=heard, tokenizer=tokenizer)  # noqa: E731
                seen = min(len(prompt), positions - sampling.max_new_tokens)
                return (await asyncio.to_thread(run)).answers[0], seen
        finally:
            slots.held -= 1

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return page_for(name)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": created, "owned_by": "gptpipe"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        try:
            req = _parse(await _body(request, limits.max_body_bytes))
            _check(req, name, limits, positions)
            slots.admit()
        except BadRequest as err:
            return _error(err)
        ident = f"chatcmpl-{uuid.uuid4().hex}"
        head = {"id": ident, "created": int(time.time()), "model": name}
        gone = threading.Event()
        if req.stream:
            return StreamingResponse(_events(req, head, answer, tokenizer, gone), media_type="text/event-stream")
        watch = asyncio.create_task(_watch(request, gone))
        try:
            reply, seen = await answer(req, gone)
        except _Gone:
            return JSONResponse({}, 499)  # nobody is listening; the status is for the access log
        finally:
            watch.cancel()
        text, finish = until_stop(reply, req.stops)
        usage = {"prompt_tokens": seen, "completion_tokens": reply.tokens}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return {**head, "object": "chat.completion", "usage": usage, "choices": [{
            "index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}]}

    return app


async def _watch(request: Request, gone: threading.Event) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(0.25)
    gone.set()


async def _events(req: ChatRequest, head: dict, answer, tokenizer: Tokenizer, gone: threading.Event):
    """Server-sent events: each piece of text as the decode loop makes it (heard from the worker
    thread through a queue), then whatever the final answer adds, the finish reason and [DONE].
    A client that leaves closes this generator; `gone` then stops the generation."""

    def event(delta: dict, finish: str | None = None) -> str:
        chunk = {**head, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return f"data: {json.dumps(chunk)}\n\n"

    loop, pieces, shown = asyncio.get_running_loop(), asyncio.Queue(), _Shown(tokenizer, req.stops)
    heard = lambda _row, token: loop.call_soon_threadsafe(pieces.put_nowait, shown.add(token))  # noqa: E731
    task = asyncio.ensure_future(answer(req, gone, heard))
    task.add_done_callback(lambda _: pieces.put_nowait(None))
    try:
        yield event({"role": "assistant", "content": ""})
        while (piece := await pieces.get()) is not None:
            if piece:
                yield event({"content": piece})
        try:
            reply, _ = task.result()
        except Exception as err:  # noqa: BLE001 (the 200 is sent: the error can only be an event now)
            yield f"data: {json.dumps({'error': {'message': f'generation failed: {err}', 'type': 'server_error'}})}\n\n"
            yield "data: [DONE]\n\n"
            return
        text, finish = until_stop(reply, req.stops)
        if text[len(shown.sent):]:  # a tail held back that the stop rules kept after all
            yield event({"content": text[len(shown.sent):]})
        yield event({}, finish)
        yield "data: [DONE]\n\n"
    finally:
        gone.set()  # a no-op when the answer is done; stops it when the client left mid-answer
