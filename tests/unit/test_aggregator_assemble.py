"""Document assembly: page order, markers, failed pages, and byte-identical output whatever the
arrival order of the page results."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from ocr_stream.aggregator import state as st
from ocr_stream.aggregator.assemble import DocumentHeader, PageOutcome, assemble, page_marker
from ocr_stream.contracts import Block, DeadLetter, DocumentProgress, DocumentStatus, ErrorInfo, PageResult, PageStatus, Usage
from ocr_stream.errors import ErrorCode

T0 = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)


def ok(n: int, count: int, doc: str = "doc-1") -> PageResult:
    return PageResult(
        doc_id=doc, page_no=n, page_count=count, status=PageStatus.OK,
        markdown=f"# Page {n}\n\nText of page {n} — ünïcode.\n",
        blocks=[Block(label="title", text=f"Page {n}", box=(10, 20, 300, 60)), Block(label="text", text="x", box=None)],
        usage=Usage(prompt_tokens=900, completion_tokens=100 + n), latency_ms=1000.0 / n, attempts=1 + n % 2,
        model="deepseek-ai/DeepSeek-OCR", image_width=1131, image_height=1600,
        submitted_at=T0, completed_at=T0 + timedelta(seconds=n), source="a.pdf", metadata={"tenant": "t1"},
    )


def bad(n: int, count: int, doc: str = "doc-1") -> PageResult:
    return PageResult(doc_id=doc, page_no=n, page_count=count, status=PageStatus.FAILED,
                      error=ErrorInfo(code=ErrorCode.REPETITION, message="runaway repetition --> looped"),
                      completed_at=T0 + timedelta(seconds=n), submitted_at=T0, source="a.pdf")


def from_dead_letter(r: PageResult) -> PageResult:
    """The worker's dead letter of a page carries the page event, hence the same source, metadata
    and submitted_at as the page's failed result."""
    from ocr_stream.contracts import ObjectRef, PageEvent, RenderSettings

    page = PageEvent(doc_id=r.doc_id, page_no=r.page_no, page_count=r.page_count,
                     image=ObjectRef(bucket="ocr-stream", key=f"pages/{r.doc_id}/{r.page_no:05d}.jpg"),
                     image_width=1131, image_height=1600, image_bytes=1, render=RenderSettings(long_side=1600),
                     submitted_at=r.submitted_at or T0, source=r.source, metadata=r.metadata)
    dead = DeadLetter(doc_id=r.doc_id, page_no=r.page_no, page_count=r.page_count, attempts=5, error=r.error,  # type: ignore[arg-type]
                      failed_at=T0, page=page)
    result = st.dead_letter_to_result(dead)
    assert result is not None
    return result


def outcomes(progress: DocumentProgress, stored: dict[int, PageResult]) -> list[PageOutcome]:
    failed = {f.page_no: f.error for f in progress.pages_failed}
    return [PageOutcome(page_no=n, error=failed[n]) if n in failed else PageOutcome(page_no=n, result=stored[n])
            for n in range(1, progress.page_count + 1)]


def header(progress: DocumentProgress) -> DocumentHeader:
    return DocumentHeader(doc_id=progress.doc_id, page_count=progress.page_count, source=progress.source,
                          submitted_at=progress.submitted_at, metadata=progress.metadata)


def aggregate(arrival: list[PageResult], stored: dict[int, PageResult]) -> tuple[bytes, bytes, DocumentStatus]:
    """What the service does: apply results until the document is complete, then assemble."""
    progress: DocumentProgress | None = None
    clock = T0
    for r in arrival:
        clock += timedelta(seconds=7)  # the aggregator's clock must not leak into the outputs
        progress = st.apply_result(progress, r, now=clock).progress
        assert progress is not None
        if st.is_complete(progress):
            break
    assert progress is not None and st.is_complete(progress)
    doc = assemble(header(progress), outcomes(progress, stored))
    return doc.markdown, doc.json, doc.status


def test_markdown_has_pages_in_order_with_markers() -> None:
    results = [ok(1, 3), bad(2, 3), ok(3, 3)]
    md, js, status = aggregate(results[::-1], {1: results[0], 3: results[2]})
    text = md.decode()
    assert status == DocumentStatus.PARTIAL
    assert text.index(page_marker(1)) < text.index(page_marker(2)) < text.index(page_marker(3))
    assert text.startswith("<!-- page 1 -->\n\n# Page 1\n")
    # The failed page's message cannot close the comment early.
    assert "<!-- page 2 failed: repetition: runaway repetition -- > looped -->" in text
    assert text.endswith("ünïcode.\n")
    doc = json.loads(js)
    assert doc["status"] == "partial"
    assert [p["status"] for p in doc["pages"]] == ["ok", "failed", "ok"]
    assert doc["pages"][0]["blocks"][0] == {"label": "title", "text": "Page 1", "box": [10, 20, 300, 60], "malformed": False}
    assert doc["failed_pages"] == [{"page_no": 2, "error": {"code": "repetition", "message": "runaway repetition --> looped", "transient": False}}]
    assert doc["totals"] == {"pages": 3, "pages_ok": 2, "pages_failed": 1, "prompt_tokens": 1800, "completion_tokens": 204,
                             "model_ms": 1333.333, "attempts": 4}
    assert doc["timings"]["last_page_completed_at"] == "2026-11-27T08:00:03Z"
    assert doc["timings"]["elapsed_s"] == 3.0
    assert doc["metadata"] == {"tenant": "t1"} and doc["source"] == "a.pdf"


def test_all_failed_document() -> None:
    md, js, status = aggregate([bad(2, 2), bad(1, 2)], {})
    assert status == DocumentStatus.FAILED
    doc = json.loads(js)
    assert doc["totals"]["pages_ok"] == 0 and [f["page_no"] for f in doc["failed_pages"]] == [1, 2]
    assert doc["source"] == "a.pdf"  # from the progress state when no page succeeded
    assert md.count(b"failed: repetition") == 2


def test_pages_must_come_in_order_and_all() -> None:
    h = DocumentHeader(doc_id="d", page_count=2)
    with pytest.raises(ValueError, match="page 2 given where page 1"):
        assemble(h, [PageOutcome(page_no=2, result=ok(2, 2))])
    with pytest.raises(ValueError, match="1 pages given for a document of 2"):
        assemble(h, [PageOutcome(page_no=1, result=ok(1, 2))])


def test_a_stored_failed_result_counts_as_failed() -> None:
    r = bad(1, 1)
    doc = assemble(DocumentHeader(doc_id="doc-1", page_count=1), [PageOutcome(page_no=1, result=r, error=r.error)])
    assert doc.status == DocumentStatus.FAILED and doc.failed_pages[0].error.code == ErrorCode.REPETITION


@settings(max_examples=80, deadline=None)
@given(hs.data())
def test_any_arrival_order_with_duplicates_gives_identical_bytes(data: hs.DataObject) -> None:
    count = data.draw(hs.integers(1, 30), label="pages")
    good = data.draw(hs.lists(hs.booleans(), min_size=count, max_size=count), label="ok pages")
    base = [ok(n, count) if g else bad(n, count) for n, g in enumerate(good, 1)]
    stored = {r.page_no: r for r in base if r.status == PageStatus.OK}
    # Duplicates: the same result again, and for failed pages the failure re-sent from the dead letter.
    extra = data.draw(hs.lists(hs.sampled_from(base), max_size=15), label="duplicates")
    dlq = [from_dead_letter(r) for r in base if r.status == PageStatus.FAILED]
    arrival = data.draw(hs.permutations(base + extra + dlq), label="arrival")
    expected = aggregate(base, stored)
    assert aggregate(arrival, stored) == expected
