"""Helpers shared by the aggregator's integration and system tests: page results as a worker would
write them, and the outputs the aggregator must produce for them (computed with the pure assembly)."""

from __future__ import annotations

import random
import uuid
from collections.abc import Collection, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from ocr_stream.aggregator import state as st
from ocr_stream.aggregator.assemble import DocumentHeader, PageOutcome, assemble
from ocr_stream.config import Settings
from ocr_stream.contracts import (
    Block,
    DeadLetter,
    DocumentEvent,
    DocumentProgress,
    ErrorInfo,
    PageResult,
    PageStatus,
    Usage,
    decode,
    encode,
)
from ocr_stream.errors import ErrorCode
from ocr_stream.storage.base import ObjectStore, page_result_key
from ocr_stream.topics import DLQ, DOCUMENTS, RESULTS
from ocr_stream.transport.base import Transport

T0 = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)


def isolated(make_settings: Any, **overrides: Any) -> tuple[Settings, ObjectStore]:
    """Settings with topics, bucket AND aggregator consumer group of the test's own (the default
    group id is shared by every test run on the broker), topics created, bucket made."""
    from ocr_stream.storage import open_store
    from ocr_stream.topics import TopicAdmin, load_specs

    settings = make_settings(**{"consumer_group_aggregator": f"aggregator-{uuid.uuid4().hex[:10]}", **overrides})
    TopicAdmin(settings.kafka_client_config(), prefix=settings.topic_prefix).apply(load_specs())
    store = open_store(settings)
    store.ensure_bucket()
    return settings, store


def page_results(doc_id: str, page_count: int, failed: Collection[int] = ()) -> list[PageResult]:
    out = []
    for n in range(1, page_count + 1):
        if n in failed:
            out.append(PageResult(
                doc_id=doc_id, page_no=n, page_count=page_count, status=PageStatus.FAILED, attempts=5,
                error=ErrorInfo(code=ErrorCode.ATTEMPTS_EXHAUSTED, message=f"page {n}: server error 5 times"),
                submitted_at=T0, completed_at=T0 + timedelta(seconds=n), source=f"{doc_id}.pdf",
            ))
        else:
            out.append(PageResult(
                doc_id=doc_id, page_no=n, page_count=page_count, status=PageStatus.OK,
                markdown=f"# {doc_id} page {n}\n\nSome text on page {n}.\n",
                blocks=[Block(label="title", text=f"{doc_id} page {n}", box=(12, 30, 900, 80))],
                usage=Usage(prompt_tokens=903, completion_tokens=500 + n), latency_ms=800.0 + n, attempts=1,
                model="deepseek-ai/DeepSeek-OCR", image_width=1131, image_height=1600,
                submitted_at=T0, completed_at=T0 + timedelta(seconds=n), source=f"{doc_id}.pdf", metadata={"n": page_count},
            ))
    return out


def dead_letter_for(result: PageResult) -> DeadLetter:
    assert result.error is not None
    return DeadLetter(doc_id=result.doc_id, page_no=result.page_no, page_count=result.page_count, attempts=result.attempts,
                      error=result.error, failed_at=result.completed_at)


def store_results(store: ObjectStore, results: list[PageResult]) -> None:
    for r in results:
        store.put(page_result_key(r.doc_id, r.page_no), encode(r), "application/json")


def expected_outputs(results: list[PageResult]) -> tuple[bytes, bytes]:
    """document.md and document.json for one document's results, assembled in page order."""
    progress: DocumentProgress | None = None
    for r in results:
        progress = st.apply_result(progress, r, now=T0).progress
    assert progress is not None and st.is_complete(progress)
    failed = {f.page_no: f.error for f in progress.pages_failed}
    by_page = {r.page_no: r for r in results}
    doc = assemble(
        DocumentHeader(doc_id=progress.doc_id, page_count=progress.page_count, source=progress.source,
                       submitted_at=progress.submitted_at, metadata=progress.metadata),
        [PageOutcome(page_no=n, error=failed[n]) if n in failed else PageOutcome(page_no=n, result=by_page[n])
         for n in range(1, progress.page_count + 1)],
    )
    return doc.markdown, doc.json


def shuffled_with_duplicates(items: list[Any], rng: random.Random, dup_share: float = 0.3) -> list[Any]:
    out = list(items) + rng.sample(items, int(len(items) * dup_share))
    rng.shuffle(out)
    return out


def send(transport: Transport, settings: Settings, items: Sequence[PageResult | DeadLetter | bytes]) -> None:
    """Publish page results (ocr.results, key doc_id) and dead letters (ocr.pages.dlq, key doc_id/page_no);
    raw bytes go to the DLQ as an unparsable entry would."""
    producer = transport.producer(name="test-worker")
    errors: list[Exception] = []

    def on_delivery(err: Exception | None, _rec: object) -> None:
        if err is not None:
            errors.append(err)

    for item in items:
        if isinstance(item, PageResult):
            producer.produce(settings.topic(RESULTS), encode(item), key=item.doc_id.encode(), on_delivery=on_delivery)
        elif isinstance(item, DeadLetter):
            producer.produce(settings.topic(DLQ), encode(item), key=f"{item.doc_id}/{item.page_no}".encode(), on_delivery=on_delivery)
        else:
            producer.produce(settings.topic(DLQ), item, key=b"garbage", on_delivery=on_delivery)
    assert producer.flush(30) == 0
    assert not errors, errors


def document_events(transport: Transport, settings: Settings) -> list[DocumentEvent]:
    """Every committed event on ocr.documents now (read_committed, from the beginning; a transaction
    still open is not waited for)."""
    topic = settings.topic(DOCUMENTS)
    parts = list(range(transport.partition_count(topic)))
    records = transport.read_partitions(topic, parts, wait_for_transactions=False)
    return [decode(DocumentEvent, rec.value) for rec in records if rec.value is not None]
