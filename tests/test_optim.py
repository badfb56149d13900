import copy as copy_module

import pytest
import torch

from gptpipe.config import OPTIMIZERS, LoopConfig
from gptpipe.models.gpt2 import build_scratch
from gptpipe.train.optim import (
    DEFAULT_LR, MuonAdamW, build_optimizer, hidden_matrices, memory_split, theoretical_state_bytes,
)
from tiny import run_tiny


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_optimizer_state_bytes_match_the_formula(name, tiny_params):
    model = build_scratch(tiny_params.model, seed=0)
    cfg = LoopConfig(optimizer=name, galore_rank=8)
    hidden = hidden_matrices(model)
    optimizer = build_optimizer(model.parameters(), cfg, hidden=hidden)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()
    measured = memory_split(model, optimizer)
    n = sum(p.numel() for p in model.parameters())
    theory = theoretical_state_bytes(cfg, model.parameters(), hidden=hidden)
    tensors = len(list(model.parameters()))
    if name == "muon":  # one momentum copy of the block matrices, AdamW's two (and a step each) of the rest
        in_blocks = sum(p.numel() for p in model.transformer.h.parameters() if p.dim() == 2)
        assert theory == 4 * in_blocks + 8 * (n - in_blocks) and 0 < in_blocks < n
        assert measured["optimizer_state"] == theory + 4 * (tensors - len(hidden))
    elif name == "adafactor":  # a row and a column per matrix (m + n values), a full vector per vector
        values = sum(sum(p.shape) if p.dim() == 2 else p.numel() for p in model.parameters())
        assert theory == 4 * values and theory < 0.05 * 4 * n
        assert measured["optimizer_state"] == theory + 4 * tensors  # step counters
    elif name == "galore":
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


def newton_schulz(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Keller Jordan's quintic iteration X <- a X + (b A + c A^2) X, A = X X^T, on the wide side, from
    X = G / ||G||_F, in float64 (torch.optim.Muon computes it in bf16): near the orthogonal factor U V^T."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.double()
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    x = x / x.norm().clamp(min=1e-7)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.T if tall else x).float()


def test_muon_update_is_the_orthogonalised_nesterov_momentum_at_adamws_rms():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(6, 10))
    bias = torch.nn.Parameter(torch.randn(10))
    before = w.detach().clone()
    opt = MuonAdamW([w], [{"params": [bias], "weight_decay": 0.0}], lr=0.01, weight_decay=0.0, betas=(0.9, 0.95), eps=1e-8)
    g = torch.randn(6, 10)
    w.grad, bias.grad = g.clone(), torch.randn(10)
    opt.step()
    # Step 1: buffer = (1 - mu) g; Nesterov: g.lerp(buffer, mu) = (1 - mu^2) g. NS is scale-free, so
    # the update is NS(g), scaled by 0.2 sqrt(max(6, 10)) (match_rms_adamw).
    update = (before - w.detach()) / (0.01 * 0.2 * 10**0.5)
    # torch iterates in bf16 (8 bits of mantissa): each entry within 6e-2, on average within 1e-2.
    error = (update - newton_schulz(g)).abs()
    assert error.max() < 6e-2 and error.mean() < 1e-2
    assert update.abs().mean() > 0.1  # entries of O(1 / sqrt(10)): the tolerance is a tenth of one
    # The closed form is near-orthogonal: singular values of NS(g) lie in roughly [0.7, 1.2].
    s = torch.linalg.svdvals(newton_schulz(g))
    assert s.min() > 0.5 and s.max() < 1.3
    assert opt.state[bias]["exp_avg"].shape == bias.shape  # the vector went to AdamW


def test_muon_refuses_a_parameter_that_is_not_a_matrix_in_one_line():
    with pytest.raises(ValueError, match=r"optimizer muon: a parameter of shape \(4,\) is not a 2-D matrix") as err:
        MuonAdamW([torch.nn.Parameter(torch.zeros(4))], [], lr=0.01, weight_decay=0.0, betas=(0.9, 0.95), eps=1e-8)
    assert "\n" not in str(err.value)


def test_muon_state_round_trips_through_a_state_dict(tiny_params):
    def muon(model):
        return build_optimizer(model.parameters(), LoopConfig(optimizer="muon"), hidden=hidden_matrices(model))

    def step(model, optimizer, seed):
        for i, p in enumerate(model.parameters()):
            p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(seed * 1000 + i))
        optimizer.step()

    model = build_scratch(tiny_params.model, seed=0)
    optimizer = muon(model)
    step(model, optimizer, 1)
    copy = copy_module.deepcopy(model)
    resumed = muon(copy)
    resumed.load_state_dict(copy_module.deepcopy(optimizer.state_dict()))  # as a checkpoint holds it
    step(model, optimizer, 2), step(copy, resumed, 2)
    for (n, p), q in zip(model.named_parameters(), copy.parameters()):
        assert torch.equal(q, p), n  # momentum and AdamW moments came back, in the right groups


def test_adafactor_steps_no_further_than_the_weights_rms_over_root_t_whatever_its_lr():
    """torch.optim.Adafactor's step is min(lr, 1/sqrt(t)) times the weights' RMS (its relative step):
    an lr above 1/sqrt(t) changes nothing. So raising the study's Adafactor lr (0.15, past 1/sqrt(t)
    from step 45) cannot make it take larger steps; a smaller lr only makes them smaller."""
    start = torch.randn(16, 12, generator=torch.Generator().manual_seed(0)) * 0.02

    def weights_after(lr: float, steps: int = 30) -> torch.Tensor:
        weight = torch.nn.Parameter(start.clone())
        optimizer = torch.optim.Adafactor([weight], lr=lr)
        gradients = torch.Generator().manual_seed(1)
        for _ in range(steps):
            weight.grad = torch.randn(16, 12, generator=gradients)
            optimizer.step()
        return weight.detach()

    assert torch.equal(weights_after(1.0), weights_after(100.0))  # 1/sqrt(t) <= 1 from the first step
    assert not torch.equal(weights_after(0.1), weights_after(1.0))  # 0.1 < 1/sqrt(t) for t < 100
    rms = float(start.pow(2).mean().sqrt())
    one = torch.nn.Parameter(start.clone())
    optimizer = torch.optim.Adafactor([one], lr=100.0)
    one.grad = torch.outer(torch.linspace(0.5, 2.0, 16), torch.linspace(-1.0, 3.0, 12))
    optimizer.step()  # t = 1, a rank-1 gradient: its factored moments are exact, the update is sign(g), RMS 1
    assert float((one.detach() - start).pow(2).mean().sqrt()) == pytest.approx(rms, rel=1e-5)


def test_muon_trains_lora_adapters_alone(tiny_params):
    # With LoRA every trainable tensor is an adapter matrix: Muon holds them all and AdamW nothing
    # (it used to be built empty and refuse). Only the adapters move; the state round-trips.
    from gptpipe.models.lora import apply_lora

    model = apply_lora(build_scratch(tiny_params.model, seed=0), rank=2, alpha=4.0, dropout=0.0, targets=("attn.c_attn", "mlp.c_fc"))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    optimizer = build_optimizer(model.parameters(), LoopConfig(optimizer="muon"), hidden=hidden_matrices(model))
    assert optimizer.adamw is None and optimizer.muon.param_groups[0]["params"]
    loss = model(torch.arange(8)[None], labels=torch.arange(8)[None]).loss
    loss.backward()
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer.step()
    assert all(not torch.equal(p, before[n]) for n, p in model.named_parameters() if p.requires_grad and n.endswith("lora_B"))
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if not p.requires_grad)
    resumed = build_optimizer(model.parameters(), LoopConfig(optimizer="muon"), hidden=hidden_matrices(model))
    resumed.load_state_dict(optimizer.state_dict())
    assert resumed.state_dict()["state"].keys() == optimizer.state_dict()["state"].keys()


FSDP_STEP = """
import os, sys, torch, torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from transformers import GPT2Config, GPT2LMHeadModel
from gptpipe.config import LoopConfig
from gptpipe.train.optim import build_optimizer
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1])
dist.init_process_group("gloo", rank=0, world_size=1)
model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=64, vocab_size=100))
for block in model.transformer.h:
    fully_shard(block)
fully_shard(model)
for name in sys.argv[2:]:
    optimizer = build_optimizer(model.parameters(), LoopConfig(optimizer=name))
    model(torch.arange(8)[None], labels=torch.arange(8)[None]).loss.backward()
    optimizer.step()
    print(name, "stepped")
dist.destroy_process_group()
"""


def test_every_optimizer_fsdp_allows_steps_on_sharded_weights():
    # FSDP's parameters are DTensors (a one-process group shards them just the same): fused SGD has no
    # sharding rule for them, so config's check passing sgd under fsdp meant a crash at step one.
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    allowed = ["sgd", "momentum", "nesterov", "adam", "adamw"]  # config refuses galore, muon, adafactor
    out = subprocess.run([sys.executable, "-c", FSDP_STEP, port, *allowed], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-1500:]
    assert out.stdout.split() == [w for name in allowed for w in (name, "stepped")]
