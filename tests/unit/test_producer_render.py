"""Validation and rendering of PDFs and images (local files only, no servers)."""

from __future__ import annotations

import io
from pathlib import Path

import pymupdf
import pytest
from PIL import Image

from ocr_stream.contracts import Mode
from ocr_stream.errors import CorruptDocumentError, EncryptedDocumentError, LimitExceededError, UnsupportedTypeError
from ocr_stream.producer.bench import make_encrypted_pdf, make_image, make_pdf, make_pdf_with_huge_image, make_tiff, png_with_header
from ocr_stream.producer.detect import DocType
from ocr_stream.producer.limits import Limits
from ocr_stream.producer.render import RenderSpec, open_source

LIMITS = Limits(max_file_bytes=50 * 1024 * 1024, max_pages=100, max_page_pixels=50_000_000)
SPEC = RenderSpec()


def _open(path: Path, *, spec: RenderSpec = SPEC, limits: Limits = LIMITS, password: str | None = None):  # type: ignore[no-untyped-def]
    return open_source(path, spec=spec, limits=limits, password=password)


def _jpeg_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "JPEG"
        return im.size


# --------------------------------------------------------------------------- PDFs


def test_pdf_pages_render_to_the_mode_size(tmp_path: Path) -> None:
    pdf = make_pdf(tmp_path / "a.pdf", 3)
    with _open(pdf) as src:
        assert src.kind is DocType.PDF and src.page_count == 3
        pages = list(src.pages())
    assert [p.page_no for p in pages] == [1, 2, 3]
    for p in pages:
        assert max(p.width, p.height) == 1600 and p.height > p.width  # A4 portrait
        assert _jpeg_size(p.data) == (p.width, p.height)
        assert p.dpi is not None and 130 < p.dpi < 140  # 1600 px over 842 pt
    with _open(pdf, spec=RenderSpec(mode=Mode.SMALL)) as src:
        page = src.render(1)
    assert page.height == 640 and page.width <= 640
    with _open(pdf, spec=RenderSpec(mode=Mode.TINY)) as src:
        assert max(src.render(2).width, src.render(2).height) == 512


def test_rotated_pages_render_upright(tmp_path: Path) -> None:
    doc = pymupdf.open()
    doc.new_page(width=595, height=842).set_rotation(90)
    doc.save(tmp_path / "r.pdf")
    with _open(tmp_path / "r.pdf") as src:
        page = src.render(1)
    assert page.width == 1600 and page.height < page.width


def test_encrypted_pdf_needs_the_right_password(tmp_path: Path) -> None:
    pdf = make_encrypted_pdf(tmp_path / "e.pdf", "s3cret", pages=2)
    with pytest.raises(EncryptedDocumentError, match="encrypted: give its password"):
        _open(pdf)
    with pytest.raises(EncryptedDocumentError, match="password given is wrong"):
        _open(pdf, password="nope")
    with _open(pdf, password="s3cret") as src:
        assert src.page_count == 2 and len(src.render(2).data) > 1000


def test_truncated_pdf_is_refused(tmp_path: Path) -> None:
    data = make_pdf(tmp_path / "a.pdf", 5).read_bytes()
    (tmp_path / "t.pdf").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptDocumentError, match="truncated"):
        _open(tmp_path / "t.pdf")


def test_garbage_pdf_is_refused(tmp_path: Path) -> None:
    (tmp_path / "g.pdf").write_bytes(b"%PDF-1.7\n" + bytes(range(256)) * 40 + b"\n%%EOF\n")
    with pytest.raises(CorruptDocumentError, match="corrupt PDF"):
        _open(tmp_path / "g.pdf")


def test_zero_page_pdf_is_refused(tmp_path: Path) -> None:
    (tmp_path / "z.pdf").write_bytes(
        b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\n"
        b"trailer<</Root 1 0 R/Size 3>>\n%%EOF\n"
    )
    with pytest.raises(CorruptDocumentError, match="no pages"):
        _open(tmp_path / "z.pdf")


def test_pdf_limits(tmp_path: Path) -> None:
    pdf = make_pdf(tmp_path / "a.pdf", 4)
    with pytest.raises(LimitExceededError, match="4 pages, over the limit of 3"):
        _open(pdf, limits=Limits(10**9, 3, 10**8))
    with pytest.raises(LimitExceededError, match="MAX_FILE_BYTES"):
        _open(pdf, limits=Limits(100, 3, 10**8))
    with pytest.raises(LimitExceededError, match="page 1 rendered"):
        _open(pdf, limits=Limits(10**9, 10, 1000))


def test_pdf_with_a_huge_embedded_image_is_refused_before_decoding(tmp_path: Path) -> None:
    make_pdf_with_huge_image(tmp_path / "bomb.pdf", blank_pages_before=1)
    with pytest.raises(LimitExceededError, match="page 2: an embedded image is 60000x60000"):
        _open(tmp_path / "bomb.pdf")


def test_unsupported_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "doc.pdf").write_bytes(b"just text pretending to be a PDF\n")
    with pytest.raises(UnsupportedTypeError, match="text file"):
        _open(tmp_path / "doc.pdf")
    with pytest.raises(Exception, match="no such file"):
        _open(tmp_path / "missing.pdf")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(UnsupportedTypeError, match="empty file"):
        _open(tmp_path / "empty.png")


# --------------------------------------------------------------------------- images


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "TIFF"])
def test_images_are_one_page_and_only_shrunk(tmp_path: Path, fmt: str) -> None:
    big = make_image(tmp_path / "big.img", fmt, (2400, 3200))
    with _open(big) as src:
        assert src.page_count == 1
        page = src.render(1)
    assert (page.width, page.height) == (1200, 1600) and page.dpi is None
    assert _jpeg_size(page.data) == (1200, 1600)
    small = make_image(tmp_path / "small.img", fmt, (300, 200))
    with _open(small) as src:
        page = src.render(1)
    assert (page.width, page.height) == (300, 200)


def test_type_comes_from_content_not_extension(tmp_path: Path) -> None:
    path = make_image(tmp_path / "scan.pdf", "PNG", (100, 100))
    with _open(path) as src:
        assert src.kind is DocType.PNG


def test_multipage_tiff(tmp_path: Path) -> None:
    tif = make_tiff(tmp_path / "m.tif", 5)
    with _open(tif) as src:
        assert src.page_count == 5
        sizes = [(p.width, p.height) for p in src.pages()]
    assert sizes == [(600, 800)] * 5


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    im = Image.new("RGB", (400, 200), "white")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    im.save(tmp_path / "o.jpg", "JPEG", exif=exif)
    with _open(tmp_path / "o.jpg") as src:
        page = src.render(1)
    assert (page.width, page.height) == (200, 400)


def test_transparency_becomes_white_paper(tmp_path: Path) -> None:
    Image.new("RGBA", (50, 50), (0, 0, 0, 0)).save(tmp_path / "t.png")
    with _open(tmp_path / "t.png") as src:
        data = src.render(1).data
    with Image.open(io.BytesIO(data)) as im:
        assert im.convert("L").getextrema()[0] > 240  # type: ignore[index]


def test_sixteen_bit_scans_keep_their_contrast(tmp_path: Path) -> None:
    im = Image.new("I;16", (64, 64), 0)
    im.paste(60000, (0, 0, 32, 64))
    im.save(tmp_path / "s16.png")
    with _open(tmp_path / "s16.png") as src:
        data = src.render(1).data
    with Image.open(io.BytesIO(data)) as out:
        lo, hi = out.convert("L").getextrema()  # type: ignore[misc]
    assert lo < 20 and hi > 235


def test_image_bombs_are_refused_from_the_header(tmp_path: Path) -> None:
    (tmp_path / "bomb.png").write_bytes(png_with_header(100_000, 100_000))
    with pytest.raises(LimitExceededError):
        _open(tmp_path / "bomb.png")
    (tmp_path / "big.png").write_bytes(png_with_header(9000, 9000))
    with pytest.raises(LimitExceededError, match="image is 9000x9000"):
        _open(tmp_path / "big.png")


def test_undecodable_images(tmp_path: Path) -> None:
    good = make_image(tmp_path / "a.jpg", "JPEG", (800, 800)).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(good[: len(good) // 3])
    with _open(tmp_path / "cut.jpg") as src, pytest.raises(CorruptDocumentError, match="undecodable JPEG"):
        src.render(1)
    (tmp_path / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20)
    with pytest.raises(CorruptDocumentError, match="undecodable PNG"):
        _open(tmp_path / "junk.png")
