"""Markdown tables: the one helper behind every table fgvc prints (the run report, compare, the benchmarks)."""

from __future__ import annotations

import math
from typing import Any, Sequence


def cell(value: Any, fmt: str = "{:.2f}") -> str:
    """A number formatted with ``fmt``, or ``-`` for a missing or not-a-number value; other values as text."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return fmt.format(value)
    return str(value)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table: the header, its rule and one line per row (cells already formatted, or any value, shown
    with ``str``); ends with a newline."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


__all__ = ["cell", "markdown_table"]
