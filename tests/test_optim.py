import pytest
import torch

from gptpipe.config import OPTIMIZERS, LoopConfig
from gptpipe.models.gpt2 import build_scratch
from gptpipe.train.optim import DEFAULT_LR, build_optimizer, memory_split, theoretical_state_bytes
from tiny import run_tiny


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizer_state_bytes_match_the_formula(name, tiny_params):
    model = build_scratch(tiny_params.model, seed=0)
    cfg = LoopConfig(optimizer=name, galore_rank=8)
    optimizer = build_optimizer(model.parameters(), cfg)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()
    measured = memory_split(model, optimizer)
    n = sum(p.numel() for p in model.parameters())
    theory = theoretical_state_bytes(cfg, model.parameters())
    if name == "galore":
        assert measured["optimizer_state"] - theory == pytest.approx(0, abs=4 * 64)  # step counters
        assert theory < 0.5 * 8 * n
    else:
        expected = {"sgd": 0, "momentum": 4, "nesterov": 4, "adam": 8, "adamw": 8}[name] * n
        assert theory == expected
        # Adam and AdamW also keep a scalar step counter per tensor (4 bytes each).
        counters = 4 * len(list(model.parameters())) if name in ("adam", "adamw") else 0
        assert measured["optimizer_state"] == expected + counters
    assert measured["parameters"] == measured["gradients"] == 4 * n


def test_frozen_parameters_get_no_optimizer_state(tiny_params):
    model = build_scratch(tiny_params.model, seed=0)
    for name, p in model.named_parameters():
        p.requires_grad = "ln_f" in name
    optimizer = build_optimizer(model.parameters(), LoopConfig(optimizer="adamw"))
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.ones_like(p)
    optimizer.step()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert memory_split(model, optimizer)["optimizer_state"] == 8 * trainable + 4 * 2


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_each_optimizer_lowers_the_test_loss_at_its_default_lr(name, tiny_params, tokenized, tmp_path):
    cfg = tiny_params.train.model_copy(update={"optimizer": name, "lr": None, "max_steps": 10, "eval_every": 10,
                                               "galore_rank": 8, "galore_update_every": 5})
    _, state, metrics = run_tiny(tiny_params, tokenized, tmp_path, cfg)
    assert metrics["lr"] == DEFAULT_LR[name]
    assert state.rows[-1]["test_loss"] < state.rows[0]["test_loss"] - 0.05
