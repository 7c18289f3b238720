"""Documents → page images, one page at a time.

``open_source(path, ...)`` validates a whole document *before* anything is rendered: its type (from
magic bytes), size, that it opens, its password, its page count, and the size of every bitmap that
rendering would decode (each input frame from its header; for PDFs the rendered page and every image
embedded in it, from the page's resources). Whatever is wrong is raised there, as a BadInputError
naming the problem, so a caller that publishes only after ``open_source`` returned publishes nothing
for a bad document. ``PageSource.render(page_no)`` then makes one page image; only that page's
bitmap is in memory.

PDF: PyMuPDF (MuPDF), opened from the file (MuPDF reads objects lazily; the file is never loaded
whole). A PDF without ``%%EOF`` in its last KiB is refused as truncated (Acrobat's own rule):
MuPDF would otherwise "repair" it and render the lost pages blank. Vector pages are rendered
straight to the mode's size (``engines.prompts.target_size``), at most ``MAX_DPI``.

Images: Pillow. PNG, JPEG, WebP: one page (the first frame of an animation); TIFF: one page per
frame. EXIF orientation is applied; images are only ever shrunk, never enlarged.

Encoding: JPEG through Pillow (libjpeg-turbo, ~4 ms for 1600 px; MuPDF's own JPEG writer is ~10x
slower), or PNG for comparison.

PyMuPDF is not thread-safe: use one PageSource per thread at most, and processes to parallelise.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import logging
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import pymupdf as _pymupdf
from PIL import Image, ImageOps, UnidentifiedImageError

from ..contracts import Mode
from ..engines.prompts import DEFAULT_LONG_SIDE, target_size
from ..errors import BadInputError, CorruptDocumentError, EncryptedDocumentError, LimitExceededError, UnsupportedTypeError
from .detect import HEAD_BYTES, DocType, detect_type
from .limits import Limits

log = logging.getLogger(__name__)

# PyMuPDF ships no usable type hints; one Any-typed handle keeps mypy strict elsewhere.
pymupdf: Any = _pymupdf

#: Highest resolution a PDF page is rendered at (a tiny page is not blown up to 1,600 px).
MAX_DPI = 2400.0
#: How often (pages) MuPDF's object cache is emptied, so that memory stays flat in page count.
STORE_SHRINK_EVERY = 32
#: How often (pages) freed heap memory is handed back to the OS (see ``trim_heap``).
TRIM_EVERY = 8
#: EOF marker window, as Acrobat checks it.
_EOF_WINDOW = 1024

ImageFormat = Literal["jpeg", "png"]


@dataclass(frozen=True, slots=True)
class RenderSpec:
    """How pages are rendered: the OCR mode decides the size (``target_size``)."""

    mode: Mode = Mode.GUNDAM
    long_side: int = DEFAULT_LONG_SIDE
    quality: int = 95
    format: ImageFormat = "jpeg"

    def size_for(self, width: float, height: float) -> tuple[int, int]:
        return target_size(self.mode, max(1, round(width)), max(1, round(height)), long_side=self.long_side)

    @property
    def content_type(self) -> str:
        return "image/jpeg" if self.format == "jpeg" else "image/png"

    @property
    def extension(self) -> str:
        return "jpg" if self.format == "jpeg" else "png"


@dataclass(frozen=True, slots=True)
class RenderedPage:
    page_no: int
    """1-based."""
    data: bytes
    width: int
    height: int
    dpi: float | None
    """Resolution a PDF page was rendered at; None for images."""


class PageSource(ABC):
    """A validated document, ready to render page by page. Close it (or use ``with``)."""

    kind: DocType
    page_count: int

    def __init__(self, spec: RenderSpec) -> None:
        self.spec = spec

    @abstractmethod
    def render(self, page_no: int) -> RenderedPage:
        """Render page ``page_no`` (1-based). Raises BadInputError when the page cannot be decoded
        although the document validated (rare: damage that only shows while drawing)."""

    def pages(self, start: int = 1) -> Iterator[RenderedPage]:
        for page_no in range(start, self.page_count + 1):
            yield self.render(page_no)

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> PageSource:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def open_source(
    path: Path,
    *,
    spec: RenderSpec,
    limits: Limits,
    password: str | None = None,
    kind: DocType | None = None,
) -> PageSource:
    """Validate ``path`` fully and return its PageSource, or raise a BadInputError that names the
    problem (never naming the file: callers add that). ``kind`` skips detection when known."""
    try:
        size = path.stat().st_size
    except FileNotFoundError as exc:
        raise BadInputError("no such file") from exc
    except OSError as exc:
        raise BadInputError(f"cannot read: {exc.strerror}") from exc
    if not path.is_file():
        raise BadInputError("not a regular file")
    limits.check_file_size(size)
    if kind is None:
        with path.open("rb") as f:
            kind = detect_type(f.read(HEAD_BYTES))
    if kind is DocType.PDF:
        return PdfSource(path, spec=spec, limits=limits, password=password, size=size)
    return ImageSource(path, kind, spec=spec, limits=limits)


# ------------------------------------------------------------------------------------------ PDF


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to do
        return None
    return trim


_malloc_trim = _load_malloc_trim()


def trim_heap() -> None:
    """Return freed heap pages to the OS (glibc ``malloc_trim``).

    Each page allocates several multi-MB buffers (MuPDF's pixmap, Pillow's image, the JPEG) between
    MuPDF's small long-lived allocations; glibc cannot reuse the holes that leaves, and RSS grew
    ~70 MB per 1,000 pages without this (measured: 2,000 pages 343 MB → 160 MB with a trim every 8)."""
    if _malloc_trim is not None:
        _malloc_trim(0)


def _mupdf_warnings() -> str:
    text: str = pymupdf.TOOLS.mupdf_warnings(reset=True)
    return text.strip().replace("\n", "; ")


class PdfSource(PageSource):
    kind = DocType.PDF

    def __init__(self, path: Path, *, spec: RenderSpec, limits: Limits, password: str | None, size: int) -> None:
        super().__init__(spec)
        self.path = path
        self._check_not_truncated(path, size)
        _mupdf_warnings()  # drop what earlier documents left behind
        try:
            doc = pymupdf.open(str(path), filetype="pdf")
        except (pymupdf.FileDataError, RuntimeError, ValueError) as exc:
            detail = _first_line(exc).replace(f"'{path}'", "it").replace(str(path), "it")
            raise CorruptDocumentError(f"corrupt PDF: MuPDF cannot open it ({detail})") from exc
        self._doc: Any = doc
        try:
            self._unlock(password)
            self.page_count = int(doc.page_count)
            if self.page_count == 0:
                detail = f" (the file is damaged; MuPDF: {w[:300]})" if (w := _mupdf_warnings()) else ""
                raise CorruptDocumentError(f"corrupt PDF: no pages{detail}")
            limits.check_page_count(self.page_count)
            self._sizes = [self._validate_page(i, limits) for i in range(self.page_count)]
            if doc.is_repaired:
                log.warning("PDF was repaired by MuPDF; rendering what it recovered", extra={"source": str(path), "mupdf": _mupdf_warnings()[:500]})
            pymupdf.TOOLS.store_shrink(100)
        except BaseException:
            doc.close()
            raise
        self._rendered = 0

    @staticmethod
    def _check_not_truncated(path: Path, size: int) -> None:
        with path.open("rb") as f:
            f.seek(max(0, size - _EOF_WINDOW))
            tail = f.read()
        if b"%%EOF" not in tail:
            raise CorruptDocumentError("truncated or corrupt PDF: no %%EOF marker at the end of the file")

    def _unlock(self, password: str | None) -> None:
        if not self._doc.needs_pass:
            return
        if not password:
            raise EncryptedDocumentError("PDF is encrypted: give its password (--password)")
        if not self._doc.authenticate(password):
            raise EncryptedDocumentError("PDF is encrypted and the password given is wrong")

    def _validate_page(self, index: int, limits: Limits) -> tuple[int, int, float, float]:
        """(width, height, zoom_x, zoom_y) of page ``index`` at its target size, after checking the
        rendered size and every image the page would decode against the pixel limit."""
        page_no = index + 1
        try:
            page = self._doc.load_page(index)
            rect = page.rect  # rotation applied: the rendered page's orientation
            images = page.get_images(full=True)
        except (RuntimeError, ValueError) as exc:
            raise CorruptDocumentError(f"corrupt PDF: page {page_no} cannot be read ({_first_line(exc)})") from exc
        if rect.width <= 0 or rect.height <= 0:
            raise CorruptDocumentError(f"corrupt PDF: page {page_no} has an empty page box")
        width, height = self.spec.size_for(rect.width * MAX_DPI / 72.0, rect.height * MAX_DPI / 72.0)
        limits.check_pixels(width, height, what=f"page {page_no} rendered")
        for img in images:
            iw, ih = int(img[2]), int(img[3])
            limits.check_pixels(iw, ih, what=f"page {page_no}: an embedded image")
        return width, height, width / rect.width, height / rect.height

    def render(self, page_no: int) -> RenderedPage:
        if not 1 <= page_no <= self.page_count:
            raise IndexError(f"page {page_no} is not in 1..{self.page_count}")
        _w, _h, zx, zy = self._sizes[page_no - 1]
        try:
            page = self._doc.load_page(page_no - 1)
            pix = page.get_pixmap(matrix=pymupdf.Matrix(zx, zy), alpha=False, colorspace=pymupdf.csRGB)
        except (RuntimeError, ValueError) as exc:
            raise CorruptDocumentError(f"corrupt PDF: page {page_no} cannot be rendered ({_first_line(exc)})") from exc
        image = Image.frombuffer("RGB", (pix.width, pix.height), pix.samples_mv, "raw", "RGB", pix.stride, 1)
        data = _encode(image, self.spec)
        self._rendered += 1
        if self._rendered % STORE_SHRINK_EVERY == 0:
            # MuPDF caches fonts and decoded images up to 256 MB; pages rarely share them, and
            # "flat in page count" matters more than the odd re-decode.
            pymupdf.TOOLS.store_shrink(100)
        if self._rendered % TRIM_EVERY == 0:
            trim_heap()
        return RenderedPage(page_no, data, pix.width, pix.height, dpi=round(72.0 * (zx + zy) / 2, 2))

    def close(self) -> None:
        self._doc.close()


# --------------------------------------------------------------------------------------- images

_PIL_FORMATS = {DocType.PNG: "PNG", DocType.JPEG: "JPEG", DocType.TIFF: "TIFF", DocType.WEBP: "WEBP"}


class ImageSource(PageSource):
    def __init__(self, path: Path, kind: DocType, *, spec: RenderSpec, limits: Limits) -> None:
        super().__init__(spec)
        self.kind = kind
        self.path = path
        self._im = self._open(limits)
        try:
            self.page_count = self._count_frames()
            limits.check_page_count(self.page_count)
            for i in range(self.page_count):
                self._seek(i)
                w, h = self._im.size
                limits.check_pixels(w, h, what=f"image (page {i + 1})" if self.page_count > 1 else "image")
            self._seek(0)
        except BaseException:
            self._im.close()
            raise

    def _open(self, limits: Limits) -> Image.Image:
        try:
            with warnings.catch_warnings():
                # We check pixels against our own limit; Pillow's warning would only be noise.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im = Image.open(self.path, formats=[_PIL_FORMATS[self.kind]])
        except Image.DecompressionBombError as exc:
            raise LimitExceededError(f"image is a decompression bomb ({exc})") from exc
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise CorruptDocumentError(f"undecodable {self.kind.value.upper()} image ({_first_line(exc)})") from exc
        return im

    def _count_frames(self) -> int:
        if self.kind is not DocType.TIFF:
            return 1  # an animated PNG/WebP is one picture, not a document: its first frame
        try:
            return int(getattr(self._im, "n_frames", 1))
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise CorruptDocumentError(f"corrupt TIFF: cannot read its pages ({_first_line(exc)})") from exc

    def _seek(self, index: int) -> None:
        try:
            self._im.seek(index)
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise CorruptDocumentError(f"corrupt {self.kind.value.upper()}: page {index + 1} cannot be read ({_first_line(exc)})") from exc

    def render(self, page_no: int) -> RenderedPage:
        if not 1 <= page_no <= self.page_count:
            raise IndexError(f"page {page_no} is not in 1..{self.page_count}")
        what = f"page {page_no}" if self.page_count > 1 else "image"
        self._seek(page_no - 1)
        im = self._im
        try:
            if im.format == "JPEG":
                # Let libjpeg scale while decoding (1/2, 1/4, 1/8): far less to decode and resize.
                im.draft("RGB", self.spec.size_for(*im.size))
            im.load()
            frame = ImageOps.exif_transpose(im) or im
            frame = _to_rgb(frame)
            size = self.spec.size_for(*frame.size)
            if size != frame.size:
                frame = frame.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
            data = _encode(frame, self.spec)
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise CorruptDocumentError(f"undecodable {self.kind.value.upper()} {what} ({_first_line(exc)})") from exc
        return RenderedPage(page_no, data, frame.width, frame.height, dpi=None)

    def close(self) -> None:
        self._im.close()


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16-bit and float scans: scale to 8 bits (convert() would clip everything above 255).
        extrema: Any = im.getextrema()
        lo, hi = float(extrema[0]), float(extrema[1])
        span = (hi - lo) or 1.0
        return im.convert("F").point(lambda v: (v - lo) * 255.0 / span).convert("L").convert("RGB")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        # Transparent areas are paper: composite on white rather than the black convert() gives.
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def _encode(image: Image.Image, spec: RenderSpec) -> bytes:
    buf = io.BytesIO()
    if spec.format == "jpeg":
        image.save(buf, "JPEG", quality=spec.quality)
    else:
        image.save(buf, "PNG", compress_level=6)
    return buf.getvalue()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


__all__ = [
    "ImageSource",
    "MAX_DPI",
    "PageSource",
    "PdfSource",
    "RenderSpec",
    "RenderedPage",
    "UnsupportedTypeError",
    "open_source",
]
