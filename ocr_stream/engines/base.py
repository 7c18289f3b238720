"""The engine interface: page image + mode + prompt → markdown, labelled blocks with boxes, usage.

Engines are async: the DeepSeek engine is network-bound (many requests in flight), the embedded
engines are CPU-bound and run in worker threads/processes behind the same ``ocr`` coroutine.

Errors an engine raises come from ocr_stream.errors and decide what happens to the page:
BadInputError → DLQ at once; TransientError → retry with backoff; ModelOutputError → retry with
repetition control; anything else → InternalError (retried).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from ..contracts import Block, Mode, Usage


@dataclass(frozen=True, slots=True)
class PageImage:
    data: bytes
    width: int
    height: int
    content_type: str = "image/jpeg"
    url: str | None = None
    """Where the model server fetches the image itself (a presigned URL): then ``data`` holds only
    the header that was checked, and engines that need the pixels must not use this image."""


@dataclass(frozen=True, slots=True)
class OcrRequest:
    image: PageImage
    mode: Mode = Mode.GUNDAM
    prompt: str = "<image>\n<|grounding|>Convert the document to markdown."
    repetition_control: bool = False
    """Ask the server for its n-gram repetition processor (costly; see RepetitionPolicy)."""
    max_tokens: int | None = None
    attempt: int = 0
    doc_id: str = ""
    page_no: int = 0
    extra: dict[str, object] = field(default_factory=dict)
    """Engine-specific request extras (e.g. ignore_eos for benchmarks)."""


@dataclass(frozen=True, slots=True)
class OcrOutput:
    markdown: str
    blocks: list[Block]
    raw_text: str = ""
    usage: Usage = field(default_factory=Usage)
    finish_reason: str = "stop"
    model: str = ""
    latency_ms: float = 0.0
    malformed: bool = False
    """Some grounding tags were truncated or malformed (their text was kept)."""
    server: str = ""
    """Which server answered (for metrics and debugging)."""


class Engine(ABC):
    """One OCR engine. ``ocr`` may be called concurrently up to the caller's in-flight budget."""

    name: str = "engine"
    accepts_image_urls: bool = False
    """True when the engine can pass ``PageImage.url`` on instead of reading ``data`` (a model server
    that fetches images itself)."""

    async def start(self) -> None:
        """Open clients, discover the model, start health probes."""

    async def aclose(self) -> None:
        """Close clients; in-flight calls may be cancelled."""

    @abstractmethod
    async def ocr(self, request: OcrRequest) -> OcrOutput: ...

    async def healthy(self) -> bool:
        """True when at least one backend can take work."""
        return True

    def suggested_in_flight(self) -> int | None:
        """How many requests the engine wants in flight right now (adaptive control); None: no opinion."""
        return None
