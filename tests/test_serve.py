"""`gptpipe serve`: a real uvicorn on a free port serving a tiny saved GPT-2, driven by the official
`openai` client; its answers are `generate`'s for the same HH prompt, seed and settings."""

from __future__ import annotations

import socket
import threading
import time

import json
import urllib.error
import urllib.request
import openai
import pytest
import torch
import uvicorn

from gptpipe.data.tokenizer import encode
from gptpipe.evaluation.chat import Conversation
from gptpipe.evaluation.generate import Sampling, generate, prompt_seed
from gptpipe.evaluation.serve import Limits, create_app
from gptpipe.models.gpt2 import build_scratch, load_model, save_model

NAME = "tiny-sft"
GREEDY = Sampling(max_new_tokens=12, temperature=0.0)
LIMITS = Limits(max_body_bytes=4096, max_messages=8, max_tokens=16, concurrency=1)


@pytest.fixture(autouse=True)
def one_thread():
    """Shared cores: two torch threads wait on each other (see test_generate). Restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model(tiny_params, tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "sft"
    save_model(build_scratch(tiny_params.model, 0).eval(), path)
    return load_model(path)  # what `gptpipe serve models/sft` loads


@pytest.fixture(scope="module")
def base_url(model):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(model, NAME, GREEDY, LIMITS), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def client(base_url):
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)


def expected(model, prompt: str, seed: int, sampling: Sampling = GREEDY) -> str:
    return generate(model, [encode(prompt)], sampling, [seed], batch_size=1).answers[0].text


def test_models_lists_the_served_model(client):
    assert [m.id for m in client.models.list().data] == [NAME]


def test_a_plain_answer_is_generates_answer_to_chats_prompt(client, model):
    conversation = Conversation()
    prompt = conversation.prompt_for("What is 2 + 2?")
    reply = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "What is 2 + 2?"}],
                                           temperature=0, max_tokens=12)
    want = expected(model, prompt, prompt_seed(0, "0"))
    assert want  # the tiny model says something, so equality is not between two empties
    assert reply.choices[0].message.content == want
    assert reply.usage.completion_tokens == len(generate(model, [encode(prompt)], GREEDY, [0], 1).answers[0].ids)
    assert reply.usage.prompt_tokens == len(encode(prompt))
    # A conversation past the model's positions is cut from the left to leave max_tokens theirs.
    long = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "two " * 300}], max_tokens=12)
    assert long.usage.prompt_tokens == model.config.max_position_embeddings - 12


def test_a_second_turn_sees_the_first_as_chat_builds_it(client, model):
    conversation = Conversation()
    first = conversation.prompt_for("Hello there")
    answer = generate(model, [encode(first)], GREEDY, [prompt_seed(0, "0")], 1).answers[0]
    conversation.add(first, answer)
    second = conversation.prompt_for("Tell me more")
    messages = [{"role": "user", "content": "Hello there"}, {"role": "assistant", "content": answer.text},
                {"role": "user", "content": "Tell me more"}]
    reply = client.chat.completions.create(model=NAME, messages=messages, temperature=0, max_tokens=12)
    assert reply.choices[0].message.content == expected(model, second, prompt_seed(0, "1"))


def test_a_sampled_answer_replays_with_its_seed(client, model):
    sampling = Sampling(max_new_tokens=12, temperature=0.8, top_p=0.9)
    prompt = Conversation().prompt_for("Say something")
    ask = dict(model=NAME, messages=[{"role": "user", "content": "Say something"}], temperature=0.8, top_p=0.9, max_tokens=12)
    got = [client.chat.completions.create(**ask, seed=s).choices[0].message.content for s in (5, 5, 6)]
    assert got[0] == got[1] == expected(model, prompt, prompt_seed(5, "0"), sampling)
    assert got[2] == expected(model, prompt, prompt_seed(6, "0"), sampling)


def test_the_streamed_answer_is_the_plain_one(client, model):
    ask = dict(model=NAME, messages=[{"role": "user", "content": "What is 2 + 2?"}], temperature=0, max_tokens=12)
    chunks = list(client.chat.completions.create(**ask, stream=True))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert len(pieces) > 1  # one event per token, not the answer in one piece
    assert "".join(pieces) == expected(model, Conversation().prompt_for("What is 2 + 2?"), prompt_seed(0, "0"))
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def _post(base_url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(f"{base_url}/v1/chat/completions", body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _json(**body) -> bytes:
    return json.dumps(body).encode()


@pytest.mark.parametrize("body, status, field", [
    (b"{not json", 400, "not JSON"),
    (_json(model=NAME, messages=[{"role": "user", "content": "x" * 5000}]), 413, "request body"),
    (_json(model="gpt-4", messages=[{"role": "user", "content": "hi"}]), 404, "model"),
    (_json(model=NAME, messages=[{"role": "tool", "content": "hi"}]), 400, "messages.0.role"),
    (_json(model=NAME, messages=[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                                 {"role": "system", "content": "c"}, {"role": "user", "content": "d"}]), 400, "messages.2.role"),
    (_json(model=NAME, messages=[{"role": "user", "content": "hi"}], temperature=5), 400, "temperature"),
    (_json(model=NAME, messages=[{"role": "user", "content": "hi"}], stop=["a", "b", "c", "d", "e"]), 400, "stop"),
    (b"[" * 2000 + b"]" * 2000, 400, "nested"),
    (_json(model=NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=17), 400, "max_tokens"),
    (_json(model=NAME, messages=[{"role": "user", "content": "hi"}] * 9), 400, "messages"),
    (_json(model=NAME, messages=[]), 400, "messages"),
])
def test_a_bad_request_gets_its_4xx_and_the_server_still_answers(base_url, client, body, status, field):
    got, error = _post(base_url, body)
    assert got == status
    assert field in error["error"]["message"]
    ok = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert ok.choices[0].message.content is not None


def test_max_tokens_leaves_the_prompt_a_position(model):
    # The server's own limit may exceed the model's positions (256 against the default's 256, the
    # tiny model's 128): the request is refused before generate would fail mid-answer.
    from gptpipe.evaluation.serve import BadRequest, ChatRequest, _check

    positions = model.config.max_position_embeddings
    ask = lambda n: ChatRequest(model=NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=n)  # noqa: E731
    _check(ask(positions - 1), NAME, Limits(max_tokens=1000), positions)
    with pytest.raises(BadRequest, match=f"max_tokens: {positions}; the model has {positions} positions") as err:
        _check(ask(positions), NAME, Limits(max_tokens=1000), positions)
    assert err.value.status == 400


def test_a_stop_string_ends_the_answer_plainly_and_streamed(client, model):
    full = expected(model, Conversation().prompt_for("What is 2 + 2?"), prompt_seed(0, "0"))
    stop = full.strip()[2:5]  # somewhere inside the greedy answer
    assert len(stop) == 3 and full.find(stop) > 0
    ask = dict(model=NAME, messages=[{"role": "user", "content": "What is 2 + 2?"}], temperature=0, max_tokens=12, stop=[stop])
    plain = client.chat.completions.create(**ask)
    assert plain.choices[0].message.content == full[:full.find(stop)]
    assert plain.choices[0].finish_reason == "stop"
    chunks = list(client.chat.completions.create(**ask, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == full[:full.find(stop)]
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_a_system_message_goes_first_as_the_data_formats_render_it(client, model):
    reply = client.chat.completions.create(model=NAME, temperature=0, max_tokens=12, messages=[
        {"role": "system", "content": " Be brief. "}, {"role": "user", "content": "Hi"}])
    # formats.parse renders a messages record's system text unlabelled before the first Human turn
    assert reply.choices[0].message.content == expected(model, "Be brief.\n\nHuman: Hi\n\nAssistant:", prompt_seed(0, "0"))


def test_a_stray_byte_does_not_hold_back_the_rest_of_the_stream():
    from gptpipe.data.tokenizer import Gpt2Bpe
    from gptpipe.evaluation.generate import answer_of
    from gptpipe.evaluation.serve import _Shown

    bpe = Gpt2Bpe()
    stray = next(i for i in range(1024) if bpe.decode_bytes([i]) == b"\xff")  # never valid UTF-8
    ids = encode(" hello") + [stray] + encode(" world, and then some more words")
    shown = _Shown(bpe)
    pieces = [shown.add(t) for t in ids]
    assert "".join(pieces) == answer_of(ids, "length").text == " hello\ufffd world, and then some more words"
    assert len([p for p in pieces[len(encode(" hello")) + 1:] if p]) > 3  # each word as it comes


def test_a_hook_that_raises_stops_generation_at_once(model):
    # How the server drops an abandoned request: its on_token hook raises, and the slot frees.
    heard = []

    def hook(_row, token):
        heard.append(token)
        if len(heard) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate(model, [encode("\n\nHuman: hi\n\nAssistant:")], Sampling(max_new_tokens=50, temperature=1.0), [0], 1,
                 on_token=hook)
    assert len(heard) == 3


def test_the_client_sees_an_unknown_model_as_not_found(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])


def test_the_page_is_served_and_names_the_model(base_url):
    with urllib.request.urlopen(base_url, timeout=10) as response:
        page = response.read().decode()
    assert f"<h1>{NAME}</h1>" in page and "http" not in page.split("<script>")[1]  # nothing fetched from elsewhere


def test_streamed_pieces_never_show_what_the_stop_rules_cut():
    """Tokens split a stop ("\\n\\nHuman:") and characters (an emoji's bytes) across tokens: what is
    streamed before the end is only text the final answer keeps."""
    from gptpipe.evaluation.generate import answer_of
    from gptpipe.data.tokenizer import Gpt2Bpe
    from gptpipe.evaluation.serve import _Shown

    ids = encode("Sure 🙂 here\n\nHu") + encode("man: and more")
    shown, pieces = _Shown(Gpt2Bpe()), []
    for token in ids:
        pieces.append(shown.add(token))
    final = answer_of(ids, "human").text
    assert final == "Sure 🙂 here"
    assert "".join(pieces) == final and "\ufffd" not in "".join(pieces)
    assert len([p for p in pieces if p]) > 1


def test_generates_hook_hears_each_token_as_picked(model):
    heard = []
    answer = generate(model, [encode("\n\nHuman: hi\n\nAssistant:")], GREEDY, [0], 1,
                      on_token=lambda i, t: heard.append((i, t))).answers[0]
    assert heard == [(0, t) for t in answer.ids]
