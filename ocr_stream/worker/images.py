"""Check page image bytes before they go to a model server: a known image type (by its magic
bytes, not by what the message claims) and a pixel count within ``max_page_pixels``.

Only the header is parsed (Pillow reads the size without decoding the pixels), so the check costs
tens of microseconds, and a decompression bomb is refused before anything expands it.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image

from ..engines.base import PageImage
from ..errors import CorruptDocumentError, LimitExceededError, UnsupportedTypeError

_TYPES: dict[str, str] = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}


def sniff(data: bytes) -> str | None:
    """The content type from the magic bytes, or None for anything we do not send."""
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def check_image(data: bytes, *, max_pixels: int) -> PageImage:
    """The bytes as a PageImage with their real size, or a BadInputError naming the problem."""
    if not data:
        raise CorruptDocumentError("page image is empty")
    ctype = sniff(data)
    if ctype is None:
        raise UnsupportedTypeError(f"page image is not JPEG, PNG or WebP (starts with {data[:8]!r})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=list(_TYPES)) as img:
                width, height = img.size
                fmt = img.format or ""
    except Image.DecompressionBombError as exc:
        raise LimitExceededError(f"page image is too large: {exc}") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise CorruptDocumentError(f"page image ({ctype}) cannot be read: {exc}") from exc
    if _TYPES.get(fmt) != ctype:
        raise CorruptDocumentError(f"page image header says {fmt or 'nothing'}, magic bytes say {ctype}")
    if width <= 0 or height <= 0:
        raise CorruptDocumentError(f"page image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise LimitExceededError(f"page image has {width}x{height} = {width * height} pixels, over the limit of {max_pixels}")
    return PageImage(data=data, width=width, height=height, content_type=ctype)
