"""LoRA (gptpipe.models.lora): equal to its base at init, trains only A and B, merges and reloads without
gptpipe, and matches PEFT's LoRA in outputs and gradients given the same A and B."""

from __future__ import annotations

import copy
import re

import peft
import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel
from transformers.pytorch_utils import Conv1D

from gptpipe.config import ARCH_LORA_TARGETS
from gptpipe.models.lora import (
    LoRALinear,
    apply_lora,
    load_adapter,
    lora_state_dict,
    merge_lora,
    save_adapter,
    trainable_parameters,
)

TARGETS = ARCH_LORA_TARGETS["gpt2"]  # lora.TARGETS is every arch's; these tests build GPT-2s
N_LAYER, N_EMBD, VOCAB = 2, 32, 300
RANK, ALPHA = 4, 8.0  # alpha != rank, so a wrong scaling (alpha/rank = 2) shows

# LoRA parameters per layer, in units of rank * n_embd: rank * (in + out) for each projection.
# c_attn d -> 3d, attn.c_proj d -> d, mlp.c_fc d -> 4d (GPT-2's n_inner), mlp.c_proj 4d -> d.
PER_LAYER = {"attn.c_attn": 1 + 3, "attn.c_proj": 1 + 1, "mlp.c_fc": 1 + 4, "mlp.c_proj": 4 + 1}


def tiny_config() -> GPT2Config:
    return GPT2Config(
        n_layer=N_LAYER, n_embd=N_EMBD, n_head=2, vocab_size=VOCAB, n_positions=64,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
    )


def build_base(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(tiny_config()).eval()


def batch(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (3, 16), generator=torch.Generator().manual_seed(seed))  # (B, T)


def lora_model(targets=TARGETS, seed: int = 0) -> GPT2LMHeadModel:
    return apply_lora(build_base(seed), rank=RANK, alpha=ALPHA, dropout=0.0, targets=targets)


def randomise_lora(model: nn.Module, seed: int = 2) -> None:
    """Random A and nonzero B, so the update B A is not zero and a wrong delta shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in lora_state_dict(model).values():
            tensor.copy_(0.1 * torch.randn(tensor.shape, generator=generator))


def logits(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids).logits  # (B, T, V)


# -- 1. at init a LoRA model is its base ---------------------------------------------------------


def test_lora_model_at_init_equals_its_base():
    base = build_base()
    lora = apply_lora(copy.deepcopy(base), rank=RANK, alpha=ALPHA, dropout=0.0, targets=TARGETS)
    layers = [m for m in lora.modules() if isinstance(m, LoRALinear)]
    assert len(layers) == N_LAYER * len(TARGETS)
    # B = 0 makes the update zero; A must not be, or B would get no gradient on the first step.
    assert all(torch.count_nonzero(m.lora_B) == 0 and torch.count_nonzero(m.lora_A) > 0 for m in layers)
    ids = batch()
    assert torch.equal(logits(lora, ids), logits(base, ids))


@pytest.mark.parametrize("kind", [Conv1D, nn.Linear])
def test_layer_equals_its_merged_weight_in_either_layout(kind):
    torch.manual_seed(0)
    base = Conv1D(7, 5) if kind is Conv1D else nn.Linear(5, 7)  # both 5 -> 7
    nn.init.normal_(base.weight)
    nn.init.normal_(base.bias)
    layer = LoRALinear(base, rank=2, alpha=6.0, dropout=0.0)
    assert layer.lora_A.shape == (2, 5) and layer.lora_B.shape == (7, 2) and layer.scaling == 3.0
    with torch.no_grad():
        layer.lora_B.normal_()
    merged = layer.merged_weight()
    assert merged.shape == base.weight.shape
    x = torch.randn(4, 5)
    as_matrix = merged if kind is Conv1D else merged.T  # (in, out)
    expected = x @ as_matrix + base.bias
    assert torch.allclose(layer(x), expected, atol=1e-5)
    # The update itself, independently of the layout: scaling * x A^T B^T.
    assert torch.allclose(layer(x) - base(x), 3.0 * x @ layer.lora_A.T @ layer.lora_B.T, atol=1e-5)


# -- 2. only A and B train -----------------------------------------------------------------------


def test_only_lora_parameters_get_gradients_and_optimizer_state():
    model = lora_model().train()
    lora_names = {n for n, _ in model.named_parameters() if n.endswith((".lora_A", ".lora_B"))}
    assert len(lora_names) == 2 * N_LAYER * len(TARGETS)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == lora_names

    ids = batch()
    model(ids, labels=ids).loss.backward()
    assert {n for n, p in model.named_parameters() if p.grad is not None} == lora_names

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    optimizer.step()
    with_state = {id(p) for p in optimizer.state}
    assert {n for n, p in model.named_parameters() if id(p) in with_state} == lora_names

    assert trainable_parameters(model) == N_LAYER * RANK * 16 * N_EMBD


@pytest.mark.parametrize("rank", [1, 8, 32])
def test_gpt2_124m_trains_147456_parameters_per_rank(rank):
    with torch.device("meta"):  # GPT-2 124M's shape, no memory
        model = GPT2LMHeadModel(GPT2Config())
    apply_lora(model, rank=rank, alpha=2.0 * rank, dropout=0.0, targets=TARGETS)
    assert trainable_parameters(model) == 147_456 * rank == 12 * rank * 16 * 768


def test_per_layer_factors_add_up_to_sixteen():
    assert sum(PER_LAYER.values()) == 16


@pytest.mark.parametrize(
    "targets",
    [("attn.c_attn",), ("attn.c_proj",), ("mlp.c_fc",), ("mlp.c_proj",),
     ("attn.c_attn", "attn.c_proj"), ("attn.c_proj", "mlp.c_proj"), ("mlp.c_fc", "mlp.c_proj")],
)
def test_trainable_count_for_a_subset_of_targets(targets):
    model = lora_model(targets)
    assert trainable_parameters(model) == N_LAYER * RANK * N_EMBD * sum(PER_LAYER[t] for t in targets)
    wrapped = sorted(n for n, m in model.named_modules() if isinstance(m, LoRALinear))
    assert wrapped == sorted(f"transformer.h.{i}.{t}" for i in range(N_LAYER) for t in targets)


# -- 3. merge, save, reload ----------------------------------------------------------------------


def test_merged_model_equals_lora_and_loads_without_gptpipe(tmp_path):
    model = lora_model()
    randomise_lora(model)
    ids = batch()
    unmerged = logits(model, ids)
    assert not torch.allclose(unmerged, logits(build_base(), ids), atol=1e-3)  # the delta is real

    merged = merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in merged.modules())
    assert isinstance(merged.transformer.h[0].attn.c_attn, Conv1D)
    assert torch.allclose(logits(merged, ids), unmerged, atol=1e-5)
    assert not lora_state_dict(merged)

    merged.save_pretrained(tmp_path / "merged")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert type(reloaded) is GPT2LMHeadModel
    assert torch.allclose(logits(reloaded, ids), unmerged, atol=1e-5)


def test_adapter_is_small_and_reproduces_the_model_on_a_fresh_base(tmp_path):
    model = lora_model()
    randomise_lora(model)
    ids = batch()
    save_adapter(model, tmp_path / "adapter", rank=RANK, alpha=ALPHA, dropout=0.0, targets=TARGETS)
    build_base().save_pretrained(tmp_path / "base")

    adapter_bytes = sum(f.stat().st_size for f in (tmp_path / "adapter").iterdir())
    model_bytes = sum(f.stat().st_size for f in (tmp_path / "base").iterdir())
    assert adapter_bytes < model_bytes / 5  # 4,096 parameters against 37,120

    reloaded = load_adapter(build_base(), tmp_path / "adapter")
    assert torch.equal(logits(reloaded, ids), logits(model, ids))
    assert trainable_parameters(reloaded) == trainable_parameters(model)


def test_save_adapter_refuses_a_config_the_model_was_not_built_with(tmp_path):
    model = lora_model(("attn.c_attn",))
    for wrong in [{"rank": RANK + 1}, {"alpha": ALPHA + 1}, {"targets": ("attn.c_attn", "mlp.c_fc")}]:
        arguments = {"rank": RANK, "alpha": ALPHA, "dropout": 0.0, "targets": ("attn.c_attn",)} | wrong
        with pytest.raises(ValueError, match="not those the model was built with"):
            save_adapter(model, tmp_path / "adapter", **arguments)
    assert not (tmp_path / "adapter").exists()


# -- 4. equal to PEFT ----------------------------------------------------------------------------


def peft_model(targets, dropout: float) -> nn.Module:
    # A regex on the full name. In PEFT's list form a bare "c_proj" matches attention and MLP alike
    # (a dotted "attn.c_proj" in the list would work too: PEFT matches list items as ".<item>" suffixes).
    pattern = r".*\.(" + "|".join(re.escape(t) for t in targets) + ")"
    config = peft.LoraConfig(
        r=RANK, lora_alpha=ALPHA, lora_dropout=dropout, target_modules=pattern, fan_in_fan_out=True
    )
    return peft.get_peft_model(build_base(), config)


def peft_name(ours: str) -> str:
    """transformer.h.0.attn.c_attn.lora_A -> base_model.model.transformer.h.0.attn.c_attn.lora_A.default.weight"""
    return f"base_model.model.{ours}.default.weight"


@pytest.mark.parametrize(
    "targets, dropout",
    [(TARGETS, 0.0), (("attn.c_attn", "attn.c_proj"), 0.0), (("attn.c_proj", "mlp.c_fc"), 0.3)],
)
def test_outputs_and_gradients_equal_peft(targets, dropout):
    ours = apply_lora(build_base(), rank=RANK, alpha=ALPHA, dropout=dropout, targets=targets)
    theirs = peft_model(targets, dropout)
    randomise_lora(ours)
    ours_lora = dict(ours.named_parameters())
    theirs_params = dict(theirs.named_parameters())
    names = list(lora_state_dict(ours))
    # Same adapted modules: PEFT trains exactly the tensors we do, in the same shapes (A (r, in), B (out, r)).
    assert {peft_name(n) for n in names} == {n for n, p in theirs_params.items() if p.requires_grad}
    with torch.no_grad():
        for name in names:
            theirs_params[peft_name(name)].copy_(ours_lora[name])

    ids = batch()
    ours.train(), theirs.train()  # dropout, if any, on: same seed, same masks iff it sits in the same place
    torch.manual_seed(5)
    ours_out = ours(ids, labels=ids)
    torch.manual_seed(5)
    theirs_out = theirs(input_ids=ids, labels=ids)
    assert torch.allclose(ours_out.logits, theirs_out.logits, atol=1e-5)

    ours_out.loss.backward()
    theirs_out.loss.backward()
    for name in names:
        assert torch.allclose(ours_lora[name].grad, theirs_params[peft_name(name)].grad, atol=1e-5), name


# -- 5. bad arguments ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, argument",
    [
        ({"rank": 0}, "rank"),
        ({"rank": 2.5}, "rank"),
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": -1.0}, "alpha"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"targets": ("c_proj",)}, "targets"),  # ambiguous in GPT-2: attention or MLP
        ({"targets": ("attn.c_attn", "lm_head")}, "targets"),
        ({"targets": ()}, "targets"),
        ({"targets": "attn.c_attn"}, "targets"),  # a string, not a list of them
    ],
)
def test_bad_arguments_are_refused_before_the_model_is_touched(bad, argument):
    model = build_base()
    arguments = {"rank": RANK, "alpha": ALPHA, "dropout": 0.0, "targets": TARGETS} | bad
    with pytest.raises(ValueError, match=rf"^{argument}\b") as err:
        apply_lora(model, **arguments)
    assert "\n" not in str(err.value)
    assert all(p.requires_grad for p in model.parameters())
    assert not any(isinstance(m, LoRALinear) for m in model.modules())


def test_lora_twice_and_a_model_without_the_targets_are_refused():
    with pytest.raises(ValueError, match="already has LoRA"):
        apply_lora(lora_model(), rank=RANK, alpha=ALPHA, dropout=0.0, targets=TARGETS)
    with pytest.raises(ValueError, match="names no module"):
        apply_lora(nn.Sequential(nn.Linear(4, 4)), rank=1, alpha=1.0, dropout=0.0, targets=TARGETS)


# -- 6. training moves A and B, never the base ---------------------------------------------------


def test_steps_change_the_output_but_not_one_base_weight():
    model = lora_model()
    ids = batch()
    before = logits(model, ids)
    base_before = {n: t.clone() for n, t in model.state_dict().items() if n not in lora_state_dict(model)}

    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        model(ids, labels=ids).loss.backward()
        optimizer.step()
    model.eval()

    assert all(torch.count_nonzero(m.lora_B) > 0 for m in model.modules() if isinstance(m, LoRALinear))
    assert (logits(model, ids) - before).abs().max() > 1e-3
    base_after = model.state_dict()
    assert all(torch.equal(base_after[n], t) for n, t in base_before.items())
