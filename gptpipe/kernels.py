"""Which CPU kernels PyTorch runs, so that a model trained here has the same bytes on any x86-64 host.

PyTorch picks its kernels by the CPU it finds: ATen's vectorised kernels (softmax, layer norm,
AdamW, ...) come in AVX2 and AVX-512 builds, and MKL's matrix products follow the CPU's ISA and
vendor. Each choice rounds differently in the last bits, and training amplifies a last bit into a
different model: measured on the embedded default, the base stage's test loss is 1.29375 on a
first-generation EPYC (AVX2), and 1.29377 natively on an AVX-512 Xeon, 1.29378 there with ATen and
MKL held to AVX2 (MKL's AVX2 kernels on Intel are not the ones it runs on AMD), 1.29377 with MKL's
SSE4.2 branch. MKL promises one result across vendors only for its COMPATIBLE branch (conditional
numerical reproducibility, MKL_CBWR=COMPATIBLE: "Intel or Intel-compatible CPUs supporting SSE2").

GPTPIPE_KERNELS selects:
- portable (the default): ATen's AVX2 kernels (every host of this project has AVX2), MKL's
  COMPATIBLE branch, oneDNN held to AVX2. The committed dvc.lock was made so. It costs speed: the
  base stage ran at 1,334 tokens/s against 3,665 native on a 2-core AVX-512 Xeon (2.7x), where
  SSE2 products replace AVX-512 ones.
- native: whatever the host has; faster, but models, answers and verdicts differ from the lock in
  the last bits and then beyond (the DPO-vs-SFT verdict flipped once that way). DVC does not see
  this variable: keep results made with it out of a committed dvc.lock.

A variable the user set (ATEN_CPU_CAPABILITY=avx512, say) is kept: it is their run. The settings are
environment variables because every process must get them before its first tensor operation (ATen
and MKL read them once), child processes too (dvc, torchrun workers, tests' stage runs); `pin()`
runs when gptpipe is first imported, which every stage, command and test does before it computes.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from gptpipe.errors import UserError

ENV = "GPTPIPE_KERNELS"
MODES = ("portable", "native")
PORTABLE = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "AVX2"}

# mkl_cbwr_get(MKL_CBWR_BRANCH) answers one of these (mkl_service.h).
_MKL_BRANCHES = {1: "OFF", 2: "AUTO", 3: "COMPATIBLE", 4: "SSE2", 8: "SSE4_2", 9: "AVX", 10: "AVX2",
                 12: "AVX512", 13: "AVX512_E1", 15: "AVX512_E4", 16: "AVX2_E1", 17: "AVX512_E5"}


def mode(environ: dict[str, str] | os._Environ = os.environ) -> str:
    value = environ.get(ENV, "portable")
    if value not in MODES:
        raise UserError(f"{ENV}={value!r}: must be one of {', '.join(MODES)} (portable: the same "
                              f"bytes on every x86-64 host with AVX2; native: the host's fastest kernels)")
    return value


def pin(environ: dict[str, str] | os._Environ = os.environ) -> dict[str, str]:
    """Set the portable kernels' variables where the user has not; returns what this call set.
    A misspelt mode sets nothing here (this runs at import, where an error would be a traceback):
    the stage's first line, `describe()`, names it."""
    if environ.get(ENV, "portable") != "portable":
        return {}
    added = {key: value for key, value in PORTABLE.items() if key not in environ}
    environ.update(added)
    return added


def in_force() -> dict[str, str]:
    """What the running process uses, read back from ATen and MKL (not from the variables)."""
    import torch

    return {"mode": mode(), "aten": torch.backends.cpu.get_cpu_capability(), "mkl_branch": _mkl_branch()}


def describe() -> str:
    """One line for a stage's log: the kernels in force and how to change them."""
    state = in_force()
    portable = state["aten"] == "AVX2" and state["mkl_branch"] == "COMPATIBLE"
    hint = (f"the committed dvc.lock's; {ENV}=native for the host's faster ones" if portable
            else f"not the committed dvc.lock's: outputs differ from it; unset {ENV}, "
                 f"{', '.join(PORTABLE)} to match it")
    return f"CPU kernels: ATen {state['aten']}, MKL {state['mkl_branch']} ({hint})"


def _mkl_branch() -> str:
    """MKL's numerical-reproducibility branch, asked of the MKL inside libtorch_cpu."""
    import torch

    library = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
    try:
        get = ctypes.CDLL(str(library)).mkl_serv_cbwr_get
    except (OSError, AttributeError):  # a build without MKL (ARM, macOS) or not on Linux
        return "none"
    get.restype, get.argtypes = ctypes.c_int, [ctypes.c_int]
    return _MKL_BRANCHES.get(get(1), f"branch {get(1)}")
