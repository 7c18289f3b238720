"""Test documents and producer measurements, for tests and the benchmark suite.

Documents (generated, never committed): ``make_pdf``, ``make_image``, ``make_tiff``,
``make_encrypted_pdf``.

Measurement: ``measure_submit(pdf, store=..., fmt="jpeg"|"png")`` runs the real producer
(validate, render, encode, store, publish to an in-memory broker) over a document and returns
pages/s, pages per CPU-second (= per core: the producer renders on one core) and peak RSS. Peak RSS
is the process's high-water mark, so measure in a fresh process:

    python -m ocr_stream.producer.bench make-pdf /tmp/2000.pdf --pages 2000
    python -m ocr_stream.producer.bench measure /tmp/2000.pdf --format jpeg     # one JSON line
    python -m ocr_stream.producer.bench measure /tmp/2000.pdf --format png

or ``measure_in_subprocess(pdf, fmt="png")`` from Python.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import struct
import sys
import tempfile
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pymupdf as _pymupdf
from PIL import Image, ImageDraw

from ..contracts import Mode

pymupdf: Any = _pymupdf

_WORDS = ("ocr stream kafka page render document worker result model server token image "
          "partition offset commit storage bucket event schema retry backoff").split()


def _line(i: int, j: int) -> str:
    return " ".join(_WORDS[(i * 7 + j * 3 + k) % len(_WORDS)] for k in range(12))


def make_pdf(path: Path, pages: int, *, lines: int = 45, size: tuple[float, float] = (595, 842)) -> Path:
    """A text PDF of ``pages`` A4 pages, ``lines`` lines each (a dense page of prose, like a report)."""
    doc = pymupdf.open()
    for i in range(pages):
        page = doc.new_page(width=size[0], height=size[1])
        page.insert_text((50, 40), f"Page {i + 1}", fontsize=16)
        text = "\n".join(_line(i, j) for j in range(lines))
        page.insert_text((50, 70), text, fontsize=10, lineheight=1.6)
    doc.save(str(path), garbage=1, deflate=True)
    doc.close()
    return path


def make_encrypted_pdf(path: Path, password: str, pages: int = 2) -> Path:
    doc = pymupdf.open()
    for i in range(pages):
        doc.new_page().insert_text((72, 72), f"secret page {i + 1}")
    doc.save(str(path), encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw=password, owner_pw=password + "-owner")
    doc.close()
    return path


def make_image(path: Path, fmt: str, size: tuple[int, int] = (800, 1000), *, mode: str = "RGB", text: str = "hello") -> Path:
    """An image with some text in ``fmt`` (PNG, JPEG, WEBP, TIFF) and Pillow ``mode``."""
    im = Image.new(mode, size, "white" if mode in ("RGB", "L") else None)
    ImageDraw.Draw(im).text((20, 20), text, fill="black" if mode in ("RGB", "L") else None)
    im.save(path, fmt)
    return path


def make_tiff(path: Path, frames: int, size: tuple[int, int] = (600, 800)) -> Path:
    """A multi-page TIFF with ``frames`` pages."""
    ims = []
    for i in range(frames):
        im = Image.new("L", size, 255)
        ImageDraw.Draw(im).text((20, 20), f"tiff page {i + 1}", fill=0)
        ims.append(im)
    ims[0].save(path, "TIFF", save_all=True, append_images=ims[1:], compression="tiff_deflate")
    return path


def image_bytes(fmt: str, size: tuple[int, int] = (64, 64)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, "white").save(buf, fmt)
    return buf.getvalue()


def png_with_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` while its data is tiny: the shape of a
    decompression bomb, for tests."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def make_pdf_with_huge_image(path: Path, *, blank_pages_before: int = 0, claimed: int = 60_000) -> Path:
    """A PDF whose last page embeds a tiny image that claims ``claimed`` x ``claimed`` pixels: a
    decompression bomb inside a PDF, for tests."""
    doc = pymupdf.open()
    for _ in range(blank_pages_before):
        doc.new_page()
    page = doc.new_page()
    buf = io.BytesIO()
    Image.new("RGB", (20, 20), "red").save(buf, "PNG")
    xref = page.insert_image(pymupdf.Rect(0, 0, 100, 100), stream=buf.getvalue())
    doc.xref_set_key(xref, "Width", str(claimed))
    doc.xref_set_key(xref, "Height", str(claimed))
    doc.save(str(path))
    doc.close()
    return path


@dataclass(frozen=True)
class ProducerBench:
    pages: int
    format: str
    long_side: int
    wall_s: float
    cpu_s: float
    pages_per_s: float
    pages_per_cpu_s: float
    """Pages per CPU-second of this process: pages/s per core."""
    peak_rss_mb: float
    image_bytes_avg: int


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def measure_submit(pdf: Path, *, store: Any = None, fmt: str = "jpeg", mode: Mode = Mode.GUNDAM,
                   long_side: int = 1600, quality: int = 95) -> ProducerBench:
    """Submit ``pdf`` through the real producer into ``store`` (a LocalStore in a temp folder when
    None) and an in-memory broker; measure it."""
    from ..config import load_settings
    from ..storage import LocalStore
    from ..transport.memory import MemoryTransport
    from .submit import SubmitOptions, Submitter

    settings = load_settings(storage="local", long_side=long_side, jpeg_quality=quality, max_pages=1_000_000)
    tmp = None
    if store is None:
        tmp = tempfile.TemporaryDirectory(prefix="ocr-stream-bench-")
        store = LocalStore(tmp.name, bucket=settings.bucket)
        store.ensure_bucket()
    transport = MemoryTransport(default_partitions=24)
    transport.ensure_topics({settings.topic("ocr.pages"): 24, settings.topic("ocr.pages.dlq"): 4})
    sizes: list[int] = []
    submitter = Submitter(settings, store=store, producer=transport.producer(name="bench"), image_format="png" if fmt == "png" else "jpeg")
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        result = submitter.submit_file(pdf, SubmitOptions(mode=mode))
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        for key in list(store.list("pages/"))[:50]:
            sizes.append(len(store.get_key(key)))
    finally:
        submitter.close()
        if tmp is not None:
            tmp.cleanup()
    return ProducerBench(
        pages=result.page_count, format=fmt, long_side=long_side, wall_s=round(wall, 3), cpu_s=round(cpu, 3),
        pages_per_s=round(result.page_count / wall, 2), pages_per_cpu_s=round(result.page_count / cpu, 2),
        peak_rss_mb=round(peak_rss_mb(), 1), image_bytes_avg=int(sum(sizes) / max(1, len(sizes))),
    )


def measure_in_subprocess(pdf: Path, *, fmt: str = "jpeg", long_side: int = 1600, mode: Mode = Mode.GUNDAM,
                          timeout_s: float = 1800.0) -> ProducerBench:
    """``measure_submit`` in a fresh Python process, so that peak RSS is the producer's own (not the
    caller's, nor the PDF generator's)."""
    import subprocess

    out = subprocess.run(
        [sys.executable, "-m", "ocr_stream.producer.bench", "measure", str(pdf), "--format", fmt,
         "--long-side", str(long_side), "--mode", Mode(mode).value],
        check=True, capture_output=True, text=True, timeout=timeout_s,
    )
    return ProducerBench(**json.loads(out.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ocr_stream.producer.bench")
    sub = p.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make-pdf")
    mk.add_argument("path", type=Path)
    mk.add_argument("--pages", type=int, default=2000)
    ms = sub.add_parser("measure")
    ms.add_argument("path", type=Path)
    ms.add_argument("--format", choices=["jpeg", "png"], default="jpeg")
    ms.add_argument("--long-side", type=int, default=1600)
    ms.add_argument("--mode", choices=[m.value for m in Mode], default="gundam")
    args = p.parse_args(argv)
    if args.cmd == "make-pdf":
        make_pdf(args.path, args.pages)
        print(args.path)
        return 0
    res = measure_submit(args.path, fmt=args.format, long_side=args.long_side, mode=Mode(args.mode))
    print(json.dumps(asdict(res)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
