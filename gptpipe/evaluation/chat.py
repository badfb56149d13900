"""`gptpipe chat PATH`: a multi-turn conversation with a saved model, in the HH format it learnt.

The conversation is the text the model was trained on: `\\n\\nHuman: …\\n\\nAssistant: …` turns, each
new message appended as a Human turn and the prompt ending in `\\n\\nAssistant:`. When it outgrows
the model's positions, `generate` cuts it from the left by tokens, as the tokenize stage cut the
training prompts, so the model sees the kind of context it was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from transformers import PreTrainedModel

from gptpipe.evaluation.generate import Answer, Sampling, generate, prompt_seed
from gptpipe.data.hh import ASSISTANT, HUMAN
from gptpipe.models.gpt2 import load_model
from gptpipe.data.tokenizer import Gpt2Bpe, Tokenizer, load_tokenizer

HELP = "Type a message and press Enter; /reset starts a new conversation, /quit (or Ctrl-D) leaves."


@dataclass
class Exchange:
    prompt: str  # the whole text the model answered
    answer: Answer


@dataclass
class Conversation:
    """The dialogue so far, as HH text, and every exchange (a reset clears the text, not these)."""

    history: str = ""
    exchanges: list[Exchange] = field(default_factory=list)

    def prompt_for(self, message: str) -> str:
        return f"{self.history}{HUMAN} {message}{ASSISTANT}"

    def add(self, prompt: str, answer: Answer) -> None:
        reply = answer.text.strip()
        self.history = f"{prompt} {reply}" if reply else prompt
        self.exchanges.append(Exchange(prompt, answer))


def chat_loop(
    model: PreTrainedModel, stdin: TextIO, stdout: TextIO, sampling: Sampling, seed: int = 0,
    tokenizer: Tokenizer | None = None,
) -> Conversation:
    """Read messages from stdin until /quit or end of input, answering each on stdout.
    tokenizer: the model's (load_tokenizer(model folder)); None is GPT-2's BPE."""
    tokenizer = tokenizer or Gpt2Bpe()
    conversation = Conversation()
    print(HELP, file=stdout)
    while True:
        print("you> ", end="", file=stdout, flush=True)
        line = stdin.readline()
        if not line:  # end of input (Ctrl-D, or the end of a piped file)
            print(file=stdout)
            return conversation
        message = line.strip()
        if message == "/quit":
            return conversation
        if message == "/reset":
            conversation.history = ""
            print("(new conversation)", file=stdout)
        elif message:
            prompt = conversation.prompt_for(message)
            # One seed per exchange: a rerun with the same seed and messages replays the conversation.
            turn_seed = prompt_seed(seed, str(len(conversation.exchanges)))
            prompt_ids = tokenizer.encode_batch([prompt])[0]
            answer = generate(model, [prompt_ids], sampling, [turn_seed], batch_size=1, tokenizer=tokenizer).answers[0]
            conversation.add(prompt, answer)
            print(f"assistant> {answer.text.strip()}", file=stdout, flush=True)


def run_chat(path: Path, stdin: TextIO, stdout: TextIO, sampling: Sampling, seed: int = 0) -> Conversation:
    model = load_model(path)  # a folder with no model: a one-line UserError
    cfg = model.config
    arch = "GPT-2" if cfg.model_type == "gpt2" else cfg.model_type  # the names readers know
    print(f"{path}: {arch} {cfg.num_hidden_layers} layers x {cfg.hidden_size}, {cfg.max_position_embeddings} positions",
          file=stdout)
    return chat_loop(model, stdin, stdout, sampling, seed, load_tokenizer(path))
