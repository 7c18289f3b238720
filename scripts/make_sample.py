"""Generate samples/sample.pdf (the document `make run` OCRs) and samples/sample.txt (its text).

    .venv/bin/python scripts/make_sample.py

Deterministic: the same PyMuPDF version writes the same bytes (fixed dates, fixed /ID), so the
committed files only change when this script does. Text uses the standard Helvetica font (not
embedded: the PDF stays a few KB) at sizes any OCR engine reads without trouble.
sample.txt holds the text of each page, one line per printed line, pages separated by a form feed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pymupdf

ROOT = Path(__file__).resolve().parent.parent
OUT_PDF = ROOT / "samples" / "sample.pdf"
OUT_TXT = ROOT / "samples" / "sample.txt"

PAGES: list[list[tuple[str, float]]] = [
    [
        ("Quarterly Report", 28),
        ("Northwind Shipping Company", 16),
        ("", 12),
        ("Summary", 18),
        ("Revenue grew by twelve percent compared with the previous quarter.", 12),
        ("The new warehouse in Rotterdam opened on the first of March.", 12),
        ("Delivery times fell from four days to three days on average.", 12),
        ("", 12),
        ("Key figures", 18),
        ("Revenue: 4,200,000 EUR", 12),
        ("Orders shipped: 18,450", 12),
        ("Customer satisfaction: 94 percent", 12),
    ],
    [
        ("Outlook", 18),
        ("We expect steady demand during the summer months.", 12),
        ("Two new routes to Hamburg and Oslo start in July.", 12),
        ("The fleet will grow by six electric trucks.", 12),
        ("", 12),
        ("Contact", 18),
        ("Jane Doe, Head of Operations", 12),
        ("jane.doe@example.com", 12),
    ],
]


def build() -> bytes:
    doc = pymupdf.open()
    for lines in PAGES:
        page = doc.new_page(width=595, height=842)  # A4 in points
        y = 90.0
        for text, size in lines:
            if text:
                page.insert_text((72, y), text, fontsize=size, fontname="helv")
            y += size * 1.8
    doc.set_metadata({
        "title": "ocr-stream sample", "author": "ocr-stream", "creator": "scripts/make_sample.py", "producer": "PyMuPDF",
        "creationDate": "D:20260101000000Z", "modDate": "D:20260101000000Z",
    })
    data: bytes = doc.tobytes(garbage=3, deflate=True, no_new_id=True)
    doc.close()
    return data


def text() -> str:
    return "\f".join("\n".join(t for t, _ in lines if t) + "\n" for lines in PAGES)


def main() -> int:
    data = build()
    OUT_PDF.parent.mkdir(parents=True, exist_ok=True)
    OUT_PDF.write_bytes(data)
    OUT_TXT.write_text(text())
    print(f"wrote {OUT_PDF.relative_to(ROOT)} ({len(data)} bytes, {len(PAGES)} pages) and {OUT_TXT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
