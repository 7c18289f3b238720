"""The suite's verdicts and table (pure: no I/O).

Every line is a *ratio* of two figures measured side by side in the same run, compared with the
target of DESIGN.md §6. A part that could not run is reported as not measured (with why), never
as met.
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Direction = Literal["at_least", "at_most", "info"]


@dataclass(frozen=True)
class Target:
    """One line of the table. ``value`` is compared with ``target`` in ``direction``; ``detail``
    says what was divided by what (the two side-by-side figures)."""

    key: str
    what: str
    value: float | None
    target: float
    direction: Direction
    unit: str = "x"
    detail: str = ""
    error: str | None = None
    unmet_because: str | None = None
    """Set when the line fails for a reason other than the threshold (e.g. memory not flat)."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def met(self) -> bool | None:
        """True/False, or None when the figure could not be measured."""
        if self.value is None or math.isnan(self.value) or self.direction == "info":
            return None
        if self.unmet_because:
            return False
        return self.value >= self.target if self.direction == "at_least" else self.value <= self.target

    @property
    def verdict(self) -> str:
        if self.direction == "info":
            return "(no target)" if self.error is None else "not measured"
        return {True: "met", False: "NOT MET", None: "not measured"}[self.met]

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["met"] = self.met
        return d


def clean_json(obj: Any) -> Any:
    """``obj`` with NaN and infinities replaced by None (strict JSON has neither)."""
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else obj
    if isinstance(obj, dict):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    return obj


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``; NaN when the denominator is not positive (nothing to compare)."""
    if denominator <= 0 or math.isnan(denominator) or math.isnan(numerator):
        return math.nan
    return numerator / denominator


def format_value(value: float | None, unit: str) -> str:
    if value is None or math.isnan(value):
        return "-"
    if unit == "%":
        return f"{value * 100:.1f}%"
    if unit == "x":
        return f"{value:.2f}x"
    return f"{value:.3g} {unit}" if abs(value) < 100 else f"{value:.0f} {unit}"


def format_target(t: Target) -> str:
    if t.direction == "info":
        return "-"
    sign = ">=" if t.direction == "at_least" else "<="
    return f"{sign} {format_value(t.target, t.unit)}"


def format_table(targets: list[Target]) -> str:
    """Plain-text table: what, measured, target, verdict, and (indented) what was compared."""
    rows = [("#", "what", "measured", "target", "verdict")]
    for i, t in enumerate(targets, 1):
        rows.append((str(i), t.what, format_value(t.value, t.unit), format_target(t), t.verdict))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    buf = io.StringIO()
    for n, row in enumerate(rows):
        buf.write("  ".join(cell.ljust(w) if c == 1 else cell.rjust(w) for c, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip() + "\n")
        if n == 0:
            buf.write("  ".join("-" * w for w in widths) + "\n")
        else:
            t = targets[n - 1]
            note = t.error and f"not measured: {t.error}" or t.detail
            if note:
                buf.write(" " * (widths[0] + 2) + f"  {note}\n")
    return buf.getvalue()


def format_grid(headers: list[str], rows: list[list[Any]]) -> str:
    """A small right-aligned table (used for the scaling table)."""
    cells = [headers] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[c]) for r in cells) for c in range(len(headers))]
    return "".join("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n" for row in cells)


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.2f}"
    return str(v)


def quantile_span(times: list[float], lo: float = 0.1, hi: float = 0.9) -> tuple[int, float]:
    """(pages, seconds) between the moments the ``lo`` and ``hi`` fractions of the pages had
    completed (``times``: completion times in seconds, any order). Leaves out the ramp-up and the
    tail. With a fixed output length an engine finishes pages in waves (a batch starts and ends
    together); measuring the same quantiles on the ideal run's times compares like with like."""
    if len(times) < 2:
        return 0, math.nan
    ts = sorted(times)
    i, j = int(lo * (len(ts) - 1)), int(math.ceil(hi * (len(ts) - 1)))
    return j - i, ts[j] - ts[i]


def steady_rate(times: list[float], lo: float = 0.1, hi: float = 0.9) -> float:
    """Pages/s over :func:`quantile_span`; NaN when it spans no time."""
    pages, seconds = quantile_span(times, lo, hi)
    return pages / seconds if seconds > 0 else math.nan
