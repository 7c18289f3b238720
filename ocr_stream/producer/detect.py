"""What a file is, from its first bytes (never from its name).

Pure: takes bytes, returns a ``DocType`` or raises ``UnsupportedTypeError``.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from ..errors import UnsupportedTypeError

#: How many leading bytes ``detect_type`` needs. PDF readers (Acrobat, MuPDF) accept a header
#: anywhere in the first KiB, after junk some producers write first.
HEAD_BYTES = 1024


class DocType(StrEnum):
    PDF = "pdf"
    PNG = "png"
    JPEG = "jpeg"
    TIFF = "tiff"
    WEBP = "webp"

    @property
    def is_image(self) -> bool:
        return self is not DocType.PDF


#: Extensions a directory walk treats as candidates even when their content says otherwise, so that
#: a damaged ``report.pdf`` in a folder is reported, not silently skipped.
DOCUMENT_EXTENSIONS = frozenset({".pdf", ".png", ".jpg", ".jpeg", ".jpe", ".tif", ".tiff", ".webp"})

_SIGNATURES: tuple[tuple[bytes, DocType], ...] = (
    (b"\x89PNG\r\n\x1a\n", DocType.PNG),
    (b"\xff\xd8\xff", DocType.JPEG),
    (b"II*\x00", DocType.TIFF),
    (b"MM\x00*", DocType.TIFF),
    (b"II+\x00", DocType.TIFF),  # BigTIFF
    (b"MM\x00+", DocType.TIFF),
)

# Signatures of common formats we do not take, so the error can say what the file is.
_KNOWN_OTHERS: tuple[tuple[bytes, str], ...] = (
    (b"GIF87a", "GIF image"),
    (b"GIF89a", "GIF image"),
    (b"BM", "BMP image"),
    (b"PK\x03\x04", "ZIP archive (or DOCX/XLSX/ODT)"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "legacy Office document"),
    (b"\x1f\x8b", "gzip archive"),
    (b"{\\rtf", "RTF document"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000 image"),
)


def detect_type(head: bytes) -> DocType:
    """The document type from the first bytes of a file (``HEAD_BYTES`` are enough)."""
    for magic, kind in _SIGNATURES:
        if head.startswith(magic):
            return kind
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return DocType.WEBP
    if b"%PDF-" in head[:HEAD_BYTES]:
        return DocType.PDF
    if not head:
        raise UnsupportedTypeError("empty file")
    for magic, what in _KNOWN_OTHERS:
        if head.startswith(magic):
            raise UnsupportedTypeError(f"unsupported type: {what} (accepted: PDF, PNG, JPEG, TIFF, WebP)")
    if _looks_like_text(head):
        raise UnsupportedTypeError("unsupported type: text file (accepted: PDF, PNG, JPEG, TIFF, WebP)")
    raise UnsupportedTypeError(f"unsupported type: unknown content starting {head[:8].hex(' ')} (accepted: PDF, PNG, JPEG, TIFF, WebP)")


def _looks_like_text(head: bytes) -> bool:
    try:
        head[:512].decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"\x00" not in head[:512]


def detect_file(path: Path) -> DocType:
    """``detect_type`` on a file's first bytes."""
    with path.open("rb") as f:
        return detect_type(f.read(HEAD_BYTES))


def looks_like_document(path: Path) -> bool:
    """True when a directory walk should hand ``path`` to the producer: a supported signature, or a
    document extension (then validation reports what is wrong with it)."""
    if path.suffix.lower() in DOCUMENT_EXTENSIONS:
        return True
    try:
        detect_file(path)
    except (UnsupportedTypeError, OSError):
        return False
    return True
