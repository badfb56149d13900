"""FSDP (PyTorch's FSDP2, `fully_shard`): parameters, gradients and optimizer state split across the
processes, for a model whose training state does not fit one card (gpt2-xl full fine-tuning holds
~25 GB in fp32 weights, gradients and AdamW moments before any activation).

Why FSDP2 over DeepSpeed ZeRO: it is PyTorch's own (no second runtime, no JSON config), composes with
the loop as it is (autocast, activation checkpointing, the same micro-batch split as DDP), and keeps
each parameter a DTensor that the optimizer updates shard by shard, so ZeRO-3's saving comes with
plain `torch.optim.AdamW`. Each transformer block is one unit (its weights gathered just before its
forward and backward, then freed); the objective is the root, holding the token embedding that the
tied LM head reads. With `shared.compile` the bodies are compiled around their sharded blocks as
under DDP (checked on CPU with the aot_eager backend; not yet timed on a GPU).

Tested on CPU (gloo, two processes): the sharded run equals the single-process one, each process
holds half the weights, gradients and AdamW state, and a killed run resumes to the uninterrupted one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor

from gptpipe.models.architecture import blocks
from gptpipe.train.runtime import transformer_bodies


def shard(objective: nn.Module) -> None:
    """fully_shard each decoder block (GPT2Block, LlamaDecoderLayer) inside `objective`, then the objective itself (the root)."""
    for body in transformer_bodies(objective):
        for block in blocks(body):
            fully_shard(block)
    fully_shard(objective)


def is_sharded(module: nn.Module) -> bool:
    return isinstance(module, FSDPModule)


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's part of a sharded tensor (the tensor itself when it is not sharded)."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def scalar(value: torch.Tensor) -> float:
    """A reduced value (e.g. clip_grad_norm_'s total norm over DTensor gradients) as a float."""
    return (value.full_tensor() if isinstance(value, DTensor) else value).item()


# Whole tensors, on the CPU, on rank 0 only: the checkpoint reads like an unsharded one.
_FULL_ON_RANK0 = StateDictOptions(full_state_dict=True, cpu_offload=True)


def state_dicts(objective: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """The objective's and optimizer's state dicts; when sharded, gathered whole (a collective:
    every rank calls it, rank 0 gets the tensors)."""
    if not is_sharded(objective):
        return objective.state_dict(), optimizer.state_dict()
    return get_state_dict(objective, optimizer, options=_FULL_ON_RANK0)


def load_state_dicts(objective: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict, optim_state: dict) -> None:
    """Whole state dicts (as `state_dicts` gives them) into the objective and optimizer, sharded or not."""
    if not is_sharded(objective):
        objective.load_state_dict(model_state)
        optimizer.load_state_dict(optim_state)
        return
    set_state_dict(objective, optimizer, model_state_dict=model_state, optim_state_dict=optim_state,
                   options=StateDictOptions(full_state_dict=True))


@contextlib.contextmanager
def full_weights(model: nn.Module) -> Iterator[nn.Module]:
    """Inside: every sharded parameter of `model` replaced by its whole tensor, so that
    `save_pretrained` writes the full model; the shards come back on exit.

    A collective under FSDP (each rank gathers every parameter, in the same order); a no-op otherwise.
    Tied weights (GPT-2's LM head is its token embedding) stay one tensor.
    """
    if any(isinstance(p, DTensor) for p in model.parameters()):
        # FSDP's state-dict hooks put every parameter group back to its shards first (after a forward
        # with no backward, e.g. an evaluation, the root's weights stay gathered); afterwards they
        # find the groups sharded and leave the swapped-in tensors alone.
        model.state_dict()
    whole: dict[int, nn.Parameter] = {}
    swapped: list[tuple[nn.Module, str, nn.Parameter]] = []
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if not isinstance(param, DTensor):
                continue
            if id(param) not in whole:
                whole[id(param)] = nn.Parameter(param.detach().full_tensor(), requires_grad=param.requires_grad)
            swapped.append((module, name, param))
            module._parameters[name] = whole[id(param)]
    try:
        yield model
    finally:
        for module, name, param in swapped:
            module._parameters[name] = param
