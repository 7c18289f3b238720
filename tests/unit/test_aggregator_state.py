"""Progress state: counting pages once, order independence, deadlines, dead letters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from ocr_stream.aggregator import state as st
from ocr_stream.aggregator.partitioning import murmur2, partition_for
from ocr_stream.contracts import (
    DeadLetter,
    DocumentProgress,
    DocumentStatus,
    ErrorInfo,
    PageResult,
    PageStatus,
    Usage,
    decode,
    encode,
)
from ocr_stream.errors import ErrorCode

T0 = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)


def ok(n: int, count: int = 5, doc: str = "doc-1", **kw: object) -> PageResult:
    return PageResult(doc_id=doc, page_no=n, page_count=count, status=PageStatus.OK, markdown=f"page {n}",
                      usage=Usage(prompt_tokens=10, completion_tokens=n), completed_at=T0 + timedelta(seconds=n), **kw)  # type: ignore[arg-type]


def failed(n: int, count: int = 5, code: ErrorCode = ErrorCode.BAD_IMAGE, message: str = "bad", doc: str = "doc-1") -> PageResult:
    return PageResult(doc_id=doc, page_no=n, page_count=count, status=PageStatus.FAILED,
                      error=ErrorInfo(code=code, message=message), completed_at=T0)


def run(results: list[PageResult]) -> tuple[DocumentProgress | None, list[st.Applied]]:
    progress: DocumentProgress | None = None
    kinds = []
    for r in results:
        out = st.apply_result(progress, r, now=T0)
        kinds.append(out.kind)
        progress = out.progress
    return progress, kinds


def test_ranges_merge_and_count() -> None:
    ranges: list[tuple[int, int]] = []
    for n in [5, 1, 3, 2, 4, 9, 7]:
        ranges = st.ranges_add(ranges, n)
    assert ranges == [(1, 5), (7, 7), (9, 9)]
    ranges = st.ranges_add(ranges, 8)
    assert ranges == [(1, 5), (7, 9)]
    assert st.ranges_count(ranges) == 8
    assert st.ranges_contains(ranges, 7) and not st.ranges_contains(ranges, 6) and not st.ranges_contains(ranges, 10)
    assert list(st.iter_ranges(ranges)) == [1, 2, 3, 4, 5, 7, 8, 9]


@given(hs.lists(hs.integers(1, 300), max_size=400))
def test_ranges_match_a_set(numbers: list[int]) -> None:
    ranges: list[tuple[int, int]] = []
    for n in numbers:
        ranges = st.ranges_add(ranges, n)
    assert list(st.iter_ranges(ranges)) == sorted(set(numbers))
    assert all(b + 1 < c for (_a, b), (c, _d) in zip(ranges, ranges[1:], strict=False))  # disjoint and merged


def test_every_page_counted_once_and_completes() -> None:
    progress, kinds = run([ok(1), ok(2), ok(2), failed(3), ok(4), failed(3), ok(5)])
    assert progress is not None
    assert kinds == [st.Applied.COUNTED, st.Applied.COUNTED, st.Applied.DUPLICATE, st.Applied.COUNTED,
                     st.Applied.COUNTED, st.Applied.DUPLICATE, st.Applied.COUNTED]
    assert st.is_complete(progress)
    assert progress.pages_ok == [(1, 2), (4, 5)]
    assert [f.page_no for f in progress.pages_failed] == [3]
    assert st.document_status(progress) == DocumentStatus.PARTIAL
    assert progress.usage.completion_tokens == 1 + 2 + 4 + 5
    assert progress.last_completed_at == T0 + timedelta(seconds=5)


def test_success_replaces_failure_of_same_page() -> None:
    progress, kinds = run([failed(2, count=2), ok(2, count=2)])
    assert kinds == [st.Applied.COUNTED, st.Applied.REPLACED]
    assert progress is not None and progress.pages_ok == [(2, 2)] and progress.pages_failed == []
    progress, kinds = run([ok(2, count=2), failed(2, count=2)])
    assert kinds == [st.Applied.COUNTED, st.Applied.DUPLICATE]


def test_of_two_failures_the_same_one_is_kept_whatever_the_order() -> None:
    a = failed(1, count=1, code=ErrorCode.ATTEMPTS_EXHAUSTED, message="5 attempts")
    b = failed(1, count=1, code=ErrorCode.BAD_IMAGE, message="cannot decode")
    p1, _ = run([a, b])
    p2, _ = run([b, a])
    assert p1 is not None and p2 is not None
    assert p1.pages_failed == p2.pages_failed
    assert p1.pages_failed[0].error.code == ErrorCode.ATTEMPTS_EXHAUSTED


def test_status_all_failed_and_complete() -> None:
    progress, _ = run([failed(1, count=2), failed(2, count=2)])
    assert progress is not None and st.document_status(progress) == DocumentStatus.FAILED
    progress, _ = run([ok(1, count=2), ok(2, count=2)])
    assert progress is not None and st.document_status(progress) == DocumentStatus.COMPLETE


def test_late_result_after_publication_is_ignored() -> None:
    progress, _ = run([ok(1, count=1)])
    assert progress is not None
    published = st.mark_published(progress, DocumentStatus.COMPLETE, now=T0)
    out = st.apply_result(published, ok(1, count=1), now=T0)
    assert out.kind == st.Applied.LATE and out.progress is published and not out.changed


def test_contradicting_results_are_invalid() -> None:
    progress, _ = run([ok(1, count=3)])
    out = st.apply_result(progress, ok(2, count=4), now=T0)
    assert out.kind == st.Applied.INVALID and "page_count" in out.reason and out.progress is progress
    out = st.apply_result(progress, ok(5, count=3), now=T0)
    assert out.kind == st.Applied.INVALID and "page_no" in out.reason


def test_long_error_messages_are_truncated_in_state() -> None:
    progress, _ = run([failed(1, count=1, message="x" * 4000)])
    assert progress is not None
    assert len(progress.pages_failed[0].error.message) == st.FAILED_MESSAGE_LIMIT


def test_header_comes_from_the_lowest_page() -> None:
    progress, _ = run([ok(3, source="late.pdf", metadata={"p": 3}), ok(1, source="first.pdf", metadata={"p": 1}), ok(2, source="x")])
    assert progress is not None and progress.source == "first.pdf" and progress.metadata == {"p": 1} and progress.header_page == 1


def test_stuck_and_deadline_close_lists_missing_pages() -> None:
    progress, _ = run([ok(1), failed(3)])
    assert progress is not None
    assert st.missing_pages(progress) == [2, 4, 5]
    assert not st.is_stuck(progress, now=T0 + timedelta(seconds=10), after_s=10)
    assert st.is_stuck(progress, now=T0 + timedelta(seconds=11), after_s=10)
    closed = st.close_at_deadline(progress, after_s=60)
    assert st.is_complete(closed)
    assert [(f.page_no, f.error.code) for f in closed.pages_failed] == [
        (2, ErrorCode.DEADLINE), (3, ErrorCode.BAD_IMAGE), (4, ErrorCode.DEADLINE), (5, ErrorCode.DEADLINE)]
    assert st.document_status(closed) == DocumentStatus.PARTIAL
    published = st.mark_published(closed, DocumentStatus.PARTIAL, now=T0)
    assert not st.is_stuck(published, now=T0 + timedelta(days=1), after_s=10)
    assert st.is_forgettable(published, now=T0 + timedelta(seconds=61), after_s=60)


def test_dead_letter_becomes_failed_result() -> None:
    dl = DeadLetter(doc_id="doc-1", page_no=2, page_count=4, attempts=5,
                    error=ErrorInfo(code=ErrorCode.ATTEMPTS_EXHAUSTED, message="gave up"), failed_at=T0)
    r = st.dead_letter_to_result(dl)
    assert r is not None and r.status == PageStatus.FAILED and (r.doc_id, r.page_no, r.page_count) == ("doc-1", 2, 4)
    assert r.error == dl.error and r.completed_at == T0


@pytest.mark.parametrize("fields", [
    {},  # the original message did not parse
    {"doc_id": "doc-1", "page_no": 2},  # no page count
    {"doc_id": "../etc", "page_no": 1, "page_count": 1},  # not a doc id
    {"doc_id": "doc-1", "page_no": 3, "page_count": 2},
])
def test_unattributable_dead_letters(fields: dict[str, object]) -> None:
    dl = DeadLetter(error=ErrorInfo(code=ErrorCode.SCHEMA_VIOLATION, message="no"), raw="garbage", **fields)  # type: ignore[arg-type]
    assert st.dead_letter_to_result(dl) is None


def test_progress_for_2000_pages_stays_small() -> None:
    progress: DocumentProgress | None = None
    for n in [*range(2, 2001, 2), *range(1, 2001, 2)]:
        progress = st.apply_result(progress, ok(n, count=2000), now=T0).progress
    assert progress is not None and progress.pages_ok == [(1, 2000)]
    assert len(encode(progress)) < 1000
    all_failed: DocumentProgress | None = None
    for n in range(1, 2001):
        all_failed = st.apply_result(all_failed, failed(n, count=2000, message="m" * 4096), now=T0).progress
    assert all_failed is not None and len(encode(all_failed)) < 1_000_000
    assert decode(DocumentProgress, encode(all_failed)) == all_failed


def test_murmur2_matches_kafka() -> None:
    # Vectors from Kafka's own tests (signed Java ints).
    vectors = {b"21": -973932308, b"foobar": -790332482, b"a-little-bit-long-string": -985981536,
               b"a-little-bit-longer-string": -1486304829, b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
               b"abc": 479470107}
    for key, expected in vectors.items():
        assert murmur2(key) == expected % 2**32
    assert {partition_for(f"doc-{i}", 12) for i in range(200)} == set(range(12))
    with pytest.raises(ValueError):
        partition_for("x", 0)


@settings(max_examples=60, deadline=None)
@given(hs.data())
def test_any_arrival_order_gives_the_same_state(data: hs.DataObject) -> None:
    count = data.draw(hs.integers(1, 25))
    outcomes = data.draw(hs.lists(hs.booleans(), min_size=count, max_size=count))
    base = [ok(n, count=count) if good else failed(n, count=count) for n, good in enumerate(outcomes, 1)]
    dupes = data.draw(hs.lists(hs.sampled_from(base), max_size=10))
    arrival = data.draw(hs.permutations(base + dupes))
    p1, _ = run(base)
    p2, kinds = run(arrival)
    assert p1 is not None and p2 is not None
    assert kinds.count(st.Applied.COUNTED) == count and kinds.count(st.Applied.DUPLICATE) == len(dupes)
    strip = {"first_seen_at", "updated_at", "usage"}
    assert p1.model_dump(exclude=strip) == p2.model_dump(exclude=strip)
