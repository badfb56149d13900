"""LoRA: a frozen GPT-2 plus trainable low-rank updates (Hu et al. 2021, arXiv:2106.09685).

Each targeted projection W0 becomes W0 + (alpha / rank) * B A, with A (rank, in) and B (out, rank),
and only A and B are trained (Section 4.1). For GPT-2 on all four targets that is
n_layer * rank * 16 * n_embd parameters: per layer c_attn d->3d (4d r), attn.c_proj d->d (2d r),
mlp.c_fc d->4d (5d r), mlp.c_proj 4d->d (5d r).

Checked against PEFT's LoRA (tests/test_lora.py): same outputs and gradients given the same A and B.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

from gptpipe.config import LORA_TARGETS, LoraConfig
from gptpipe.errors import reading
from gptpipe.files import atomic_path

# Suffixes of the projections in a block, per arch (gptpipe.config.ARCH_LORA_TARGETS). GPT-2's c_attn is
# the fused q, k, v projection (d -> 3d): one rank-r update shared by all three, unlike the paper's
# separate Wq and Wv updates (Section 4.2); llama's q, k, v are separate nn.Linear layers, as PEFT
# names them. The paper adapts attention only (Section 7.1); the MLP targets are for the rank studies.
TARGETS = LORA_TARGETS

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


class LoRALinear(nn.Module):
    """A frozen projection plus scaling * B(A(dropout(x))).

    Wraps a transformers Conv1D (weight (in, out), y = x W + b) or an nn.Linear (weight (out, in)).
    A is initialised kaiming_uniform_(a=sqrt(5)) and B with zeros, so B A = 0 and the wrapped layer
    equals its base at step 0 (Section 4.1). The paper draws A from a Gaussian; we follow its reference
    code (loralib) and PEFT, which use nn.Linear's default init, so results compare with theirs.
    """

    def __init__(self, base: nn.Module, rank: int, alpha: float, dropout: float):
        super().__init__()
        if isinstance(base, Conv1D):
            in_features, out_features = base.weight.shape
        elif isinstance(base, nn.Linear):
            out_features, in_features = base.weight.shape
        else:
            raise TypeError(f"LoRALinear wraps a Conv1D or an nn.Linear, not {type(base).__name__}")
        self.base = base
        self.rank = rank
        # alpha / rank keeps the update's size roughly independent of rank under Adam, so changing
        # rank needs no new learning rate (Section 4.1).
        self.scaling = alpha / rank
        # On A's input only (loralib, PEFT); the paper does not say where its LoRA dropout goes.
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        like = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(rank, in_features, **like))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank, **like))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (..., in)
        low_rank = self.dropout(x) @ self.lora_A.T  # (..., rank)
        return self.base(x) + self.scaling * (low_rank @ self.lora_B.T)  # (..., out)

    def merged_weight(self) -> torch.Tensor:
        """W0 + scaling * B A in the base layer's own layout: serving then costs nothing extra (Section 4.1)."""
        delta = self.scaling * (self.lora_B @ self.lora_A)  # (out, in)
        if isinstance(self.base, Conv1D):
            delta = delta.T  # Conv1D stores (in, out)
        return self.base.weight + delta


def apply_lora(
    model: nn.Module, *, rank: int, alpha: float, dropout: float, targets: Sequence[str]
) -> nn.Module:
    """In place: wrap every module named `<...>.<target>` in a LoRALinear and freeze everything else.

    Frozen parameters get no gradient and, as the optimizer skips them, no optimizer state: that is
    where LoRA's memory saving comes from (Section 4.1). A is drawn from torch's RNG, module by module
    in model order, so the caller's seed fixes it.
    """
    _check_arguments(rank=rank, alpha=alpha, dropout=dropout, targets=targets)
    if any(isinstance(module, LoRALinear) for module in model.modules()):
        raise ValueError("apply_lora: the model already has LoRA layers; merge_lora it first")
    names = _matching_names(model, targets)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for name in names:
        _replace(model, name, LoRALinear(model.get_submodule(name), rank, alpha, dropout))
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """In place: each LoRALinear becomes its base layer holding W0 + scaling * B A.

    What is left is the plain transformers model (save_pretrained / from_pretrained need no gptpipe
    code), with every parameter trainable again, as a freshly loaded model would be.
    """
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            with torch.no_grad():
                module.base.weight.copy_(module.merged_weight())
            _replace(model, name, module.base)
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block every LoRALinear computes its base layer alone: the model is its base again.

    Setting the scaling to 0 makes each layer return base(x) + 0 exactly, bit for bit (the low-rank
    product is still computed; at rank r that is a small cost). DPO uses this for its live reference:
    a LoRA policy with fresh adapters is its reference, so no second copy of the model is needed.
    """
    layers = [module for module in model.modules() if isinstance(module, LoRALinear)]
    saved = [layer.scaling for layer in layers]
    for layer in layers:
        layer.scaling = 0.0
    try:
        yield model
    finally:
        for layer, scaling in zip(layers, saved, strict=True):
            layer.scaling = scaling


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter alone: every lora_A and lora_B, keyed by qualified name."""
    return {
        name: tensor
        for name, tensor in model.state_dict().items()
        if name.endswith((".lora_A", ".lora_B"))
    }


def save_adapter(
    model: nn.Module,
    folder: Path,
    *,
    rank: int,
    alpha: float,
    dropout: float,
    targets: Sequence[str],
) -> None:
    """folder/adapter.safetensors and folder/adapter_config.json, written whole or not at all."""
    _check_arguments(rank=rank, alpha=alpha, dropout=dropout, targets=targets)
    _check_model_matches(model, rank=rank, alpha=alpha, targets=targets)
    tensors = {name: t.detach().contiguous() for name, t in lora_state_dict(model).items()}
    config = {
        "rank": rank,
        "alpha": alpha,
        "dropout": dropout,
        "targets": list(targets),
        "n_parameters": sum(t.numel() for t in tensors.values()),
    }
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS))
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")


def load_adapter(model: nn.Module, folder: Path) -> nn.Module:
    """apply_lora with the saved config onto a base model, then the saved A and B."""
    with reading(Path(folder) / ADAPTER_CONFIG, "LoRA adapter config"):
        config = json.loads((Path(folder) / ADAPTER_CONFIG).read_text())
    apply_lora(
        model,
        rank=config["rank"],
        alpha=config["alpha"],
        dropout=config["dropout"],
        targets=config["targets"],
    )
    with reading(Path(folder) / ADAPTER_WEIGHTS, "LoRA adapter"):
        saved = load_file(str(Path(folder) / ADAPTER_WEIGHTS))
    expected = set(lora_state_dict(model))
    if set(saved) != expected:
        raise ValueError(
            f"{folder}/{ADAPTER_WEIGHTS}: its tensors do not fit this model "
            f"({len(set(saved) - expected)} unexpected, {len(expected - set(saved))} missing); "
            "load it onto the base model it was trained from"
        )
    model.load_state_dict(saved, strict=False)  # strict=False: the base weights are not in `saved`
    return model


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _check_arguments(*, rank: int, alpha: float, dropout: float, targets: Sequence[str]) -> None:
    """Refuse, with one line, a value that cannot work; nothing is silently adjusted."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank={rank!r}: must be an integer >= 1")
    if not alpha > 0:
        raise ValueError(f"alpha={alpha!r}: must be > 0")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout={dropout!r}: must be in [0, 1)")
    if isinstance(targets, str) or not targets:
        raise ValueError(f"targets={targets!r}: must be a non-empty list drawn from {list(TARGETS)}")
    unknown = [target for target in targets if target not in TARGETS]
    if unknown:
        raise ValueError(f"targets: unknown {unknown}; allowed: {list(TARGETS)}")


def _matching_names(model: nn.Module, targets: Sequence[str]) -> list[str]:
    """Qualified names ending in `.<target>`; a target matching nothing means this is no GPT-2."""
    names = [
        name
        for name, _ in model.named_modules()
        if any(name == target or name.endswith("." + target) for target in targets)
    ]
    for target in targets:
        if not any(name == target or name.endswith("." + target) for name in names):
            raise ValueError(f"targets: {target!r} names no module of this {type(model).__name__}")
    return names


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child_name = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child_name, module)


def _check_model_matches(model: nn.Module, *, rank: int, alpha: float, targets: Sequence[str]) -> None:
    """The config written beside the weights must be the one that built them, or load_adapter breaks."""
    wrapped = {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}
    if not wrapped:
        raise ValueError("save_adapter: the model has no LoRA layers")
    if any(m.rank != rank or not math.isclose(m.scaling, alpha / rank) for m in wrapped.values()):
        raise ValueError(f"save_adapter: rank={rank}, alpha={alpha} are not those the model was built with")
    # On a LoRA model a target still names the wrapper ("...attn.c_attn"), never its ".base".
    if sorted(_matching_names(model, targets)) != sorted(wrapped):
        raise ValueError(f"save_adapter: targets={list(targets)} are not those the model was built with")


# -- from config: how the stages add and save adapters ------------------------------------------


def add_lora(model: PreTrainedModel, lora: LoraConfig, seed: int) -> None:
    """In place: LoRA adapters as the config says (none at rank 0), A drawn from `seed` so a
    rerun, or a resumed run, starts from the same adapters."""
    if lora.rank:
        torch.manual_seed(seed)
        apply_lora(model, rank=lora.rank, alpha=lora.alpha, dropout=lora.dropout, targets=lora.targets)


def save_finetuned(model: PreTrainedModel, out: Path, lora: LoraConfig | None, tokenizer=None) -> None:
    """save_pretrained weights (LoRA merged in, so plain transformers loads them) and, for LoRA,
    the adapter alone in out/adapter; all in a temp folder renamed at the end. A trained tokenizer
    goes beside them (gptpipe.data.tokenizer.Tokenizer.save_pretrained; GPT-2's writes nothing)."""
    with atomic_path(out) as tmp:
        if lora is not None and lora.rank:
            save_adapter(model, tmp / "adapter", rank=lora.rank, alpha=lora.alpha,
                         dropout=lora.dropout, targets=lora.targets)
            model = merge_lora(model)
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
