"""The optional RapidOCR engine (skipped when the `rapidocr` extra is not installed)."""

from __future__ import annotations

import asyncio
import io

import pymupdf
import pytest
from PIL import Image

from ocr_stream.contracts import Block
from ocr_stream.engines.rapidocr import TextLine, group_paragraphs


def _page_jpeg(text: str) -> bytes:
    doc = pymupdf.open()
    page = doc.new_page(width=595, height=842)
    assert page.insert_textbox(pymupdf.Rect(72, 100, 523, 200), text, fontname="helv", fontsize=12) >= 0
    pix = page.get_pixmap(dpi=144)
    buf = io.BytesIO()
    Image.frombytes("RGB", (pix.width, pix.height), pix.samples).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def test_group_paragraphs() -> None:
    lines = [
        TextLine("first line", (100, 100, 900, 130), 0.99),
        TextLine("second line", (100, 138, 700, 168), 0.99),  # 8 px below: same paragraph
        TextLine("new paragraph", (100, 220, 900, 250), 0.99),  # 52 px below: new one
        TextLine("side note", (1000, 255, 1200, 285), 0.99),  # no horizontal overlap: new one
    ]
    groups = group_paragraphs(lines)
    assert [[ln.text for ln in g] for g in groups] == [["first line", "second line"], ["new paragraph"], ["side note"]]


def test_rapidocr_reads_a_page() -> None:
    pytest.importorskip("rapidocr")
    pytest.importorskip("onnxruntime")
    from ocr_stream.engines.base import OcrRequest, PageImage
    from ocr_stream.engines.metrics import character_error_rate
    from ocr_stream.engines.rapidocr import RapidOCREngine

    text = "Kafka carries one message per page, and workers keep many requests in flight at once."
    engine = RapidOCREngine()

    async def run() -> tuple[str, list[Block]]:
        out = await engine.ocr(OcrRequest(image=PageImage(_page_jpeg(text), 0, 0)))
        await engine.aclose()
        return out.markdown, out.blocks

    markdown, blocks = asyncio.run(run())
    print(f"\nRapidOCR CER on a clean English paragraph: {character_error_rate(text, markdown):.2%}")
    assert character_error_rate(text, markdown) <= 0.05
    assert len(blocks) == 1 and blocks[0].box is not None
    x1, y1, _, _ = blocks[0].box
    assert 130 <= x1 <= 170 and 190 <= y1 <= 240
