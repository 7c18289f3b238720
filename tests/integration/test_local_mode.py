"""Local mode (``ocr-stream run``): the producer, worker and aggregator in one process on the
in-memory transport and a local folder, with the embedded Tesseract engine. No Kafka, no S3."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pymupdf
import pytest

from ocr_stream import local
from ocr_stream.config import load_settings
from ocr_stream.contracts import Block, DocumentStatus, Usage
from ocr_stream.engines.base import Engine, OcrOutput, OcrRequest
from ocr_stream.errors import CorruptDocumentError, ModelServerError

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

PAGES = [
    ["Harbour Inspection Report", "", "The north pier was inspected on the second of May.",
     "Three cranes need new cables before the autumn season.", "The fuel depot passed every safety check."],
    ["Budget", "", "Repairs will cost 86,500 EUR in total.", "Work starts in June and ends in September.",
     "Questions go to harbour.office@example.org"],
]


def make_pdf(path: Path, pages: list[list[str]]) -> str:
    """A PDF with these lines (the first of each page larger, as a heading); returns its text."""
    doc = pymupdf.open()
    for lines in pages:
        page = doc.new_page(width=595, height=842)
        y = 90.0
        for i, line in enumerate(lines):
            size = 22 if i == 0 else 13
            if line:
                page.insert_text((72, y), line, fontsize=size, fontname="helv")
            y += size * 1.9
    doc.save(path)
    doc.close()
    return "\n".join(line for lines in pages for line in lines if line)


def settings(tmp_path: Path, **overrides: Any) -> Any:
    return load_settings(metrics_port=0, local_storage_path=tmp_path / "unused", **overrides)


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    local.configure(parser)
    return local.run(parser.parse_args(argv), load_settings(metrics_port=0))


def test_a_generated_document_comes_back_with_its_known_text(tmp_path: Path) -> None:
    pdf = tmp_path / "in" / "harbour.pdf"
    pdf.parent.mkdir()
    known = make_pdf(pdf, PAGES)
    report = local.run_local([str(pdf)], tmp_path / "out", settings(tmp_path), progress=False)
    assert report.exit_code == 0, report.summary()
    doc = report.documents[0]
    assert doc.status == DocumentStatus.COMPLETE and doc.page_count == 2
    out = tmp_path / "out" / "harbour"
    assert doc.output_dir == out
    md = (out / "document.md").read_text()
    assert "<!-- page 1 -->" in md and "<!-- page 2 -->" in md
    cer = local.character_error_rate_of(out / "document.md", _write(tmp_path / "known.txt", known))
    print(f"local mode, tesseract, generated 2-page PDF: CER {cer:.3%}")
    assert cer <= 0.01, md
    assert sorted(p.name for p in (out / "pages").iterdir()) == ["00001.jpg", "00002.jpg"]
    assert (out / "document.json").read_bytes().startswith(b"{")
    assert not (out / "boxes").exists()
    # The work folder is gone; only the document's folder is left.
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["harbour"]
    assert report.pages == 2 and report.pages_per_second > 0


def test_the_sample_shipped_for_make_run_matches_its_known_text(tmp_path: Path) -> None:
    """What `make run` shows a newcomer (scripts/make_run.sh)."""
    code = run_cli([str(ROOT / "samples" / "sample.pdf"), "-o", str(tmp_path / "out"), "--no-progress", "--draw-boxes"])
    assert code == 0
    md = tmp_path / "out" / "sample" / "document.md"
    cer = local.character_error_rate_of(md, ROOT / "samples" / "sample.txt")
    print(f"samples/sample.pdf: CER {cer:.3%}")
    assert cer <= 0.01, md.read_text()
    boxes = sorted((tmp_path / "out" / "sample" / "boxes").iterdir())
    pages = sorted((tmp_path / "out" / "sample" / "pages").iterdir())
    assert [b.name for b in boxes] == [p.name for p in pages] and boxes
    from PIL import Image

    with Image.open(boxes[0]) as drawn, Image.open(pages[0]) as plain:
        assert drawn.size == plain.size
        # Coloured outlines on a black-and-white page: some pixels are strongly saturated.
        assert drawn.convert("HSV").getchannel("S").getextrema()[1] > 150
        assert plain.convert("HSV").getchannel("S").getextrema()[1] < 60


def test_a_bad_file_is_named_in_the_summary_exit_1_and_the_good_ones_still_done(tmp_path: Path, capsys: Any) -> None:
    good = tmp_path / "a" / "report.pdf"
    twin = tmp_path / "b" / "report.pdf"  # same name, other text: its own folder
    bad = tmp_path / "broken.pdf"
    good.parent.mkdir()
    twin.parent.mkdir()
    make_pdf(good, PAGES[:1])
    make_pdf(twin, PAGES[1:])
    bad.write_bytes(b"%PDF-1.7\nthis is not really a pdf\n")
    code = run_cli([str(good), str(twin), str(bad), str(tmp_path / "missing.pdf"), "-o", str(tmp_path / "out"), "--no-progress"])
    assert code == 1
    summary = capsys.readouterr().out
    assert "4 document(s) (2 complete, 2 rejected)" in summary
    assert f"{bad}: rejected:" in summary and f"{tmp_path / 'missing.pdf'}: rejected:" in summary
    assert "Harbour Inspection" in (tmp_path / "out" / "report" / "document.md").read_text()
    assert "Budget" in (tmp_path / "out" / "report-2" / "document.md").read_text()


class _FailPageTwo(Engine):
    """Tesseract for every page but page 2, which the engine refuses for good."""

    name = "tesseract"

    def __init__(self) -> None:
        from ocr_stream.engines.tesseract import TesseractEngine

        self.inner = TesseractEngine(threads=1)

    async def ocr(self, request: OcrRequest) -> OcrOutput:
        if request.page_no == 2:
            raise CorruptDocumentError("page 2 is unreadable (scripted)")
        return await self.inner.ocr(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def test_a_page_that_fails_for_good_gives_a_partial_document_and_the_reason(tmp_path: Path) -> None:
    pdf = tmp_path / "two.pdf"
    make_pdf(pdf, PAGES)
    report = local.run_local([str(pdf)], tmp_path / "out", settings(tmp_path), progress=False, engines={"tesseract": _FailPageTwo()})
    assert report.exit_code == 1
    doc = report.documents[0]
    assert doc.status == DocumentStatus.PARTIAL
    assert doc.failed_pages == [(2, "corrupt: page 2 is unreadable (scripted)")]
    assert "page 2: corrupt: page 2 is unreadable (scripted)" in report.summary()
    md = (tmp_path / "out" / "two" / "document.md").read_text()
    assert "Harbour Inspection" in md and "<!-- page 2 failed: corrupt" in md


class _Flaky(Engine):
    """Fails the first call of every page with a transient error, then answers."""

    name = "tesseract"

    def __init__(self) -> None:
        self.calls: dict[int, int] = {}

    async def ocr(self, request: OcrRequest) -> OcrOutput:
        self.calls[request.page_no] = self.calls.get(request.page_no, 0) + 1
        if self.calls[request.page_no] == 1:
            raise ModelServerError("connection reset (scripted)")
        return OcrOutput(markdown=f"page {request.page_no} text", blocks=[Block(label="text", text="t", box=(1, 1, 5, 5))],
                         usage=Usage(prompt_tokens=10, completion_tokens=5))


def test_transient_engine_errors_are_retried_and_the_run_succeeds(tmp_path: Path) -> None:
    pdf = tmp_path / "flaky.pdf"
    make_pdf(pdf, PAGES)
    engine = _Flaky()
    s = settings(tmp_path, backoff_base_s=0.01, backoff_max_s=0.05)
    report = local.run_local([str(pdf)], tmp_path / "out", s, progress=False, engines={"tesseract": engine})
    assert report.exit_code == 0, report.summary()
    assert engine.calls == {1: 2, 2: 2}
    md = (tmp_path / "out" / "flaky" / "document.md").read_text()
    assert "page 1 text" in md and "page 2 text" in md


def test_bad_arguments_are_configuration_errors(tmp_path: Path) -> None:
    from ocr_stream.errors import ConfigError

    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(ConfigError, match="not a folder"):
        run_cli([str(tmp_path), "-o", str(target)])
    with pytest.raises(ConfigError, match="not an http"):
        run_cli([str(tmp_path), "-o", str(tmp_path / "o"), "--vllm-url", "ftp://x"])
    with pytest.raises(ConfigError, match="--max-in-flight"):
        run_cli([str(tmp_path), "-o", str(tmp_path / "o"), "--max-in-flight", "0"])


def test_plain_text_drops_markdown_syntax_and_page_markers() -> None:
    md = "<!-- page 1 -->\n\n# Title\n\n- item **bold**\n\n<!-- page 2 failed: corrupt: x -->\n> quote `code`\n"
    assert local.plain_text(md).split() == ["Title", "item", "bold", "quote", "code"]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_the_vllm_engine_runs_against_an_openai_compatible_server(tmp_path: Path, simulator: Any) -> None:
    """`--engine vllm --vllm-url URL`: DeepSeek-OCR over HTTP (the simulator speaks vLLM's API),
    every page in flight at once, boxes converted to page pixels."""
    sim = simulator(speed=50)
    pdf = tmp_path / "three.pdf"
    make_pdf(pdf, PAGES + PAGES[:1])
    out = tmp_path / "out"
    code = run_cli([str(pdf), "-o", str(out), "--vllm-url", sim.url, "--no-progress", "--draw-boxes", "--max-in-flight", "8"])
    assert code == 0
    md = (out / "three" / "document.md").read_text()
    assert [line for line in md.splitlines() if line.startswith("<!-- page")] == [f"<!-- page {n} -->" for n in (1, 2, 3)]
    import json

    doc = json.loads((out / "three" / "document.json").read_text())
    blocks = [b for page in doc["pages"] for b in page["blocks"] if b.get("box")]
    assert blocks and all(page["engine"] == "deepseek" for page in doc["pages"])
    from PIL import Image

    with Image.open(out / "three" / "pages" / "00001.jpg") as img:
        w, h = img.size
    assert all(0 <= b["box"][0] <= b["box"][2] <= w and 0 <= b["box"][1] <= b["box"][3] <= h for b in blocks)
    assert sorted(p.name for p in (out / "three" / "boxes").iterdir()) == ["00001.jpg", "00002.jpg", "00003.jpg"]
