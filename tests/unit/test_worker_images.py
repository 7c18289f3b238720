"""Image checks before anything is sent to a model server."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from ocr_stream.errors import CorruptDocumentError, LimitExceededError, UnsupportedTypeError
from ocr_stream.worker.budget import InFlightBudget
from ocr_stream.worker.images import check_image, sniff


def encode(fmt: str, size: tuple[int, int] = (40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, "white").save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("fmt,ctype", [("JPEG", "image/jpeg"), ("PNG", "image/png"), ("WEBP", "image/webp")])
def test_accepts_supported_types_with_their_real_size(fmt: str, ctype: str) -> None:
    img = check_image(encode(fmt), max_pixels=10_000)
    assert (img.width, img.height, img.content_type) == (40, 30, ctype)


def test_refuses_other_types() -> None:
    with pytest.raises(UnsupportedTypeError, match="not JPEG, PNG or WebP"):
        check_image(b"%PDF-1.7 ...", max_pixels=10_000)
    with pytest.raises(UnsupportedTypeError):
        check_image(encode("GIF"), max_pixels=10_000)


def test_refuses_empty_and_truncated_headers() -> None:
    with pytest.raises(CorruptDocumentError, match="empty"):
        check_image(b"", max_pixels=10)
    with pytest.raises(CorruptDocumentError):
        check_image(encode("PNG")[:12], max_pixels=10_000)


def test_refuses_too_many_pixels_without_decoding() -> None:
    with pytest.raises(LimitExceededError, match="40x30 = 1200 pixels"):
        check_image(encode("JPEG"), max_pixels=1000)


def test_sniff_looks_at_magic_bytes_only() -> None:
    assert sniff(encode("PNG")) == "image/png"
    assert sniff(b"\xff\xd8\xff\xe0") == "image/jpeg"
    assert sniff(b"RIFF\0\0\0\0WEBPVP8 ") == "image/webp"
    assert sniff(b"GIF89a") is None


def test_budget_follows_engine_suggestions_within_the_maximum() -> None:
    b = InFlightBudget(64, adaptive=True)
    assert b.update([None]) == 64
    assert b.update([20]) == 20
    assert b.update([40, 50]) == 64  # two engines' wishes add up, capped
    assert b.update([0]) == 1  # never zero: a page can always run
    b.held = 60
    assert b.credits(in_transit=3) == 1 - 63
    fixed = InFlightBudget(8, adaptive=False)
    assert fixed.update([2]) == 8
    with pytest.raises(ValueError):
        InFlightBudget(0)
