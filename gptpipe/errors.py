"""Errors a user can fix: each message is one line naming the file or key and the fix.

Stages and the CLI print these as one line and exit 1; anything else is our bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn


class UserError(Exception):
    """Bad params, a bad input file, or an asset that could not be reached."""


def first_line(err: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, cut to `limit` characters ("" where it has none):
    library errors can run to pages, and a UserError is one line."""
    lines = str(err).strip().splitlines()
    return lines[0][:limit] if lines else ""


# The fix for a corrupt file that a stage of this pipeline wrote.
FROM_A_STAGE = "bring back the last good copy (`gptpipe restore <the stage that writes it>`) or rerun that stage"


@contextmanager
def reading(path: str | Path, what: str, fix: str = FROM_A_STAGE) -> Iterator[None]:
    """Reading an input that another stage wrote: any failure is one line naming the file and the fix.

    A corrupt or foreign file fails in whatever library parses it (safetensors, Arrow, Parquet, JSON,
    each with its own exception types); inside this block all of them mean the same to the user."""
    try:
        yield
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 (only the read is inside the block)
        raise UserError(f"{path}: not a readable {what} ({type(err).__name__}: {first_line(err, 160)}); {fix}") from None


def run_or_exit(main: Callable[[], object]) -> None:
    """Run a stage's main(); a UserError becomes one line on stderr and exit status 1."""
    try:
        main()
    except UserError as err:
        _exit(err)


def _exit(err: UserError) -> NoReturn:
    print(f"error: {err}", file=sys.stderr)
    raise SystemExit(1)
