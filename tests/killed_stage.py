"""Run a stage module as `python -m <module> <args>` would, and SIGKILL it at its first rename.

Stages write every output (and every checkpoint) to a temp path and rename it into place, so the
first rename is the moment a finished temp is about to replace something: the worst time to die.
A stage that wrote an output without a rename runs to the end here, which the fault suite reports."""

import os
import runpy
import signal
import sys


def _die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)


os.replace = os.rename = _die  # pathlib's replace/rename and shutil.move go through these
module = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_module(module, run_name="__main__", alter_sys=True)
