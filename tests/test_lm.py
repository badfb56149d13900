"""The SFT stage's LoRA path: adapters where the config says, drawn from the seed, merged on save."""

from __future__ import annotations

import json

import torch
from transformers import AutoModelForCausalLM

from gptpipe.config import LoraConfig, parse_params
from gptpipe.lm import add_lora, run_sft
from gptpipe.lora import LoRALinear
from gptpipe.model import build_scratch, save_model
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
    params = parse_params({**TINY, "train": train, "lora": {"rank": 2, "alpha": 4.0, "targets": ["attn.c_attn"]}})
    out, metrics_path = tmp_path / "models" / "sft", tmp_path / "sft.json"
    metrics = run_sft(params, tokenized, base, out, metrics_path, tmp_path / "plots")

    assert json.loads(metrics_path.read_text()) == metrics
    assert metrics["lora_rank"] == 2 and 0 < metrics["trainable_fraction"] < 0.01
    trained = AutoModelForCausalLM.from_pretrained(out)  # plain transformers: LoRA merged in
    start = dict(AutoModelForCausalLM.from_pretrained(base).named_parameters())
    changed = {name for name, p in trained.named_parameters() if not torch.equal(p, start[name])}
    assert changed == {f"transformer.h.{i}.attn.c_attn.weight" for i in range(tiny_params.model.n_layer)}
    assert (out / "adapter").is_dir()
