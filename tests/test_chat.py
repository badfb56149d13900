"""`gptpipe chat`: the loop fed through streams, with a tiny saved GPT-2."""

from __future__ import annotations

import io

import pytest
import torch
from typer.testing import CliRunner

from gptpipe.evaluation.chat import chat_loop, run_chat
from gptpipe.cli import app
from gptpipe.errors import UserError
from gptpipe.evaluation.generate import Sampling
from gptpipe.models.gpt2 import build_scratch, save_model

SAMPLING = Sampling(max_new_tokens=8, temperature=0.7, top_p=0.9)


@pytest.fixture(autouse=True)
def one_thread():
    """Shared cores: two torch threads wait on each other (see test_generate). Restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model(tiny_params):
    return build_scratch(tiny_params.model, 0).eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory, model):
    path = tmp_path_factory.mktemp("models") / "sft"
    save_model(model, path)
    return path


def talk(model, lines, seed=0):
    out = io.StringIO()
    conversation = chat_loop(model, io.StringIO("".join(f"{line}\n" for line in lines)), out, SAMPLING, seed)
    return conversation, out.getvalue()


def test_two_turns_answer_twice_and_the_second_prompt_holds_the_first_exchange(model):
    conversation, shown = talk(model, ["What is 2 + 2?", "And 3 + 3?"])
    first, second = conversation.exchanges
    assert first.prompt == "\n\nHuman: What is 2 + 2?\n\nAssistant:"
    reply = first.answer.text.strip()
    assert reply  # the model said something, which the next prompt must carry
    assert second.prompt == f"{first.prompt} {reply}\n\nHuman: And 3 + 3?\n\nAssistant:"
    assert shown.count("assistant> ") == 2
    assert f"assistant> {reply}\n" in shown
    assert f"assistant> {second.answer.text.strip()}\n" in shown


def test_the_same_seed_replays_a_chat_and_another_seed_does_not(model):
    lines = ["Hello there", "Tell me a joke"]
    replies = [e.answer.ids for e in talk(model, lines, seed=3)[0].exchanges]
    assert [e.answer.ids for e in talk(model, lines, seed=3)[0].exchanges] == replies
    assert [e.answer.ids for e in talk(model, lines, seed=4)[0].exchanges] != replies


def test_reset_forgets_and_quit_or_end_of_input_ends(model):
    conversation, shown = talk(model, ["First", "/reset", "Second", "/quit", "never read"])
    assert [e.prompt for e in conversation.exchanges] == [
        "\n\nHuman: First\n\nAssistant:", "\n\nHuman: Second\n\nAssistant:"
    ]
    assert "(new conversation)" in shown
    assert shown.count("assistant> ") == 2  # the line after /quit was not answered
    conversation, _ = talk(model, ["Only", ""])  # a blank line is skipped; then end of input
    assert len(conversation.exchanges) == 1


def test_a_long_conversation_is_cut_to_fit_the_model(model):
    long = " ".join(["word"] * 200)  # over the tiny model's 128 positions on its own
    conversation, _ = talk(model, [long, long])
    assert len(conversation.exchanges) == 2
    assert all(1 <= e.answer.tokens <= SAMPLING.max_new_tokens for e in conversation.exchanges)


def test_run_chat_loads_the_folder(saved):
    out = io.StringIO()
    conversation = run_chat(saved, io.StringIO("Hi\n"), out, SAMPLING)
    assert len(conversation.exchanges) == 1
    assert out.getvalue().startswith(f"{saved}: GPT-2 1 layers x 32, 128 positions")


def test_a_path_with_no_model_is_a_one_line_error(tmp_path, saved):
    with pytest.raises(UserError, match="holds no saved model"):
        run_chat(tmp_path, io.StringIO(""), io.StringIO(), SAMPLING)
    result = CliRunner().invoke(app, ["chat", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output.strip() == f"error: {tmp_path}: holds no saved model (no config.json)"
    result = CliRunner().invoke(app, ["chat", str(saved), "--top-p", "0"])
    assert (result.exit_code, result.output.strip()) == (1, "error: top_p: 0.0; must be in (0, 1] (1 = off)")


def test_the_command_chats_with_a_saved_model(saved):
    result = CliRunner().invoke(app, ["chat", str(saved), "--temperature", "0", "--max-new-tokens", "4"],
                                input="Hello\n/quit\n")
    assert result.exit_code == 0, result.output
    assert result.output.count("assistant> ") == 1
