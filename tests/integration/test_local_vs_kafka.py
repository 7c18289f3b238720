"""The same documents through local mode and through the Kafka pipeline (real broker, real S3, the
worker and aggregator services in threads of this process), with the same Tesseract engine, give
byte-identical document.md files: local mode is the production code path, not a look-alike."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from test_local_mode import PAGES, make_pdf

from ocr_stream import local
from ocr_stream.aggregator.service import AggregatorService
from ocr_stream.config import load_settings
from ocr_stream.contracts import DocumentEvent, DocumentStatus, decode
from ocr_stream.engines.tesseract import TesseractEngine
from ocr_stream.producer.submit import SubmitOptions, Submitter
from ocr_stream.topics import DOCUMENTS
from ocr_stream.transport.kafka import KafkaTransport
from ocr_stream.worker.service import Worker

pytestmark = pytest.mark.integration


def _documents(tmp_path: Path) -> list[Path]:
    a, b = tmp_path / "docs" / "harbour.pdf", tmp_path / "docs" / "notes.pdf"
    a.parent.mkdir()
    make_pdf(a, PAGES)
    make_pdf(b, [["Meeting Notes", "", "Attendees: Ana, Bo and Chen.", "Decision: ship the release on Friday."],
                 ["Next Steps", "", "Chen writes the release notes.", "Bo checks the backups twice."],
                 ["Appendix", "", "Room 4.12 is booked until noon."]])
    return [a, b]


def test_local_mode_and_the_kafka_pipeline_write_identical_markdown(tmp_path: Path, topics: Any, store: Any) -> None:
    docs = _documents(tmp_path)

    # Local mode.
    report = local.run_local([str(p) for p in docs], tmp_path / "local", load_settings(metrics_port=0), progress=False)
    assert report.exit_code == 0, report.summary()
    local_md = {d.doc_id: (d.output_dir / "document.md").read_bytes() for d in report.documents if d.output_dir}
    assert len(local_md) == 2

    # The Kafka pipeline: same settings but Kafka and S3, same engine.
    settings = topics.model_copy(update={"engine": "tesseract", "max_in_flight": 2})
    kafka = KafkaTransport(settings.kafka_client_config())
    with Submitter(settings, store=store, producer=kafka.producer(name="submit")) as submitter:
        submitted = {submitter.submit_file(p, SubmitOptions(source=str(p))).doc_id for p in docs}
    assert submitted == set(local_md)  # doc_ids are derived from content and options: the same

    worker = Worker(settings, transport=kafka, store=store, engines={"tesseract": TesseractEngine(threads=1)}, metrics_port=0)
    aggregator = AggregatorService(settings, kafka, store, tick_s=0.2)
    loop_box: dict[str, asyncio.AbstractEventLoop] = {}
    codes: dict[str, Any] = {}

    async def run_worker() -> None:
        loop_box["loop"] = asyncio.get_running_loop()
        codes["worker"] = await worker.run()

    threads = [
        threading.Thread(target=lambda: asyncio.run(run_worker()), name="worker", daemon=True),
        threading.Thread(target=lambda: codes.__setitem__("aggregator", aggregator.run()), name="aggregator", daemon=True),
    ]
    for t in threads:
        t.start()
    watcher = kafka.consumer(f"{settings.topic_prefix}watch")
    watcher.subscribe([settings.topic(DOCUMENTS)])
    events: dict[str, DocumentEvent] = {}
    try:
        deadline = time.monotonic() + 120
        while set(events) != submitted:
            assert time.monotonic() < deadline, f"documents published: {sorted(events)} of {sorted(submitted)}"
            assert all(t.is_alive() for t in threads), f"a service stopped: {codes}"
            for rec in watcher.consume(10, 0.5):
                ev = decode(DocumentEvent, rec.value)
                events[ev.doc_id] = ev
    finally:
        watcher.close()
        aggregator.stop()
        loop = loop_box.get("loop")
        if loop is not None:
            loop.call_soon_threadsafe(worker.request_stop)
        for t in threads:
            t.join(60)
    assert codes == {"worker": 0, "aggregator": 0}

    for doc_id, ev in events.items():
        assert ev.status == DocumentStatus.COMPLETE
        assert ev.markdown_ref is not None
        kafka_md = store.get(ev.markdown_ref)
        assert kafka_md == local_md[doc_id], f"{doc_id}: local mode and Kafka differ"
    assert b"Harbour Inspection" in b"".join(local_md.values()) and b"Meeting Notes" in b"".join(local_md.values())
