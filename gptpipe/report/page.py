"""The report: every study that has results, compiled into one page (`report/index.html` + its PNGs).

The page is what a student hands in and a researcher skims: each finding is stated in words and
numbers next to its table and figure, with the params and the regime it came from. A section whose
inputs do not exist yet says so in one line, with the command that produces them.

Everything is read and rendered in memory first; the folder is then written under a temp name and
renamed (`files.atomic_path`), so a failed build leaves the previous report as it was.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, Template
from markupsafe import Markup

from gptpipe.config import Params
from gptpipe.files import atomic_path, write_json
from gptpipe.report.blocks import Block, KeyValues, NotRun
from gptpipe.report.inputs import RawParams, git_commit, read_json
from gptpipe.report.metrics import TrainingMetrics, from_json
from gptpipe.report.parts import Page, Section
from gptpipe.report.regime import data_line, device_line, model_line, regime
from gptpipe.report.sections import SECTIONS

__all__ = ["build_report", "git_commit", "render_page"]


def build_report(root: Path, params: Params, commit: str | None, out: Path, record_path: Path) -> dict[str, Any]:
    """Read every study's results under `root` and write the page to `out` (a folder) in one rename."""
    now = RawParams(params.model_dump(mode="json"))
    page = Page(root=root, params=now, regime=regime(now, _measured_device(root)))
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


def _measured_device(root: Path) -> str | None:
    """The device the training ran on, from the memory it measured (SFT's, else base's)."""
    for stage in ("sft", "base"):
        if (root / f"metrics/{stage}.json").is_file():
            metrics = read_json(root / f"metrics/{stage}.json", f"dvc repro {stage}")
            return from_json(TrainingMetrics, metrics).memory.device
    return None


@dataclass(frozen=True)
class DrawnSection:
    key: str
    title: str
    status: str  # for the contents: "", "not run yet", "1 of 2 parts"
    blocks: list[Block]


def render_page(page: Page, commit: str | None) -> tuple[str, dict[str, Any]]:
    """The HTML of the page and the record of what it holds."""
    sections = [_draw(section, page) for section in SECTIONS]
    present, missing = page.present, page.missing
    commit_text = commit or "unknown (not a git checkout)"
    summary = KeyValues([
        ("data", data_line(page.params)), ("model", model_line(page.params)), ("device", device_line(page.params)),
        ("git commit", commit_text), ("parts with results", f"{len(present)} of {len(present) + len(missing)}"),
    ], numeric=False)
    html = _template().render(
        css=Markup(resources.files("gptpipe.report").joinpath("style.css").read_text(encoding="utf-8")),
        regime=page.regime, summary=summary, commit=commit_text, sections=sections,
        header_params=page.params_block(("shared", "data", "tokenize", "model"), show_regime=False),
    )
    # Numbers for `dvc metrics show`; the names in lists, which its table leaves out (strings would widen it).
    record = {"parts_present": len(present), "parts_missing": len(missing), "files": len(page.files),
              "present": present, "missing": list(missing), "to_run": list(dict.fromkeys(missing.values()))}
    return html, record


def _draw(section: Section, page: Page) -> DrawnSection:
    """A section's parts: drawn where an input exists, else the command that makes them."""
    blocks: list[Block] = []
    known_before = set(page.present) | set(page.missing)
    for part in section.parts:
        if not part.inputs:  # the part says itself what ran (several stages in one table)
            blocks += part.draw(page)
        elif any(page.has(rel) for rel in part.inputs):
            blocks += part.draw(page)
            page.present.append(part.key)
        else:
            blocks.append(NotRun(part.command))
            page.missing[part.key] = part.command
    ran = [key for key in page.present if key not in known_before]
    total = len(ran) + len([key for key in page.missing if key not in known_before])
    status = "not run yet" if not ran else ("" if len(ran) == total else f"{len(ran)} of {total} parts")
    return DrawnSection(section.key, section.title, status, blocks)


def _template() -> Template:
    # Autoescape on: values are text unless they arrive as Markup; trim_blocks keeps the HTML unpadded.
    env = Environment(loader=PackageLoader("gptpipe.report", "templates"), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    return env.get_template("index.html.j2")
