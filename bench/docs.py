"""Benchmark documents, generated on the fly (never committed): A4 pages mixing prose, tables and
figures, like a report. Deterministic for a given ``seed``; vector content only, so a 2,000-page
file stays a few MB and takes seconds to write."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pymupdf as _pymupdf

pymupdf: Any = _pymupdf

_WORDS = ("invoice total amount revenue quarter growth report method result table figure analysis market "
          "customer service product order price rate value number data system model page kafka worker "
          "partition offset commit storage bucket event schema retry backoff throughput latency").split()

A4 = (595.0, 842.0)


def _sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choices(_WORDS, k=words))


def _prose(page: Any, rng: random.Random, y: float, lines: int) -> float:
    text = "\n".join(_sentence(rng, 13) for _ in range(lines))
    page.insert_text((50, y), text, fontsize=9.5, lineheight=1.5)
    return y + lines * 9.5 * 1.5 + 10


def _table(page: Any, rng: random.Random, y: float, rows: int = 8, cols: int = 5) -> float:
    width, row_h = 495.0, 16.0
    col_w = width / cols
    for r in range(rows + 1):
        page.draw_line((50, y + r * row_h), (50 + width, y + r * row_h), width=0.5)
    for c in range(cols + 1):
        page.draw_line((50 + c * col_w, y), (50 + c * col_w, y + rows * row_h), width=0.5)
    for r in range(rows):
        for c in range(cols):
            cell = rng.choice(_WORDS).title() if r == 0 or c == 0 else f"{rng.uniform(0, 9999):,.2f}"
            page.insert_text((54 + c * col_w, y + r * row_h + 11), cell, fontsize=8)
    return y + rows * row_h + 16


def _figure(page: Any, rng: random.Random, y: float, height: float = 150.0) -> float:
    page.draw_rect(pymupdf.Rect(50, y, 545, y + height), color=(0.3, 0.3, 0.3), width=0.6)
    bars = 12
    for i in range(bars):
        h = rng.uniform(0.1, 0.9) * (height - 30)
        x = 70 + i * 38
        page.draw_rect(pymupdf.Rect(x, y + height - 15 - h, x + 24, y + height - 15),
                       color=None, fill=(rng.random() * 0.6, 0.35, 0.7))
    page.insert_text((60, y + 14), f"Figure: {_sentence(rng, 4)}", fontsize=8)
    return y + height + 14


def add_mixed_page(doc: Any, index: int, *, seed: int = 0, size: tuple[float, float] = A4) -> None:
    """Append one page: a heading, prose, and (by turns) a table, a figure, or both."""
    rng = random.Random(seed * 1_000_003 + index)
    page = doc.new_page(width=size[0], height=size[1])
    page.insert_text((50, 50), f"{index + 1}. {_sentence(rng, 4).title()}", fontsize=15)
    y = _prose(page, rng, 78, 14)
    kind = index % 3
    if kind in (0, 2):
        y = _table(page, rng, y)
    if kind in (1, 2):
        y = _figure(page, rng, y)
    remaining = int((size[1] - 50 - y) / (9.5 * 1.5))
    if remaining > 0:
        _prose(page, rng, y + 4, remaining)


def make_mixed_pdf(path: Path, pages: int, *, seed: int = 0, distinct: int = 64) -> Path:
    """Write a ``pages``-page PDF of mixed text, tables and figures to ``path``.

    ``distinct`` pages are drawn (~25 ms each) and repeated in turn to make up ``pages``: a renderer
    still rasterises every page, and a 2,000-page file is written in seconds."""
    if pages < 1:
        raise ValueError(f"a document needs at least one page, got {pages}")
    pool = pymupdf.open()
    for i in range(min(pages, max(1, distinct))):
        add_mixed_page(pool, i, seed=seed)
    doc = pymupdf.open()
    while doc.page_count < pages:
        doc.insert_pdf(pool, to_page=min(pool.page_count, pages - doc.page_count) - 1)
    doc.save(str(path), garbage=1, deflate=True)
    doc.close()
    pool.close()
    return path
