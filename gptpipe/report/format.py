"""Numbers and names as a person reads them: separators on counts, 4 significant digits on measurements."""

from __future__ import annotations

import math
import numbers
import re
from typing import Any

MIB = 2**20

# A number as pandas' to_markdown or a person writes one: `12`, `-4.957`, `.5`, `3e+11`.
NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def fmt(value: Any) -> str:
    """Exact counts with separators, measurements to 4 significant digits, None as a dash."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, numbers.Integral):
        return f"{int(value):,}"
    if isinstance(value, numbers.Real):
        return _fmt_real(float(value))
    return str(value)


def _fmt_real(value: float) -> str:
    if math.isnan(value) or math.isinf(value):
        return str(value)
    if value == 0:
        return "0"
    if abs(value) >= 1e6 or abs(value) < 1e-4:
        return f"{value:.4g}"
    if abs(value) >= 1e3:  # 3436.7 → 3,437: rounded to 4 digits, then separated
        return f"{float(f'{value:.4g}'):,.0f}"
    return f"{value:.4g}"


def fmt_mib(n_bytes: float | None) -> str:
    return "—" if n_bytes is None else f"{fmt(n_bytes / MIB)} MiB"


def fmt_percent(fraction: float | None) -> str:
    return "—" if fraction is None else f"{fmt(100 * fraction)}%"


def humanize(column: str) -> str:
    """`tokens_per_s` → `tokens/s`, `state_MiB` → `state (MiB)`, other underscores → spaces."""
    name = column.replace("_per_s", "/s")
    name = re.sub(r"_(MiB|bytes)(?=_|$)", r" (\1)", name)
    return name.replace("_", " ")


def is_number(value: Any) -> bool:
    """A real number a table can compare: not a bool, not NaN (pandas' blank cell)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isnan(value)


def parse_number(text: str) -> int | float | None:
    """The number a table cell's text writes, or None for text such as `—` or `[4.01, 4.65]`."""
    text = text.strip()
    if not NUMBER.fullmatch(text):
        return None
    try:
        return int(text)
    except ValueError:
        return float(text)


def cell_number(text: str, value: int | float) -> str:
    """A table cell's number for people: counts get separators; a float keeps its writer's form unless it
    has more than 4 significant digits (pandas writes 1.7604259379510043 where 1.76 is what matters)."""
    if isinstance(value, int):
        return fmt(value)
    digits = re.sub(r"[eE].*$", "", text).lstrip("+-").replace(".", "").lstrip("0")
    return fmt(value) if len(digits) > 4 else text.strip()
