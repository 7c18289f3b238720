"""``ocr-stream run`` as a user runs it: a subprocess, its exit code, its output, and what a SIGTERM
in the middle leaves behind (nothing but what was already written)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pymupdf
import pytest
from conftest import wait_until

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "ocr_stream"]


def _env() -> dict[str, str]:
    return {**os.environ, "OCR_STREAM_LOG_LEVEL": "WARNING", "OCR_STREAM_METRICS_PORT": "0"}


def test_run_on_the_sample_prints_a_summary_and_exits_0(tmp_path: Path) -> None:
    proc = subprocess.run([*CLI, "run", str(ROOT / "samples" / "sample.pdf"), "-o", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120, env=_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "1 document(s) (1 complete), 2 page(s)" in proc.stdout
    assert f"-> {tmp_path / 'out' / 'sample' / 'document.md'} (complete, 2 page(s))" in proc.stdout
    assert "Northwind Shipping" in (tmp_path / "out" / "sample" / "document.md").read_text()


def test_an_unreadable_file_exits_1_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "notes.pdf"
    bad.write_text("not a pdf at all")
    proc = subprocess.run([*CLI, "run", str(bad), "-o", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120, env=_env(), cwd=tmp_path)
    assert proc.returncode == 1
    assert f"{bad}: rejected:" in proc.stdout
    assert str(bad) in proc.stderr  # said at once too, above the progress bar


def test_sigterm_stops_the_run_and_removes_the_work_folder(tmp_path: Path) -> None:
    pdf = tmp_path / "long.pdf"
    doc = pymupdf.open()
    for n in range(60):
        page = doc.new_page()
        for line in range(45):
            page.insert_text((50, 60 + line * 16), f"Page {n + 1}, line {line}: a dense page that keeps the engine busy.", fontsize=10)
    doc.save(pdf)
    doc.close()
    out = tmp_path / "out"
    proc = subprocess.Popen([*CLI, "run", str(pdf), "-o", str(out), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=tmp_path)
    try:
        # Wait until pages are being OCR'd: page images are in the work folder.
        wait_until(lambda: any(out.glob(".ocr-stream-work-*/*/pages/*/*.jpg")), 60, what="page images in the work folder")
        assert proc.poll() is None, "the run finished before it could be interrupted"
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert list(out.iterdir()) == []
