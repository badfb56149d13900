"""The SFT stage: its LoRA path (adapters where the config says, drawn from the seed, merged on save)
and its loss on the sound test answers."""

from __future__ import annotations

import json

import pandas as pd
import torch
from transformers import AutoModelForCausalLM

from gptpipe.config import LoraConfig, parse_params
from gptpipe.data.subsets import sound_test_pairs
from gptpipe.models.lora import add_lora
from stage_runs import run_sft
from gptpipe.models.lora import LoRALinear
from gptpipe.models.gpt2 import build_scratch, save_model
from gptpipe.data.tokenizer import read_arrow
from tiny import TINY


def _lora_a(model) -> list[torch.Tensor]:
    return [m.lora_A.detach().clone() for m in model.modules() if isinstance(m, LoRALinear)]


def test_add_lora_at_rank_0_leaves_the_model_alone(tiny_params):
    model = build_scratch(tiny_params.model, 0)
    add_lora(model, LoraConfig(rank=0), seed=0)
    assert not _lora_a(model)
    assert all(p.requires_grad for p in model.parameters())


def test_add_lora_draws_the_adapters_from_the_seed(tiny_params):
    lora = LoraConfig(rank=2, targets=("attn.c_attn",))
    models = [build_scratch(tiny_params.model, 0) for _ in range(3)]
    for model, seed in zip(models, (7, 7, 8), strict=True):
        torch.manual_seed(123)  # whatever the caller's RNG state: the seed argument decides A
        add_lora(model, lora, seed)
    same, other = _lora_a(models[1]), _lora_a(models[2])
    assert len(same) == tiny_params.model.n_layer
    assert all(torch.equal(a, b) for a, b in zip(_lora_a(models[0]), same, strict=True))
    assert not any(torch.equal(a, b) for a, b in zip(same, other, strict=True))


def test_sft_with_lora_changes_only_the_adapted_weights_and_saves_the_adapter(
    tiny_params, tokenized, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # the run's checkpoint folder is relative to the working directory
    base = tmp_path / "models" / "base"
    save_model(build_scratch(tiny_params.model, 0), base)
    train = {**TINY["train"], "max_steps": 4, "eval_every": 2}
    params = parse_params({**TINY, "train": {**train, "lora": {"rank": 2, "alpha": 4.0, "targets": ["attn.c_attn"]}}})
    out, metrics_path = tmp_path / "models" / "sft", tmp_path / "sft.json"
    metrics = run_sft(params, tokenized, base, out, metrics_path, tmp_path / "plots")

    assert json.loads(metrics_path.read_text()) == metrics
    assert metrics["lora_rank"] == 2 and 0 < metrics["trainable_fraction"] < 0.01
    trained = AutoModelForCausalLM.from_pretrained(out)  # plain transformers: LoRA merged in
    start = dict(AutoModelForCausalLM.from_pretrained(base).named_parameters())
    changed = {name for name, p in trained.named_parameters() if not torch.equal(p, start[name])}
    assert changed == {f"transformer.h.{i}.attn.c_attn.weight" for i in range(tiny_params.model.n_layer)}
    assert (out / "adapter").is_dir()


# -- the sound-answer test loss ----------------------------------------------------------------------


def test_sound_test_pairs_are_the_tokenized_pairs_the_ground_truth_calls_sound(tokenized):
    test = read_arrow(tokenized / "test.arrow")
    raw = tokenized.parent / "raw" / "test.parquet"
    truth = pd.read_parquet(raw).set_index("id")["flawed"]
    sound = sound_test_pairs(test, raw)
    assert 0 < sound.num_rows < test.num_rows  # the tiny set has flawed chosen responses
    assert set(sound["id"].to_pylist()) == {i for i in test["id"].to_pylist() if not truth[i]}
    assert sound.schema == test.schema


def test_data_without_ground_truth_or_sound_answers_has_no_sound_subset(tokenized, tmp_path):
    pairs = pd.read_parquet(tokenized.parent / "raw" / "test.parquet")
    test = read_arrow(tokenized / "test.arrow")
    pairs[["id", "prompt", "chosen", "rejected"]].to_parquet(tmp_path / "hh.parquet")  # HH: no meta columns
    assert sound_test_pairs(test, tmp_path / "hh.parquet") is None
    # synthetic.flawed_fraction: 1.0 leaves nothing to measure on: no eval set, not a 0/0 loss
    pairs.assign(flawed=True).to_parquet(tmp_path / "all-flawed.parquet")
    assert sound_test_pairs(test, tmp_path / "all-flawed.parquet") is None


def test_the_sound_answer_loss_is_logged_and_leaves_training_alone(tiny_params, tokenized, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = tmp_path / "models" / "base"
    save_model(build_scratch(tiny_params.model, 0), base)
    params = parse_params({**TINY, "train": {**TINY["train"], "max_steps": 4, "eval_every": 2}})
    runs = {}
    for name, raw in (("plain", None), ("sound", tokenized.parent / "raw" / "test.parquet")):
        runs[name] = run_sft(params, tokenized, base, tmp_path / name, tmp_path / f"{name}.json",
                             tmp_path / f"plots-{name}", raw_test=raw)

    assert "test_sound_loss" not in runs["plain"]
    assert runs["sound"]["test_sound_loss"] > 0 and runs["sound"]["test_sound_loss"] != runs["sound"]["test_loss"]
    assert runs["sound"]["test_loss"] == runs["plain"]["test_loss"]  # an extra eval set changes no step
    trained = [AutoModelForCausalLM.from_pretrained(tmp_path / name).state_dict() for name in runs]
    assert all(torch.equal(trained[0][k], trained[1][k]) for k in trained[0])
    header = (tmp_path / "plots-sound" / "loss.tsv").read_text().splitlines()[0].split("\t")
    assert header[-2:] == ["test_sound_loss", "test_sound_bpb"]
