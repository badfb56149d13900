"""The page being built and what it is made of: sections, each of parts, each drawn from some inputs.

A part is what one command produces (a stage, a study). It is shown when any of its inputs exists,
else it is one line naming that command, so a reader of a half-run pipeline sees what to run next.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from gptpipe.report.blocks import Block, Figure, Figures, ParamsBlock
from gptpipe.report.inputs import RawParams, png_aspect
from gptpipe.report.regime import regime, regime_short

WIDE_ASPECT = 1.9  # a figure wider than this (a row of panels) takes the page's whole width


@dataclass
class Page:
    """The project folder the page reads, and what the page collects while its parts are drawn."""

    root: Path
    params: RawParams  # params.yaml now
    regime: str  # the header's sentence, with the device the training ran on
    files: dict[str, Path] = field(default_factory=dict)  # name in report/ → source file
    present: list[str] = field(default_factory=list)  # parts with results, in page order
    missing: dict[str, str] = field(default_factory=dict)  # parts not run yet → the command that runs them

    def has(self, rel: str) -> bool:
        return (self.root / rel).is_file()

    def attach(self, rel: str) -> str:
        """Copy root/rel beside the page (flat name: plots/sft/loss.png → sft-loss.png); its name there."""
        name = rel.removeprefix("plots/").replace("/", "-")
        self.files[name] = self.root / rel
        return name

    def figures(self, rels: Sequence[str]) -> Figures:
        return Figures([self._figure(rel) for rel in rels])

    def _figure(self, rel: str) -> Figure:
        if not self.has(rel):
            return Figure(rel, None)
        return Figure(rel, self.attach(rel), png_aspect(self.root / rel) > WIDE_ASPECT)

    def pngs(self, folder: str) -> list[str]:
        return [p.relative_to(self.root).as_posix() for p in sorted((self.root / folder).glob("*.png"))]

    def params_block(self, sections: Sequence[str], at: RawParams | None = None, source: str = "params.yaml",
                     show_regime: bool = True) -> ParamsBlock:
        """The params.yaml sections (now, or `at` a baseline) a result came from, and their regime."""
        params = at if at is not None else self.params
        chosen = params.sections(sections)
        said = regime(params)
        if said == regime(self.params):  # the page's own regime, stated in full in the header
            said = f"{regime_short(params)}, as in the header."
        text = yaml.safe_dump(chosen, sort_keys=False, default_flow_style=None, width=100)
        return ParamsBlock(said if show_regime else None, list(chosen), source, text)


@dataclass(frozen=True)
class Part:
    """One group of inputs that one command produces: drawn when `inputs` has a file, else a line.

    A part with no `inputs` always draws, and records on the page itself which of its stages ran.
    """

    key: str
    command: str
    inputs: tuple[str, ...]  # present when any exists
    draw: Callable[[Page], list[Block]]


@dataclass(frozen=True)
class Section:
    key: str  # the page anchor
    title: str
    parts: tuple[Part, ...]
