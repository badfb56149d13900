"""Where and how a run executes: the device, autocast, compile and its DDP rank.

Apart from the loop so that the stages that only run a model (score, generate, judge) depend on
where it runs, not on how training works.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from gptpipe.config import SharedConfig
from gptpipe.train import flops


@dataclass
class Runtime:
    """Where and how a run executes: device, autocast, compile, and its DDP rank."""

    device: torch.device
    autocast_dtype: torch.dtype | None
    compile: bool
    peak_flops: float
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


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
    return torch.device(kind, int(os.environ.get("LOCAL_RANK", 0))) if kind == "cuda" else torch.device("cpu")


def make_runtime(shared: SharedConfig) -> Runtime:
    """Resolve device, dtype and DDP; under torchrun each process joins the group here."""
    device_type = device_kind(shared.device)
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = torch.device(device_type, int(os.environ.get("LOCAL_RANK", 0))) if device_type == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        # Before NCCL starts: otherwise every rank's communicator lands on GPU 0.
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    # MFU is measured against the device kind's peak (flops.default_peak_flops says which card's).
    peak = flops.default_peak_flops(device_type, shared.dtype)
    autocast = torch.bfloat16 if shared.dtype == "bfloat16" else None
    return Runtime(device, autocast, shared.compile, peak, rank, world_size)


def autocast(runtime: Runtime) -> contextlib.AbstractContextManager:
    if runtime.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(runtime.device.type, dtype=runtime.autocast_dtype)
