"""Benchmark: seconds per page of the embedded Tesseract engine (CPU), on pages as the producer makes
them (A4, 1,600 px on the long side, JPEG q95), full of English text.

    .venv/bin/python -m bench.tesseract_pages [--pages 8] [--threads 1,2]

Prints one JSON object: seconds per page for one thread, and pages/s for each thread count, plus the
character error rate of the output (a benchmark that got faster by reading worse would say so).
``run()`` returns the same dict for the benchmark suite.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import time
from typing import Any

import pymupdf as _pymupdf
from PIL import Image

from ocr_stream.contracts import Mode
from ocr_stream.engines.base import OcrRequest, PageImage
from ocr_stream.engines.metrics import character_error_rate
from ocr_stream.engines.prompts import target_size
from ocr_stream.engines.tesseract import TesseractEngine

pymupdf: Any = _pymupdf  # untyped

SENTENCE = (
    "The worker keeps a bounded number of pages in flight, commits offsets only after the broker has "
    "acknowledged each result, and hands unfinished pages back when its partitions are revoked. "
)


def make_page(n_chars: int = 3000) -> tuple[bytes, str]:
    text = (SENTENCE * (n_chars // len(SENTENCE) + 1))[:n_chars].rsplit(" ", 1)[0]
    doc = pymupdf.open()
    page = doc.new_page(width=595, height=842)
    if page.insert_textbox(pymupdf.Rect(56, 56, 539, 800), text, fontname="tiro", fontsize=11) < 0:
        raise RuntimeError("benchmark text does not fit the page")
    w, h = target_size(Mode.GUNDAM, 595, 842, long_side=1600)
    pix = page.get_pixmap(matrix=pymupdf.Matrix(w / 595, h / 842))
    buf = io.BytesIO()
    Image.frombytes("RGB", (pix.width, pix.height), pix.samples).save(buf, format="JPEG", quality=95)
    return buf.getvalue(), text


async def _pages_per_s(engine: TesseractEngine, image: bytes, pages: int) -> tuple[float, str]:
    await engine.start()
    warm = await engine.ocr(OcrRequest(image=PageImage(image, 0, 0)))
    started = time.perf_counter()
    await asyncio.gather(*(engine.ocr(OcrRequest(image=PageImage(image, 0, 0), page_no=i + 1)) for i in range(pages)))
    elapsed = time.perf_counter() - started
    await engine.aclose()
    return pages / elapsed, warm.raw_text


def run(pages: int = 8, threads: tuple[int, ...] = (1, 2)) -> dict[str, Any]:
    image, text = make_page()
    result: dict[str, Any] = {"benchmark": "tesseract_pages", "page": "A4 1131x1600 JPEG q95, ~3000 chars", "cpus": os.cpu_count()}
    for n in threads:
        rate, out = asyncio.run(_pages_per_s(TesseractEngine(threads=n), image, pages))
        result[f"pages_per_s_{n}_threads"] = round(rate, 3)
        if n == 1:
            result["seconds_per_page"] = round(1 / rate, 3)
            result["cer"] = round(character_error_rate(text, out), 5)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=8, help="pages per measurement (default 8)")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    args = parser.parse_args()
    print(json.dumps(run(args.pages, tuple(int(t) for t in args.threads.split(",")))))


if __name__ == "__main__":
    main()
