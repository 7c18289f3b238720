"""The producer against the real broker and S3 server: what it publishes, and that a bad document
publishes nothing (checked on the topic's end offsets and the bucket, not by waiting for absence)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer as KConsumer, TopicPartition as KTP

from ocr_stream.topics import DLQ, PAGES
from ocr_stream.config import Settings
from ocr_stream.contracts import PageEvent, decode
from ocr_stream.errors import BadInputError, BrokerUnavailableError, StorageUnavailableError
from ocr_stream.producer import SubmitOptions, Submitter, cli
from ocr_stream.producer.bench import make_encrypted_pdf, make_image, make_pdf, make_tiff, png_with_header
from ocr_stream.storage import open_store
from ocr_stream.transport.kafka import KafkaTransport

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from conftest import corpus_dir, unique, wait_until  # noqa: E402

pytestmark = pytest.mark.integration


def end_offsets(settings: Settings, topic: str) -> int:
    """Records ever written to ``topic`` (sum of high watermarks)."""
    from confluent_kafka import KafkaException

    c = KConsumer({**settings.kafka_client_config(), "group.id": unique("wm-")})

    def total() -> int | None:
        try:
            md = c.list_topics(topic, timeout=10)
            return sum(c.get_watermark_offsets(KTP(topic, p), timeout=10)[1] for p in md.topics[topic].partitions)
        except KafkaException:  # a new topic's partitions have no leader for a moment
            return None

    try:
        result: list[int] = []
        wait_until(lambda: (n := total()) is not None and not result.append(n), 30, interval_s=0.2, what=f"end offsets of {topic}")
        return result[0]
    finally:
        c.close()


def read_events(settings: Settings, n: int, timeout_s: float = 60.0) -> list[PageEvent]:
    consumer = KafkaTransport(settings.kafka_client_config()).consumer(unique("reader-"))
    consumer.subscribe([settings.topic(PAGES)])
    got: list[Any] = []
    try:
        def enough() -> bool:
            got.extend(consumer.consume(500, 0.5))
            return len(got) >= n
        wait_until(enough, timeout_s, interval_s=0, what=f"{n} page events")
    finally:
        consumer.close()
    events = []
    for rec in got:
        e = decode(PageEvent, rec.value)
        assert rec.key == f"{e.doc_id}/{e.page_no}".encode()
        events.append(e)
    return events


def _submitter(settings: Settings, store: Any) -> Submitter:
    return Submitter(settings, store=store, producer=KafkaTransport(settings.kafka_client_config()).producer(name="t"))


def test_documents_become_stored_images_and_page_events(topics: Settings, store: Any, tmp_path: Path) -> None:
    settings = topics
    docs = [make_pdf(tmp_path / "a.pdf", 7), make_tiff(tmp_path / "b.tif", 3), make_image(tmp_path / "c.jpg", "JPEG", (2000, 1500))]
    with _submitter(settings, store) as sub:
        results = [sub.submit_file(p, SubmitOptions(metadata={"batch": "7"})) for p in docs]
    assert [r.page_count for r in results] == [7, 3, 1]
    # Acknowledged means on the broker: the end offsets already show every event.
    assert end_offsets(settings, settings.topic(PAGES)) == 11
    events = read_events(settings, 11)
    by_doc: dict[str, list[int]] = {}
    for e in events:
        by_doc.setdefault(e.doc_id, []).append(e.page_no)
        data = store.get(e.image)
        assert len(data) == e.image_bytes and data[:3] == b"\xff\xd8\xff"
        assert e.metadata == {"batch": "7"}
    assert {d: sorted(p) for d, p in by_doc.items()} == {r.doc_id: list(range(1, r.page_count + 1)) for r in results}


def test_each_bad_input_publishes_nothing(make_settings: Any, tmp_path: Path) -> None:
    from ocr_stream.topics import TopicAdmin, load_specs

    settings = make_settings(max_file_bytes=2_000_000, max_pages=20, max_page_pixels=20_000_000)
    TopicAdmin(settings.kafka_client_config(), prefix=settings.topic_prefix).apply(load_specs())
    store = open_store(settings)
    store.ensure_bucket()
    full = make_pdf(tmp_path / "full.pdf", 4).read_bytes()
    jpeg = make_image(tmp_path / "ok.jpg", "JPEG", (900, 900)).read_bytes()

    def write(name: str, data: bytes) -> Path:
        (tmp_path / name).write_bytes(data)
        return tmp_path / name

    zero = b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\ntrailer<</Root 1 0 R/Size 3>>\n%%EOF\n"

    cases: list[tuple[Path, str | None, str]] = [
        (write("truncated.pdf", full[: len(full) // 2]), None, "truncated"),
        (write("corrupt.pdf", b"%PDF-1.7\n" + bytes(range(256)) * 20 + b"\n%%EOF\n"), None, "corrupt PDF"),
        (make_encrypted_pdf(tmp_path / "locked.pdf", "pw"), None, "encrypted: give its password"),
        (make_encrypted_pdf(tmp_path / "locked2.pdf", "pw"), "wrong", "password given is wrong"),
        (write("zero.pdf", zero), None, "no pages"),
        (write("cut.jpg", jpeg[: len(jpeg) // 3]), None, "undecodable JPEG"),
        (write("big.pdf", full + b"\n" + b" " * 2_000_000 + b"\n%%EOF\n"), None, "MAX_FILE_BYTES"),
        (make_pdf(tmp_path / "long.pdf", 21), None, "21 pages, over the limit of 20"),
        (write("bomb.png", png_with_header(6000, 6000)), None, "MAX_PAGE_PIXELS"),
        (write("note.pdf", b"Dear reader,\nthis is not a PDF.\n"), None, "unsupported type: text file"),
        (write("anim.gif", b"GIF89a" + b"\x00" * 20), None, "GIF image"),
    ]
    with _submitter(settings, store) as sub:
        for path, password, problem in cases:
            with pytest.raises(BadInputError, match=problem):
                sub.submit_file(path, SubmitOptions(password=password))
        assert end_offsets(settings, settings.topic(PAGES)) == 0
        assert end_offsets(settings, settings.topic(DLQ)) == 0
        assert list(store.list("")) == []
        # The same submitter still works: the zeros above are not a broken setup.
        assert sub.submit_file(tmp_path / "full.pdf").page_count == 4
    assert end_offsets(settings, settings.topic(PAGES)) == 4


def test_every_corpus_pdf_yields_its_listed_page_count(topics: Settings, store: Any) -> None:
    corpus = corpus_dir()
    entries = json.loads((corpus / "files.json").read_text())["data"]
    damaged = {"017-unreadable-meta-data/unreadablemetadata.pdf"}  # see tests/unit/test_producer_corpus.py
    expected: dict[str, int] = {}
    with _submitter(topics, store) as sub:
        for entry in entries:
            path = corpus / entry["path"]
            password = "openpassword" if entry.get("encrypted") else None
            if entry["path"] in damaged:
                with pytest.raises(BadInputError, match="no pages"):
                    sub.submit_file(path)
                continue
            result = sub.submit_file(path, SubmitOptions(password=password))
            expected[result.doc_id] = entry["pages"]
    total = sum(expected.values())
    counts: dict[str, set[int]] = {}
    for e in read_events(topics, total):
        counts.setdefault(e.doc_id, set()).add(e.page_no)
        assert e.page_count == expected[e.doc_id]
    assert {d: len(p) for d, p in counts.items()} == expected


def test_broker_unavailable_is_a_clear_error_in_bounded_time(make_settings: Any, tmp_path: Path) -> None:
    # No topic prefix: there is no broker to create or clean topics on (and the teardown skips it).
    settings = make_settings(kafka_bootstrap_servers="127.0.0.1:1", topic_prefix="", kafka_config={"message.timeout.ms": "1500"},
                             max_attempts=2, backoff_base_s=0.1, backoff_max_s=0.2)
    store = open_store(settings)
    store.ensure_bucket()
    started = time.monotonic()
    with _submitter(settings, store) as sub, pytest.raises(BrokerUnavailableError, match=r"did not accept 2 events .* after 2 attempts"):
        sub.submit_file(make_pdf(tmp_path / "a.pdf", 2))
    assert time.monotonic() - started < 30


def test_storage_unavailable_is_a_clear_error_and_publishes_nothing(topics: Settings, make_settings: Any, tmp_path: Path) -> None:
    settings = make_settings(topic_prefix=topics.topic_prefix, s3_endpoint="127.0.0.1:1", max_attempts=2,
                             backoff_base_s=0.05, backoff_max_s=0.1)
    with _submitter(settings, open_store(settings)) as sub, pytest.raises(StorageUnavailableError, match="127.0.0.1:1 unavailable"):
        sub.submit_file(make_pdf(tmp_path / "a.pdf", 2))
    assert end_offsets(topics, topics.topic(PAGES)) == 0


def _run_cli(settings: Settings, argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str], list[str]]:
    parser = argparse.ArgumentParser()
    cli.configure(parser)
    code = cli.run(parser.parse_args(argv), settings)
    out, err = capsys.readouterr()
    return code, out.splitlines(), [line for line in err.splitlines() if line.startswith("ocr-stream submit:")]


def test_submit_command_exit_codes_and_output(topics: Settings, store: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "in").mkdir()
    make_pdf(tmp_path / "in" / "a.pdf", 2)
    make_image(tmp_path / "in" / "b.png", "PNG", (500, 700))
    code, out, err = _run_cli(topics, [str(tmp_path / "in"), "--mode", "small", "--metadata", "k=v", "--no-progress"], capsys)
    assert code == 0 and err == []
    rows = [line.split("\t") for line in out]
    assert [(int(n), Path(p).name) for _d, n, p in rows] == [(2, "a.pdf"), (1, "b.png")]
    events = read_events(topics, 3)
    assert {e.doc_id for e in events} == {rows[0][0], rows[1][0]}
    assert all(e.mode.value == "small" and max(e.image_width, e.image_height) <= 640 and e.metadata == {"k": "v"} for e in events)

    make_encrypted_pdf(tmp_path / "locked.pdf", "pw")
    code, out, err = _run_cli(topics, [str(tmp_path / "locked.pdf"), str(tmp_path / "in" / "a.pdf"), "--no-progress"], capsys)
    assert code == 1 and len(out) == 1 and len(err) == 1 and "locked.pdf: PDF is encrypted" in err[0]

    (tmp_path / "pw").write_text("pw\n")
    code, out, err = _run_cli(topics, [str(tmp_path / "locked.pdf"), "--password-file", str(tmp_path / "pw"), "--doc-id", "locked-1", "--no-progress"], capsys)
    assert code == 0 and out == [f"locked-1\t2\t{tmp_path / 'locked.pdf'}"]

    from ocr_stream.errors import ConfigError

    for argv in ([str(tmp_path / "in"), "--doc-id", "x"], [str(tmp_path / "locked.pdf"), "--engine", "BAD ENGINE"], [str(tmp_path / "in"), "--metadata", "novalue"]):
        with pytest.raises(ConfigError):  # ocr_stream.cli.main turns it into exit code 2
            _run_cli(topics, argv, capsys)
