"""Message contracts: the one definition of every message on every topic.

The JSON Schemas in topics/schemas/ are generated from these models (``ocr-stream topics schemas``)
and a test fails when they drift. Upstream systems may write these messages by hand (kcat, Java, Go):
anything that follows the schema is accepted; anything else is rejected with the field named.

Compatibility rule: a new field is optional with a default; a field is never renamed or retyped
without bumping ``SCHEMA_VERSION``. Unknown fields are ignored (forward compatibility), except in
``metadata`` which is passed through untouched.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Final, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ErrorCode, SchemaViolationError

SCHEMA_VERSION: Final = 1

M = TypeVar("M", bound=BaseModel)

DOC_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_DOC_ID_RE = re.compile(DOC_ID_PATTERN)

DocId = Annotated[
    str,
    Field(
        pattern=DOC_ID_PATTERN,
        description="Document id: 1-128 characters of [A-Za-z0-9._-], not starting with a dot or dash. "
        "Used in object keys, so it never contains a slash.",
        examples=["sha256-3f1c9a0b2e7d4c55", "invoice-2026-0042"],
    ),
]
PageNo = Annotated[int, Field(ge=1, le=1_000_000, description="1-based page number.")]


def utcnow() -> datetime:
    return datetime.now(UTC)


def is_valid_doc_id(doc_id: str) -> bool:
    return bool(_DOC_ID_RE.match(doc_id))


class Mode(StrEnum):
    """DeepSeek-OCR resolution modes (DESIGN.md §4). Upstream vLLM serves only ``gundam`` unless the
    ocr-stream vLLM plugin is installed, which lets a request choose the others."""

    TINY = "tiny"  # 512x512, 64 image tokens
    SMALL = "small"  # 640x640, 100 image tokens
    BASE = "base"  # 1024x1024, 256 image tokens
    LARGE = "large"  # 1280x1280, 400 image tokens
    GUNDAM = "gundam"  # 1024 global view + 640 tiles


class PageStatus(StrEnum):
    OK = "ok"
    FAILED = "failed"


class DocumentStatus(StrEnum):
    COMPLETE = "complete"
    PARTIAL = "partial"
    FAILED = "failed"


class _Message(BaseModel):
    # Unknown fields are ignored so that a newer producer does not break an older consumer.
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True, use_enum_values=False)


class ObjectRef(_Message):
    """A location in the configured object storage. Never an arbitrary URL: workers read only
    from buckets on their allow-list."""

    bucket: str = Field(min_length=3, max_length=63, pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    key: str = Field(min_length=1, max_length=1024)

    @field_validator("key")
    @classmethod
    def _safe_key(cls, key: str) -> str:
        if key.startswith("/") or any(part in ("..", ".") for part in key.split("/")) or "\x00" in key:
            raise ValueError("object key must be relative and contain no '.' or '..' segments")
        return key

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


class RenderSettings(_Message):
    """How the page image was made."""

    dpi: float | None = Field(default=None, gt=0, le=2400, description="PDF render resolution; None for images.")
    long_side: int = Field(gt=0, le=20_000, description="Target long side in pixels the page was sized to.")
    format: Literal["jpeg", "png", "webp"] = "jpeg"
    quality: int | None = Field(default=95, ge=1, le=100)


class PageEvent(_Message):
    """One page to OCR, on ``ocr.pages`` keyed ``{doc_id}/{page_no}``."""

    schema_version: Literal[1] = SCHEMA_VERSION
    doc_id: DocId
    page_no: PageNo
    page_count: int = Field(ge=1, le=1_000_000)
    image: ObjectRef
    image_width: int = Field(gt=0, le=100_000)
    image_height: int = Field(gt=0, le=100_000)
    image_bytes: int = Field(gt=0, description="Size of the stored image in bytes.")
    render: RenderSettings
    mode: Mode = Mode.GUNDAM
    prompt: str = Field(
        default="<image>\n<|grounding|>Convert the document to markdown.",
        min_length=1,
        max_length=8192,
        description="The full text prompt sent with the image.",
    )
    engine: str = Field(
        default="deepseek",
        min_length=1,
        max_length=64,
        pattern=r"^[a-z0-9][a-z0-9_.:-]*$",
        description="Engine (and optionally pool) that should OCR this page, e.g. 'deepseek' or "
        "'deepseek:canary'. Workers route on it.",
    )
    attempt: int = Field(default=0, ge=0, le=1000, description="Attempts already made on this page.")
    submitted_at: datetime = Field(default_factory=utcnow)
    source: str | None = Field(default=None, max_length=4096, description="Where the document came from (file name or object).")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Passed through to the result untouched.")

    @model_validator(mode="after")
    def _page_no_in_range(self) -> PageEvent:
        if self.page_no > self.page_count:
            raise ValueError(f"page_no {self.page_no} is greater than page_count {self.page_count}")
        return self

    @property
    def key(self) -> str:
        return f"{self.doc_id}/{self.page_no}"


class Block(_Message):
    """A labelled region of the page with its text. ``box`` is [x1, y1, x2, y2] in page pixels
    (origin top-left, x to the right, y down) of the page image that was OCR'd."""

    label: str = Field(max_length=64)
    text: str
    box: tuple[int, int, int, int] | None = None
    malformed: bool = Field(default=False, description="The model's tags around this block were truncated or malformed.")


class Usage(_Message):
    prompt_tokens: int = Field(default=0, ge=0)
    completion_tokens: int = Field(default=0, ge=0)


class ErrorInfo(_Message):
    code: ErrorCode
    message: str = Field(max_length=4096)
    transient: bool = False


class PageResult(_Message):
    """The outcome of one page, on ``ocr.results`` keyed ``{doc_id}``: success, or terminal failure.

    The full result (markdown and blocks) is always stored at ``result_ref``; ``markdown`` and
    ``blocks`` are inline too unless they are larger than the inline limit (then None)."""

    schema_version: Literal[1] = SCHEMA_VERSION
    doc_id: DocId
    page_no: PageNo
    page_count: int = Field(ge=1, le=1_000_000)
    status: PageStatus
    markdown: str | None = None
    blocks: list[Block] | None = None
    result_ref: ObjectRef | None = Field(default=None, description="results/{doc_id}/pages/{page_no:05d}.json")
    usage: Usage = Field(default_factory=Usage)
    finish_reason: str | None = None
    latency_ms: float = Field(default=0.0, ge=0, description="Model time for the successful attempt.")
    model: str | None = None
    engine: str = "deepseek"
    mode: Mode = Mode.GUNDAM
    image_width: int | None = None
    image_height: int | None = None
    attempts: int = Field(default=1, ge=0)
    error: ErrorInfo | None = None
    submitted_at: datetime | None = None
    completed_at: datetime = Field(default_factory=utcnow)
    source: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class DeadLetter(_Message):
    """A page that failed for good, on ``ocr.pages.dlq`` keyed ``{doc_id}/{page_no}`` (or the original
    key when the message could not be parsed)."""

    schema_version: Literal[1] = SCHEMA_VERSION
    doc_id: str | None = Field(default=None, description="None when the original message could not be parsed.")
    page_no: int | None = None
    page_count: int | None = None
    attempts: int = Field(default=0, ge=0)
    error: ErrorInfo
    page: PageEvent | None = Field(default=None, description="The page event, when it parsed.")
    raw: str | None = Field(default=None, max_length=65536, description="The original message (truncated) when it did not parse.")
    origin_topic: str | None = None
    origin_partition: int | None = None
    origin_offset: int | None = None
    failed_at: datetime = Field(default_factory=utcnow)


class FailedPage(_Message):
    page_no: PageNo
    error: ErrorInfo


class DocumentEvent(_Message):
    """A completed document, on the compacted ``ocr.documents`` topic keyed ``{doc_id}``."""

    schema_version: Literal[1] = SCHEMA_VERSION
    doc_id: DocId
    status: DocumentStatus
    page_count: int = Field(ge=0)
    pages_ok: int = Field(ge=0)
    pages_failed: int = Field(ge=0)
    failed_pages: list[FailedPage] = Field(default_factory=list)
    markdown_ref: ObjectRef | None = None
    json_ref: ObjectRef | None = None
    usage: Usage = Field(default_factory=Usage)
    source: str | None = None
    submitted_at: datetime | None = None
    completed_at: datetime = Field(default_factory=utcnow)
    metadata: dict[str, Any] = Field(default_factory=dict)


class DocumentRequest(_Message):
    """A document already in object storage, to be split into pages (``ocr.documents.requests``,
    keyed ``{doc_id}`` or the object key when no id is given)."""

    schema_version: Literal[1] = SCHEMA_VERSION
    doc_id: DocId | None = Field(default=None, description="Derived from the content when absent.")
    source: ObjectRef
    mode: Mode = Mode.GUNDAM
    prompt: str = Field(default="markdown", min_length=1, max_length=8192, description="A preset name (markdown, free, figure) or the prompt text.")
    engine: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9_.:-]*$", max_length=64)
    password: str | None = Field(default=None, max_length=1024, description="For an encrypted PDF; never logged.")
    metadata: dict[str, Any] = Field(default_factory=dict)
    submitted_at: datetime = Field(default_factory=utcnow)


class DocumentProgress(_Message):
    """The aggregator's state for one document, on its compacted changelog keyed ``{doc_id}``.
    A tombstone (null value) removes a document that was published long ago.

    Compact for large documents: succeeded pages are sorted inclusive ranges (``[[1, 2000]]``), and
    error messages of failed pages are truncated. ``first_seen_at`` and ``updated_at`` are the
    aggregator's clock (for stuck detection); ``last_completed_at`` comes from the page results."""

    schema_version: Literal[1] = SCHEMA_VERSION
    doc_id: DocId
    page_count: int = Field(ge=1, le=1_000_000)
    pages_ok: list[tuple[int, int]] = Field(
        default_factory=list, description="Pages that succeeded, as sorted, disjoint, inclusive [first, last] ranges."
    )
    pages_failed: list[FailedPage] = Field(default_factory=list, description="Pages that failed for good, sorted by page_no.")
    usage: Usage = Field(default_factory=Usage)
    source: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    submitted_at: datetime | None = None
    header_page: int | None = Field(default=None, description="The page whose result supplied source, metadata and submitted_at (the lowest seen).")
    first_seen_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    last_completed_at: datetime | None = Field(default=None, description="Latest completed_at of the counted page results.")
    published: DocumentStatus | None = Field(default=None, description="Set once the document event is published.")
    published_at: datetime | None = Field(default=None, description="When the document event was published (aggregator's clock).")


MESSAGE_MODELS: dict[str, type[BaseModel]] = {
    "page_event": PageEvent,
    "page_result": PageResult,
    "dead_letter": DeadLetter,
    "document_event": DocumentEvent,
    "document_request": DocumentRequest,
    "document_progress": DocumentProgress,
}


def decode(model: type[M], payload: bytes | str | None) -> M:
    """Parse a message, turning every problem into a SchemaViolationError that names the field(s)."""
    if payload is None:
        raise SchemaViolationError(f"{model.__name__}: empty message (tombstone)")
    try:
        return model.model_validate_json(payload)
    except ValidationError as exc:
        raise SchemaViolationError(f"{model.__name__}: {describe_validation_error(exc)}") from exc


def describe_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "(message)"
        parts.append(f"{loc}: {err['msg']}")
    more = exc.error_count() - 5
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def encode(message: BaseModel) -> bytes:
    return message.model_dump_json(exclude_none=False).encode()


def error_info(exc: BaseException) -> ErrorInfo:
    """The ErrorInfo for any exception; unknown ones are internal errors."""
    from .errors import OcrStreamError

    if isinstance(exc, OcrStreamError):
        return ErrorInfo(code=exc.code, message=str(exc)[:4096], transient=exc.transient)
    return ErrorInfo(code=ErrorCode.INTERNAL, message=f"{type(exc).__name__}: {exc}"[:4096], transient=True)
