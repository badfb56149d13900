"""Where and how a run executes: the device, autocast, compile, its rank and the DDP/FSDP strategy.

Apart from the loop so that the stages that only run a model (score, generate, judge) depend on
where it runs, not on how training works.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from transformers import PreTrainedModel

from gptpipe.config import SharedConfig
from gptpipe.train import flops


@dataclass
class Runtime:
    """Where and how a run executes: device, autocast, compile, its rank, and how ranks share the model."""

    device: torch.device
    autocast_dtype: torch.dtype | None
    compile: bool
    peak_flops: float
    rank: int = 0
    world_size: int = 1
    strategy: str = "ddp"  # ddp (each rank a whole replica) | fsdp (each rank a shard; gptpipe.train.sharding)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        return self.world_size > 1 and self.strategy == "fsdp"


def device_kind(device: str) -> str:
    """shared.device resolved: auto is cuda where there is one."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("shared.device: cuda is not available here; use cpu or auto")
    return device


def inference_device(device: str) -> torch.device:
    """The device a stage that only runs a model uses (this process's GPU under torchrun)."""
    kind = device_kind(device)
    if kind != "cuda":
        return torch.device("cpu")
    cuda_settings()
    return torch.device(kind, int(os.environ.get("LOCAL_RANK", 0)))


def cuda_settings() -> None:
    """How every stage runs on CUDA.

    TF32 for fp32 matmuls (10-bit mantissa products, fp32 sums): 7x the plain fp32 rate on an H100
    (495 against 67 TFLOP/s), well inside what training and scoring can tell apart; scoring,
    generation and fp32 runs would otherwise use the CUDA cores alone.

    No cuDNN attention: for bf16 PyTorch prefers it on Hopper, and it builds a cuDNN graph for every
    new sequence width, 20-30 ms of host time per layer call. Our batches change width every step:
    profiled on an H200 (gptpipe bench gpu, GPT-2 124M SFT, 16 x ~280 tokens), cuDNN attention held
    the CPU for 650 ms a step while the GPU worked 11 ms, and bf16 ran at 12.7k tokens/s against
    fp32's 71k. Flash and memory-efficient attention need no per-shape plan.
    """
    torch.set_float32_matmul_precision("high")
    torch.backends.cuda.enable_cudnn_sdp(False)


def make_runtime(shared: SharedConfig) -> Runtime:
    """Resolve device, dtype and DDP; under torchrun each process joins the group here."""
    device_type = device_kind(shared.device)
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = torch.device(device_type, int(os.environ.get("LOCAL_RANK", 0))) if device_type == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        cuda_settings()
        # Before NCCL starts: otherwise every rank's communicator lands on GPU 0.
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    # MFU is measured against the device kind's peak (flops.default_peak_flops says which card's).
    peak = flops.default_peak_flops(device_type, shared.dtype)
    autocast = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(shared.dtype)
    return Runtime(device, autocast, shared.compile, peak, rank, world_size, shared.strategy)


def autocast(runtime: Runtime) -> contextlib.AbstractContextManager:
    if runtime.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(runtime.device.type, dtype=runtime.autocast_dtype)


def transformer_bodies(module: nn.Module) -> list[PreTrainedModel]:
    """The transformer bodies inside `module` (GPT2Model: a model that is its own base_model), one per
    model the objective holds (DPO's live reference is a second)."""
    return [m for m in module.modules() if isinstance(m, PreTrainedModel) and m.base_model is m]


def compile_bodies(module: nn.Module, backend: str | object = "inductor") -> int:
    """torch.compile each transformer body inside `module` in place (GPT-2's GPT2Model); returns how many.

    The bodies, not the objective around them: the losses pick the counted positions by boolean mask
    (a data-dependent shape) and loop over LM-head chunks whose number follows the batch's response
    tokens, so a compiled objective breaks its graph there and compiles anew for every count until
    dynamo's recompile limit (8) turns compilation off. A body sees only (batch, width) integer
    tensors; marked dynamic, one graph serves every batch shape.
    """
    bodies = transformer_bodies(module)
    for body in bodies:
        body.compile(backend=backend, dynamic=True)
    return len(bodies)


def checkpoint_bodies(module: nn.Module) -> int:
    """Activation checkpointing in each transformer body inside `module` (transformers' own,
    non-reentrant: it composes with torch.compile and DDP); returns how many bodies."""
    bodies = transformer_bodies(module)
    for body in bodies:
        body.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return len(bodies)
