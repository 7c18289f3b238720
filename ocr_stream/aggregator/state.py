"""Per-document progress, as pure functions: (progress, page result) → new progress.

No I/O and no clock of its own: the caller passes ``now``. Every function returns a new
``DocumentProgress`` (they are frozen) or the same object when nothing changed.

Rules that make the outcome independent of arrival order:

- a page is counted once; a second result for a counted page is a duplicate;
- a page that succeeded wins over a failure of the same page (a page retried elsewhere succeeded);
- of two failures of one page, the smaller ``(code, message)`` is kept (the worker's failed result and
  the dead letter of the same page carry the same error, but nothing else picks one reliably);
- source, metadata and submitted_at come from the lowest-numbered page seen; of several results of
  that page (a failure and its dead letter, duplicates), the one with the most header information,
  then the smallest by value, so that no arrival order can pick another.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from ..contracts import (
    DeadLetter,
    DocumentProgress,
    DocumentStatus,
    ErrorInfo,
    FailedPage,
    PageResult,
    PageStatus,
    Usage,
    is_valid_doc_id,
)
from ..errors import ErrorCode

# Error messages kept per failed page: a 2,000-page document that failed everywhere must still fit
# in one changelog record (librdkafka's default message.max.bytes is 1 MB).
FAILED_MESSAGE_LIMIT = 300

Range = tuple[int, int]


class Applied(StrEnum):
    """What applying one page result did."""

    COUNTED = "counted"  # a page not seen before
    REPLACED = "replaced"  # a success replaced a failure of the same page (or a smaller failure another)
    DUPLICATE = "duplicate"  # the page was already counted; nothing changed
    LATE = "late"  # the document was already published; ignored
    INVALID = "invalid"  # contradicts what is known (page count, page number); ignored


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: Applied
    progress: DocumentProgress | None
    """The progress after the result (unchanged for duplicate, late and invalid; None only when an
    invalid result arrived for a document not seen before)."""
    reason: str = ""

    @property
    def changed(self) -> bool:
        return self.kind in (Applied.COUNTED, Applied.REPLACED)


# ----------------------------------------------------------------------------- page ranges


def ranges_contains(ranges: list[Range], n: int) -> bool:
    i = bisect.bisect_right(ranges, (n, 2**62)) - 1
    return i >= 0 and ranges[i][0] <= n <= ranges[i][1]


def ranges_add(ranges: list[Range], n: int) -> list[Range]:
    """A new sorted, disjoint, merged range list with ``n`` in it."""
    if ranges_contains(ranges, n):
        return list(ranges)
    out = list(ranges)
    i = bisect.bisect_left(out, (n, n))
    joins_left = i > 0 and out[i - 1][1] == n - 1
    joins_right = i < len(out) and out[i][0] == n + 1
    if joins_left and joins_right:
        out[i - 1 : i + 1] = [(out[i - 1][0], out[i][1])]
    elif joins_left:
        out[i - 1] = (out[i - 1][0], n)
    elif joins_right:
        out[i] = (n, out[i][1])
    else:
        out.insert(i, (n, n))
    return out


def ranges_count(ranges: list[Range]) -> int:
    return sum(b - a + 1 for a, b in ranges)


def iter_ranges(ranges: list[Range]) -> Iterator[int]:
    for a, b in ranges:
        yield from range(a, b + 1)


# ----------------------------------------------------------------------------- queries


def pages_ok_count(progress: DocumentProgress) -> int:
    return ranges_count(progress.pages_ok)


def pages_done(progress: DocumentProgress) -> int:
    return pages_ok_count(progress) + len(progress.pages_failed)


def is_complete(progress: DocumentProgress) -> bool:
    """Every page is accounted for (succeeded or failed for good)."""
    return pages_done(progress) >= progress.page_count


def missing_pages(progress: DocumentProgress) -> list[int]:
    failed = {f.page_no for f in progress.pages_failed}
    return [n for n in range(1, progress.page_count + 1) if n not in failed and not ranges_contains(progress.pages_ok, n)]


def document_status(progress: DocumentProgress) -> DocumentStatus:
    """complete (no page failed), failed (no page succeeded) or partial."""
    if not progress.pages_failed:
        return DocumentStatus.COMPLETE
    if not progress.pages_ok:
        return DocumentStatus.FAILED
    return DocumentStatus.PARTIAL


def failure_of(progress: DocumentProgress, page_no: int) -> FailedPage | None:
    i = _failed_index(progress.pages_failed, page_no)
    return progress.pages_failed[i] if i is not None else None


def is_stuck(progress: DocumentProgress, *, now: datetime, after_s: float) -> bool:
    """Open, and no page has arrived for ``after_s`` seconds."""
    return progress.published is None and (now - progress.updated_at).total_seconds() > after_s


def is_forgettable(progress: DocumentProgress, *, now: datetime, after_s: float) -> bool:
    return progress.published_at is not None and (now - progress.published_at).total_seconds() > after_s


# ----------------------------------------------------------------------------- transitions


def _failed_index(failed: list[FailedPage], page_no: int) -> int | None:
    i = bisect.bisect_left([f.page_no for f in failed], page_no)
    return i if i < len(failed) and failed[i].page_no == page_no else None


def _compact_error(error: ErrorInfo | None) -> ErrorInfo:
    if error is None:
        return ErrorInfo(code=ErrorCode.INTERNAL, message="the page failed without an error")
    if len(error.message) <= FAILED_MESSAGE_LIMIT:
        return error
    return error.model_copy(update={"message": error.message[: FAILED_MESSAGE_LIMIT - 1] + "…"})


def _header_key(page_no: int, source: str | None, metadata: dict[str, object], submitted_at: datetime | None) -> tuple[object, ...]:
    """Smaller wins: the lowest page, then the result that carries the most, then by value."""
    return (page_no, source is None, not metadata, submitted_at is None, source or "",
            json.dumps(metadata, sort_keys=True, default=str), submitted_at.isoformat() if submitted_at else "")


def _better_header(progress: DocumentProgress, result: PageResult) -> bool:
    if progress.header_page is None:
        return True
    return _header_key(result.page_no, result.source, result.metadata, result.submitted_at) < _header_key(
        progress.header_page, progress.source, progress.metadata, progress.submitted_at)


def _error_key(error: ErrorInfo) -> tuple[str, str, bool]:
    return (str(error.code), error.message, error.transient)


def new_progress(result: PageResult, *, now: datetime) -> DocumentProgress:
    return DocumentProgress(doc_id=result.doc_id, page_count=result.page_count, first_seen_at=now, updated_at=now)


def apply_result(progress: DocumentProgress | None, result: PageResult, *, now: datetime) -> Outcome:
    """Count one page result (success or terminal failure) towards its document."""
    if result.page_no > result.page_count:
        return Outcome(Applied.INVALID, progress, f"page_no {result.page_no} > page_count {result.page_count}")
    if progress is None:
        progress = new_progress(result, now=now)
    if progress.published is not None:
        return Outcome(Applied.LATE, progress, f"document already published as {progress.published}")
    if result.page_count != progress.page_count:
        return Outcome(
            Applied.INVALID, progress, f"page_count {result.page_count} differs from the document's {progress.page_count}"
        )

    n = result.page_no
    ok_ranges = progress.pages_ok
    failed = progress.pages_failed
    fi = _failed_index(failed, n)
    if ranges_contains(ok_ranges, n):
        return Outcome(Applied.DUPLICATE, progress)

    if result.status == PageStatus.OK:
        kind = Applied.COUNTED if fi is None else Applied.REPLACED
        ok_ranges = ranges_add(ok_ranges, n)
        if fi is not None:
            failed = failed[:fi] + failed[fi + 1 :]
    else:
        error = _compact_error(result.error)
        if fi is not None:
            if _error_key(error) >= _error_key(failed[fi].error):
                if _better_header(progress, result):
                    progress = progress.model_copy(update=dict(
                        header_page=n, source=result.source, metadata=result.metadata, submitted_at=result.submitted_at))
                return Outcome(Applied.DUPLICATE, progress)
            failed = [*failed[:fi], FailedPage(page_no=n, error=error), *failed[fi + 1 :]]
            kind = Applied.REPLACED
        else:
            failed = list(failed)
            bisect.insort(failed, FailedPage(page_no=n, error=error), key=lambda f: f.page_no)
            kind = Applied.COUNTED

    update: dict[str, object] = {
        "pages_ok": ok_ranges,
        "pages_failed": failed,
        "usage": Usage(
            prompt_tokens=progress.usage.prompt_tokens + result.usage.prompt_tokens,
            completion_tokens=progress.usage.completion_tokens + result.usage.completion_tokens,
        ),
        "updated_at": now,
    }
    if result.completed_at is not None and (progress.last_completed_at is None or result.completed_at > progress.last_completed_at):
        update["last_completed_at"] = result.completed_at
    if _better_header(progress, result):
        update.update(header_page=n, source=result.source, metadata=result.metadata, submitted_at=result.submitted_at)
    return Outcome(kind, progress.model_copy(update=update))


def close_at_deadline(progress: DocumentProgress, *, after_s: float) -> DocumentProgress:
    """Every missing page marked failed with code ``deadline``, so that the document can be published
    as partial (or failed). The message depends only on the setting, not on the clock."""
    error = ErrorInfo(code=ErrorCode.DEADLINE, message=f"no result for this page within {after_s:g} s")
    failed = list(progress.pages_failed) + [FailedPage(page_no=n, error=error) for n in missing_pages(progress)]
    failed.sort(key=lambda f: f.page_no)
    return progress.model_copy(update={"pages_failed": failed})


def mark_published(progress: DocumentProgress, status: DocumentStatus, *, now: datetime) -> DocumentProgress:
    return progress.model_copy(update={"published": status, "published_at": now, "updated_at": now})


def dead_letter_to_result(dead: DeadLetter) -> PageResult | None:
    """The failed page result a dead letter stands for, or None when it cannot be attributed to a
    page of a document (the original message did not parse)."""
    page = dead.page
    doc_id = dead.doc_id or (page.doc_id if page else None)
    page_no = dead.page_no or (page.page_no if page else None)
    page_count = dead.page_count or (page.page_count if page else None)
    if doc_id is None or page_no is None or page_count is None:
        return None
    if not is_valid_doc_id(doc_id) or not (1 <= page_no <= page_count <= 1_000_000):
        return None
    return PageResult(
        doc_id=doc_id,
        page_no=page_no,
        page_count=page_count,
        status=PageStatus.FAILED,
        attempts=dead.attempts,
        error=dead.error,
        engine=page.engine if page else "deepseek",
        mode=page.mode if page else PageResult.model_fields["mode"].default,
        image_width=page.image_width if page else None,
        image_height=page.image_height if page else None,
        submitted_at=page.submitted_at if page else None,
        completed_at=dead.failed_at,
        source=page.source if page else None,
        metadata=page.metadata if page else {},
    )
