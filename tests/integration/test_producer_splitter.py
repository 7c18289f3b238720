"""`ocr-stream splitter` against the real broker and S3 server: requests in, page events out, bad
requests to the DLQ with the reason, offsets committed only when a request is done."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer as KConsumer, TopicPartition as KTP

from ocr_stream.contracts import DeadLetter, DocumentRequest, Mode, ObjectRef, PageEvent, decode, encode
from ocr_stream.producer.bench import make_encrypted_pdf, make_pdf, make_tiff
from ocr_stream.producer.splitter import Splitter
from ocr_stream.storage import open_store
from ocr_stream.topics import DLQ, PAGES, REQUESTS, TopicAdmin, load_specs
from ocr_stream.transport.kafka import KafkaTransport

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from conftest import unique, wait_until  # noqa: E402

pytestmark = pytest.mark.integration


def _read(transport: KafkaTransport, topic: str, sink: list[Any]) -> Any:
    consumer = transport.consumer(unique("reader-"))
    consumer.subscribe([topic])

    def poll(n: int) -> bool:
        sink.extend(consumer.consume(500, 0.3))
        return len(sink) >= n
    return consumer, poll


def test_splitter_turns_requests_into_page_events_and_bad_requests_into_dead_letters(make_settings: Any, tmp_path: Path) -> None:
    settings = make_settings(consumer_group_splitter=unique("split-"), backoff_base_s=0.05, backoff_max_s=0.1)
    TopicAdmin(settings.kafka_client_config(), prefix=settings.topic_prefix).apply(load_specs())
    store = open_store(settings)
    store.ensure_bucket()
    pdf = store.put("incoming/report.pdf", make_pdf(tmp_path / "r.pdf", 5).read_bytes())
    tif = store.put("incoming/fax.tif", make_tiff(tmp_path / "f.tif", 2).read_bytes())
    locked = store.put("incoming/locked.pdf", make_encrypted_pdf(tmp_path / "l.pdf", "pw", pages=3).read_bytes())
    junk = store.put("incoming/junk.pdf", b"not a document at all\n")

    good = DocumentRequest(doc_id="req-1", source=pdf, metadata={"ticket": 9})
    requests: list[bytes] = [
        encode(good),
        encode(good),  # a repeat: must produce the very same events again
        encode(DocumentRequest(source=tif, mode=Mode.SMALL, prompt="free")),
        encode(DocumentRequest(doc_id="req-unlocked", source=locked, password="pw")),
        encode(DocumentRequest(doc_id="req-missing", source=ObjectRef(bucket=settings.bucket, key="incoming/nope.pdf"))),
        encode(DocumentRequest(doc_id="req-forbidden", source=ObjectRef(bucket="someone-elses", key="x.pdf"))),
        encode(DocumentRequest(doc_id="req-locked", source=locked, password="wrong-pass-123")),
        encode(DocumentRequest(doc_id="req-junk", source=junk)),
        b'{"source": "s3://not/an/object-ref"}',
        json.dumps({"EventName": "s3:ObjectCreated:Put", "Records": [{  # what MinIO's Kafka target writes
            "eventName": "s3:ObjectCreated:Put", "eventTime": "2026-11-27T07:00:00.000Z",
            "s3": {"bucket": {"name": settings.bucket}, "object": {"key": "incoming/fax.tif", "size": 1}}}]}).encode(),
    ]
    transport = KafkaTransport(settings.kafka_client_config())
    producer = transport.producer(name="upstream")
    for value in requests:
        producer.produce(settings.topic(REQUESTS), value, b"k")  # one key: one partition, in order
    assert producer.flush(30) == 0

    splitter = Splitter(settings, transport=transport, store=store)
    thread = threading.Thread(target=splitter.run, daemon=True)
    thread.start()
    pages: list[Any] = []
    letters: list[Any] = []
    pc, pages_done = _read(transport, settings.topic(PAGES), pages)
    dc, letters_done = _read(transport, settings.topic(DLQ), letters)
    try:
        wait_until(lambda: pages_done(5 + 5 + 2 + 3 + 2) and letters_done(5), 90, interval_s=0, what="page events and dead letters")
    finally:
        splitter.stop.set()
        thread.join(30)
        pc.close()
        dc.close()
    assert not thread.is_alive()

    events = [decode(PageEvent, r.value) for r in pages]
    req1 = sorted((e for e in events if e.doc_id == "req-1"), key=lambda e: e.page_no)
    assert [e.page_no for e in req1] == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert req1[0] == req1[1] and req1[8] == req1[9], "a repeated request yields identical events"
    assert req1[0].source == str(pdf) and req1[0].metadata == {"ticket": 9} and req1[0].submitted_at == good.submitted_at
    fax = [e for e in events if e.doc_id.startswith("sha256-") and e.mode is Mode.SMALL]
    assert sorted(e.page_no for e in fax) == [1, 2] and all(e.prompt.endswith("Free OCR.") for e in fax)
    from_event = [e for e in events if e.metadata == {"s3_event": "s3:ObjectCreated:Put"}]
    assert sorted(e.page_no for e in from_event) == [1, 2] and all(e.source == str(tif) and e.mode is Mode.GUNDAM for e in from_event)
    assert sorted(e.page_no for e in events if e.doc_id == "req-unlocked") == [1, 2, 3]

    dead = {(d.doc_id, d.error.code.value): d for d in (decode(DeadLetter, r.value) for r in letters)}
    assert set(dead) == {("req-missing", "not_found"), ("req-forbidden", "forbidden_location"),
                         ("req-locked", "encrypted"), ("req-junk", "unsupported_type"), (None, "schema_violation")}
    assert "incoming/junk.pdf" in dead[("req-junk", "unsupported_type")].error.message
    locked_letter = dead[("req-locked", "encrypted")]
    assert locked_letter.raw and "wrong-pass-123" not in locked_letter.raw and '"***"' in locked_letter.raw
    assert all(d.page_no is None and d.origin_topic == settings.topic(REQUESTS) for d in dead.values())

    # Every request was committed (the group would not see any of them again).
    c = KConsumer({**settings.kafka_client_config(), "group.id": settings.consumer_group_splitter})
    try:
        md = c.list_topics(settings.topic(REQUESTS), timeout=10)
        parts = [KTP(settings.topic(REQUESTS), p) for p in md.topics[settings.topic(REQUESTS)].partitions]
        committed = sum(max(tp.offset, 0) for tp in c.committed(parts, timeout=10))
    finally:
        c.close()
    assert committed == len(requests)


def test_a_request_waits_out_a_storage_outage_without_being_dead_lettered(make_settings: Any, tmp_path: Path) -> None:
    settings = make_settings(consumer_group_splitter=unique("split-"), backoff_base_s=0.05, backoff_max_s=0.1, max_attempts=1)
    TopicAdmin(settings.kafka_client_config(), prefix=settings.topic_prefix).apply(load_specs())
    store = open_store(settings)
    store.ensure_bucket()
    ref = store.put("in/a.pdf", make_pdf(tmp_path / "a.pdf", 2).read_bytes())
    transport = KafkaTransport(settings.kafka_client_config())
    producer = transport.producer()
    producer.produce(settings.topic(REQUESTS), encode(DocumentRequest(doc_id="outage", source=ref)), b"outage")
    assert producer.flush(30) == 0

    down = {"on": True}
    real_size = store.size

    def size(r: ObjectRef) -> int:
        if down["on"]:
            from ocr_stream.errors import StorageUnavailableError
            raise StorageUnavailableError("S3 server unavailable (test)")
        return real_size(r)

    store.size = size
    splitter = Splitter(settings, transport=transport, store=store)
    thread = threading.Thread(target=splitter.run, daemon=True)
    thread.start()
    pages: list[Any] = []
    pc, pages_done = _read(transport, settings.topic(PAGES), pages)
    try:
        wait_until(lambda: splitter.requests.labels("retried")._value.get() >= 2, 30, what="the splitter to retry")
        assert splitter.health()["no_outage"] is False
        down["on"] = False
        wait_until(lambda: pages_done(2), 60, interval_s=0, what="the pages after the outage")
    finally:
        splitter.stop.set()
        thread.join(30)
        pc.close()
    assert sorted(decode(PageEvent, r.value).page_no for r in pages) == [1, 2]
    assert splitter.requests.labels("dead_lettered")._value.get() == 0
