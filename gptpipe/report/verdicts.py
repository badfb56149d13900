"""A study's judge-free verdicts as a table a reader scans: one row per comparison (later vs earlier),
per measure the difference in points, its interval and the verdict word, and the seeds it rests on.

The verdicts are decided in gptpipe.studies.verdicts; this only lays them out. Said as sentences,
the optimizer study's ten verdicts made one paragraph in which the two decided ones hid; in a table
the numbers line up and a decided verdict stands out in bold.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gptpipe.evaluation.stats import MIN_DISCORDANT
from gptpipe.report.blocks import VerdictCell, VerdictRow, VerdictTable

Verdicts = Mapping[str, Mapping[str, Mapping[str, Any]]]  # "<later> vs <earlier>" -> measure -> figures


def verdict_table(verdicts: Verdicts, confidence: float | None) -> VerdictTable | None:
    """The table of a study record's verdicts, or None where it has none (older records, real HH)."""
    if not verdicts:
        return None
    # Measures in the order the study states them; a comparison lacking one shows a dash there.
    measures = list(dict.fromkeys(measure for by_measure in verdicts.values() for measure in by_measure))
    rows = [VerdictRow(pair, [_cell(by_measure[m]) if m in by_measure else None for m in measures],
                       _seeds(by_measure.values()))
            for pair, by_measure in verdicts.items()]
    level = f"{round(100 * confidence)}% " if confidence is not None else ""
    legend = (f"Judge-free verdicts: each later point against the earlier one, answers paired by prompt "
              f"within each seed. The difference in percentage points (later − earlier), its {level}interval "
              f"(over seeds where there are several), and the verdict, in bold where the interval excludes 0 "
              f"and at least {MIN_DISCORDANT} answers differ.")
    return VerdictTable(measures, rows, legend)


def _cell(v: Mapping[str, Any]) -> VerdictCell:
    per_seed = v.get("per_seed")
    return VerdictCell(
        difference=_points(v["difference"]),
        interval=f"[{_points(v['ci_low'])}, {_points(v['ci_high'])}]",
        verdict=v["verdict"] if v["verdict"] in ("higher", "lower") else "no difference",
        per_seed=", ".join(_points(d) for d in per_seed) if per_seed and len(per_seed) > 1 else None,
    )


def _points(fraction: float) -> str:
    return f"{100 * fraction:+.1f}"


def _seeds(by_measure: Any) -> str:
    """How many training runs the row rests on; one count for the row, as its measures share the runs."""
    counts = sorted({v.get("seeds", 1) for v in by_measure})
    return " / ".join("one seed" if n == 1 else f"{n} seeds" for n in counts)
