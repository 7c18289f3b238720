"""The aggregator service: page results in, one document event per document out, exactly once.

Wiring (the logic is in state.py and assemble.py):

- One consumer in group ``consumer_group_aggregator`` on ``ocr.results`` and ``ocr.pages.dlq``, and one
  transactional producer per instance (transactional id ``{group}-{instance_id}``). Offsets are sent
  to the transaction with the consumer's group metadata (KIP-447), so a zombie that lost its
  partitions cannot commit for them.
- Each batch of records is one transaction: changelog records (the new progress of every document
  that changed), document events, dead-letter results forwarded to ``ocr.results``, and the consumed
  offsets. Nothing in memory changes until the commit succeeds; on failure the transaction is aborted,
  the consumer rewound to the batch's first offsets, and the batch processed again.
- ``document.md``/``document.json`` are written to storage inside the transaction, before the commit.
  They are deterministic, so a crash before the commit leads to the same bytes written again.
- On assignment, the progress of the assigned ``ocr.results`` partitions is rebuilt from the same
  partitions of the changelog (co-partitioned: same key, same partition count, murmur2).
- Dead letters can sit on any DLQ partition (their key is ``doc_id/page_no``), so they are turned into
  failed page results and forwarded to ``ocr.results`` keyed ``doc_id``, in the same transaction; the
  owner of the document counts them like any result (once, with the worker's own failed result).
- A timer tick reports stuck documents, closes overdue ones as partial and forgets (tombstones)
  documents published longer than ``forget_after_s`` ago.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime

from ..config import Settings
from ..contracts import (
    DeadLetter,
    DocumentEvent,
    DocumentProgress,
    DocumentStatus,
    ErrorInfo,
    PageResult,
    PageStatus,
    decode,
    encode,
    utcnow,
)
from ..errors import ClientWedgedError, ErrorCode, NotFoundError, SchemaViolationError
from ..storage.base import ObjectStore, document_json_key, document_md_key, page_result_key
from ..topics import CHANGELOG, DLQ, DOCUMENTS, RESULTS
from ..transport.base import Consumer, Producer, Record, TopicPartition, Transport
from . import state as st
from .assemble import AssembledDocument, DocumentHeader, PageOutcome, assemble
from .metrics import AggregatorMetrics
from .partitioning import partition_for

log = logging.getLogger(__name__)

ORIGIN_HEADER = "ocr-stream-origin"


@dataclass
class _Batch:
    """What one transaction will change once it commits."""

    progress: dict[str, tuple[int, DocumentProgress | None]] = field(default_factory=dict)  # None: tombstone
    offsets: dict[TopicPartition, int] = field(default_factory=dict)
    first_offsets: dict[TopicPartition, int] = field(default_factory=dict)
    effects: list[Callable[[], None]] = field(default_factory=list)  # metrics, applied after the commit


class AggregatorService:
    """Runs the aggregator loop until ``stop()`` (or, in burst mode, until nothing is left)."""

    def __init__(
        self,
        settings: Settings,
        transport: Transport,
        store: ObjectStore,
        *,
        instance_id: str | None = None,
        metrics: AggregatorMetrics | None = None,
        clock: Callable[[], datetime] = utcnow,
        batch_size: int = 500,
        tick_s: float | None = None,
    ) -> None:
        self.settings = settings
        self.transport = transport
        self.store = store
        self.metrics = metrics or AggregatorMetrics()
        self.clock = clock
        self.batch_size = batch_size
        self.tick_s = tick_s if tick_s is not None else max(0.2, min(5.0, settings.stuck_after_s / 4))
        self.instance_id = instance_id or settings.aggregator_instance_id or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        self.transactional_id = f"{settings.consumer_group_aggregator}-{self.instance_id}"
        self.results_topic = settings.topic(RESULTS)
        self.dlq_topic = settings.topic(DLQ)
        self.changelog_topic = settings.topic(CHANGELOG)
        self.documents_topic = settings.topic(DOCUMENTS)
        # State of the owned ocr.results partitions: open documents in full, published ones as
        # (status, published_at) only, so that a week of finished documents stays small.
        self._open: dict[int, dict[str, DocumentProgress]] = {}
        self._closed: dict[int, dict[str, tuple[DocumentStatus, datetime | None]]] = {}
        self._stuck_reported: set[str] = set()
        self._stop = threading.Event()
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._changelog_partitions = 0
        self._assigned_once = False
        self._failures = 0
        self._wedged = False
        self._last_loop = time.monotonic()
        self._reader = ThreadPoolExecutor(max_workers=8, thread_name_prefix="aggregator-read")

    # ------------------------------------------------------------------------- lifecycle

    def stop(self) -> None:
        """Ask the loop to finish its current transaction and return (safe from a signal handler)."""
        self._stop.set()

    def health(self) -> dict[str, bool]:
        """For /healthz. An instance without partitions (more instances than partitions) is healthy."""
        return {
            "loop": time.monotonic() - self._last_loop < 120,
            "transactions": self._failures < 3,
        }

    @property
    def open_documents(self) -> int:
        return sum(len(d) for d in self._open.values())

    def _start(self) -> tuple[Consumer, Producer]:
        producer = self.transport.producer(transactional_id=self.transactional_id, name="aggregator")
        # Fences an earlier incarnation with the same id and aborts its open transaction.
        producer.init_transactions()
        self._changelog_partitions = self.transport.partition_count(self.changelog_topic)
        consumer = self.transport.consumer(self.settings.consumer_group_aggregator, name="aggregator", isolation_read_committed=True)
        consumer.subscribe([self.results_topic, self.dlq_topic], on_assign=self._on_assign, on_revoke=self._on_revoke)
        self._consumer, self._producer = consumer, producer
        return consumer, producer

    def run(self, *, burst: bool = False, burst_idle_s: float = 1.5, assign_timeout_s: float = 60.0) -> int:
        """The loop. Returns 0 on a clean stop (or a finished burst); raises on a fatal error (a
        fenced producer, the broker gone for good), after which the process should restart."""
        consumer, producer = self._start()
        log.info("aggregator started", extra={"instance_id": self.instance_id, "transactional_id": self.transactional_id})
        started = time.monotonic()
        idle_since: float | None = None
        next_tick = time.monotonic() + self.tick_s
        try:
            while not self._stop.is_set():
                self._last_loop = time.monotonic()
                records = consumer.consume(self.batch_size, 0.2)
                if records:
                    idle_since = None
                    self._in_transaction(lambda batch: self._handle_records(records, batch), records)
                if time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + self.tick_s
                    self._tick()
                if burst:
                    now_m = time.monotonic()
                    if not self._assigned_once:
                        if now_m - started > assign_timeout_s:
                            log.warning("burst: no partitions assigned; exiting")
                            return 0
                        continue
                    if records:
                        continue
                    idle_since = idle_since or now_m
                    if now_m - idle_since >= burst_idle_s and not any(consumer.lag().values()):
                        return 0
            return 0
        finally:
            self._close()

    def _close(self) -> None:
        if self._wedged:
            # The process is about to start over: a wedged client may block on close, and the
            # new instance fences both clients (same transactional id, same static member id).
            self._consumer = self._producer = None
        if self._consumer is not None:
            try:
                self._consumer.close()
            except Exception as exc:  # noqa: BLE001 - leaving the group is best effort at shutdown
                log.warning("consumer close failed: %s", exc)
            self._consumer = None
        if self._producer is not None:
            try:
                self._producer.close()
            except Exception as exc:  # noqa: BLE001
                log.warning("producer close failed: %s", exc)
            self._producer = None
        self._reader.shutdown(wait=False)

    # ------------------------------------------------------------------------- rebalancing

    def _on_assign(self, partitions: list[TopicPartition]) -> None:
        parts = sorted(p for t, p in partitions if t == self.results_topic)
        self._assigned_once = True
        if not parts:
            return
        log.info("partitions assigned; rebuilding their state from the changelog", extra={"partitions": parts})
        t0 = time.monotonic()
        opened = closed = 0
        for p in parts:
            self._open[p] = {}
            self._closed[p] = {}
        for rec in self.transport.read_partitions(self.changelog_topic, parts):
            if rec.key is None or rec.partition not in self._open:
                continue
            doc_id = rec.key.decode("utf-8", "replace")
            self._open[rec.partition].pop(doc_id, None)
            self._closed[rec.partition].pop(doc_id, None)
            if rec.value is None:
                continue
            try:
                progress = decode(DocumentProgress, rec.value)
            except SchemaViolationError as exc:
                log.error("unreadable changelog record ignored: %s", exc, extra={"doc_id": doc_id, "offset": rec.offset})
                continue
            self._remember(rec.partition, progress)
        for p in parts:
            opened += len(self._open[p])
            closed += len(self._closed[p])
        elapsed = time.monotonic() - t0
        self.metrics.rebuild_seconds.observe(elapsed)
        self._update_gauges()
        log.info(
            "state rebuilt from the changelog",
            extra={"partitions": parts, "open_documents": opened, "published_documents": closed, "seconds": round(elapsed, 3)},
        )

    def _on_revoke(self, partitions: list[TopicPartition]) -> None:
        parts = [p for t, p in partitions if t == self.results_topic]
        for p in parts:
            for doc_id in self._open.pop(p, {}):
                self._stuck_reported.discard(doc_id)
            self._closed.pop(p, None)
        self._update_gauges()
        if parts:
            log.info("partitions revoked", extra={"partitions": sorted(parts)})

    def _remember(self, partition: int, progress: DocumentProgress) -> None:
        if progress.published is None:
            self._open.setdefault(partition, {})[progress.doc_id] = progress
            self._closed.setdefault(partition, {}).pop(progress.doc_id, None)
        else:
            self._open.setdefault(partition, {}).pop(progress.doc_id, None)
            self._closed.setdefault(partition, {})[progress.doc_id] = (progress.published, progress.published_at)
            self._stuck_reported.discard(progress.doc_id)

    def _update_gauges(self) -> None:
        self.metrics.open_documents.set(self.open_documents)
        self.metrics.assigned_partitions.set(len(self._open))

    # ------------------------------------------------------------------------- transactions

    def _in_transaction(self, work: Callable[[_Batch], None], records: list[Record]) -> None:
        """Run ``work`` in one Kafka transaction with the offsets of ``records``; apply its state
        changes after the commit, or abort, rewind and back off."""
        producer, consumer = self._producer, self._consumer
        assert producer is not None and consumer is not None
        batch = _Batch()
        for rec in records:
            batch.first_offsets.setdefault(rec.tp, rec.offset)
            batch.offsets[rec.tp] = rec.offset + 1
        t0 = time.monotonic()
        producer.begin_transaction()
        try:
            work(batch)
            for doc_id, (_part, progress) in batch.progress.items():
                producer.produce(self.changelog_topic, None if progress is None else encode(progress), key=doc_id.encode())
            if batch.offsets:
                producer.send_offsets_to_transaction(batch.offsets, consumer)
            producer.commit_transaction()
        except ClientWedgedError:
            self._wedged = True
            raise
        except Exception as exc:
            self.metrics.transactions.labels("aborted").inc()
            self._failures += 1
            log.warning("transaction failed; aborting and retrying the batch: %s", exc, exc_info=self._failures > 3)
            # An abort that fails means the producer is fenced or broken: fatal, the process restarts
            # and rebuilds from the changelog.
            producer.abort_transaction()
            for tp, offset in batch.first_offsets.items():
                try:
                    consumer.seek(tp, offset)
                except Exception as seek_exc:  # noqa: BLE001 - a partition lost meanwhile goes back to its committed offset anyway
                    log.warning("cannot rewind %s[%d]: %s", tp[0], tp[1], seek_exc)
            self._stop.wait(min(5.0, 0.1 * 2 ** min(self._failures, 6)))
            return
        self._failures = 0
        self.metrics.transactions.labels("committed").inc()
        self.metrics.transaction_seconds.observe(time.monotonic() - t0)
        for doc_id, (part, progress) in batch.progress.items():
            if progress is None:
                self._open.get(part, {}).pop(doc_id, None)
                self._closed.get(part, {}).pop(doc_id, None)
            else:
                self._remember(part, progress)
        for effect in batch.effects:
            effect()
        self._update_gauges()

    def _current(self, batch: _Batch, part: int, doc_id: str) -> DocumentProgress | None | tuple[DocumentStatus, datetime | None]:
        if doc_id in batch.progress:
            return batch.progress[doc_id][1]
        if doc_id in self._closed.get(part, {}):
            return self._closed[part][doc_id]
        return self._open.get(part, {}).get(doc_id)

    # ------------------------------------------------------------------------- records

    def _handle_records(self, records: list[Record], batch: _Batch) -> None:
        now = self.clock()
        publish: dict[str, int] = {}
        for rec in records:
            if rec.topic == self.results_topic:
                done = self._on_result(rec, batch, now)
                if done is not None:
                    publish.setdefault(done, rec.partition)
            elif rec.topic == self.dlq_topic:
                self._on_dead_letter(rec, batch)
        for doc_id, part in publish.items():
            progress = batch.progress[doc_id][1]
            assert progress is not None
            self._publish(batch, part, progress, now, completed_at=progress.last_completed_at or now)

    def _on_result(self, rec: Record, batch: _Batch, now: datetime) -> str | None:
        """Count one page result; returns the doc_id when its document just became complete."""
        try:
            result = decode(PageResult, rec.value)
        except SchemaViolationError as exc:
            log.warning("unparsable page result ignored: %s", exc, extra={"partition": rec.partition, "offset": rec.offset})
            batch.effects.append(self.metrics.invalid.inc)
            return None
        doc_id, page_no = result.doc_id, result.page_no
        if self._changelog_partitions and partition_for(doc_id, self._changelog_partitions) != rec.partition:
            log.error(
                "page result on partition %d, but murmur2(doc_id) gives %d: its producer does not use Kafka's default "
                "partitioner, so this document's progress is not co-partitioned with its results",
                rec.partition, partition_for(doc_id, self._changelog_partitions), extra={"doc_id": doc_id, "page_no": page_no},
            )
            batch.effects.append(self.metrics.misrouted.inc)
        current = self._current(batch, rec.partition, doc_id)
        if isinstance(current, tuple):
            log.info("late result for a published document ignored", extra={"doc_id": doc_id, "page_no": page_no, "published": str(current[0])})
            batch.effects.append(self.metrics.late.inc)
            return None
        outcome = st.apply_result(current, result, now=now)
        kind = outcome.kind
        if kind == st.Applied.INVALID:
            log.warning("page result ignored: %s", outcome.reason, extra={"doc_id": doc_id, "page_no": page_no})
            batch.effects.append(self.metrics.invalid.inc)
        elif kind == st.Applied.LATE:
            log.info("late result for a published document ignored", extra={"doc_id": doc_id, "page_no": page_no})
            batch.effects.append(self.metrics.late.inc)
        elif kind == st.Applied.DUPLICATE:
            log.debug("duplicate page result ignored", extra={"doc_id": doc_id, "page_no": page_no})
            batch.effects.append(self.metrics.duplicates.inc)
        elif kind == st.Applied.REPLACED:
            batch.effects.append(self.metrics.replaced.inc)
        else:
            batch.effects.append(self.metrics.pages.labels(str(result.status)).inc)
        if not outcome.changed or outcome.progress is None:
            return None
        batch.progress[doc_id] = (rec.partition, outcome.progress)
        return doc_id if st.is_complete(outcome.progress) else None

    def _on_dead_letter(self, rec: Record, batch: _Batch) -> None:
        try:
            dead = decode(DeadLetter, rec.value)
            result = st.dead_letter_to_result(dead)
        except SchemaViolationError as exc:
            dead, result = None, None
            reason = str(exc)
        else:
            reason = "no doc_id, page_no and page_count"
        if result is None:
            log.warning(
                "dead letter cannot be attributed to a document page: %s", reason,
                extra={"partition": rec.partition, "offset": rec.offset, "key": (rec.key or b"").decode("utf-8", "replace"),
                       "code": str(dead.error.code) if dead else None},
            )
            batch.effects.append(self.metrics.dead_letters.labels("unattributable").inc)
            return
        assert self._producer is not None
        self._producer.produce(self.results_topic, encode(result), key=result.doc_id.encode(), headers=[(ORIGIN_HEADER, b"dlq")])
        batch.effects.append(self.metrics.dead_letters.labels("attributed").inc)

    # ------------------------------------------------------------------------- documents

    def _page_outcomes(self, progress: DocumentProgress) -> Iterator[PageOutcome]:
        failed = {f.page_no: f.error for f in progress.pages_failed}

        def load(n: int) -> PageOutcome:
            if n in failed:
                return PageOutcome(page_no=n, error=failed[n])
            if not st.ranges_contains(progress.pages_ok, n):  # only when called on an incomplete document
                return PageOutcome(page_no=n, error=ErrorInfo(code=ErrorCode.INTERNAL, message="page not accounted for"))
            key = page_result_key(progress.doc_id, n)
            try:
                result = decode(PageResult, self.store.get_key(key))
            except NotFoundError:
                log.error("stored result of a succeeded page is missing", extra={"doc_id": progress.doc_id, "page_no": n, "key": key})
                return PageOutcome(page_no=n, error=ErrorInfo(code=ErrorCode.NOT_FOUND, message=f"result object {key} is missing"))
            except SchemaViolationError as exc:
                log.error("stored result of a page does not parse", extra={"doc_id": progress.doc_id, "page_no": n, "key": key})
                return PageOutcome(page_no=n, error=ErrorInfo(code=ErrorCode.SCHEMA_VIOLATION, message=f"{key}: {exc}"[:300]))
            if result.status != PageStatus.OK:
                return PageOutcome(page_no=n, result=result, error=result.error or ErrorInfo(code=ErrorCode.INTERNAL, message="failed"))
            return PageOutcome(page_no=n, result=result)

        # Storage errors (transient) propagate: the transaction aborts and the batch is retried.
        yield from self._reader.map(load, range(1, progress.page_count + 1))

    def assemble(self, progress: DocumentProgress) -> AssembledDocument:
        """Read the page results of a complete document from storage and build its outputs."""
        header = DocumentHeader(
            doc_id=progress.doc_id, page_count=progress.page_count, source=progress.source,
            submitted_at=progress.submitted_at, metadata=progress.metadata,
        )
        return assemble(header, self._page_outcomes(progress))

    def _publish(self, batch: _Batch, part: int, progress: DocumentProgress, now: datetime, *, completed_at: datetime) -> None:
        """Write document.md/json and queue the document event and the final progress (in the open
        transaction)."""
        assert self._producer is not None
        t0 = time.monotonic()
        doc = self.assemble(progress)
        md_ref = self.store.put(document_md_key(progress.doc_id), doc.markdown, "text/markdown; charset=utf-8")
        json_ref = self.store.put(document_json_key(progress.doc_id), doc.json, "application/json")
        self.metrics.assembly_seconds.observe(time.monotonic() - t0)
        event = DocumentEvent(
            doc_id=progress.doc_id,
            status=doc.status,
            page_count=progress.page_count,
            pages_ok=doc.pages_ok,
            pages_failed=len(doc.failed_pages),
            failed_pages=doc.failed_pages,
            markdown_ref=md_ref,
            json_ref=json_ref,
            usage=doc.usage,
            source=doc.source,
            submitted_at=doc.submitted_at,
            completed_at=completed_at,
            metadata=doc.metadata,
        )
        self._producer.produce(self.documents_topic, encode(event), key=progress.doc_id.encode())
        batch.progress[progress.doc_id] = (part, st.mark_published(progress, doc.status, now=now))
        status = str(doc.status)

        def done() -> None:
            self.metrics.documents.labels(status).inc()
            log.info(
                "document published",
                extra={"doc_id": progress.doc_id, "status": status, "pages": progress.page_count, "pages_failed": len(doc.failed_pages)},
            )

        batch.effects.append(done)

    # ------------------------------------------------------------------------- timer

    def _tick(self) -> None:
        """Report stuck documents; close overdue ones as partial and forget long-published ones (in a
        transaction, only when there is something to do)."""
        now = self.clock()
        s = self.settings
        stuck = 0
        overdue: list[tuple[int, DocumentProgress]] = []
        for part, docs in self._open.items():
            for doc_id, progress in docs.items():
                if st.is_stuck(progress, now=now, after_s=s.close_partial_after_s):
                    overdue.append((part, progress))
                elif st.is_stuck(progress, now=now, after_s=s.stuck_after_s):
                    stuck += 1
                    if doc_id not in self._stuck_reported:
                        self._stuck_reported.add(doc_id)
                        missing = st.missing_pages(progress)
                        log.warning(
                            "document stuck: pages missing for longer than stuck_after_s",
                            extra={"doc_id": doc_id, "missing": len(missing), "missing_pages": missing[:20], "pages": progress.page_count},
                        )
        self.metrics.stuck_documents.set(stuck)
        forget = [
            (part, doc_id)
            for part, closed_docs in self._closed.items()
            for doc_id, (_status, published_at) in closed_docs.items()
            if published_at is not None and (now - published_at).total_seconds() > s.forget_after_s
        ]
        if not overdue and not forget:
            return

        def work(batch: _Batch) -> None:
            for part, progress in overdue:
                log.warning(
                    "document closed at its deadline with pages missing",
                    extra={"doc_id": progress.doc_id, "missing": len(st.missing_pages(progress)), "pages": progress.page_count},
                )
                batch.effects.append(self.metrics.deadline_closed.inc)
                closed = st.close_at_deadline(progress, after_s=s.close_partial_after_s)
                self._publish(batch, part, closed, now, completed_at=now)
            for part, doc_id in forget:
                batch.progress[doc_id] = (part, None)

        self._in_transaction(work, [])


def read_progress(transport: Transport, settings: Settings, doc_id: str, *, timeout_s: float = 65.0) -> DocumentProgress | None:
    """The aggregator's latest progress of ``doc_id`` from its changelog (None: never seen, or
    forgotten). For ``ocr-stream status``: reads the one changelog partition that holds the key."""
    topic = settings.topic(CHANGELOG)
    partition = partition_for(doc_id, transport.partition_count(topic))
    latest: DocumentProgress | None = None
    key = doc_id.encode()
    for rec in transport.read_partitions(topic, [partition], timeout_s=timeout_s):
        if rec.key != key:
            continue
        latest = None if rec.value is None else decode(DocumentProgress, rec.value)
    return latest
