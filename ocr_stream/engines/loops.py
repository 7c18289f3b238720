"""Runaway-repetition detection on streamed model output (pure: no I/O).

DeepSeek-OCR sometimes falls into a loop and repeats a line, a cell or a character until it hits
``max_tokens``. vLLM's n-gram logits processor prevents that server-side but costs 35-50% of the
server's throughput (DESIGN.md §6), so by default the engine streams the answer, feeds every delta
to a :class:`LoopDetector`, and aborts the request the moment the tail of the output is a loop.

What counts as a loop
---------------------
The tail of the output is *periodic*: the last ``span`` characters consist of one unit of ``p``
characters (``p >= min_period``) repeated. How long ``span`` must be depends on what the unit is,
because real documents repeat themselves too:

=============  ==========================================================  =====================
unit class     example                                                     span needed to flag
=============  ==========================================================  =====================
text           ``"I am a loop. "``                                         ``p * min_repeats``,
                                                                           capped at
                                                                           ``long_span`` but at
                                                                           least
                                                                           ``long_repeats * p``
filler         ``"."``, ``"_"``, ``"- "``, whitespace (dotted leaders in   ``filler_span``
               tables of contents, signature lines, blank runs)
table          ``"<td></td>"``, ``"<td>0</td>"`` (empty or near-empty      ``table_span``
               cells; vLLM's recipe whitelists ``<td>``/``</td>``)
=============  ==========================================================  =====================

Units shorter than ``min_period`` (a single token such as ``"the "`` or ``"\\n"``) are covered as
well: a string with period ``u`` also has period ``k*u`` for every ``k``, so it is flagged as a unit
of ``ceil(min_period / u) * u`` characters. Numbered lists (``1. x``, ``2. x``) are never periodic,
because the numbers change; neither are grounding blocks whose boxes advance.

Not caught (by design, these end as ``finish_reason == "length"`` instead): loops whose unit
changes a little each time (incrementing numbers, advancing boxes).

Cost
----
``feed`` appends the chunk to a bounded buffer and, once at least ``check_every`` new characters
have arrived, runs one check: ``str.rfind`` of the last ``probe`` characters over the last
``max_period`` characters (candidate periods), then one slice comparison per candidate (at most
``max_candidates``). All of that runs in C; the Python work per feed is constant, so the cost is
O(chunk) amortized. Measured figures are in docs/deepseek-engine.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["LoopDetector", "LoopInfo", "UnitClass", "classify_unit"]

_TABLE_TAG_RE = re.compile(r"</?(?:td|th|tr|table|thead|tbody)\b[^<>]*>", re.IGNORECASE)
_HAS_CELL_RE = re.compile(r"<t[dh]\b|</t[dh]>|<tr\b|</tr>", re.IGNORECASE)
# Characters that legitimately run on: leaders, rules, blanks, and the bullets/ellipses that go with them.
_FILLER_CHARS = frozenset(" \t\r\n\u00a0.·…‥-_=*~─━—–•|:+#/\\")
# A unit whose cells hold at most this many characters of content counts as table structure.
_TABLE_CONTENT_MAX = 8


class UnitClass(StrEnum):
    TEXT = "text"
    FILLER = "filler"
    TABLE = "table"


def classify_unit(unit: str) -> UnitClass:
    """What a repeating unit is, which decides how long its run may get before it counts as a loop."""
    if _HAS_CELL_RE.search(unit):
        content = _TABLE_TAG_RE.sub("", unit)
        if len("".join(content.split())) <= _TABLE_CONTENT_MAX:
            return UnitClass.TABLE
        return UnitClass.TEXT
    if all(c in _FILLER_CHARS for c in unit):
        return UnitClass.FILLER
    return UnitClass.TEXT


@dataclass(frozen=True, slots=True)
class LoopInfo:
    """Where a detected loop was: the repeating unit, its class and how much output it covered."""

    unit: str
    period: int
    span: int
    unit_class: UnitClass
    chars_seen: int
    """Characters of output fed before the loop was recognised."""


class LoopDetector:
    """Incremental loop detector for one streamed answer. Not thread-safe; one per request.

    ``feed(chunk)`` returns True once the output ends in a loop (and keeps returning True).

    Parameters: ``min_period`` is the shortest unit considered (shorter units are seen through their
    multiples); ``min_repeats`` the repeats of a text unit that make a loop; ``window`` the output
    characters kept (raised to the longest span), which bounds the longest detectable unit
    (``window // long_repeats``).
    """

    __slots__ = (
        "min_period",
        "min_repeats",
        "window",
        "long_span",
        "long_repeats",
        "filler_span",
        "table_span",
        "check_every",
        "max_candidates",
        "max_period",
        "probe",
        "_buf",
        "_pending",
        "_seen",
        "info",
    )

    def __init__(
        self,
        min_period: int = 8,
        min_repeats: int = 10,
        window: int = 8192,
        *,
        long_span: int = 4096,
        long_repeats: int = 6,
        filler_span: int = 512,
        table_span: int = 8192,
        check_every: int | None = None,
        max_candidates: int = 8,
    ) -> None:
        if min_period < 1 or min_repeats < 2 or long_repeats < 2:
            raise ValueError("min_period must be >= 1 and min_repeats, long_repeats >= 2")
        if window < min_period * min_repeats:
            raise ValueError(f"window {window} is shorter than min_period * min_repeats")
        self.min_period = min_period
        self.min_repeats = min_repeats
        # The buffer must hold the longest span that can flag, or table/filler runs could never be judged.
        self.window = max(window, table_span, filler_span, long_span)
        self.long_span = long_span
        self.long_repeats = long_repeats
        self.filler_span = filler_span
        self.table_span = table_span
        # A check every 32 characters (~8 tokens) delays detection by that much at most and keeps
        # the per-feed cost to an append on most feeds.
        self.check_every = check_every if check_every is not None else max(min_period, 32)
        self.max_candidates = max_candidates
        self.max_period = max(min_period, window // long_repeats)
        # A probe longer than the unit still finds it (the tail repeats with period p for at least
        # p + probe characters whenever the check can succeed); longer probes mean fewer false candidates.
        self.probe = max(1, min(32, self.required_span(min_period) - min_period))
        self._buf = ""
        self._pending = 0
        self._seen = 0
        self.info: LoopInfo | None = None

    @property
    def detected(self) -> bool:
        return self.info is not None

    def required_span(self, period: int) -> int:
        """Characters of periodic tail that make a text unit of ``period`` characters a loop."""
        return max(min(period * self.min_repeats, self.long_span), period * self.long_repeats)

    def feed(self, chunk: str) -> bool:
        """Add streamed text; True once the output ends in a loop."""
        if self.info is not None:
            return True
        if not chunk:
            return False
        self._buf += chunk
        self._seen += len(chunk)
        self._pending += len(chunk)
        if self._pending < self.check_every:
            return False
        self._pending = 0
        if len(self._buf) > 2 * self.window:
            self._buf = self._buf[-self.window :]
        return self._check()

    def _check(self) -> bool:
        s = self._buf
        n = len(s)
        k = self.probe
        need0 = self.required_span(self.min_period)
        if n < need0:
            return False
        probe = s[n - k :]
        lo = max(0, n - k - self.max_period)
        end = n - self.min_period
        for _ in range(self.max_candidates):
            j = s.rfind(probe, lo, end)
            if j < 0:
                return False
            end = j + k - 1
            p = n - k - j
            span = self.required_span(p)
            if span > n:
                return False  # candidates come in increasing period, and the span needed only grows
            # The last two units first: a cheap rejection before comparing the whole span.
            if s[n - 2 * p : n - p] != s[n - p :] or s[n - span : n - p] != s[n - span + p : n]:
                continue
            # The tail is periodic with period p over `span`: decide by what repeats.
            unit = s[n - p :]
            cls = classify_unit(unit)
            if cls is UnitClass.FILLER:
                span = max(span, self.filler_span)
            elif cls is UnitClass.TABLE:
                span = max(span, self.table_span)
            if span > n:
                return False
            if cls is not UnitClass.TEXT and s[n - span : n - p] != s[n - span + p : n]:
                return False
            self.info = LoopInfo(unit=unit, period=p, span=span, unit_class=cls, chars_seen=self._seen)
            return True
        return False
