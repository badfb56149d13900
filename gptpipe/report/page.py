"""The report: every study that has results, compiled into one page (`report/index.html` + its PNGs).

The page is what a student hands in and a researcher skims: each finding is stated in words and
numbers next to its table and figure, with the params and the regime it came from. A section whose
inputs do not exist yet says so in one line, with the command that produces them.

Markdown: the study tables (`gptpipe.studies.runner.write_table`: a pandas pipe table, then "- " notes) and
`compute_optimal.md` (a heading, paragraphs, a table) are written by our own code, so they use a
small fixed subset of markdown. A converter for that subset (below, ~60 lines) is enough, lets table
cells be reformatted for people (thousands separators, humane column names, the best row marked),
and needs no dependency. (The CSVs alone would lose the notes that say how to read each table.)
If these files ever need more markdown than that, `markdown-it-py` (already installed with
typer's rich) is the one to declare.

Everything is read and rendered in memory first; the folder is then written under a temp name and
renamed (`files.atomic_path`), so a failed build leaves the previous report as it was.
"""

from __future__ import annotations

import html
import json
import math
import numbers
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from gptpipe.config import Params
from gptpipe.errors import UserError
from gptpipe.files import atomic_path, write_json

MIB = 2**20


# -- numbers and text for people ------------------------------------------------------------------

def fmt(value: Any) -> str:
    """A number as a person reads it: exact counts with separators, measurements to 4 significant digits."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, numbers.Integral):
        return f"{int(value):,}"
    if isinstance(value, numbers.Real):
        value = float(value)
        if math.isnan(value) or math.isinf(value):
            return str(value)
        if value == 0:
            return "0"
        if abs(value) >= 1e6 or abs(value) < 1e-4:
            return f"{value:.4g}"
        if abs(value) >= 1e3:
            return f"{float(f'{value:.4g}'):,.0f}"
        return f"{value:.4g}"
    return str(value)


def fmt_mib(n_bytes: float | None) -> str:
    return "—" if n_bytes is None else f"{fmt(n_bytes / MIB)} MiB"


def fmt_percent(fraction: float | None) -> str:
    return "—" if fraction is None else f"{fmt(100 * fraction)}%"


def humanize(column: str) -> str:
    """`tokens_per_s` → `tokens/s`, `state_MiB` → `state (MiB)`, other underscores → spaces."""
    name = column.replace("_per_s", "/s")
    name = re.sub(r"_(MiB|bytes)(?=_|$)", r" (\1)", name)
    return name.replace("_", " ")


def _number(text: str) -> int | float | None:
    text = text.strip()
    if not re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", text):
        return None
    try:
        return int(text)
    except ValueError:
        return float(text)


def png_aspect(path: Path) -> float:
    """Width / height from a PNG's header (0 when it is not a PNG)."""
    head = path.read_bytes()[:24]
    if head[:8] != b"\x89PNG\r\n\x1a\n":
        return 0.0
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    return width / height if height else 0.0


def esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


# -- the markdown subset our tables and notes use -------------------------------------------------

def markdown_html(text: str, *, heading_offset: int = 2, best_column: str | None = None) -> str:
    """Headings, pipe tables, "- " lists and paragraphs; inline `code` and **bold**.

    heading_offset pushes `#` down the page's outline (the page has its own h1 and h2);
    best_column marks the table rows holding that column's lowest value.
    """
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if not line:
            i += 1
        elif line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")) + heading_offset, 6)
            out.append(f"<h{level}>{_inline(line.lstrip('#').strip())}</h{level}>")
            i += 1
        elif line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                block.append(lines[i].strip())
                i += 1
            out.append(_table(block, best_column))
        elif line.startswith(("- ", "* ")):
            items: list[str] = []
            while i < len(lines) and lines[i].strip() and not lines[i].strip().startswith(("#", "|")):
                item = lines[i].strip()
                if item.startswith(("- ", "* ")):
                    items.append(item[2:])
                elif items:  # a wrapped line continues the item above
                    items[-1] += " " + item
                i += 1
            out.append("<ul>" + "".join(f"<li>{_inline(item)}</li>" for item in items) + "</ul>")
        else:
            paragraph = []
            while i < len(lines) and lines[i].strip() and not lines[i].strip().startswith(("#", "|", "- ", "* ")):
                paragraph.append(lines[i].strip())
                i += 1
            out.append(f"<p>{_inline(' '.join(paragraph))}</p>")
    return "\n".join(out)


def _inline(text: str) -> str:
    parts = re.split(r"(`[^`]*`)", text)
    rendered = []
    for part in parts:
        if part.startswith("`") and part.endswith("`") and len(part) >= 2:
            rendered.append(f"<code>{esc(part[1:-1])}</code>")
        else:
            rendered.append(re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", esc(part)))
    return "".join(rendered)


def _cells(row: str) -> list[str]:
    row = row.strip()
    if row.startswith("|"):
        row = row[1:]
    if row.endswith("|") and not row.endswith("\\|"):
        row = row[:-1]
    return [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", row)]


def _cell_number(text: str, value: int | float) -> str:
    """A number as the table's writer formatted it, with separators on counts and 4 digits at most."""
    if isinstance(value, int):
        return fmt(value)
    digits = re.sub(r"[eE].*$", "", text).lstrip("+-").replace(".", "").lstrip("0")
    return fmt(value) if len(digits) > 4 else text


def _table(block: Sequence[str], best_column: str | None) -> str:
    header = _cells(block[0])
    rows = [_cells(row) for row in block[1:]]
    aligns = ["left"] * len(header)
    if rows and all(re.fullmatch(r":?-+:?", cell) for cell in rows[0] if cell):
        aligns = ["right" if cell.endswith(":") and not cell.startswith(":") else "left" for cell in rows[0]]
        rows = rows[1:]
    numbers = [[_number(cell) for cell in row] for row in rows]
    right = [(c < len(aligns) and aligns[c] == "right")
             or all(row[c] is not None for row, raw in zip(numbers, rows, strict=True) if c < len(row) and raw[c])
             for c in range(len(header))]
    best_rows: set[int] = set()
    if best_column in header:
        col = header.index(best_column)
        values = [(fmt(row[col]), row[col]) for row in numbers if col < len(row) and row[col] is not None]
        if values:
            lowest = fmt(min(v for _, v in values))  # ties by what the reader sees
            best_rows = {r for r, row in enumerate(numbers) if col < len(row) and row[col] is not None
                         and fmt(row[col]) == lowest}
    head = "".join(f"<th>{_inline(humanize(cell))}</th>" for cell in header)
    body = []
    for r, (row, nums) in enumerate(zip(rows, numbers, strict=True)):
        tds = []
        for c, cell in enumerate(row):
            num = nums[c]
            text = esc(_cell_number(cell, num)) if num is not None else _inline(cell)
            tds.append(f'<td class="num">{text}</td>' if c < len(right) and right[c] else f"<td>{text}</td>")
        cls = ' class="best"' if r in best_rows else ""
        body.append(f"<tr{cls}>{''.join(tds)}</tr>")
    legend = ""
    if best_rows:
        legend = f'<p class="legend">Highlighted: the lowest {esc(humanize(best_column))}.</p>'
    return (f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>{legend}")


# -- reading inputs -------------------------------------------------------------------------------

def read_json(path: Path, command: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({err.msg}, line {err.lineno}); rerun `{command}`") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object of metrics; rerun `{command}`")
    return data


def read_tsv(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return pd.read_csv(path, sep="\t").to_dict("records")


def git_commit(root: Path) -> str | None:
    """`abc1234`, `abc1234 + uncommitted changes`, or None outside a git checkout."""
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{head} + uncommitted changes" if dirty else head


def params_at(root: Path, rev: str) -> dict[str, Any] | None:
    """params.yaml as committed at `rev` (a study's baseline), or None where git does not hold it."""
    try:
        text = subprocess.run(["git", "-C", str(root), "show", f"{rev}:params.yaml"],
                              capture_output=True, text=True, check=True).stdout
        return yaml.safe_load(text) or None
    except (OSError, subprocess.CalledProcessError, yaml.YAMLError):
        return None


# -- the regime: what ran -------------------------------------------------------------------------

def regime(params: dict[str, Any], device: str | None = None) -> str:
    """One sentence: which data, which model, which device (from a params dict, now or at a baseline)."""
    data, model, shared = params.get("data", {}), params.get("model", {}), params.get("shared", {})
    source = data.get("source")
    if source == "synthetic":
        syn = data.get("synthetic", {})
        what_data = f"synthetic HH-format pairs ({fmt(syn.get('n_train'))} train / {fmt(syn.get('n_test'))} test)"
    elif source == "hf":
        what_data = f"HH-RLHF {data.get('division')} from the Hugging Face hub"
    elif source == "dir":
        what_data = f"HH-RLHF {data.get('division')} from {data.get('dir')}"
    else:
        what_data = "data source not stated"
    if data.get("max_pairs") and source != "synthetic":
        what_data += f", at most {fmt(data['max_pairs'])} pairs per split"
    if not model:
        what_model = "model not stated"
    elif model.get("init") == "scratch":
        what_model = (f"GPT-2 shape {model.get('n_layer')}x{model.get('n_embd')} ({model.get('n_head')} heads) "
                      "pretrained here from scratch")
    else:
        what_model = f"pretrained GPT-2 '{model.get('name')}'"
    where = shared.get("device", "auto")
    if device:
        where = f"{where} (ran on {device})"
    if source == "synthetic" and model.get("init") == "scratch":
        kind = "Embedded default"
    elif source == "hf" and model.get("init") == "pretrained":
        kind = "Full study"
    else:
        kind = "Custom"
    return f"{kind}: {what_data}; {what_model}; device {where}, {shared.get('dtype', 'float32')}."


def regime_short(params: dict[str, Any]) -> str:
    """`Embedded default (synthetic data, scratch GPT-2 2x128)`: the regime in a few words."""
    data, model = params.get("data", {}), params.get("model", {})
    kind = regime(params).split(":", 1)[0]
    what_data = "synthetic data" if data.get("source") == "synthetic" else f"HH-RLHF {data.get('division')}"
    what_model = (f"scratch GPT-2 {model.get('n_layer')}x{model.get('n_embd')}" if model.get("init") == "scratch"
                  else f"GPT-2 '{model.get('name')}'")
    return f"{kind} ({what_data}, {what_model})"


def measured_device(metrics: dict[str, Any]) -> str | None:
    memory = metrics.get("memory") or {}
    if "cuda_max_allocated_bytes" in memory:
        return "CUDA"
    if "peak_rss_bytes" in memory:
        return "CPU"
    return None


# -- the page being built -------------------------------------------------------------------------

@dataclass
class Page:
    root: Path
    params: dict[str, Any]  # params.yaml now, as plain data
    regime: str
    files: dict[str, Path]  # name in report/ → source file
    present: list[str] = field(default_factory=list)  # parts with results, in page order
    missing: dict[str, str] = field(default_factory=dict)  # parts not run yet → the command that runs them

    def attach(self, rel: str) -> str:
        """Copy root/rel beside the page (flat name: plots/sft/loss.png → sft-loss.png); its name there."""
        name = rel.removeprefix("plots/").replace("/", "-")
        self.files[name] = self.root / rel
        return name

    def figure(self, rel: str) -> str:
        if not (self.root / rel).is_file():
            return f'<p class="missing">Figure <code>{esc(rel)}</code> is missing.</p>'
        name = self.attach(rel)
        wide = ' class="wide"' if png_aspect(self.root / rel) > 1.9 else ""
        return (f'<figure{wide}><a href="{esc(name)}"><img src="{esc(name)}" alt="{esc(rel)}"></a>'
                f"<figcaption>{esc(rel)}</figcaption></figure>")

    def figures(self, rels: Sequence[str]) -> str:
        figs = [self.figure(rel) for rel in rels]
        solo = " solo" if len(figs) == 1 else ""
        return f'<div class="figs{solo}">{"".join(figs)}</div>' if figs else ""

    def pngs(self, folder: str) -> list[str]:
        return [p.relative_to(self.root).as_posix() for p in sorted((self.root / folder).glob("*.png"))]

    def params_block(self, sections: Sequence[str], at: dict[str, Any] | None = None, source: str = "",
                     show_regime: bool = True) -> str:
        """The params.yaml sections a table came from, folded; and the regime, shown."""
        params = at if at is not None else self.params
        chosen = {name: params[name] for name in sections if name in params}
        text = yaml.safe_dump(chosen, sort_keys=False, default_flow_style=None, width=100)
        source = source or "params.yaml"
        said = regime(params)
        if said == regime(self.params):  # the page's own regime, stated in full in the header
            said = f"{regime_short(params)}, as in the header."
        return ((f'<p class="regime">Regime: {esc(said)}</p>' if show_regime else "")
                + f"<details><summary>params: {esc(', '.join(chosen))} ({esc(source)})</summary>"
                f"<pre>{esc(text)}</pre></details>")


@dataclass(frozen=True)
class Part:
    """One group of inputs that one command produces: shown when `inputs` has a file, else a line.

    A part with no `inputs` always renders and records in the page itself which of its stages ran.
    """

    key: str
    command: str
    inputs: tuple[str, ...]  # present when any exists
    render: Callable[[Page], str]


@dataclass(frozen=True)
class Section:
    key: str
    title: str
    parts: tuple[Part, ...]


def not_run(command: str) -> str:
    return f'<p class="notrun">Not run yet: <code>{esc(command)}</code></p>'


def kv_table(rows: Sequence[tuple[str, ...]], columns: Sequence[str] = (), numeric: bool = True) -> str:
    """Rows of (label, value per column); values right-aligned as numbers unless `numeric` is False."""
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    td = '<td class="num">' if numeric else "<td>"
    body = "".join(
        f"<tr><th scope=\"row\">{esc(key)}</th>{''.join(f'{td}{esc(v)}</td>' for v in values)}</tr>"
        for key, *values in rows
    )
    thead = f"<thead><tr><th></th>{head}</tr></thead>" if columns else ""
    return f'<div class="scroll"><table class="kv">{thead}<tbody>{body}</tbody></table></div>'


def flatten(data: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """A metrics JSON of unknown shape as (key, value) rows: nested keys dotted, bytes in MiB."""
    rows: list[tuple[str, str]] = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows += flatten(value, f"{name}.")
        elif isinstance(value, list):
            if all(not isinstance(v, (dict, list)) for v in value):
                rows.append((name, ", ".join(fmt(v) for v in value) or "—"))
            else:
                rows.append((name, f"{len(value)} entries"))
        elif name.endswith("_bytes") and _is_number(value):
            rows.append((name.removesuffix("_bytes"), fmt_mib(value)))
        else:
            rows.append((name, fmt(value)))
    return rows


def headline(sentences: Sequence[str]) -> str:
    sentences = [s for s in sentences if s]
    return f'<div class="finding">{" ".join(sentences)}</div>' if sentences else ""


def extremes(rows: Sequence[dict[str, Any]], column: str, lowest: bool = True) -> tuple[list[str], Any] | None:
    """Labels (first column) of the rows with the lowest (or highest) value; ties as the reader sees them."""
    values = [r[column] for r in rows if _is_number(r.get(column))]
    if not values:
        return None
    best = min(values) if lowest else max(values)
    labels = [row_label(r) for r in rows if _is_number(r.get(column)) and fmt(r[column]) == fmt(best)]
    return labels, best


def row_label(row: dict[str, Any]) -> str:
    """A study row's name, its first column: `adamw`, `full`; a bare number gets the column's name: `rank 8`."""
    key, value = next(iter(row.items()))
    return f"{humanize(key)} {value}" if _is_number(value) or str(value).isdigit() else str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isnan(value)


# -- sections -------------------------------------------------------------------------------------

TRAINING_STAGES = (("base", "dvc repro base", ("shared", "model", "base")),
                   ("sft", "dvc repro sft", ("shared", "train", "lora")))


def _training() -> Part:
    """The training stages (base, sft) side by side: key figures, loss curve start and end, PNGs."""

    def render(page: Page) -> str:
        ran, said, figures, sections = {}, [], [], []
        for stage, command, params_sections in TRAINING_STAGES:
            if not (page.root / f"metrics/{stage}.json").is_file():
                page.missing[stage] = command
                continue
            ran[stage] = read_json(page.root / f"metrics/{stage}.json", command)
            page.present.append(stage)
            series = read_tsv(page.root / f"plots/{stage}/loss.tsv")
            if len(series) >= 2:
                sound = (f"; on the sound answers only {fmt(series[0]['test_sound_loss'])} → "
                         f"{fmt(series[-1]['test_sound_loss'])}" if "test_sound_loss" in series[0] else "")
                said.append(f"<strong>{stage}</strong>: test loss {fmt(series[0]['test_loss'])} → "
                            f"{fmt(series[-1]['test_loss'])}{sound} over {fmt(int(series[-1]['tokens']))} tokens "
                            f"({fmt(int(series[-1]['step']))} steps).")
            figures += page.pngs(f"plots/{stage}")
            sections += [name for name in params_sections if name not in sections]
        missing = "".join(not_run(cmd) for stage, cmd, _ in TRAINING_STAGES if stage not in ran)
        if not ran:
            return missing
        rows = [(label, *(value(m) for m in ran.values())) for label, value in KEY_FIGURES]
        return (headline(said) + kv_table(rows, list(ran)) + missing
                + page.figures(figures) + page.params_block(sections))

    return Part("training", "", (), render)


def _memory(m: dict[str, Any], key: str) -> Any:
    return (m.get("memory") or {}).get(key)


def _peak(m: dict[str, Any]) -> str:
    memory = m.get("memory") or {}
    if "cuda_max_allocated_bytes" in memory:
        return f"{fmt_mib(memory['cuda_max_allocated_bytes'])} (CUDA allocated)"
    return f"{fmt_mib(memory.get('peak_rss_bytes'))} (RSS)"


# The key figures of a training stage: (row label, how to read it from metrics/<stage>.json).
KEY_FIGURES: tuple[tuple[str, Callable[[dict[str, Any]], str]], ...] = (
    ("optimizer, lr", lambda m: f"{m.get('optimizer', '—')}, {fmt(m.get('lr'))}"),
    ("parameters (without embeddings)",
     lambda m: f"{fmt(m.get('parameters'))} ({fmt(m.get('parameters_without_embeddings'))})"),
    ("trainable", lambda m: f"{fmt(m.get('trainable_parameters'))} ({fmt_percent(m.get('trainable_fraction'))})"
     + (f", LoRA rank {m['lora_rank']}" if m.get("lora_rank") else "")),
    ("steps", lambda m: fmt(m.get("steps"))),
    ("epochs", lambda m: fmt(m.get("epochs"))),
    ("tokens seen", lambda m: fmt(m.get("tokens"))),
    ("FLOPs", lambda m: fmt(m.get("flops"))),
    ("final train loss", lambda m: fmt(m.get("train_loss"))),
    ("final test loss", lambda m: fmt(m.get("test_loss"))),
    ("throughput", lambda m: f"{fmt(m.get('tokens_per_s'))} tokens/s"),
    ("MFU", lambda m: f"{fmt_percent(m.get('mfu'))} of {fmt(m.get('peak_flops'))} FLOP/s"),
    ("memory: parameters", lambda m: fmt_mib(_memory(m, "parameters_bytes"))),
    ("memory: gradients", lambda m: fmt_mib(_memory(m, "gradients_bytes"))),
    ("memory: optimizer state", lambda m: fmt_mib(_memory(m, "optimizer_state_bytes"))),
    ("memory: optimizer state, theory", lambda m: fmt_mib(_memory(m, "optimizer_state_bytes_theory"))),
    ("memory: rest (runtime, activations)", lambda m: fmt_mib(_memory(m, "rest_bytes"))),
    ("memory: peak", _peak),
)


def _study(name: str, params_sections: Sequence[str], title: str) -> Part:
    """A study compiled by `gptpipe study <name>`: its finding, table and notes, figure, params."""
    command = f"gptpipe study {name}"
    md, csv, png = f"plots/studies/{name}.md", f"plots/studies/{name}.csv", f"plots/studies/{name}.png"
    record_path = f"metrics/studies/{name}.json"

    def render(page: Page) -> str:
        record = read_json(page.root / record_path, command) if (page.root / record_path).is_file() else {}
        rows = record.get("rows") or (pd.read_csv(page.root / csv).to_dict("records")
                                      if (page.root / csv).is_file() else [])
        parts = [f"<h3>{esc(title)}</h3>", headline(study_findings(rows))]
        if (page.root / md).is_file():
            parts.append(markdown_html((page.root / md).read_text(), heading_offset=3, best_column="test_loss"))
        if (page.root / csv).is_file():
            parts.append(f'<p class="legend">Full-precision numbers: <a href="{esc(page.attach(csv))}">'
                         f"{esc(name)}.csv</a></p>")
        parts.append(page.figures([png]))
        baseline = record.get("baseline")
        at = params_at(page.root, baseline) if baseline else None
        if at is not None:
            parts.append(page.params_block(params_sections, at, f"params.yaml at the study's baseline "
                                           f"{baseline[:7]}; each point overrides its own key"))
        else:
            note = f"params.yaml now; the study ran on {baseline[:7]}" if baseline else "params.yaml now"
            parts.append(page.params_block(params_sections, source=note))
        return "".join(parts)

    return Part(f"study-{name}", command, (md, csv, record_path), render)


def _judged_findings(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Studies that judge their SFT answers: the best judged row, and each random control against
    the reward-filtered subset of the same size (quality separated from quantity)."""
    column = next((c for c in ("sft_reward", "sft_reward_one_judge") if rows and c in rows[0]), None)
    if column is None:
        return []
    said = []
    best = extremes(rows, column, lowest=False)
    if best:
        said.append(f"Highest judged reward of the SFT answers: <strong>{esc(', '.join(best[0]))}</strong> "
                    f"({fmt(best[1])}).")
    return said + _against_controls(rows, column, higher_is_better=True, measure="")


def _against_controls(rows: Sequence[dict[str, Any]], column: str, *, higher_is_better: bool, measure: str) -> list[str]:
    """Each random control against the reward-filtered subset of the same size, on one column."""
    said = []
    for control in (r for r in rows if r.get("by") == "random" and _is_number(r.get(column))):
        top = next((r for r in rows if r.get("by") != "random" and r.get("pairs") == control.get("pairs")
                    and _is_number(r.get(column))), None)
        if top is not None:
            wins = top[column] > control[column] if higher_is_better else top[column] < control[column]
            said.append(f"At {fmt(control['pairs'])} pairs{measure}, the reward-filtered {esc(row_label(top))} "
                        f"({fmt(top[column])}) {'beats' if wins else 'does not beat'} the random control "
                        f"{esc(row_label(control))} ({fmt(control[column])}).")
    return said


def study_findings(rows: Sequence[dict[str, Any]]) -> list[str]:
    """What a reader looks for first in a study table, in words."""
    said = []
    low, high = extremes(rows, "test_loss"), extremes(rows, "test_loss", lowest=False)
    if low and high:
        said.append(f"Lowest final test loss: <strong>{esc(', '.join(low[0]))}</strong> ({fmt(low[1])}); "
                    f"highest: {esc(', '.join(high[0]))} ({fmt(high[1])}).")
    sound = extremes(rows, "test_loss_sound")
    if sound:
        said.append(f"Lowest test loss on the sound answers only: <strong>{esc(', '.join(sound[0]))}</strong> "
                    f"({fmt(sound[1])}).")
        said += _against_controls(rows, "test_loss_sound", higher_is_better=False,
                                  measure=", by the test loss on sound answers (no judge involved)")
    said += _judged_findings(rows)
    reach = extremes(rows, "tokens_to_target")
    if reach:
        said.append(f"Fewest tokens to the target loss: {esc(', '.join(reach[0]))} ({fmt(reach[1])}).")
    full = [r for r in rows if row_label(r) == "full"]
    others = [r for r in rows if row_label(r) != "full" and _is_number(r.get("test_loss"))]
    if full and others and _is_number(full[0].get("test_loss")):
        best, ref = min(others, key=lambda r: r["test_loss"]), full[0]
        gap = best["test_loss"] - ref["test_loss"]
        state = ("state_MiB" in best and "state_MiB" in ref)
        said.append(f"Full fine-tuning reaches a test loss of {fmt(ref['test_loss'])}"
                    + (f" with {fmt(ref['state_MiB'])} MiB of optimizer state" if state else "")
                    + f"; the best of the rest, {esc(row_label(best))}, reaches {fmt(best['test_loss'])} "
                    f"({'+' if gap >= 0 else ''}{fmt(gap)})"
                    + (f" with {fmt(best['state_MiB'])} MiB." if state else "."))
    elif rows and "state_MiB" in rows[0]:
        least = extremes(rows, "state_MiB")
        if least:
            said.append(f"Least optimizer state: {esc(', '.join(least[0]))} ({fmt(least[1])} MiB).")
    return said


def _metrics_part(key: str, title: str, command: str, metrics: str, plots: str | None,
                  params_sections: Sequence[str], findings: Callable[[dict[str, Any]], list[str]],
                  extra_md: str | None = None) -> Part:
    """A stage whose metrics JSON is shown whole (flattened), with the stage's PNGs."""

    def render(page: Page) -> str:
        parts = [f"<h3>{esc(title)}</h3>"]
        data = read_json(page.root / metrics, command) if (page.root / metrics).is_file() else None
        if data is not None:
            parts.append(headline(findings(data)))
            parts.append(f'<p class="legend">{esc(metrics)}</p>' + kv_table(flatten(data)))
        if extra_md and (page.root / extra_md).is_file():
            parts.append(markdown_html((page.root / extra_md).read_text(), heading_offset=3))
        if plots:
            parts.append(page.figures(page.pngs(plots)))
        parts.append(page.params_block(params_sections))
        return "".join(parts)

    inputs = tuple(p for p in (metrics, extra_md) if p)
    return Part(key, command, inputs, render)


def _find(data: dict[str, Any], word: str) -> list[tuple[str, Any]]:
    out = []
    for key, value in data.items():
        if isinstance(value, dict):
            out += [(f"{key}.{k}", v) for k, v in _find(value, word)]
        elif word in key and _is_number(value):
            out.append((key, value))
    return out


def reward_findings(m: dict[str, Any]) -> list[str]:
    accuracies = _find(m, "accurac")
    tests = [kv for kv in accuracies if "test" in kv[0]] or accuracies
    if not tests:
        return []
    key, value = tests[0]
    return [f"Reward model pairwise test accuracy: <strong>{fmt_percent(value)}</strong> of test pairs score the "
            f"chosen response above the rejected one (<code>{esc(key)}</code>; 50% is chance)."]


def score_findings(m: dict[str, Any]) -> list[str]:
    said = []
    for split in ("train", "test"):
        s = m.get(split)
        if isinstance(s, dict) and "pairwise_accuracy" in s:
            said.append(f"{split}: chosen scored above rejected in {fmt_percent(s['pairwise_accuracy'])} of "
                        f"{fmt(s.get('pairs'))} pairs (mean reward chosen {fmt(s.get('mean_chosen_reward'))}, "
                        f"rejected {fmt(s.get('mean_rejected_reward'))}).")
    if said and m.get("scorer"):
        said.insert(0, f"Scored by {esc(m['scorer'])}.")
    return said


def filter_findings(m: dict[str, Any]) -> list[str]:
    if "kept" not in m or "total" not in m:
        return []
    said = [f"Kept <strong>{fmt(m['kept'])}</strong> of {fmt(m['total'])} train pairs by {esc(m.get('by'))}"
            + (f" (threshold {fmt(m['threshold'])})." if m.get("threshold") is not None else ".")]
    if m.get("flawed_fraction_kept") is not None:
        said.append(f"Flawed chosen responses (synthetic ground truth): {fmt_percent(m['flawed_fraction_kept'])} "
                    f"of those kept vs {fmt_percent(m.get('flawed_fraction_dropped'))} of those dropped.")
    return said


def dpo_findings(m: dict[str, Any]) -> list[str]:
    said = reward_findings({k: v for k, v in m.items() if "accurac" in k})
    return [s.replace("Reward model pairwise test accuracy", "DPO implicit-reward test accuracy") for s in said]


def scaling_findings(m: dict[str, Any]) -> list[str]:
    if "n_opt_exponent" not in m:
        return []
    if m["n_opt_exponent"] is None:
        said = [f"Exponents not fitted: {esc(m.get('exponent_note'))}."]
    else:
        r2 = m.get("n_opt_r2")
        fit = f"r² {fmt(r2)}" if r2 is not None else "a line through 2 points, so no r²"
        said = [f"Fitted N<sub>opt</sub> ∝ C<sup>{fmt(m['n_opt_exponent'])}</sup> ({fit}) and "
                f"D<sub>opt</sub> ∝ C<sup>{fmt(m.get('d_opt_exponent'))}</sup> over "
                f"{len(m.get('fitted_budgets') or [])} budgets, {fmt(m.get('n_runs'))} runs "
                "(Chinchilla found about 0.5 each)."]
    if m.get("extrapolated_budgets"):
        said.append("Extrapolated (vertex outside the sizes run, so not in the exponent fit) at "
                    f"{', '.join(fmt(b) for b in m['extrapolated_budgets'])} FLOPs.")
    return said


def _compute_optimal() -> Part:
    command = "dvc repro scaling"

    def render(page: Page) -> str:
        md = page.root / "plots/scaling/compute_optimal.md"
        text = md.read_text() if md.is_file() else ""
        title = "Compute-optimal model size (isoFLOP profiles)"
        if text.startswith("# "):  # its own title heads the part
            title, _, text = text.partition("\n")
            title = title.removeprefix("# ")
        parts = [f"<h3>{_inline(title)}</h3>"]
        if (page.root / "metrics/scaling.json").is_file():
            parts.append(headline(scaling_findings(read_json(page.root / "metrics/scaling.json", command))))
        parts.append(markdown_html(text, heading_offset=3))
        tables = ("plots/scaling/compute_optimal.csv", "plots/scaling/runs.csv")
        links = [f'<a href="{esc(page.attach(rel))}">{esc(Path(rel).name)}</a>'
                 for rel in tables if (page.root / rel).is_file()]
        if links:
            parts.append(f'<p class="legend">Full-precision numbers: {", ".join(links)}</p>')
        parts.append(page.figures([f"plots/scaling/{n}.png" for n in ("isoflop", "envelope", "n_opt")]))
        parts.append(page.params_block(("model", "base", "scaling")))
        return "".join(parts)

    return Part("scaling", command, ("metrics/scaling.json", "plots/scaling/compute_optimal.md"), render)


def _no_findings(_: dict[str, Any]) -> list[str]:
    return []


SECTIONS: tuple[Section, ...] = (
    Section("training", "Training curves: base and SFT", (
        _training(),
    )),
    Section("optimizers", "Optimizer comparison", (
        _study("optimizers", ("train",), "SFT by optimizer: loss, speed and memory"),
    )),
    Section("lora", "LoRA vs full fine-tuning across ranks", (
        _study("lora", ("train", "lora"), "SFT with LoRA ranks and full fine-tuning"),
    )),
    Section("quality", "Reward model and data quality", (
        _metrics_part("reward", "Reward model", "dvc repro reward", "metrics/reward.json", "plots/reward",
                      ("reward",), reward_findings),
        _metrics_part("score", "Rewards of the training pairs", "dvc repro score", "metrics/score.json",
                      "plots/score", ("reward",), score_findings),
        _metrics_part("filter", "Quality filter", "dvc repro filter", "metrics/filter.json", "plots/filter",
                      ("filter",), filter_findings),
        _study("data-quality", ("filter", "train"), "Does a reward-filtered subset beat the full set?"),
    )),
    Section("dpo", "DPO vs SFT and generation quality", (
        _metrics_part("dpo", "DPO", "dvc repro dpo", "metrics/dpo.json", "plots/dpo", ("dpo",), dpo_findings),
        _metrics_part("evaluate", "Generations scored by the reward model", "dvc repro evaluate",
                      "metrics/evaluate.json", "plots/evaluate", ("generate", "evaluate"), _no_findings,
                      extra_md="plots/evaluate/report.md"),
    )),
    Section("scaling", "Model size and compute-optimal training", (
        _study("scaling", ("model", "train"), "SFT by model size"),
        _compute_optimal(),
    )),
)


# -- the page -------------------------------------------------------------------------------------

CSS = """
:root { --ink:#1d2330; --muted:#5b6474; --line:#d9dee7; --soft:#f5f7fa; --accent:#2457a6; --best:#e7f3e3; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.5 -apple-system, "Segoe UI", Roboto, "DejaVu Sans", Arial, sans-serif;
       color:var(--ink); background:#fff; }
main { max-width:1120px; margin:0 auto; padding:24px 28px 64px; }
h1 { font-size:26px; margin:0 0 4px; }
h2 { font-size:21px; margin:40px 0 8px; padding-top:12px; border-top:2px solid var(--line); }
h3 { font-size:17px; margin:24px 0 8px; }
h4, h5, h6 { font-size:15px; margin:16px 0 6px; }
a { color:var(--accent); }
code { font:13px/1.4 "DejaVu Sans Mono", Menlo, Consolas, monospace; background:var(--soft); padding:1px 4px;
       border-radius:3px; }
pre { font:12px/1.45 "DejaVu Sans Mono", Menlo, Consolas, monospace; background:var(--soft); padding:10px 12px;
      border-radius:4px; overflow-x:auto; margin:6px 0 0; }
.lede { color:var(--muted); margin:0 0 16px; }
.regime { color:var(--muted); font-size:13px; margin:10px 0 2px; }
details { font-size:13px; color:var(--muted); margin:2px 0 8px; }
summary { cursor:pointer; }
.finding { background:#eef4fc; border-left:4px solid var(--accent); padding:8px 12px; margin:8px 0 12px;
           border-radius:0 4px 4px 0; }
.notrun { color:var(--muted); font-style:italic; margin:6px 0; }
.notrun code { font-style:normal; }
.missing { color:#9a3b1b; font-size:13px; }
.legend { color:var(--muted); font-size:13px; margin:4px 0 10px; }
.scroll { overflow-x:auto; margin:8px 0; }
table { border-collapse:collapse; font-size:13px; }
th, td { border-bottom:1px solid var(--line); padding:4px 9px; vertical-align:top; }
thead th { background:var(--soft); text-align:left; font-weight:600; border-bottom:2px solid var(--line);
           vertical-align:bottom; }
td.num { text-align:right; font-variant-numeric:tabular-nums; white-space:nowrap; }
tbody tr:nth-child(even) { background:#fbfcfd; }
tr.best, tr.best:nth-child(even) { background:var(--best); }
table.kv tbody th { text-align:left; font-weight:normal; color:var(--muted); white-space:nowrap; }
.figs { display:grid; grid-template-columns:repeat(auto-fill, minmax(460px, 1fr)); gap:14px; margin:12px 0; }
figure.wide { grid-column:1 / -1; }
.figs.solo { grid-template-columns:minmax(0, 760px); }
figure { margin:0; border:1px solid var(--line); border-radius:4px; padding:8px; background:#fff; }
figure img { width:100%; height:auto; display:block; }
figcaption { color:var(--muted); font-size:12px; margin-top:4px; }
nav ol { margin:8px 0 0; padding-left:22px; }
nav li span { color:var(--muted); font-size:13px; }
footer { margin-top:48px; color:var(--muted); font-size:12px; }
@media print { main { max-width:none; padding:0; } figure, table, .finding { break-inside:avoid; }
               h2, h3 { break-after:avoid; } a { color:inherit; text-decoration:none; } }
"""


def render_page(page: Page, commit: str | None) -> tuple[str, dict[str, Any]]:
    """The HTML of the page and the record of what it holds."""
    bodies, toc = [], []
    for section in SECTIONS:
        shown, keys_before = [], set(page.present) | set(page.missing)
        for part in section.parts:
            if not part.inputs:  # the part says itself what ran (several stages in one table)
                shown.append(part.render(page))
            elif any((page.root / rel).is_file() for rel in part.inputs):
                shown.append(part.render(page))
                page.present.append(part.key)
            else:
                shown.append(not_run(part.command))
                page.missing[part.key] = part.command
        ran = [k for k in page.present if k not in keys_before]
        total = len(ran) + len([k for k in page.missing if k not in keys_before])
        status = "not run yet" if not ran else ("" if len(ran) == total else f"{len(ran)} of {total} parts")
        toc.append(f'<li><a href="#{section.key}">{esc(section.title)}</a>'
                   + (f" <span>({esc(status)})</span>" if status else "") + "</li>")
        bodies.append(f'<section id="{section.key}"><h2>{esc(section.title)}</h2>{"".join(shown)}</section>')
    present, missing = page.present, page.missing
    commit_text = commit or "unknown (not a git checkout)"
    header = (
        "<header><h1>gptpipe: GPT-2 as a dialogue assistant</h1>"
        '<p class="lede">Fine-tuning GPT-2 on HH-RLHF-format preference data, and what each step costs and buys. '
        "Every number below is read from the pipeline's metrics and plots.</p>"
        f'<div class="finding"><strong>What ran.</strong> {esc(page.regime)}</div>'
        + kv_table([("data", _data_line(page.params)), ("model", _model_line(page.params)),
                    ("device", _device_line(page.params)), ("git commit", commit_text),
                    ("parts with results", f"{len(present)} of {len(present) + len(missing)}")], numeric=False)
        + page.params_block(("shared", "data", "tokenize", "model"), show_regime=False)
        + f"<nav><strong>Contents</strong><ol>{''.join(toc)}</ol></nav></header>"
    )
    body = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>gptpipe report</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n"
        + header + "\n" + "\n".join(bodies)
        + f"\n<footer>Built by <code>python -m stages.report</code> from commit {esc(commit_text)}. "
        "The figures are copies of the PNGs under <code>plots/</code>.</footer>\n</main>\n</body>\n</html>\n"
    )
    # Numbers for `dvc metrics show`; the names in lists, which its table leaves out (strings would widen it).
    record = {"parts_present": len(present), "parts_missing": len(missing), "files": len(page.files),
              "present": present, "missing": list(missing), "to_run": list(dict.fromkeys(missing.values()))}
    return body, record


def _data_line(p: dict[str, Any]) -> str:
    data = p.get("data", {})
    return (f"data.source = {data.get('source')}"
            + ("" if data.get("source") == "synthetic" else f", division {data.get('division')}")
            + f"; tokenize.max_length = {p.get('tokenize', {}).get('max_length')}")


def _model_line(p: dict[str, Any]) -> str:
    model = p.get("model", {})
    if model.get("init") == "scratch":
        return (f"model.init = scratch: {model.get('n_layer')} layers x {model.get('n_embd')} wide, "
                f"{model.get('n_head')} heads, {model.get('n_positions')} positions")
    return f"model.init = pretrained: {model.get('name')}"


def _device_line(p: dict[str, Any]) -> str:
    shared = p.get("shared", {})
    return (f"shared.device = {shared.get('device')}, dtype {shared.get('dtype')}, "
            f"compile {'on' if shared.get('compile') else 'off'}, seed {shared.get('seed')}")


def build_report(root: Path, params: Params, commit: str | None, out: Path, record_path: Path) -> dict[str, Any]:
    """Read every study's results under `root` and write the page to `out` (a folder) in one rename."""
    plain = params.model_dump(mode="json")
    device = None
    for stage in ("sft", "base"):
        if (root / f"metrics/{stage}.json").is_file():
            device = measured_device(read_json(root / f"metrics/{stage}.json", f"dvc repro {stage}"))
            break
    page = Page(root=root, params=plain, regime=regime(plain, device), files={})
    text, record = render_page(page, commit)
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        (tmp / "index.html").write_text(text, encoding="utf-8")
        for name, source in page.files.items():
            shutil.copyfile(source, tmp / name)
    write_json(record_path, record)
    print(f"report: {out / 'index.html'}: {record['parts_present']} parts with results, "
          f"{record['parts_missing']} not run yet")
    return record
