"""Writing outputs so that a failure never leaves half a file: write to a temp path, then rename."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success it replaces `path` (file or folder) by renames
    such that a kill at any point leaves the old or the new output, never neither."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clear_stale_temps(path)
    tmp = _sibling(path, "tmp")
    _remove(tmp)
    try:
        yield tmp
        if path.exists() and (tmp.is_dir() or path.is_dir()):
            # A rename cannot put a folder over a folder: the old one moves aside first. Killed
            # between the two renames, it waits there and the next write puts it back.
            old = _sibling(path, "old")
            _remove(old)
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)  # over a file: one atomic rename
    finally:
        _remove(tmp)


def clear_stale_temps(path: Path) -> list[Path]:
    """Clear what a process that died mid-write left beside `path` (kill -9 while a model was being
    saved): its temp `.<name>.tmp-<pid>` is removed; its `.<name>.old-<pid>` (the last good output,
    moved aside for the new one) goes back to `path` if nothing took its place, else is removed."""
    removed = []
    for kind in ("old", "tmp"):
        for left in sorted(path.parent.glob(f".{path.name}.{kind}-*")):
            pid = left.name.rsplit("-", 1)[-1]
            if not pid.isdigit() or _running(int(pid)):
                continue
            if kind == "old" and not path.exists():
                os.replace(left, path)
                continue
            _remove(left)
            removed.append(left)
    return removed


def _sibling(path: Path, kind: str) -> Path:
    # The names .dvcignore hides from DVC: a leftover inside a folder output changes no hash.
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def write_json(path: str | Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_tsv(path: str | Path, rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> None:
    """One row per dict; columns from the first row (every row has the same keys) unless given
    (then no rows is a header alone)."""
    if not rows and columns is None:
        raise ValueError(f"{path}: no rows to write")
    columns = list(columns or rows[0])
    lines = ["\t".join(columns)]
    lines += ["\t".join(_format(row[c]) for c in columns) for row in rows]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
