"""Input limits, checked before any page of a document is published. Pure."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Settings
from ..errors import LimitExceededError


@dataclass(frozen=True, slots=True)
class Limits:
    """What one document may be. ``max_page_pixels`` bounds every decoded bitmap: an input image,
    an image embedded in a PDF page, and the rendered page (decompression bombs)."""

    max_file_bytes: int
    max_pages: int
    max_page_pixels: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            max_file_bytes=settings.max_file_bytes,
            max_pages=settings.max_pages,
            max_page_pixels=settings.max_page_pixels,
        )

    def check_file_size(self, size: int) -> None:
        if size > self.max_file_bytes:
            raise LimitExceededError(
                f"file is {_human(size)}, over the limit of {_human(self.max_file_bytes)} (OCR_STREAM_MAX_FILE_BYTES)"
            )

    def check_page_count(self, pages: int) -> None:
        if pages > self.max_pages:
            raise LimitExceededError(f"{pages} pages, over the limit of {self.max_pages} (OCR_STREAM_MAX_PAGES)")

    def check_pixels(self, width: int, height: int, *, what: str) -> None:
        """``what`` names the bitmap in the error, e.g. ``"page 3"`` or ``"page 3, embedded image"``."""
        if width <= 0 or height <= 0:
            raise LimitExceededError(f"{what}: invalid size {width}x{height}")
        if width * height > self.max_page_pixels:
            raise LimitExceededError(
                f"{what} is {width}x{height} = {width * height:,} pixels, over the limit of "
                f"{self.max_page_pixels:,} (OCR_STREAM_MAX_PAGE_PIXELS)"
            )


def _human(n: int) -> str:
    size = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} bytes"  # unreachable; keeps mypy sure of the return
