"""Document assembly, pure: page outcomes in page order → ``document.md`` and ``document.json`` bytes.

The bytes depend only on the page outcomes passed in, never on arrival order, the clock or the
machine: pages are taken in page order, JSON keys in a fixed order, floats rounded, and every time in
the output comes from the page results themselves.

``document.md``: each page starts with a marker line carrying its number, ``<!-- page 3 -->``, then a
blank line and the page's Markdown. A failed page has ``<!-- page 3 failed: code: message -->`` in
place of its text, so a reader sees where text is missing and why.

``document.json``: see ``DocumentJson``. Boxes are ``[x1, y1, x2, y2]`` in page pixels of the page
image that was OCR'd (origin top-left), as in the page results.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..contracts import Block, DocumentStatus, ErrorInfo, FailedPage, Mode, PageResult, PageStatus, Usage
from ..errors import ErrorCode

DOCUMENT_JSON_VERSION = 1
_NO_RESULT = ErrorInfo(code=ErrorCode.INTERNAL, message="no result")


def page_marker(page_no: int) -> str:
    """The line that opens a page in document.md."""
    return f"<!-- page {page_no} -->"


@dataclass(frozen=True, slots=True)
class PageOutcome:
    """One page as it goes into the document: its stored result when it succeeded, its error when
    it failed for good (a page whose stored result could not be read is failed too)."""

    page_no: int
    result: PageResult | None = None
    error: ErrorInfo | None = None


@dataclass(frozen=True, slots=True)
class DocumentHeader:
    """Document fields known from the progress state, used when no page succeeded."""

    doc_id: str
    page_count: int
    source: str | None = None
    submitted_at: datetime | None = None
    metadata: dict[str, Any] | None = None


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class DocumentPage(_Out):
    page_no: int
    status: PageStatus
    markdown: str | None = None
    blocks: list[Block] = Field(default_factory=list)
    error: ErrorInfo | None = None
    image_width: int | None = None
    image_height: int | None = None
    usage: Usage = Field(default_factory=Usage)
    finish_reason: str | None = None
    latency_ms: float = 0.0
    attempts: int = 0
    model: str | None = None
    engine: str | None = None
    mode: Mode | None = None
    completed_at: datetime | None = None


class DocumentTotals(_Out):
    pages: int
    pages_ok: int
    pages_failed: int
    prompt_tokens: int
    completion_tokens: int
    model_ms: float = Field(description="Sum of the model time of the successful attempts.")
    attempts: int = Field(description="Sum of the attempts of the successful pages.")


class DocumentTimings(_Out):
    submitted_at: datetime | None
    first_page_completed_at: datetime | None
    last_page_completed_at: datetime | None
    elapsed_s: float | None = Field(description="From submission to the last page's completion.")


class DocumentJson(_Out):
    """The layout of ``results/{doc_id}/document.json``."""

    format: Literal["ocr-stream.document"] = "ocr-stream.document"
    version: int = DOCUMENT_JSON_VERSION
    doc_id: str
    status: DocumentStatus
    page_count: int
    source: str | None
    submitted_at: datetime | None
    metadata: dict[str, Any]
    totals: DocumentTotals
    timings: DocumentTimings
    failed_pages: list[FailedPage]
    pages: list[DocumentPage]


@dataclass(frozen=True, slots=True)
class AssembledDocument:
    markdown: bytes
    json: bytes
    status: DocumentStatus
    pages_ok: int
    failed_pages: list[FailedPage]
    usage: Usage
    source: str | None
    submitted_at: datetime | None
    metadata: dict[str, Any]
    last_completed_at: datetime | None


def _safe_comment(text: str) -> str:
    # An HTML comment ends at the first "-->"; keep messages on one line and inside the comment.
    return " ".join(text.replace("-->", "-- >").split())


def _page_md(outcome: PageOutcome) -> str:
    head = page_marker(outcome.page_no)
    if outcome.result is not None and outcome.error is None:
        body = (outcome.result.markdown or "").strip("\n")
        return f"{head}\n\n{body}\n" if body else f"{head}\n"
    error = outcome.error or _NO_RESULT
    return f"{head}\n\n<!-- page {outcome.page_no} failed: {error.code}: {_safe_comment(error.message)} -->\n"


def _page_json(outcome: PageOutcome) -> DocumentPage:
    r = outcome.result
    if r is None or outcome.error is not None:
        return DocumentPage(page_no=outcome.page_no, status=PageStatus.FAILED, error=outcome.error,
                            image_width=r.image_width if r else None, image_height=r.image_height if r else None)
    return DocumentPage(
        page_no=outcome.page_no,
        status=PageStatus.OK,
        markdown=r.markdown or "",
        blocks=list(r.blocks or []),
        image_width=r.image_width,
        image_height=r.image_height,
        usage=r.usage,
        finish_reason=r.finish_reason,
        latency_ms=round(r.latency_ms, 3),
        attempts=r.attempts,
        model=r.model,
        engine=r.engine,
        mode=r.mode,
        completed_at=r.completed_at,
    )


def assemble(header: DocumentHeader, pages: Iterable[PageOutcome]) -> AssembledDocument:
    """Build document.md and document.json from the outcome of every page, given in page order
    (1..page_count, each once)."""
    md_parts: list[str] = []
    json_pages: list[DocumentPage] = []
    failed: list[FailedPage] = []
    prompt = completion = attempts = 0
    model_ms = 0.0
    first_done: datetime | None = None
    last_done: datetime | None = None
    first_ok: PageResult | None = None
    expected = 1
    for outcome in pages:
        if outcome.page_no != expected:
            raise ValueError(f"page {outcome.page_no} given where page {expected} was expected")
        expected += 1
        md_parts.append(_page_md(outcome))
        page = _page_json(outcome)
        json_pages.append(page)
        if page.status == PageStatus.FAILED:
            failed.append(FailedPage(page_no=page.page_no, error=page.error or _NO_RESULT))
            continue
        r = outcome.result
        assert r is not None
        first_ok = first_ok or r
        prompt += r.usage.prompt_tokens
        completion += r.usage.completion_tokens
        attempts += r.attempts
        model_ms += r.latency_ms
        if r.completed_at is not None:
            first_done = r.completed_at if first_done is None else min(first_done, r.completed_at)
            last_done = r.completed_at if last_done is None else max(last_done, r.completed_at)
    if expected - 1 != header.page_count:
        raise ValueError(f"{expected - 1} pages given for a document of {header.page_count}")

    pages_ok = header.page_count - len(failed)
    status = DocumentStatus.COMPLETE if not failed else DocumentStatus.FAILED if pages_ok == 0 else DocumentStatus.PARTIAL
    # Document fields from the first page that succeeded (its stored result is fixed), else the state.
    source = first_ok.source if first_ok else header.source
    submitted_at = (first_ok.submitted_at if first_ok else None) or header.submitted_at
    metadata = first_ok.metadata if first_ok else (header.metadata or {})
    elapsed = round((last_done - submitted_at).total_seconds(), 3) if last_done and submitted_at else None
    doc = DocumentJson(
        doc_id=header.doc_id,
        status=status,
        page_count=header.page_count,
        source=source,
        submitted_at=submitted_at,
        metadata=metadata,
        totals=DocumentTotals(
            pages=header.page_count, pages_ok=pages_ok, pages_failed=len(failed),
            prompt_tokens=prompt, completion_tokens=completion, model_ms=round(model_ms, 3), attempts=attempts,
        ),
        timings=DocumentTimings(
            submitted_at=submitted_at, first_page_completed_at=first_done, last_page_completed_at=last_done, elapsed_s=elapsed
        ),
        failed_pages=failed,
        pages=json_pages,
    )
    markdown = "\n".join(md_parts)
    return AssembledDocument(
        markdown=markdown.encode(),
        json=doc.model_dump_json(indent=1).encode() + b"\n",
        status=status,
        pages_ok=pages_ok,
        failed_pages=failed,
        usage=Usage(prompt_tokens=prompt, completion_tokens=completion),
        source=source,
        submitted_at=submitted_at,
        metadata=metadata,
        last_completed_at=last_done,
    )
