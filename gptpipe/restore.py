"""A stage's last good outputs, back after a failed run (`gptpipe restore <stage>`).

DVC deletes a stage's outputs before it runs the stage, and a failed run leaves them deleted.
`dvc checkout <stage>` brings back the cached ones, not the `cache: false` metrics and plots (DVC-NOTES
3). Their last good bytes are in the cache all the same: DVC's run cache stored them there, under the
md5 that dvc.lock records. So: `dvc checkout`, then each file output that is still missing or
changed is copied from the cache by that md5."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import yaml

from gptpipe.errors import UserError
from gptpipe.files import atomic_path


def restore(stage: str | None = None, root: Path = Path(".")) -> list[str]:
    """Put back every output dvc.lock records for `stage` (for every stage when None); returns the
    paths copied from the cache."""
    outs = _locked_outputs(stage, root)
    _dvc(root, "checkout", *([stage] if stage else []))
    cache = Path(_dvc(root, "cache", "dir").strip()) / "files" / "md5"
    copied, lost = [], []
    for out in outs:
        path, md5 = root / out["path"], out.get("md5", "")
        if md5.endswith(".dir") or (path.is_file() and _md5(path) == md5):
            continue  # folders are cached outputs here: `dvc checkout` has put them back
        source = cache / md5[:2] / md5[2:]
        if not source.is_file():
            lost.append(out["path"])
            continue
        with atomic_path(path) as tmp:
            shutil.copyfile(source, tmp)
        copied.append(out["path"])
    if lost:
        repro = f"dvc repro {stage}" if stage else "dvc repro"
        raise UserError(f"{stage or 'dvc.lock'}: no last good copy of {', '.join(lost)} in the DVC cache; "
                        f"`git checkout -- {' '.join(lost)}` where git holds them, else `{repro}`")
    return copied


def _locked_outputs(stage: str | None, root: Path) -> list[dict]:
    lock = root / "dvc.lock"
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {}) if lock.is_file() else {}
    if stage is None:
        return [out for locked in stages.values() for out in locked.get("outs", [])]
    if stage not in stages:
        known = ", ".join(stages) or "none: no stage has run here yet"
        raise UserError(f"{stage}: not a stage with a last good run in dvc.lock (stages: {known})")
    return stages[stage].get("outs", [])


def _dvc(root: Path, *args: str) -> str:
    result = subprocess.run(["dvc", *args], cwd=root, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise UserError(f"dvc {' '.join(args)} failed: {last}")
    return result.stdout


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
