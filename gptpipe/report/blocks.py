"""What a part of the page shows, as data: the template (templates/index.html.j2) draws each kind.

Text is plain `str` and the template escapes it; only `Markup` (sentences built with Markup.format,
which escapes what it inserts, and markdown-it's output with raw HTML off) goes in as HTML.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from markupsafe import Markup


@dataclass(frozen=True)
class Title:
    kind: ClassVar[str] = "title"
    text: str | Markup


@dataclass(frozen=True)
class Finding:
    """What a reader looks for first, in sentences; drawn only when there is one."""

    kind: ClassVar[str] = "finding"
    sentences: Sequence[Markup]


@dataclass(frozen=True)
class KeyValues:
    """Rows of (label, value per column); values right-aligned as numbers unless `numeric` is False."""

    kind: ClassVar[str] = "key_values"
    rows: Sequence[tuple[str, ...]]
    columns: Sequence[str] = ()
    numeric: bool = True


@dataclass(frozen=True)
class VerdictCell:
    """One measure's verdict: the difference in points, its interval, the verdict word."""

    difference: str  # "+63.5"
    interval: str  # "[+56.6, +70.4]"
    verdict: str  # "higher" | "lower" | "no difference": the later point against the earlier
    per_seed: str | None  # "+1.0, +2.5, -0.5" where several seeds; None for one

    @property
    def decided(self) -> bool:
        return self.verdict != "no difference"


@dataclass(frozen=True)
class VerdictRow:
    comparison: str  # "adam vs adamw": later vs earlier
    cells: Sequence[VerdictCell | None]  # one per measure of the table; None where not measured
    seeds: str  # "one seed", "3 seeds"


@dataclass(frozen=True)
class VerdictTable:
    """A study's judge-free verdicts, one row per comparison and a group of columns per measure."""

    kind: ClassVar[str] = "verdicts"
    measures: Sequence[str]
    rows: Sequence[VerdictRow]
    legend: str


@dataclass(frozen=True)
class Html:
    """Markdown already rendered (markdown.markdown_html)."""

    kind: ClassVar[str] = "html"
    html: Markup


@dataclass(frozen=True)
class Legend:
    """A small line under a table: its source file."""

    kind: ClassVar[str] = "legend"
    text: str


@dataclass(frozen=True)
class Link:
    href: str  # a file beside the page
    text: str


@dataclass(frozen=True)
class Downloads:
    """`Full-precision numbers: a.csv, b.csv`: the CSVs a rounded table came from."""

    kind: ClassVar[str] = "downloads"
    links: Sequence[Link]


@dataclass(frozen=True)
class Figure:
    """A PNG copied beside the page (`name`), or a line saying `source` is missing."""

    source: str  # under the project root: plots/sft/loss.png
    name: str | None  # in the report folder: sft-loss.png; None when the PNG is missing
    wide: bool = False  # wider than about 2:1, so it takes the whole row


@dataclass(frozen=True)
class Figures:
    kind: ClassVar[str] = "figures"
    figures: Sequence[Figure]


@dataclass(frozen=True)
class ParamsBlock:
    """The params.yaml sections a result came from, folded, under the regime they describe."""

    kind: ClassVar[str] = "params"
    regime: str | None  # None where the page says it already (the header)
    sections: Sequence[str]
    source: str  # which params.yaml: now, or at a study's baseline
    yaml: str


@dataclass(frozen=True)
class NotRun:
    """A part whose inputs do not exist yet: the command that makes them."""

    kind: ClassVar[str] = "not_run"
    command: str


Block = Title | Finding | KeyValues | VerdictTable | Html | Legend | Downloads | Figures | ParamsBlock | NotRun
