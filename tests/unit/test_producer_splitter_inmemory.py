"""The splitter over the in-memory transport and a local folder store (fast paths and poison pills;
the real broker and S3 are in tests/integration/test_producer_splitter.py)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from ocr_stream import topics
from ocr_stream.config import load_settings
from ocr_stream.contracts import DeadLetter, DocumentRequest, ObjectRef, PageEvent, decode, encode
from ocr_stream.errors import ForbiddenLocationError, NotFoundError
from ocr_stream.producer.bench import make_pdf
from ocr_stream.producer.splitter import Splitter, _redacted_raw, download_object
from ocr_stream.storage import LocalStore
from ocr_stream.transport.memory import MemoryTransport


def _wait(cond: Any, timeout_s: float = 20.0) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, Any]:
    settings = load_settings(storage="local", local_storage_path=tmp_path / "s", topic_prefix="u.", max_attempts=2,
                             backoff_base_s=0.01, backoff_max_s=0.02)
    store = LocalStore(tmp_path / "s", bucket=settings.bucket)
    store.ensure_bucket()
    transport = MemoryTransport()
    transport.ensure_topics({settings.topic(topics.PAGES): 8, settings.topic(topics.DLQ): 1, settings.topic(topics.REQUESTS): 2})
    return {"settings": settings, "store": store, "transport": transport, "dir": tmp_path}


def test_download_streams_local_objects_and_respects_the_allow_list(env: dict[str, Any]) -> None:
    store: LocalStore = env["store"]
    ref = store.put("in/a.bin", b"x" * 3_000_000)
    assert download_object(store, ref, env["dir"] / "copy") == 3_000_000
    with pytest.raises(NotFoundError):
        download_object(store, ObjectRef(bucket=store.bucket, key="in/none"), env["dir"] / "c2")
    with pytest.raises(ForbiddenLocationError):
        download_object(store, ObjectRef(bucket="other-bucket", key="in/a.bin"), env["dir"] / "c3")


def test_password_never_reaches_the_dlq() -> None:
    assert "hunter2" not in (_redacted_raw(b'{"password": "hunter2", "source": 1}') or "")
    assert "hunter2" not in (_redacted_raw(b'{"password": "hunter2", broken json') or "")
    assert _redacted_raw(b"plain") == "plain"


def test_a_request_that_keeps_crashing_is_dead_lettered_not_retried_forever(env: dict[str, Any]) -> None:
    s, transport, store = env["settings"], env["transport"], env["store"]
    good = store.put("in/good.pdf", make_pdf(env["dir"] / "g.pdf", 2).read_bytes())
    poison = store.put("in/poison.pdf", make_pdf(env["dir"] / "p.pdf", 1).read_bytes())
    producer = transport.producer()
    producer.produce(s.topic(topics.REQUESTS), encode(DocumentRequest(doc_id="poison", source=poison)), b"k")
    producer.produce(s.topic(topics.REQUESTS), encode(DocumentRequest(doc_id="good", source=good)), b"k")
    producer.flush()
    splitter = Splitter(s, transport=transport, store=store)
    real = splitter.submitter.submit_file

    def submit_file(path: Path, options: Any, **kw: Any) -> Any:
        if options.doc_id == "poison":
            raise RuntimeError("library surprise")
        return real(path, options, **kw)

    splitter.submitter.submit_file = submit_file  # type: ignore[method-assign]
    thread = threading.Thread(target=splitter.run, daemon=True)
    thread.start()
    try:
        _wait(lambda: sum(transport.end_offsets(s.topic(topics.PAGES))) == 2)
    finally:
        splitter.stop.set()
        thread.join(10)
    consumer = transport.consumer("check")
    consumer.subscribe([s.topic(topics.DLQ)])
    recs: list[Any] = []
    _wait(lambda: recs.extend(consumer.consume(10, 0.05)) or len(recs) == 1)
    letter = decode(DeadLetter, recs[0].value)
    assert letter.doc_id == "poison" and letter.error.code.value == "internal" and "library surprise" in letter.error.message
    assert sum(transport.committed_offsets(s.consumer_group_splitter).values()) == 2
    consumer2 = transport.consumer("pages")
    consumer2.subscribe([s.topic(topics.PAGES)])
    pages: list[Any] = []
    _wait(lambda: pages.extend(consumer2.consume(10, 0.05)) or len(pages) == 2)
    assert {decode(PageEvent, r.value).doc_id for r in pages} == {"good"}


def test_burst_mode_drains_then_exits(env: dict[str, Any]) -> None:
    s, transport, store = env["settings"], env["transport"], env["store"]
    ref = store.put("in/a.pdf", make_pdf(env["dir"] / "a.pdf", 3).read_bytes())
    producer = transport.producer()
    producer.produce(s.topic(topics.REQUESTS), encode(DocumentRequest(source=ref)), b"a")
    producer.flush()
    assert Splitter(s, transport=transport, store=store).run(burst=True, idle_exit_s=0.5) == 0
    assert sum(transport.end_offsets(s.topic(topics.PAGES))) == 3


def _s3_event(*records: tuple[str, str, str]) -> bytes:
    """An S3 event notification as MinIO's Kafka target writes it."""
    import json

    return json.dumps({
        "EventName": records[0][0], "Key": f"{records[0][1]}/{records[0][2]}",
        "Records": [{
            "eventVersion": "2.0", "eventSource": "minio:s3", "awsRegion": "", "eventTime": "2026-11-27T07:00:00.000Z",
            "eventName": name, "userIdentity": {"principalId": "minio"},
            "s3": {"s3SchemaVersion": "1.0", "configurationId": "Config", "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
                   "object": {"key": key, "size": 1, "eTag": "x", "contentType": "application/pdf", "sequencer": "1"}},
        } for name, bucket, key in records],
    }).encode()


def test_s3_event_notifications_are_requests_too() -> None:
    from datetime import UTC, datetime

    from ocr_stream.errors import SchemaViolationError
    from ocr_stream.producer.splitter import parse_requests

    reqs = parse_requests(_s3_event(("s3:ObjectCreated:Put", "inbox", "scans/My+Scan%282%29.pdf"),
                                    ("s3:ObjectRemoved:Delete", "inbox", "old.pdf"),
                                    ("ObjectCreated:CompleteMultipartUpload", "inbox", "big.tif")))
    assert [(r.source.bucket, r.source.key) for r in reqs] == [("inbox", "scans/My Scan(2).pdf"), ("inbox", "big.tif")]
    assert reqs[0].doc_id is None and reqs[0].submitted_at == datetime(2026, 11, 27, 7, 0, tzinfo=UTC)
    assert reqs[0].metadata == {"s3_event": "s3:ObjectCreated:Put"}
    assert parse_requests(_s3_event(("s3:ObjectRemoved:Delete", "inbox", "x.pdf"))) == []
    with pytest.raises(SchemaViolationError, match=r"Records\[0\] lacks"):
        parse_requests(b'{"Records": [{"eventName": "s3:ObjectCreated:Put"}]}')
    with pytest.raises(SchemaViolationError, match="source"):
        parse_requests(b'{"doc_id": "x"}')


def test_an_uploaded_object_is_split_from_its_s3_event(env: dict[str, Any]) -> None:
    s, transport, store = env["settings"], env["transport"], env["store"]
    store.put("inbox/two words.pdf", make_pdf(env["dir"] / "a.pdf", 2).read_bytes())
    producer = transport.producer()
    producer.produce(s.topic(topics.REQUESTS), _s3_event(("s3:ObjectCreated:Put", s.bucket, "inbox/two+words.pdf")), b"e")
    producer.flush()
    assert Splitter(s, transport=transport, store=store).run(burst=True, idle_exit_s=0.5) == 0
    assert sum(transport.end_offsets(s.topic(topics.PAGES))) == 2
    assert sum(transport.end_offsets(s.topic(topics.DLQ))) == 0
