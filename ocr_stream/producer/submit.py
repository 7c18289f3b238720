"""The producer library: one document in, its page images in storage, one page event per page out.

    submitter = Submitter(settings, store=open_store(settings), producer=transport.producer(name="submit"))
    result = submitter.submit_file(Path("report.pdf"), SubmitOptions(mode=Mode.SMALL))
    result.doc_id, result.page_count

What happens to a document, in order:

1. Options are resolved (mode, prompt text, engine; defaults from settings) and the file is
   validated whole by ``render.open_source``: type from magic bytes, size, password, page count,
   pixels of every bitmap. A problem here is a BadInputError and *nothing* is stored or published.
2. Pages are rendered one at a time in this thread (PyMuPDF is not thread-safe) and stored by a few
   upload threads (``upload_threads``), so rendering and network overlap while at most
   ``max_pending`` page images are in memory. Each page's event is produced once its image is stored.
3. ``flush``: success is reported only after the broker acknowledged every event (acks=all).

Delivery and repeats: storage writes and events are idempotent (same key, same content), so an
interrupted run is completed by running it again; the aggregator counts each page once. Storage
and broker failures are retried with exponential backoff and full jitter (``max_attempts``,
``backoff_base_s``, ``backoff_max_s`` of the settings; librdkafka also retries within its
``message.timeout.ms``), then raised as StorageUnavailableError / BrokerUnavailableError.

A page that validated but then fails to render (damage that only shows while drawing): while no
event of the document is out yet, the whole document is rejected (and its stored images deleted);
once some are out, that page goes to the DLQ as a dead letter with its doc_id, page_no and
page_count, so the aggregator closes the document as partial instead of waiting for it forever.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram

from .. import topics
from ..config import Settings
from ..contracts import DeadLetter, Mode, ObjectRef, PageEvent, RenderSettings, encode, error_info, utcnow
from ..engines.prompts import resolve_prompt
from ..errors import BadInputError, BrokerUnavailableError, LimitExceededError, StorageUnavailableError, TransientError
from ..storage import ObjectStore, page_image_key
from ..transport import Producer, Record
from .detect import DocType
from .docid import check_doc_id, derive_doc_id, file_sha256
from .limits import Limits
from .render import ImageFormat, PageSource, RenderedPage, RenderSpec, open_source

log = logging.getLogger(__name__)

T = TypeVar("T")

_ENGINE_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_.:-")


@dataclass(frozen=True)
class SubmitOptions:
    """Per-document options; None means the settings' default."""

    doc_id: str | None = None
    mode: Mode | None = None
    prompt: str | None = None
    """A preset (``markdown``, ``free``, ``figure``) or prompt text."""
    engine: str | None = None
    password: str | None = field(default=None, repr=False)
    metadata: Mapping[str, Any] = field(default_factory=dict)
    source: str | None = None
    """What the page events name as the source; the file's path when None."""
    submitted_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class SubmitResult:
    doc_id: str
    page_count: int
    kind: DocType
    source: str
    pages_dead_lettered: tuple[int, ...] = ()
    """Pages that failed to render after the document was accepted (sent to the DLQ)."""

    @property
    def ok(self) -> bool:
        return not self.pages_dead_lettered


@dataclass(frozen=True, slots=True)
class ResolvedOptions:
    """The options that shape a document's output, defaults applied and the prompt resolved."""

    mode: Mode
    prompt: str
    engine: str


def check_engine(engine: str) -> str:
    if not engine or len(engine) > 64 or not set(engine) <= _ENGINE_CHARS or not engine[0].isalnum():
        raise BadInputError(f"invalid engine {engine!r}: lower-case letters, digits and '_.:-', at most 64 characters")
    return engine


#: Metadata travels in every page event and result; keep it well under Kafka's 1 MB message limit.
MAX_METADATA_BYTES = 64 * 1024


def check_metadata(metadata: Mapping[str, Any]) -> None:
    try:
        size = len(json.dumps(dict(metadata)).encode())
    except (TypeError, ValueError) as exc:
        raise BadInputError(f"metadata must be JSON: {exc}") from exc
    if size > MAX_METADATA_BYTES:
        raise LimitExceededError(f"metadata is {size} bytes as JSON, over {MAX_METADATA_BYTES}: it travels with every page")


class ProducerMetrics:
    """Prometheus metrics of the producer (submit and splitter)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        reg = registry if registry is not None else CollectorRegistry()
        self.pages = Counter("ocr_stream_producer_pages_total", "Page events published (acknowledged by the broker).", registry=reg)
        self.dead_lettered = Counter("ocr_stream_producer_pages_dead_lettered_total", "Pages that failed to render after their document was accepted.", registry=reg)
        self.documents = Counter("ocr_stream_producer_documents_total", "Documents by outcome.", ["outcome"], registry=reg)
        self.render_seconds = Histogram(
            "ocr_stream_producer_render_seconds", "Render + encode time of one page.", registry=reg,
            buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0),
        )
        self.retries = Counter("ocr_stream_producer_retries_total", "Storage or broker operations retried.", ["what"], registry=reg)


class Submitter:
    """Submits documents; reusable across documents (one producer, one upload pool). Not thread-safe."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: ObjectStore,
        producer: Producer,
        upload_threads: int = 4,
        max_pending: int = 8,
        flush_timeout_s: float = 300.0,
        metrics: ProducerMetrics | None = None,
        # "png" exists for benchmarks: JPEG q95 is what the model gets, and ~10x cheaper to encode.
        image_format: ImageFormat = "jpeg",
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.store = store
        self.producer = producer
        self.limits = Limits.from_settings(settings)
        self.pages_topic = settings.topic(topics.PAGES)
        self.dlq_topic = settings.topic(topics.DLQ)
        self.max_pending = max(1, max_pending)
        self.flush_timeout_s = flush_timeout_s
        self.metrics = metrics or ProducerMetrics()
        self.image_format: ImageFormat = image_format
        self._sleep = sleep
        self._pool = ThreadPoolExecutor(max_workers=max(1, upload_threads), thread_name_prefix="page-upload")

    # ----------------------------------------------------------------------------- public

    def resolve(self, options: SubmitOptions) -> ResolvedOptions:
        """Mode, full prompt and engine for ``options`` (BadInputError when one is invalid)."""
        mode = Mode(options.mode) if options.mode is not None else self.settings.mode
        prompt = resolve_prompt(options.prompt if options.prompt is not None else self.settings.prompt)
        engine = check_engine(options.engine if options.engine is not None else self.settings.engine)
        if options.doc_id is not None:
            check_doc_id(options.doc_id)
        check_metadata(options.metadata)
        return ResolvedOptions(mode, prompt, engine)

    def render_spec(self, mode: Mode) -> RenderSpec:
        return RenderSpec(mode=mode, long_side=self.settings.long_side, quality=self.settings.jpeg_quality, format=self.image_format)

    def open(self, path: Path, options: SubmitOptions = SubmitOptions()) -> tuple[PageSource, str, ResolvedOptions]:
        """Validate ``path`` whole and work out its doc_id: (source, doc_id, resolved options).
        Raises BadInputError (nothing has been stored or published). Close the source."""
        resolved = self.resolve(options)
        source = open_source(path, spec=self.render_spec(resolved.mode), limits=self.limits, password=options.password)
        try:
            doc_id = options.doc_id or derive_doc_id(
                file_sha256(path), mode=resolved.mode, prompt=resolved.prompt, engine=resolved.engine,
                long_side=self.settings.long_side,
            )
        except BaseException:
            source.close()
            raise
        return source, doc_id, resolved

    def submit_file(
        self,
        path: Path,
        options: SubmitOptions = SubmitOptions(),
        *,
        on_open: Callable[[str, int], None] | None = None,
        on_page: Callable[[int], None] | None = None,
    ) -> SubmitResult:
        """Validate, render, store and publish one document; returns once the broker acknowledged
        every page event. ``on_open(doc_id, page_count)`` runs after validation, ``on_page(page_no)``
        after each page event is produced.

        Raises BadInputError (nothing published), StorageUnavailableError or BrokerUnavailableError
        (after retries; running it again completes the document)."""
        try:
            source, doc_id, resolved = self.open(path, options)
        except BadInputError:
            self.metrics.documents.labels("rejected").inc()
            raise
        with source:
            if on_open is not None:
                on_open(doc_id, source.page_count)
            try:
                result = self._publish(source, doc_id, resolved, options, label=options.source or str(path), on_page=on_page)
            except BadInputError:
                self.metrics.documents.labels("rejected").inc()
                raise
            except Exception:
                self.metrics.documents.labels("failed").inc()
                raise
        self.metrics.documents.labels("ok" if result.ok else "partial").inc()
        return result

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def __enter__(self) -> Submitter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------------------- pipeline

    def _publish(
        self,
        source: PageSource,
        doc_id: str,
        resolved: ResolvedOptions,
        options: SubmitOptions,
        *,
        label: str,
        on_page: Callable[[int], None] | None,
    ) -> SubmitResult:
        submitted_at = options.submitted_at or utcnow()
        metadata = dict(options.metadata)
        spec = source.spec
        log_extra = {"doc_id": doc_id, "source": label}
        log.info("document accepted", extra={**log_extra, "page_count": source.page_count, "kind": source.kind.value})

        delivery = _Delivery()
        pending: deque[tuple[RenderedPageInfo, Future[ObjectRef]]] = deque()
        stored_before_first_event: list[str] = []
        produced = 0
        dead: list[int] = []

        def produce(info: RenderedPageInfo, ref: ObjectRef) -> None:
            nonlocal produced
            event = PageEvent(
                doc_id=doc_id, page_no=info.page_no, page_count=source.page_count, image=ref,
                image_width=info.width, image_height=info.height, image_bytes=info.nbytes,
                render=RenderSettings(dpi=info.dpi, long_side=max(info.width, info.height), format=spec.format,
                                      quality=spec.quality if spec.format == "jpeg" else None),
                mode=resolved.mode, prompt=resolved.prompt, engine=resolved.engine, attempt=0,
                submitted_at=submitted_at, source=label, metadata=metadata,
            )
            delivery.produce(self.producer, self.pages_topic, event.key.encode(), encode(event))
            produced += 1
            if on_page is not None:
                on_page(info.page_no)

        def settle_head() -> None:
            info, fut = pending.popleft()
            ref = fut.result()  # raises StorageUnavailableError after its retries
            produce(info, ref)

        try:
            for page_no in range(1, source.page_count + 1):
                started = time.perf_counter()
                try:
                    page = source.render(page_no)
                except BadInputError as exc:
                    if produced == 0:
                        # Nothing of this document is out: reject it whole, as validation would have.
                        for _info, fut in pending:
                            fut.cancel()
                        self._discard(stored_before_first_event, pending)
                        raise
                    log.error("page failed to render; dead-lettered", extra={**log_extra, "page_no": page_no, "error": str(exc)})
                    self._dead_letter(delivery, doc_id, page_no, source.page_count, exc)
                    dead.append(page_no)
                    continue
                self.metrics.render_seconds.observe(time.perf_counter() - started)
                key = page_image_key(doc_id, page_no, spec.extension)
                if produced == 0:
                    stored_before_first_event.append(key)
                pending.append((RenderedPageInfo.of(page), self._pool.submit(self._put, key, page.data, spec.content_type)))
                del page  # let the image go once it is uploaded
                while pending and (len(pending) >= self.max_pending or pending[0][1].done()):
                    settle_head()
                self.producer.poll(0)
            while pending:
                settle_head()
        except BaseException:
            for _info, fut in pending:
                fut.cancel()
            # Serve what was produced, so nothing is left half-sent behind the exception.
            self.producer.flush(min(self.flush_timeout_s, 30.0))
            raise
        self._await_acks(delivery, doc_id)
        self.metrics.pages.inc(produced)
        log.info("document published", extra={**log_extra, "page_count": source.page_count, "dead_lettered": len(dead)})
        return SubmitResult(doc_id, source.page_count, source.kind, label, tuple(dead))

    def _discard(self, keys: list[str], pending: deque[tuple[RenderedPageInfo, Future[ObjectRef]]]) -> None:
        for _info, fut in pending:
            try:
                fut.result()
            except Exception:  # noqa: BLE001 - an upload that failed left nothing to delete
                pass
        for key in keys:
            try:
                self.store.delete(key)
            except Exception:  # noqa: BLE001 - best effort: an orphan image is harmless
                log.warning("could not delete image of a rejected document", extra={"key": key})

    def _put(self, key: str, data: bytes, content_type: str) -> ObjectRef:
        return self._retry(lambda: self.store.put(key, data, content_type), what="storage", describe=f"store {key}")

    def _dead_letter(self, delivery: _Delivery, doc_id: str, page_no: int, page_count: int, exc: BaseException) -> None:
        letter = DeadLetter(doc_id=doc_id, page_no=page_no, page_count=page_count, attempts=1, error=error_info(exc))
        delivery.produce(self.producer, self.dlq_topic, f"{doc_id}/{page_no}".encode(), encode(letter))
        self.metrics.dead_lettered.inc()

    def _await_acks(self, delivery: _Delivery, doc_id: str) -> None:
        """Flush until the broker acknowledged everything; re-produce what failed (idempotent)."""
        attempts = self.settings.max_attempts
        for attempt in range(1, attempts + 1):
            deadline = time.monotonic() + self.flush_timeout_s
            while (remaining := self.producer.flush(min(5.0, max(0.0, deadline - time.monotonic())))) > 0:
                # Say so while waiting: with the broker down, librdkafka keeps trying for
                # message.timeout.ms (120 s by default) before it reports anything.
                log.warning("waiting for Kafka to acknowledge page events", extra={"doc_id": doc_id, "unacknowledged": remaining})
                if time.monotonic() >= deadline:
                    raise BrokerUnavailableError(
                        f"Kafka did not acknowledge {remaining} events of {doc_id} within {self.flush_timeout_s:.0f}s"
                    )
            failed = delivery.take_failed()
            if not failed:
                return
            if attempt == attempts:
                raise BrokerUnavailableError(
                    f"Kafka did not accept {len(failed)} events of {doc_id} after {attempts} attempts: {delivery.last_error}"
                )
            self.metrics.retries.labels("broker").inc()
            delay = self._backoff(attempt)
            log.warning("page events not delivered; retrying", extra={"doc_id": doc_id, "failed": len(failed), "delay_s": round(delay, 2), "error": str(delivery.last_error)})
            self._sleep(delay)
            for topic, key, value in failed:
                delivery.produce(self.producer, topic, key, value)

    def _retry(self, fn: Callable[[], T], *, what: str, describe: str) -> T:
        attempts = self.settings.max_attempts
        for attempt in range(1, attempts + 1):
            try:
                return fn()
            except TransientError as exc:
                if attempt == attempts:
                    cls = StorageUnavailableError if what == "storage" else type(exc)
                    raise cls(f"{describe}: still failing after {attempts} attempts: {exc}") from exc
                self.metrics.retries.labels(what).inc()
                delay = self._backoff(attempt)
                log.warning("transient failure; retrying", extra={"what": describe, "attempt": attempt, "delay_s": round(delay, 2), "error": str(exc)})
                self._sleep(delay)
        raise AssertionError("unreachable")

    def _backoff(self, attempt: int) -> float:
        # Full jitter: spreads retries of many producers after a shared outage.
        cap = min(self.settings.backoff_max_s, self.settings.backoff_base_s * 2 ** (attempt - 1))
        return random.uniform(cap / 2, cap)


@dataclass(frozen=True, slots=True)
class RenderedPageInfo:
    """What a page event needs of a rendered page, without the image bytes."""

    page_no: int
    width: int
    height: int
    nbytes: int
    dpi: float | None

    @classmethod
    def of(cls, page: RenderedPage) -> RenderedPageInfo:
        return cls(page.page_no, page.width, page.height, len(page.data), page.dpi)


class _Delivery:
    """Tracks produced records until the broker acknowledges them; keeps failed ones to re-send."""

    def __init__(self) -> None:
        self.failed: list[tuple[str, bytes, bytes]] = []
        self.last_error: Exception | None = None
        self.acked = 0

    def produce(self, producer: Producer, topic: str, key: bytes, value: bytes) -> None:
        def on_delivery(err: Exception | None, _record: Record | None) -> None:
            if err is None:
                self.acked += 1
            else:
                self.last_error = err
                self.failed.append((topic, key, value))

        producer.produce(topic, value, key, on_delivery=on_delivery)

    def take_failed(self) -> list[tuple[str, bytes, bytes]]:
        out, self.failed = self.failed, []
        return out


def page_count_of(path: Path, *, settings: Settings, password: str | None = None, mode: Mode | None = None) -> int:
    """Validate ``path`` as the producer would and return its page count (publishes nothing)."""
    spec = RenderSpec(mode=mode or settings.mode, long_side=settings.long_side, quality=settings.jpeg_quality)
    with open_source(path, spec=spec, limits=Limits.from_settings(settings), password=password) as source:
        return source.page_count


__all__ = ["ProducerMetrics", "ResolvedOptions", "SubmitOptions", "SubmitResult", "Submitter", "check_engine", "page_count_of"]
