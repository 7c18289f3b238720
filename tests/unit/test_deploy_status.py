"""``ocr-stream status``: the pure parts (lag arithmetic, page ranges, what a document view shows)."""

from __future__ import annotations

from datetime import UTC, datetime

from ocr_stream.contracts import DocumentEvent, DocumentProgress, DocumentStatus, ErrorInfo, FailedPage, ObjectRef
from ocr_stream.errors import ErrorCode
from ocr_stream.status import (
    DocumentStatusView,
    PartitionLag,
    count_pages,
    format_lag_table,
    format_ranges,
    group_topic_lags,
    merge_ranges,
    missing_ranges,
    ranges_of,
)


def failed(page_no: int, code: ErrorCode = ErrorCode.CORRUPT, msg: str = "bad page") -> FailedPage:
    return FailedPage(page_no=page_no, error=ErrorInfo(code=code, message=msg))


# ----------------------------------------------------------------------------- lag


def test_lag_is_end_minus_committed_and_counts_partitions_never_committed() -> None:
    committed = {("ocr.pages", 0): 90, ("ocr.pages", 1): 100}
    marks = {("ocr.pages", 0): (0, 100), ("ocr.pages", 1): (0, 100), ("ocr.pages", 2): (40, 70)}
    (row,) = group_topic_lags("workers", "STABLE", committed, marks)
    assert [(p.partition, p.committed, p.lag) for p in row.partitions] == [(0, 90, 10), (1, 100, 0), (2, None, 30)]
    assert row.lag == 40 and row.uncommitted_partitions == 1


def test_a_commit_below_the_retained_start_counts_from_the_start() -> None:
    # Records before the log start were deleted by retention: they can never be consumed.
    assert PartitionLag(0, committed=5, end=100, start=60).lag == 40
    assert PartitionLag(0, committed=-1001, end=100, start=0).lag == 100  # OFFSET_INVALID: no commit
    assert PartitionLag(0, committed=120, end=100, start=0).lag == 0  # never negative


def test_one_row_per_topic_the_group_committed_on() -> None:
    committed = {("ocr.results", 0): 5, ("ocr.pages.dlq", 0): 1}
    marks = {("ocr.results", 0): (0, 7), ("ocr.pages.dlq", 0): (0, 1), ("ocr.pages", 0): (0, 1000)}
    rows = group_topic_lags("aggregator", "EMPTY", committed, marks)
    assert [(r.topic, r.lag) for r in rows] == [("ocr.pages.dlq", 0), ("ocr.results", 2)]


def test_lag_table() -> None:
    rows = group_topic_lags("ocr-stream-workers", "STABLE", {("ocr.pages", 0): 3}, {("ocr.pages", 0): (0, 10)})
    table = format_lag_table(rows).splitlines()
    assert table[0].split() == ["GROUP", "TOPIC", "STATE", "PARTITIONS", "LAG"]
    assert table[1].split() == ["ocr-stream-workers", "ocr.pages", "STABLE", "1", "7"]
    detail = format_lag_table(rows, partitions=True)
    assert "partition   0  committed          3  end         10  lag        7" in detail
    assert "no consumer group" in format_lag_table([])


# ----------------------------------------------------------------------------- ranges


def test_ranges() -> None:
    assert ranges_of([8, 1, 2, 3, 5, 7]) == [(1, 3), (5, 5), (7, 8)]
    assert merge_ranges([[5, 9], [1, 2], [3, 4], [8, 12]]) == [(1, 12)]
    assert missing_ranges(10, [(2, 3), (5, 5), (10, 10)]) == [(1, 1), (4, 4), (6, 9)]
    assert missing_ranges(3, []) == [(1, 3)]
    assert missing_ranges(3, [(1, 3)]) == []
    assert count_pages([(1, 3), (7, 7)]) == 4
    assert format_ranges([(1, 3), (5, 5)]) == "1-3, 5"
    assert format_ranges([(i, i) for i in range(1, 30, 2)], limit=2) == "1, 3, ... (13 more ranges)"


# ----------------------------------------------------------------------------- a document


def test_progress_view_counts_done_failed_and_pending() -> None:
    p = DocumentProgress(doc_id="doc-1", page_count=2000, pages_ok=[(1, 1000), (1003, 1999)], pages_failed=[failed(1001)])
    v = DocumentStatusView.from_progress(p)
    d = v.as_dict()
    assert (d["status"], d["done"], d["failed"], d["pending"]) == ("in progress", 1997, 1, 2)
    assert d["pages_pending"] == [[1002, 1002], [2000, 2000]]
    assert d["pages_failed"] == [{"page_no": 1001, "code": "corrupt", "message": "bad page"}]
    text = v.render()
    assert "document doc-1: in progress (aggregator state)" in text
    assert "done:    1997  (1-1000, 1003-1999)" in text
    assert "page 1001: corrupt: bad page" in text
    assert "pending: 2  (1002, 2000)" in text


def test_published_progress_shows_the_document_status() -> None:
    p = DocumentProgress(doc_id="doc-2", page_count=3, pages_ok=[(1, 2)], pages_failed=[failed(3, ErrorCode.TIMEOUT)],
                         published=DocumentStatus.PARTIAL)
    v = DocumentStatusView.from_progress(p)
    assert v.status == "partial" and v.pending == []


def test_event_view_when_the_state_is_gone() -> None:
    e = DocumentEvent(
        doc_id="doc-3", status=DocumentStatus.PARTIAL, page_count=5, pages_ok=4, pages_failed=1, failed_pages=[failed(2)],
        markdown_ref=ObjectRef(bucket="ocr-stream", key="results/doc-3/document.md"), completed_at=datetime(2026, 11, 27, tzinfo=UTC),
    )
    v = DocumentStatusView.from_event(e)
    d = v.as_dict()
    assert (d["source"], d["status"], d["done"], d["failed"], d["pending"]) == ("document event", "partial", 4, 1, 0)
    assert d["pages_done"] == [[1, 1], [3, 5]]
    assert "markdown: s3://ocr-stream/results/doc-3/document.md" in v.render()
