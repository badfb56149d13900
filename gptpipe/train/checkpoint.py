"""Resumable checkpoints: model, optimizer, step, RNG states and the log so far.

A checkpoint lives outside DVC's outputs (DVC-NOTES 19) under a name that carries `run_key`: a hash
of the stage, its config sections, its input files, the library's code and the torch version, so a
checkpoint of other params, other data or other code is never resumed. It is written to a temp file
and renamed, and loaded with `weights_only=True`: plain tensors and containers only, never code.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import random
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel
from torch import nn
from tqdm import tqdm

from gptpipe.errors import UserError
from gptpipe.files import atomic_path
from gptpipe.train.sharding import is_sharded, load_state_dicts, state_dicts

LIBRARY = Path(__file__).resolve().parents[1]  # the gptpipe package: its code is part of the key


def run_key(stage: str, configs: Sequence[BaseModel], inputs: Sequence[Path]) -> str:
    """A hash of what determines a run: a checkpoint of other params, inputs or code is never resumed."""
    digest = hashlib.sha256(stage.encode())
    for cfg in configs:
        digest.update(json.dumps(cfg.model_dump(mode="json"), sort_keys=True).encode())
    for path in inputs:
        digest.update(hashlib.sha256(Path(path).read_bytes()).digest())
    for source in sorted(LIBRARY.rglob("*.py")):
        digest.update(source.read_bytes())
    digest.update(torch.__version__.encode())
    return digest.hexdigest()[:16]


def save_checkpoint(path: Path, objective: nn.Module, optimizer: torch.optim.Optimizer, state: Any,
                    scaler: torch.amp.GradScaler | None = None, write: bool = True) -> None:
    """Every rank calls it (a sharded objective is gathered whole first); the one with `write` saves."""
    if not write and not is_sharded(objective):
        return
    model_state, optim_state = state_dicts(objective, optimizer)
    if not write:
        return
    payload = {
        "objective": model_state,
        "optimizer": optim_state,
        "state": dict(vars(state)),
        **rng_states(),
    }
    if scaler is not None and scaler.is_enabled():  # fp16: the loss scale, so a resume continues it
        payload["scaler"] = scaler.state_dict()
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path, objective: nn.Module, optimizer: torch.optim.Optimizer, state: Any,
                    scaler: torch.amp.GradScaler | None = None) -> bool:
    """Resume from `path` if it exists (its name carries the run key)."""
    if not path.exists():
        return False
    try:
        payload = torch.load(path, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        # Truncated, corrupt, or carrying code (weights_only refuses anything but tensors and
        # containers): never resumed, never deleted for the user, who may want to look at it.
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else ""
        raise UserError(
            f"{path}: not a checkpoint this run can resume ({type(err).__name__}: {first}); "
            f"remove it (rm {path}) and run again to start this stage over"
        ) from None
    load_state_dicts(objective, optimizer, payload["objective"], payload["optimizer"])
    if scaler is not None and "scaler" in payload:
        scaler.load_state_dict(payload["scaler"])
    vars(state).update(payload["state"])
    restore_rng_states(payload)
    tqdm.write(f"resuming from {path} at step {state.step}", file=sys.stderr)
    return True


def rng_states() -> dict[str, Any]:
    """Every generator a step draws from: the CPU's, Python's, and each CUDA device's (dropout and
    sampling on a GPU draw from the device's own generator, so a GPU resume needs it to be bit for bit)."""
    states = {"torch_rng": torch.get_rng_state(), "python_rng": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda_rng"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(payload: dict[str, Any]) -> None:
    torch.set_rng_state(payload["torch_rng"])
    random.setstate(_as_rng_state(payload["python_rng"]))
    if "cuda_rng" in payload and torch.cuda.is_available():
        # One state per device it was saved on; a host with fewer devices restores those it has.
        for index, cuda_state in enumerate(payload["cuda_rng"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, index)


def discard(path: Path) -> None:
    """Remove a finished run's checkpoint: call it once the run's outputs are in place."""
    path.unlink(missing_ok=True)


def _as_rng_state(saved: Any) -> tuple:
    # random.setstate wants tuples; a weights-only load may hand back lists.
    version, internal, gauss = saved
    return (version, tuple(internal), gauss)
