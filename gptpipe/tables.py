"""Markdown tables for people: pandas' `to_markdown`, with a missing value shown as a dash, not nan."""

from __future__ import annotations

import pandas as pd


def markdown_table(table: pd.DataFrame, floatfmt: str = ".4g") -> str:
    # tabulate's missingval replaces None only; NaN in a float column would print as "nan".
    shown = table.astype(object).where(table.notna(), None)
    return shown.to_markdown(index=False, floatfmt=floatfmt, missingval="—")
