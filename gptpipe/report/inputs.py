"""What the report reads: the stages' JSON, TSV and CSV files, the git commit, and params.yaml as
plain data (now, or at a study's baseline revision, whose layout may be an older one)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from gptpipe.errors import UserError


def read_json(path: Path, command: str) -> dict[str, Any]:
    """A metrics JSON object; a half-written or foreign file is one line naming the command to rerun."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({err.msg}, line {err.lineno}); rerun `{command}`") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object of metrics; rerun `{command}`")
    return data


def read_tsv(path: Path) -> list[dict[str, Any]]:
    """A stage's series (plots/<stage>/loss.tsv) as rows; none where the stage has not run."""
    return pd.read_csv(path, sep="\t").to_dict("records") if path.is_file() else []


def read_csv(path: Path) -> list[dict[str, Any]]:
    """A study table's CSV as rows; none where the study has not run."""
    return pd.read_csv(path).to_dict("records") if path.is_file() else []


def png_aspect(path: Path) -> float:
    """Width / height from a PNG's header (0 when it is not a PNG)."""
    head = path.read_bytes()[:24]
    if head[:8] != b"\x89PNG\r\n\x1a\n":
        return 0.0
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    return width / height if height else 0.0


def git_commit(root: Path) -> str | None:
    """`abc1234`, `abc1234 + uncommitted changes`, or None outside a git checkout."""
    try:
        head = _git(root, "rev-parse", "--short", "HEAD").strip()
        dirty = _git(root, "status", "--porcelain", "--untracked-files=no").strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{head} + uncommitted changes" if dirty else head


def params_at(root: Path, rev: str) -> RawParams | None:
    """params.yaml as committed at `rev` (a study's baseline), or None where git does not hold it.

    Read raw, not through load_params: an older revision may have another layout or keys that no
    longer exist, and the page shows what that run was given."""
    try:
        tree = yaml.safe_load(_git(root, "show", f"{rev}:params.yaml"))
    except (OSError, subprocess.CalledProcessError, yaml.YAMLError):
        return None
    return RawParams(tree) if isinstance(tree, dict) and tree else None


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True).stdout


# Sections that later layouts moved inside another: shown with it when a revision still has them apart.
MOVED_INTO = {"train": ("lora",)}  # `lora` became `train.lora`


@dataclass(frozen=True)
class RawParams:
    """params.yaml as plain data, every key optional: the report reads the current params and those of
    older revisions through the same few dotted paths."""

    tree: Mapping[str, Any] = field(default_factory=dict)

    def value(self, dotted: str) -> Any:
        """The value at `data.synthetic.n_train`, or None where this layout has no such key."""
        node: Any = self.tree
        for key in dotted.split("."):
            if not isinstance(node, Mapping) or key not in node:
                return None
            node = node[key]
        return node

    def sections(self, names: Sequence[str]) -> dict[str, Any]:
        """The named top-level sections this revision has, in order, each with those later moved into it."""
        chosen: dict[str, Any] = {}
        for name in names:
            for section in (name, *MOVED_INTO.get(name, ())):
                if section in self.tree and section not in chosen:
                    chosen[section] = self.tree[section]
        return chosen
