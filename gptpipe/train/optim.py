"""Optimizers by name, their learning-rate defaults, and where training memory goes."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from gptpipe.config import LoopConfig
from gptpipe.models.architecture import blocks
from gptpipe.train.runtime import transformer_bodies
from gptpipe.train.sharding import local

# Learning rates per family when train.lr is null. Adam-family steps are normalised per coordinate,
# so ~1e-3 suits small GPT-2s; plain SGD steps scale with the raw gradient, whose norm here is far
# below 1, so it needs a step two orders larger to move at all. Momentum and Nesterov accumulate
# ~1/(1-momentum) = 10 gradients, so they take a tenth of SGD's.
# GaLore normalises like Adam but only within the projected subspace; it takes Adam's step.
# Muon scales each orthogonalised update to AdamW's RMS (adjust_lr_fn="match_rms_adamw", Liu et al.
# 2025, "Muon is scalable"), so one lr serves its matrices and the AdamW groups beside them: AdamW's.
# torch's Adafactor scales its normalised step by the parameter's RMS (at least 1e-3): GPT-2's 0.02 init
# makes lr 0.05 a step of ~1e-3 per coordinate, Adam's. Its own default 1e-2 (a fifth of that) left the
# tiny test model's loss where it started after 10 steps (10.83 -> 10.79).
DEFAULT_LR = {"sgd": 0.5, "momentum": 0.05, "nesterov": 0.05, "adam": 1e-3, "adamw": 1e-3, "galore": 1e-3,
              "muon": 1e-3, "adafactor": 0.05}
# Muon's momentum (torch's and Keller Jordan's default; with Nesterov).
MUON_MOMENTUM = 0.95

# Optimizer-state copies of the parameters each keeps (exp_avg, exp_avg_sq, momentum_buffer).
STATE_COPIES = {"sgd": 0, "momentum": 1, "nesterov": 1, "adam": 2, "adamw": 2}  # muon, adafactor: see below


def learning_rate(cfg: LoopConfig) -> float:
    return cfg.lr if cfg.lr is not None else DEFAULT_LR[cfg.optimizer]


def hidden_matrices(module: nn.Module) -> list[nn.Parameter]:
    """The 2-D parameters inside the decoder blocks: Muon's matrices. Embeddings, the (tied) head, a
    reward model's scalar head and the final norm sit outside the blocks and stay with AdamW."""
    return [p for body in transformer_bodies(module) for p in blocks(body).parameters() if p.dim() == 2]


class MuonAdamW(torch.optim.Optimizer):
    """torch.optim.Muon on the hidden matrices and torch.optim.AdamW on the rest, as one optimizer.

    Muon (Jordan et al. 2024) orthogonalises each matrix's momentum by Newton-Schulz: it is defined on
    2-D matrices only, and embeddings and heads are meant for AdamW. The two share this object's
    param_groups and state, so the loop's lr schedule, state_dict and load_state_dict (checkpoints)
    see one optimizer.
    """

    def __init__(self, muon_params: list[nn.Parameter], adamw_groups: list[dict], *, lr: float,
                 weight_decay: float, betas: tuple[float, float], eps: float, **adamw_kwargs):
        for p in muon_params:
            if p.dim() != 2:
                raise ValueError(f"optimizer muon: a parameter of shape {tuple(p.shape)} is not a 2-D matrix; "
                                 "Muon orthogonalises matrices only, give it to AdamW")
        self.muon = torch.optim.Muon(muon_params, lr=lr, weight_decay=weight_decay, momentum=MUON_MOMENTUM,
                                     nesterov=True, adjust_lr_fn="match_rms_adamw")
        # LoRA on Muon: every trainable tensor is an adapter matrix, and AdamW has nothing to hold.
        self.adamw = torch.optim.AdamW(adamw_groups, lr=lr, betas=betas, eps=eps, **adamw_kwargs) if adamw_groups else None
        super().__init__(self.muon.param_groups + (self.adamw.param_groups if self.adamw else []), defaults={})
        self._share()

    def _share(self) -> None:
        n = len(self.muon.param_groups)
        self.muon.param_groups = self.param_groups[:n]
        self.muon.state = self.state  # keyed by parameter: the two sets are disjoint
        if self.adamw:
            self.adamw.param_groups, self.adamw.state = self.param_groups[n:], self.state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)  # replaces self.state and the groups' dicts
        self._share()

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 (torch's signature)
        loss = closure() if closure is not None else None
        self.muon.step()
        if self.adamw:
            self.adamw.step()
        return loss


def build_optimizer(params: Iterable[nn.Parameter], cfg: LoopConfig,
                    hidden: Iterable[nn.Parameter] = ()) -> torch.optim.Optimizer:
    """Weight decay on matrices only (as nanoGPT): decaying biases and LayerNorm gains only hurts.
    `hidden` (hidden_matrices of the model) are Muon's matrices when cfg.optimizer is muon."""
    trainable = [p for p in params if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in trainable if p.dim() < 2], "weight_decay": 0.0},
    ]
    lr = learning_rate(cfg)
    # One fused kernel for the whole update (the same arithmetic, rounded differently): on CUDA it
    # saves a launch per tensor group; on the CPU torch's default is a loop per tensor, and AdamW over
    # a 2x128 GPT-2 (the 50,257 x 128 embedding) took 34 ms a step, fused 8.
    devices = {p.device.type for p in trainable}
    fused = {"fused": True} if len(devices) == 1 and devices <= {"cpu", "cuda"} else {}
    # FSDP's sharded parameters (DTensors) have no sharding rule for fused SGD (Adam's has one).
    sgd_fused = {} if any(isinstance(p, DTensor) for p in trainable) else fused
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, **sgd_fused)
    if cfg.optimizer in ("momentum", "nesterov"):
        return torch.optim.SGD(
            groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.optimizer == "nesterov", **sgd_fused
        )
    betas = (cfg.beta1, cfg.beta2)
    if cfg.optimizer == "muon":
        to_muon = {id(p) for p in hidden if p.requires_grad}
        if not to_muon:
            raise ValueError("optimizer muon: the model has no hidden matrices to give it")
        matrices = [p for p in trainable if id(p) in to_muon]
        rest = [{**g, "params": [p for p in g["params"] if id(p) not in to_muon]} for g in groups]
        return MuonAdamW(matrices, [g for g in rest if g["params"]], lr=lr, weight_decay=cfg.weight_decay,
                         betas=betas, eps=cfg.eps, **fused)
    if cfg.optimizer == "adafactor":
        # Factored second moments (Shazeer & Stern 2018): a row and a column vector per matrix, no
        # first moment. torch's defaults otherwise (beta2 decay -0.8, relative step clipping d=1).
        return torch.optim.Adafactor(groups, lr=lr)
    if cfg.optimizer == "galore":
        from gptpipe.train.galore import GaLoreAdamW

        return GaLoreAdamW(
            groups, lr=lr, betas=betas, eps=cfg.eps, rank=cfg.galore_rank,
            update_every=cfg.galore_update_every, scale=cfg.galore_scale,
        )
    if cfg.optimizer == "adam":
        # torch's Adam adds weight_decay * p to the gradient (L2), AdamW decays the weight itself.
        return torch.optim.Adam(groups, lr=lr, betas=betas, eps=cfg.eps, **fused)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=cfg.eps, **fused)


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes this process holds: of a sharded (FSDP) tensor, its own shard."""
    return sum(local(t).numel() * t.element_size() for t in tensors)


def memory_split(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes held by parameters, gradients and optimizer state, counted tensor by tensor."""
    params = list(model.parameters())
    state = [
        value
        for per_param in optimizer.state.values()
        for value in per_param.values()
        if torch.is_tensor(value)
    ]
    return {
        "parameters": tensor_bytes(params),
        "gradients": tensor_bytes(p.grad for p in params if p.grad is not None),
        "optimizer_state": tensor_bytes(state),
    }


def theoretical_state_bytes(cfg: LoopConfig, trainable: Iterable[nn.Parameter], bytes_per_value: int = 4,
                            hidden: Iterable[nn.Parameter] = ()) -> int:
    """What the optimizer must keep: 0, 1 or 2 copies of the trainable parameters (fp32), or for
    GaLore a projector and two rank-r moments per large matrix (gptpipe.train.galore); Muon one
    momentum copy of the `hidden` matrices and AdamW's two of the rest; Adafactor a row and a column
    vector per matrix (m + n values for m x n) and a full second moment per vector.

    Adam/AdamW/Adafactor also keep a step counter per tensor (a few bytes each), left out here.
    """
    trainable = list(trainable)
    shapes = [tuple(p.shape) for p in trainable]
    if cfg.optimizer == "muon":
        to_muon = {id(p) for p in hidden}
        return sum((1 if id(p) in to_muon else 2) * p.numel() for p in trainable) * bytes_per_value
    if cfg.optimizer == "adafactor":
        return sum(_adafactor_values(shape) for shape in shapes) * bytes_per_value
    if cfg.optimizer == "galore":
        from gptpipe.train.galore import galore_state_elements

        return galore_state_elements(shapes, cfg.galore_rank) * bytes_per_value
    n_values = sum(math.prod(shape) for shape in shapes)
    return STATE_COPIES[cfg.optimizer] * n_values * bytes_per_value


def _adafactor_values(shape: tuple[int, ...]) -> int:
    # torch.optim.Adafactor: row_var (shape with the last dim 1) and col_var (the one before it 1).
    if len(shape) < 2:
        return math.prod(shape)
    return math.prod(shape[:-1]) + math.prod(shape[:-2]) * shape[-1]
