"""The aggregator against the real Kafka broker and S3 server."""

from __future__ import annotations

import json
import random
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aggregator_support import (
    dead_letter_for,
    document_events,
    isolated,
    expected_outputs,
    page_results,
    send,
    shuffled_with_duplicates,
    store_results,
)
from conftest import wait_until

from ocr_stream.aggregator.partitioning import partition_for
from ocr_stream.aggregator.service import AggregatorService, read_progress
from ocr_stream.contracts import DocumentStatus, PageResult
from ocr_stream.errors import ErrorCode
from ocr_stream.storage import open_store
from ocr_stream.storage.base import document_json_key, document_md_key
from ocr_stream.topics import DOCUMENTS, RESULTS
from ocr_stream.transport.base import Producer, Record
from ocr_stream.transport.kafka import KafkaTransport

pytestmark = pytest.mark.integration


class Running:
    """An AggregatorService on a thread; stopped (and joined) by ``stop``."""

    def __init__(self, service: AggregatorService) -> None:
        self.service = service
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.service.run()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def stop(self) -> None:
        self.service.stop()
        self.thread.join(60)
        assert not self.thread.is_alive(), "aggregator did not stop"
        assert self.error is None, self.error

    def metric(self, name: str, **labels: str) -> float:
        assert self.error is None, f"aggregator failed: {self.error!r}"
        value = self.service.metrics.registry.get_sample_value(f"ocr_stream_aggregator_{name}", labels or None)
        return value or 0.0


@pytest.fixture
def env(make_settings: Callable[..., Any]) -> tuple[Any, Any]:
    """Settings (own topics, bucket and consumer group) and the store."""
    return isolated(make_settings)


@pytest.fixture
def start(env: tuple[Any, Any]) -> Iterator[Callable[..., Running]]:
    running: list[Running] = []

    def factory(settings: Any = None, **kw: Any) -> Running:
        s = settings or env[0]
        r = Running(AggregatorService(s, KafkaTransport(s.kafka_client_config()), open_store(s), tick_s=0.2, **kw))
        running.append(r)
        return r

    yield factory
    for r in running:
        if r.thread.is_alive():
            r.stop()


def check_outputs(store: Any, results: list[PageResult]) -> None:
    md, js = expected_outputs(results)
    doc_id = results[0].doc_id
    assert store.get_key(document_md_key(doc_id)) == md
    assert store.get_key(document_json_key(doc_id)) == js


def test_shuffled_duplicated_pages_give_one_event_per_document_and_identical_outputs(
    env: tuple[Any, Any], transport: KafkaTransport, start: Callable[..., Running], make_settings: Callable[..., Any],
) -> None:
    topics, store = env
    docs = {
        "doc-a": page_results("doc-a", 12),
        "doc-b": page_results("doc-b", 5, failed={2, 5}),
        "doc-c": page_results("doc-c", 1),
        "doc-d": page_results("doc-d", 3, failed={1, 2, 3}),
    }
    results = [r for rs in docs.values() for r in rs]
    store_results(store, results)
    # The worker sends a failed result and a dead letter for each failed page; one DLQ entry is garbage.
    dead = [dead_letter_for(r) for r in results if r.error is not None]
    items = shuffled_with_duplicates([*results, *dead], random.Random(1)) + [b"{not json"]
    agg = start()
    send(transport, topics, items)
    events = wait_until(lambda: (e := document_events(transport, topics)) and len(e) >= 4 and e, 60, what="4 document events")
    assert Counter(e.doc_id for e in events) == dict.fromkeys(docs, 1)
    by_doc = {e.doc_id: e for e in events}
    assert by_doc["doc-a"].status == DocumentStatus.COMPLETE and by_doc["doc-a"].pages_ok == 12
    assert by_doc["doc-b"].status == DocumentStatus.PARTIAL
    assert [(f.page_no, f.error.code) for f in by_doc["doc-b"].failed_pages] == [(2, ErrorCode.ATTEMPTS_EXHAUSTED), (5, ErrorCode.ATTEMPTS_EXHAUSTED)]
    assert by_doc["doc-d"].status == DocumentStatus.FAILED and by_doc["doc-d"].pages_failed == 3
    assert by_doc["doc-a"].usage.completion_tokens == sum(500 + n for n in range(1, 13))
    assert by_doc["doc-a"].completed_at == docs["doc-a"][-1].completed_at  # from the inputs, not the clock
    for rs in docs.values():
        check_outputs(store, rs)
    wait_until(lambda: agg.metric("dead_letters_total", outcome="unattributable") == 1, 10, what="garbage DLQ entry counted")
    assert agg.metric("dead_letters_total", outcome="attributed") == len(dead)
    assert agg.metric("pages_total", status="ok") + agg.metric("pages_total", status="failed") == len(results)
    assert agg.metric("documents_total", status="partial") == 1

    # A late duplicate of a published document is ignored: no second event.
    send(transport, topics, [docs["doc-a"][0]])
    wait_until(lambda: agg.metric("late_results_total") >= 1, 20, what="late result counted")
    agg.stop()
    assert Counter(e.doc_id for e in document_events(transport, topics)) == dict.fromkeys(docs, 1)
    progress = read_progress(transport, topics, "doc-b")
    assert progress is not None and progress.published == DocumentStatus.PARTIAL and progress.pages_ok == [(1, 1), (3, 4)]
    assert read_progress(transport, topics, "never-seen") is None

    # The same inputs in another order, through another aggregator, give the same bytes.
    other, other_store = isolated(make_settings)
    store_results(other_store, results)
    start(other)
    send(transport, other, shuffled_with_duplicates([*results, *dead], random.Random(2)))
    wait_until(lambda: len(document_events(transport, other)) >= 4, 60, what="4 document events (second run)")
    for doc_id in docs:
        assert other_store.get_key(document_md_key(doc_id)) == store.get_key(document_md_key(doc_id))
        assert other_store.get_key(document_json_key(doc_id)) == store.get_key(document_json_key(doc_id))


def test_restarted_aggregator_rebuilds_progress_from_the_changelog(
    env: tuple[Any, Any], transport: KafkaTransport, start: Callable[..., Running],
) -> None:
    topics, store = env
    results = page_results("doc-r", 10, failed={7})
    store_results(store, results)
    first = start(instance_id="one")
    send(transport, topics, results[:6] + results[:2])
    wait_until(lambda: first.metric("pages_total", status="ok") == 6, 60, what="6 pages counted")
    first.stop()
    progress = read_progress(transport, topics, "doc-r")
    assert progress is not None and progress.pages_ok == [(1, 6)] and progress.published is None

    second = start(instance_id="two")
    send(transport, topics, results[4:])  # pages 5 and 6 again: duplicates across the restart
    wait_until(lambda: len(document_events(transport, topics)) >= 1, 60, what="the document event")
    wait_until(lambda: second.metric("duplicates_total") == 2, 10, what="2 duplicates after the restart")
    events = document_events(transport, topics)
    assert len(events) == 1 and events[0].status == DocumentStatus.PARTIAL and [f.page_no for f in events[0].failed_pages] == [7]
    check_outputs(store, results)


def test_stuck_document_is_reported_then_closed_as_partial(
    make_settings: Callable[..., Any], transport: KafkaTransport, start: Callable[..., Running],
) -> None:
    s, st_ = isolated(make_settings, stuck_after_s=0.5, close_partial_after_s=2.5)
    results = page_results("doc-s", 4)
    store_results(st_, results)
    agg = start(s)
    send(transport, s, [results[0], results[2]])
    wait_until(lambda: agg.metric("stuck_documents") == 1, 30, what="the document reported stuck")
    events = wait_until(lambda: document_events(transport, s), 30, what="the document closed at its deadline")
    assert len(events) == 1 and events[0].status == DocumentStatus.PARTIAL
    assert [(f.page_no, f.error.code) for f in events[0].failed_pages] == [(2, ErrorCode.DEADLINE), (4, ErrorCode.DEADLINE)]
    assert agg.metric("deadline_closed_total") == 1
    doc = json.loads(st_.get_key(document_json_key("doc-s")))
    assert [p["status"] for p in doc["pages"]] == ["ok", "failed", "ok", "failed"]
    assert agg.metric("stuck_documents") == 0
    # A page arriving after the deadline is late: ignored.
    send(transport, s, [results[1]])
    wait_until(lambda: agg.metric("late_results_total") == 1, 20, what="late page after the deadline")
    assert len(document_events(transport, s)) == 1


def test_producers_partition_by_murmur2(env: tuple[Any, Any], transport: KafkaTransport) -> None:
    topics, _store = env
    delivered: list[Record] = []
    producer = transport.producer()
    for i in range(40):
        producer.produce(topics.topic(RESULTS), b"{}", key=f"doc-{i}".encode(), on_delivery=lambda err, rec: delivered.append(rec))  # type: ignore[arg-type]
    assert producer.flush(30) == 0
    assert len(delivered) == 40
    for rec in delivered:
        assert rec.key is not None and rec.partition == partition_for(rec.key, 12)


class Crash(BaseException):
    """Stands for the process dying: not an Exception, so nothing in the service handles it."""


class CrashingProducer(Producer):
    """A transactional producer that 'dies' just before committing a transaction that contains a
    document event, i.e. after the storage writes: the worst moment for exactly-once."""

    def __init__(self, inner: Producer, documents_topic: str, crashes: list[int]) -> None:
        self.inner, self.documents_topic, self.crashes = inner, documents_topic, crashes
        self.has_event = False

    def produce(self, topic: str, value: bytes | None, key: bytes | None = None, **kw: Any) -> None:
        self.has_event |= topic == self.documents_topic
        self.inner.produce(topic, value, key, **kw)

    def poll(self, timeout_s: float = 0.0) -> int:
        return self.inner.poll(timeout_s)

    def flush(self, timeout_s: float = 30.0) -> int:
        return self.inner.flush(timeout_s)

    def init_transactions(self, timeout_s: float = 30.0) -> None:
        self.inner.init_transactions(timeout_s)

    def begin_transaction(self) -> None:
        self.has_event = False
        self.inner.begin_transaction()

    def send_offsets_to_transaction(self, offsets: dict[Any, int], consumer: Any, timeout_s: float = 30.0) -> None:
        self.inner.send_offsets_to_transaction(offsets, consumer, timeout_s)

    def commit_transaction(self, timeout_s: float = 30.0) -> None:
        if self.has_event and self.crashes:
            self.crashes.pop()
            self.inner.flush(10)  # everything produced reaches the broker, uncommitted
            raise Crash()
        self.inner.commit_transaction(timeout_s)

    def abort_transaction(self, timeout_s: float = 30.0) -> None:
        self.inner.abort_transaction(timeout_s)

    def close(self) -> None:
        pass  # a dead process closes nothing; its transaction stays open until fenced


class CrashingTransport(KafkaTransport):
    def __init__(self, settings: Any, crashes: list[int]) -> None:
        super().__init__(settings.kafka_client_config())
        self.documents_topic = settings.topic(DOCUMENTS)
        self.crashes = crashes

    def producer(self, *, transactional_id: str | None = None, name: str = "") -> Any:
        inner = super().producer(transactional_id=transactional_id, name=name)
        return CrashingProducer(inner, self.documents_topic, self.crashes) if transactional_id else inner


def test_crash_after_storage_writes_before_commit_publishes_once(env: tuple[Any, Any], transport: KafkaTransport) -> None:
    topics, store = env
    docs = {d: page_results(d, 4, failed={3} if d == "doc-y" else set()) for d in ("doc-x", "doc-y")}
    results = [r for rs in docs.values() for r in rs]
    store_results(store, results)
    send(transport, topics, shuffled_with_duplicates(results, random.Random(3)))
    crashes = [1, 1, 1]  # crash three times in a row at the same point, then let it commit
    attempts = 0
    while True:
        attempts += 1
        svc = AggregatorService(topics, CrashingTransport(topics, crashes), open_store(topics), instance_id="crashy")
        try:
            svc.run(burst=True)
            break
        except Crash:
            # The outputs were written before the commit that never came; no event is visible.
            assert store.exists(document_md_key("doc-x")) or store.exists(document_md_key("doc-y"))
            assert document_events(transport, topics) == []
        assert attempts < 10
    assert not crashes and attempts == 4
    events = document_events(transport, topics)
    assert Counter(e.doc_id for e in events) == {"doc-x": 1, "doc-y": 1}
    for rs in docs.values():
        check_outputs(store, rs)


def test_missing_stored_result_fails_its_page_and_published_documents_are_forgotten(
    make_settings: Callable[..., Any], transport: KafkaTransport, start: Callable[..., Running],
) -> None:
    s, store = isolated(make_settings, forget_after_s=1.0)
    results = page_results("doc-m", 3)
    store_results(store, [results[0], results[2]])  # page 2's result object never made it to storage
    agg = start(s)
    send(transport, s, results)
    events = wait_until(lambda: document_events(transport, s), 60, what="the document event")
    assert events[0].status == DocumentStatus.PARTIAL
    assert [(f.page_no, f.error.code) for f in events[0].failed_pages] == [(2, ErrorCode.NOT_FOUND)]
    wait_until(lambda: read_progress(transport, s, "doc-m", timeout_s=10) is None, 30, what="the changelog tombstone")
    wait_until(lambda: not agg.service._closed.get(partition_for("doc-m", 12)), 10, what="the document forgotten in memory")


def test_partitions_moving_between_instances_lose_nothing_and_publish_once(
    env: tuple[Any, Any], transport: KafkaTransport, start: Callable[..., Running],
) -> None:
    topics, store = env
    docs = {f"doc-{i}": page_results(f"doc-{i}", 6, failed={4} if i % 3 == 0 else set()) for i in range(12)}
    store_results(store, [r for rs in docs.values() for r in rs])
    rng = random.Random(5)
    first_half = [r for rs in docs.values() for r in rs if r.page_no <= 3]
    second_half = [r for rs in docs.values() for r in rs if r.page_no > 3]
    a = start(instance_id="a")
    b = start(instance_id="b")
    wait_until(lambda: a.service._assigned_once and b.service._assigned_once and a.service._open and b.service._open,
               60, what="both instances own partitions")
    send(transport, topics, shuffled_with_duplicates(first_half, rng))
    wait_until(lambda: a.metric("pages_total", status="ok") + b.metric("pages_total", status="ok") >= len(first_half),
               60, what="the first half counted")
    b.stop()  # b's partitions move to a, which rebuilds their progress from the changelog
    wait_until(lambda: len(a.service._open) == 12, 60, what="a owns every partition")
    send(transport, topics, shuffled_with_duplicates(second_half, rng))
    wait_until(lambda: len(document_events(transport, topics)) >= len(docs), 60, what="every document published")
    events = document_events(transport, topics)
    assert Counter(e.doc_id for e in events) == dict.fromkeys(docs, 1)
    for rs in docs.values():
        check_outputs(store, rs)
