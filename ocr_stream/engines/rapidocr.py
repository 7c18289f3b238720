"""An optional second embedded engine, for CJK text: RapidOCR (PP-OCR models on onnxruntime).

Install with the extra: ``pip install 'ocr-stream[rapidocr]'`` (``rapidocr``, ``onnxruntime``); the
models ship inside the ``rapidocr`` wheel, nothing is downloaded at run time. Without the package,
creating the engine fails with a ConfigError saying what to install.

The text-direction classifier is off (``use_cls``): pages come upright from the producer and it costs
time on every line. RapidOCR detects text lines; consecutive lines that overlap horizontally and are
less than ``paragraph_gap`` line heights apart are joined into one paragraph (a block labelled
``text``, box in page pixels). Reading order is the detector's: top to bottom, then left to right;
multi-column pages are not reordered column by column (use Tesseract or DeepSeek-OCR for those).

``ocr`` runs in a pool of ``threads`` engine instances (onnxruntime releases the GIL and uses
several cores per call, so one or two are usually enough).
"""

from __future__ import annotations

import asyncio
import io
import logging
import queue
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
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
class TextLine:
    text: str
    box: Box
    score: float


def group_paragraphs(lines: list[TextLine], *, paragraph_gap: float = 0.8) -> list[list[TextLine]]:
    """Join consecutive lines into paragraphs: the next line starts less than ``paragraph_gap`` line
    heights below the previous one and overlaps it horizontally. Pure; keeps the lines' order."""
    paragraphs: list[list[TextLine]] = []
    for line in lines:
        if paragraphs:
            prev = paragraphs[-1][-1]
            height = max(1, prev.box[3] - prev.box[1])
            gap = line.box[1] - prev.box[3]
            overlap = min(prev.box[2], line.box[2]) - max(prev.box[0], line.box[0])
            if -height < gap < paragraph_gap * height and overlap > 0:
                paragraphs[-1].append(line)
                continue
        paragraphs.append([line])
    return paragraphs


def _union(lines: list[TextLine]) -> Box:
    return (
        min(ln.box[0] for ln in lines),
        min(ln.box[1] for ln in lines),
        max(ln.box[2] for ln in lines),
        max(ln.box[3] for ln in lines),
    )


class RapidOCREngine(Engine):
    """RapidOCR behind the Engine interface."""

    name = "rapidocr"

    def __init__(self, *, threads: int = 1, max_pixels: int = 100_000_000, paragraph_gap: float = 0.8) -> None:
        try:
            from rapidocr import RapidOCR
        except ImportError as exc:
            raise ConfigError(
                "the rapidocr engine needs the optional packages rapidocr and onnxruntime: "
                "pip install 'ocr-stream[rapidocr]'"
            ) from exc
        self._factory = partial(RapidOCR, params={"Global.use_cls": False, "Global.log_level": "critical"})
        self.threads = max(1, threads)
        self.max_pixels = max_pixels
        self.paragraph_gap = paragraph_gap
        try:
            from rapidocr._version import __version__ as version
        except ImportError:  # pragma: no cover - older layouts
            version = "unknown"
        self.model = f"rapidocr-{version}"
        self._engines: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._executor: ThreadPoolExecutor | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> RapidOCREngine:
        return cls(max_pixels=settings.max_page_pixels)

    def _ensure_started(self) -> ThreadPoolExecutor:
        if self._executor is None:
            for _ in range(self.threads):
                self._engines.put(self._factory())
            self._executor = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="rapidocr")
        return self._executor

    async def start(self) -> None:
        self._ensure_started()

    async def aclose(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        self._engines = queue.SimpleQueue()

    def suggested_in_flight(self) -> int | None:
        return self.threads

    async def ocr(self, request: OcrRequest) -> OcrOutput:
        executor = self._ensure_started()
        image = self._decode(request.image.data)
        started = time.perf_counter()
        lines = await asyncio.get_running_loop().run_in_executor(executor, partial(self._recognize_pooled, image))
        latency_ms = (time.perf_counter() - started) * 1000.0
        paragraphs = group_paragraphs(lines, paragraph_gap=self.paragraph_gap)
        blocks = [Block(label="text", text="\n".join(ln.text for ln in p), box=_union(p)) for p in paragraphs]
        markdown = "\n\n".join(" ".join(ln.text for ln in p) for p in paragraphs)
        log.debug("rapidocr page done", extra={"doc_id": request.doc_id, "page_no": request.page_no, "lines": len(lines)})
        return OcrOutput(
            markdown=markdown + ("\n" if markdown else ""),
            blocks=blocks,
            raw_text="\n".join(ln.text for ln in lines),
            usage=Usage(),
            model=self.model,
            latency_ms=latency_ms,
            server="local",
        )

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
        return image.convert("RGB") if image.mode != "RGB" else image

    def _recognize_pooled(self, image: Image.Image) -> list[TextLine]:
        import numpy as np

        engine = self._engines.get()
        try:
            result = engine(np.asarray(image))
        finally:
            self._engines.put(engine)
        if result.boxes is None or result.txts is None:
            return []
        lines = []
        for poly, text, score in zip(result.boxes, result.txts, result.scores, strict=False):
            xs, ys = [float(p[0]) for p in poly], [float(p[1]) for p in poly]
            box = (
                max(0, int(min(xs))),
                max(0, int(min(ys))),
                min(image.width, int(round(max(xs)))),
                min(image.height, int(round(max(ys)))),
            )
            if text and text.strip():
                lines.append(TextLine(text.strip(), box, float(score)))
        return lines


__all__ = ["RapidOCREngine", "TextLine", "group_paragraphs"]
