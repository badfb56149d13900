"""Studies: a set of DVC experiments over one knob, and the table and picture compiled from them.

Mechanics (DVC-NOTES 12–14): each point is queued as a named experiment (`<study>-<label>`) on the
current commit, the queue is run in the foreground one at a time, and the results are read back
from `dvc exp show --json --rev <baseline>` (metrics by file path) and the experiments' own series
files (`dvc.api.open(..., rev=<experiment>)`). Failed experiments are dropped, never shown with the
baseline's metrics. `--report` recompiles from experiments already run.
"""

from __future__ import annotations

import io
import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from gptpipe.errors import UserError
from gptpipe.files import atomic_path, write_json
from gptpipe.tables import markdown_table


@dataclass(frozen=True)
class Point:
    label: str  # short, unique in the study: "sgd", "r8"
    overrides: dict[str, Any]  # params.yaml keys → values, as `dvc exp run -S key=value`


@dataclass
class Result:
    label: str
    experiment: str
    params: dict[str, Any]
    metrics: dict[str, dict[str, Any]]  # by metrics file path
    series: dict[str, pd.DataFrame] = field(default_factory=dict)  # by series file path


def experiment_name(study: str, label: str) -> str:
    return f"{study}-{label}"


def run_points(study: str, points: Sequence[Point], target: str | None = None) -> str:
    """Queue one experiment per point on HEAD and run the queue; returns the baseline commit.

    target: reproduce only up to this stage (e.g. sft), not the whole downstream pipeline.
    """
    baseline = _git("rev-parse", "HEAD")
    for point in points:
        name = experiment_name(study, point.label)
        _dvc("exp", "remove", name, check=False)  # a rerun replaces the old point
        sets = [arg for key, value in point.overrides.items() for arg in ("-S", f"{key}={_yaml_value(value)}")]
        _dvc("exp", "run", "--queue", "-n", name, *sets, *([target] if target else []))
    _dvc("exp", "run", "--run-all", "-j", "1", check=False)  # failures are reported per point below
    return baseline


def collect(study: str, labels: Sequence[str], baseline: str, series_files: Sequence[str]) -> list[Result]:
    """Successful experiments of this study on `baseline`, in the order of `labels`."""
    shown = json.loads(_dvc("exp", "show", "--json", "--rev", baseline, "--hide-failed", "--hide-queued"))
    found: dict[str, Result] = {}
    for entry in shown:
        for exp in entry.get("experiments") or []:
            result = _result(study, exp)
            if result is not None:
                found[result.label] = result
    missing = [label for label in labels if label not in found]
    if missing:
        print(f"{study}: no successful experiment for {', '.join(missing)} (see `dvc exp show`)")
    results = [found[label] for label in labels if label in found]
    for result in results:
        for path in series_files:
            result.series[path] = read_series(path, result.experiment)
    return results


def read_series(path: str, rev: str) -> pd.DataFrame:
    import dvc.api

    with dvc.api.open(path, rev=rev) as handle:
        return pd.read_csv(io.StringIO(handle.read()), sep="\t")


# The standalone Markdown's verdict section starts at this line; the report, which states the
# verdicts in its finding, shows the file up to it.
VERDICTS_SECTION = "#### Verdicts"


def write_table(table: pd.DataFrame, out_dir: Path, name: str, notes: Sequence[str],
                verdicts: Sequence[str] = ()) -> None:
    """<name>.csv and <name>.md: the table, the notes that say how to read it, then (where given)
    the verdicts under VERDICTS_SECTION."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / f"{name}.csv") as tmp:
        table.to_csv(tmp, index=False)
    markdown = markdown_table(table)  # a random control's missing threshold reads "—"
    sections = [markdown, "\n".join(f"- {note}" for note in notes)]
    if verdicts:
        sections.append(VERDICTS_SECTION + "\n\n" + "\n".join(verdicts))
    with atomic_path(out_dir / f"{name}.md") as tmp:
        tmp.write_text("\n\n".join(sections) + "\n")


def without_verdicts(markdown: str) -> str:
    """A study's Markdown up to its verdict section."""
    return markdown.split("\n" + VERDICTS_SECTION, 1)[0].rstrip() + "\n"


def write_record(path: Path, study: str, baseline: str, table: pd.DataFrame, *,
                 verdicts: dict[str, Any] | None = None, seeds: int = 1) -> None:
    write_json(path, {"study": study, "baseline": baseline, "seeds": seeds,
                      "rows": json.loads(table.to_json(orient="records")), "verdicts": verdicts or {}})


def recorded_baseline(path: Path) -> str:
    if not path.is_file():
        raise UserError(f"{path}: no study has run here yet; run it without --report first")
    return json.loads(path.read_text())["baseline"]


def recorded_seeds(path: Path) -> int:
    return int(json.loads(path.read_text()).get("seeds", 1))


def _result(study: str, exp: dict[str, Any]) -> Result | None:
    name = exp.get("name") or ""
    if not name.startswith(f"{study}-"):
        return None
    executor = exp.get("executor") or {}
    rev = (exp.get("revs") or [{}])[0]
    if executor.get("state") not in (None, "success") or rev.get("error"):
        return None  # a failed queued experiment carries the baseline's metrics (DVC-NOTES 14)
    data = rev.get("data") or {}
    metrics = {path: (m or {}).get("data") or {} for path, m in (data.get("metrics") or {}).items()}
    params = ((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}
    return Result(label=name.removeprefix(f"{study}-"), experiment=name, params=params, metrics=metrics)


def _yaml_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(str(v) for v in value) + "]"
    return str(value)


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()


def _dvc(*args: str, check: bool = True) -> str:
    result = subprocess.run(["dvc", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise UserError(f"dvc {' '.join(args)} failed: {result.stderr.strip().splitlines()[-1:]}")
    return result.stdout
