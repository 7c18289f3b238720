"""Type detection from magic bytes, limits and content-derived doc ids (pure)."""

from __future__ import annotations

import pytest

from ocr_stream.contracts import Mode, is_valid_doc_id
from ocr_stream.errors import BadInputError, LimitExceededError, UnsupportedTypeError
from ocr_stream.producer.bench import image_bytes
from ocr_stream.producer.detect import DocType, detect_type
from ocr_stream.producer.docid import check_doc_id, derive_doc_id
from ocr_stream.producer.limits import Limits


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", DocType.PDF),
        (b"\r\n  junk before the header %PDF-1.4\n", DocType.PDF),
        (image_bytes("PNG"), DocType.PNG),
        (image_bytes("JPEG"), DocType.JPEG),
        (image_bytes("TIFF"), DocType.TIFF),
        (image_bytes("WEBP"), DocType.WEBP),
        (b"MM\x00*\x00\x00\x00\x08", DocType.TIFF),
    ],
)
def test_detects_supported_types(head: bytes, kind: DocType) -> None:
    assert detect_type(head) is kind


@pytest.mark.parametrize(
    ("head", "named"),
    [
        (b"", "empty file"),
        (image_bytes("GIF"), "GIF image"),
        (image_bytes("BMP"), "BMP image"),
        (b"PK\x03\x04\x14\x00\x06\x00", "ZIP archive"),
        (b"hello, this is a text file\n", "text file"),
        (b"\x00\x01\x02\x03\xfe\xff\x10\x11", "unknown content starting 00 01 02 03"),
    ],
)
def test_unsupported_types_are_named(head: bytes, named: str) -> None:
    with pytest.raises(UnsupportedTypeError, match=named):
        detect_type(head)


def test_extension_does_not_matter_content_does() -> None:
    # A PNG is a PNG whatever it is called; detection never sees the name.
    assert detect_type(image_bytes("PNG")) is DocType.PNG


def test_limits_name_the_limit_and_the_value() -> None:
    limits = Limits(max_file_bytes=1000, max_pages=3, max_page_pixels=100)
    limits.check_file_size(1000)
    limits.check_page_count(3)
    limits.check_pixels(10, 10, what="image")
    with pytest.raises(LimitExceededError, match="OCR_STREAM_MAX_FILE_BYTES"):
        limits.check_file_size(1001)
    with pytest.raises(LimitExceededError, match="4 pages, over the limit of 3"):
        limits.check_page_count(4)
    with pytest.raises(LimitExceededError, match=r"page 2 is 11x10 = 110 pixels.*OCR_STREAM_MAX_PAGE_PIXELS"):
        limits.check_pixels(11, 10, what="page 2")
    with pytest.raises(LimitExceededError, match="invalid size"):
        limits.check_pixels(0, 10, what="image")


def test_doc_id_is_stable_and_depends_on_what_changes_the_output() -> None:
    base = dict(mode=Mode.GUNDAM, prompt="<image>\nFree OCR.", engine="deepseek", long_side=1600)
    a = derive_doc_id("ab" * 32, **base)  # type: ignore[arg-type]
    assert a == derive_doc_id("ab" * 32, **base)  # type: ignore[arg-type]
    assert a.startswith("sha256-") and len(a) == len("sha256-") + 20 and is_valid_doc_id(a)
    variants = [
        derive_doc_id("cd" * 32, **base),  # type: ignore[arg-type]
        derive_doc_id("ab" * 32, **{**base, "mode": Mode.SMALL}),  # type: ignore[arg-type]
        derive_doc_id("ab" * 32, **{**base, "prompt": "<image>\nParse the figure."}),  # type: ignore[arg-type]
        derive_doc_id("ab" * 32, **{**base, "engine": "deepseek:canary"}),  # type: ignore[arg-type]
        derive_doc_id("ab" * 32, **{**base, "long_side": 1280}),  # type: ignore[arg-type]
    ]
    assert len({a, *variants}) == 6


@pytest.mark.parametrize("bad", ["", "-x", ".x", "a/b", "a b", "x" * 129])
def test_given_doc_ids_are_checked(bad: str) -> None:
    with pytest.raises(BadInputError, match="invalid doc id"):
        check_doc_id(bad)
    assert check_doc_id("invoice-2026.0042_a") == "invoice-2026.0042_a"
