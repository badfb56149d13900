"""A stage's command line: the paths dvc.yaml's `cmd` passes, as keyword flags.

`run_stage(main)` builds the flags from main's signature (`tokenized: Path` is `--tokenized PATH`;
underscores become dashes), calls it, and turns a UserError into one line and exit status 1. So
dvc.yaml is the one place that names a stage's files, and a stage's signature says what it touches.
"""

from __future__ import annotations

import argparse
import inspect
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from gptpipe import kernels
from gptpipe.errors import UserError, run_or_exit


def stage_arguments(main: Callable[..., object], argv: Sequence[str]) -> dict[str, object]:
    """Parse argv against main's keyword parameters; every parameter without a default is required."""
    parser = argparse.ArgumentParser(prog=f"python -m {_module_name(main)}", description=inspect.getdoc(inspect.getmodule(main)))
    for name, parameter in inspect.signature(main).parameters.items():
        kind = Path if parameter.annotation in (Path, "Path") else str
        required = parameter.default is inspect.Parameter.empty
        parser.add_argument(
            "--" + name.replace("_", "-"), dest=name, type=kind, required=required,
            default=None if required else parameter.default, metavar=name.upper(),
        )
    return vars(parser.parse_args(list(argv)))


def run_stage(main: Callable[..., object], argv: Sequence[str] | None = None, distributed: bool = False) -> None:
    """Run a stage; a UserError is one line that also says how to get the last good outputs back:
    DVC deletes a stage's outputs before running it, and keeps the last good ones in its cache.

    distributed: a training stage; with shared.processes > 1 it runs again under torchrun, one
    process per rank, from the same command line (what DVC started is what ran)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    arguments = stage_arguments(main, argv)
    stage = _stage_name(main, arguments)

    def guarded() -> None:
        try:
            # Which kernels produced the outputs (gptpipe/kernels.py): a run off the lock's says so.
            print(kernels.describe(), flush=True)  # stdout: a failure stays one line on stderr
            if distributed and "LOCAL_RANK" not in os.environ:
                _relaunch_if_distributed(main, argv)  # reads params.yaml: a bad param fails here
            main(**arguments)
        except UserError as err:
            raise UserError(f"{err} [the last good outputs: `gptpipe restore {stage}`]") from None

    run_or_exit(guarded)


def _relaunch_if_distributed(main: Callable[..., object], argv: list[str]) -> None:
    from gptpipe.config import load_params

    processes = load_params("params.yaml").shared.processes
    if processes == 1:
        return
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", _module_name(main), *argv]
    print(f"shared.processes={processes}: {' '.join(command[1:])}", file=sys.stderr, flush=True)
    sys.exit(subprocess.call(command))


def _module_name(main: Callable[..., object]) -> str:
    """stages.sft, also when run with -m (the module is then __main__, but its spec has the name)."""
    spec = getattr(inspect.getmodule(main), "__spec__", None)
    return spec.name if spec else main.__module__


def _stage_name(main: Callable[..., object], arguments: dict[str, object]) -> str:
    name = _module_name(main).rpartition(".")[2]
    # foreach stages (generate@sft) take the item as --name
    return f"{name}@{arguments['name']}" if "name" in arguments else name
