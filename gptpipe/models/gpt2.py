"""Building, loading and saving GPT-2 models (transformers' GPT2LMHeadModel, save_pretrained format)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from gptpipe.config import ModelConfig
from gptpipe.models.architecture import scratch_config
from gptpipe.errors import UserError, first_line, reading
from gptpipe.files import atomic_path
from gptpipe.hub import unreachable_reason
from gptpipe.data.tokenizer import EOT_ID, GPT2_VOCAB_SIZE

HUB_GPT2 = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")


class ModelUnreachable(UserError):
    """Pretrained weights that could not be loaded; the message names the offline alternative."""


def build_scratch(cfg: ModelConfig, seed: int, vocab_size: int = GPT2_VOCAB_SIZE, eot_id: int = EOT_ID) -> PreTrainedModel:
    """A randomly initialised model of the configured arch and shape (transformers' own init, seeded),
    its vocabulary the run's tokenizer's (GPT-2's BPE unless a trained one is passed)."""
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(scratch_config(cfg, eot_id, vocab_size))


def load_pretrained(name: str) -> PreTrainedModel:
    """Hub weights by id, or a local save_pretrained folder (an existing absolute path)."""
    if Path(name).is_absolute() or Path(name).exists():
        if not (Path(name) / "config.json").is_file():
            raise ModelUnreachable(f"{name}: no config.json; not a save_pretrained model folder")
        with reading(name, "saved model", fix="save it again with save_pretrained"):
            return AutoModelForCausalLM.from_pretrained(name)
    why = unreachable_reason()  # in seconds, where from_pretrained would retry for most of a minute
    if why is None:
        try:
            return AutoModelForCausalLM.from_pretrained(name)
        except OSError as err:
            why = first_line(err) or type(err).__name__
    raise ModelUnreachable(
        f"model.name={name!r}: could not load from the Hugging Face hub ({why}). Offline, run "
        "`model.save_pretrained(folder)` where the hub is reachable and set model.name to that absolute "
        "folder, or use model.init=scratch"
    )


def save_model(model: PreTrainedModel, out: Path, tokenizer=None) -> None:
    """save_pretrained into a temp folder, then rename: no half-written model folder. A trained
    tokenizer is saved beside the weights (GPT-2's saves nothing: the folder stays as it was)."""
    with atomic_path(out) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)


def load_model(path: Path) -> PreTrainedModel:
    if not (Path(path) / "config.json").is_file():
        raise ModelUnreachable(f"{path}: holds no saved model (no config.json)")
    with reading(path, "saved model"):
        return AutoModelForCausalLM.from_pretrained(path)
