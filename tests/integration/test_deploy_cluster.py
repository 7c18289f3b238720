"""``ocr-stream status`` and the start-up waits against the real broker, the real S3 server and the
simulator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import ROOT  # noqa: E402

from ocr_stream.contracts import DocumentEvent, DocumentProgress, DocumentStatus, ErrorInfo, FailedPage, encode
from ocr_stream.errors import ErrorCode
from ocr_stream.status import cluster_lag, document_status
from ocr_stream.topics import CHANGELOG, DOCUMENTS, PAGES, TopicAdmin, load_specs
from ocr_stream.wait import DependencyTimeoutError, wait_for_dependencies

pytestmark = pytest.mark.integration


def cli_env(settings: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCR_STREAM_") or k.startswith("OCR_STREAM_TEST_")}
    env.update({
        "OCR_STREAM_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "OCR_STREAM_TOPIC_PREFIX": settings.topic_prefix,
        "OCR_STREAM_S3_ENDPOINT": settings.s3_endpoint,
        "OCR_STREAM_S3_ACCESS_KEY": settings.s3_access_key.get_secret_value(),
        "OCR_STREAM_S3_SECRET_KEY": settings.s3_secret_key.get_secret_value(),
        "OCR_STREAM_BUCKET": settings.bucket,
    })
    return env


def ocr_stream(settings: Any, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ocr_stream.cli", *args], capture_output=True, text=True, timeout=timeout,
                          env=cli_env(settings), cwd=ROOT)


def test_lag_per_group_and_topic(topics: Any) -> None:
    from confluent_kafka import Consumer, Producer, TopicPartition

    settings = topics
    topic = settings.topic(PAGES)
    producer = Producer(settings.kafka_client_config())
    for partition, n in ((0, 5), (1, 3)):
        for i in range(n):
            producer.produce(topic, value=b"x", key=f"k{i}".encode(), partition=partition)
    assert producer.flush(30) == 0

    group = f"status-test-{uuid.uuid4().hex[:8]}"
    consumer = Consumer({**settings.kafka_client_config(), "group.id": group, "enable.auto.commit": False})
    try:
        consumer.commit(offsets=[TopicPartition(topic, 0, 2)], asynchronous=False)
    finally:
        consumer.close()

    rows = [r for r in cluster_lag(settings) if r.group == group]
    assert len(rows) == 1
    row = rows[0]
    assert row.topic == topic and row.lag == 3 + 3  # partition 0: 5 - 2; partition 1: never committed, all 3
    by_part = {p.partition: p for p in row.partitions}
    assert (by_part[0].committed, by_part[0].end, by_part[0].lag) == (2, 5, 3)
    assert (by_part[1].committed, by_part[1].lag) == (None, 3)
    assert len(row.partitions) == 24 and row.uncommitted_partitions == 23

    # The command, as an operator runs it: only this prefix's topics, this group on request.
    res = ocr_stream(settings, "status", "--json", "--group", group)
    assert res.returncode == 0, res.stderr
    (shown,) = json.loads(res.stdout)
    assert (shown["group"], shown["topic"], shown["lag"]) == (group, topic, 6)
    table = ocr_stream(settings, "status", "--group", group)
    assert table.returncode == 0 and table.stdout.splitlines()[1].split()[-1] == "6"


def test_document_progress_from_the_aggregator_state_and_the_published_event(topics: Any, transport: Any) -> None:
    settings = topics
    producer = transport.producer(name="status-test")
    progress = DocumentProgress(
        doc_id="doc-open", page_count=10, pages_ok=[(1, 4), (6, 8)],
        pages_failed=[FailedPage(page_no=5, error=ErrorInfo(code=ErrorCode.CORRUPT, message="cannot decode the page image"))],
    )
    older = progress.model_copy(update={"pages_ok": [(1, 2)], "pages_failed": []})
    for p in (older, progress):  # the latest record wins
        producer.produce(settings.topic(CHANGELOG), encode(p), key=b"doc-open")
    event = DocumentEvent(doc_id="doc-done", status=DocumentStatus.COMPLETE, page_count=3, pages_ok=3, pages_failed=0)
    producer.produce(settings.topic(DOCUMENTS), encode(event), key=b"doc-done")
    assert producer.flush(30) == 0

    view = document_status(settings, "doc-open")
    assert view is not None
    d = view.as_dict()
    assert (d["source"], d["status"], d["done"], d["failed"], d["pending"]) == ("aggregator state", "in progress", 7, 1, 2)
    assert d["pages_pending"] == [[9, 10]]

    res = ocr_stream(settings, "status", "doc-open")
    assert res.returncode == 0, res.stderr
    assert "done:    7  (1-4, 6-8)" in res.stdout and "page 5: corrupt: cannot decode the page image" in res.stdout
    assert "pending: 2  (9-10)" in res.stdout

    done = ocr_stream(settings, "status", "doc-done", "--json")
    assert done.returncode == 0, done.stderr
    d = json.loads(done.stdout)
    assert (d["source"], d["status"], d["done"], d["pending"]) == ("document event", "complete", 3, 0)

    unknown = ocr_stream(settings, "status", "doc-never-seen")
    assert unknown.returncode == 1 and "document doc-never-seen is unknown" in unknown.stderr

    bad = ocr_stream(settings, "status", "../etc")
    assert bad.returncode == 2 and "is not a document id" in bad.stderr


# ----------------------------------------------------------------------------- start-up waits


def test_waits_until_broker_topics_bucket_and_model_answer(make_settings: Callable[..., Any], store: Any) -> None:
    from ocr_stream.simulator.process import SimulatorProcess

    sim = SimulatorProcess.start("--speed", "50")
    try:
        s = make_settings(bucket=store.bucket, vllm_urls=f"{sim.url},http://127.0.0.1:1")
        # Topics missing: the wait names them and gives up at the deadline.
        with pytest.raises(DependencyTimeoutError) as err:
            wait_for_dependencies(s, need={"kafka", "topics"}, deadline_s=2)
        assert f"missing topics {s.topic_prefix}" in str(err.value) and "ocr-stream topics apply" in str(err.value)

        TopicAdmin(s.kafka_client_config(), prefix=s.topic_prefix).apply(load_specs())
        # One model server down of two is enough to start (the worker takes the other back later).
        took = wait_for_dependencies(s, need={"kafka", "topics", "storage", "model"}, deadline_s=30)
        assert set(took) == {"kafka", "topics", "storage", "model"}
    finally:
        sim.stop()


def test_reports_what_is_missing_at_the_deadline(make_settings: Callable[..., Any]) -> None:
    s = make_settings(bucket=f"missing-{uuid.uuid4().hex[:8]}", vllm_urls="http://127.0.0.1:1")
    with pytest.raises(DependencyTimeoutError) as err:
        wait_for_dependencies(s, need={"kafka", "storage", "model"}, deadline_s=2)
    msg = str(err.value)
    assert f"bucket '{s.bucket}' does not exist yet" in msg
    assert "no model server answers /health: http://127.0.0.1:1" in msg
    assert "Kafka" not in msg  # the broker answered

    # As a command: exit 1 and one sentence on stderr.
    res = subprocess.run([sys.executable, "-m", "ocr_stream.wait", "storage", "--deadline", "1"], capture_output=True, text=True,
                         timeout=60, env={**cli_env(s), "OCR_STREAM_BUCKET": s.bucket}, cwd=ROOT)
    assert res.returncode == 1 and "gave up after 1s waiting for object storage" in res.stderr
    assert "waiting for object storage" in res.stderr  # the log line said so while waiting


def test_image_entrypoint_waits_then_runs_the_command(topics: Any) -> None:
    settings = topics
    entry = ["sh", str(ROOT / "deploy" / "docker-entrypoint.sh")]
    env = {**cli_env(settings), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}

    ok = subprocess.run([*entry, "topics", "check"], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    assert "topics match topics/" in ok.stdout

    down = {**env, "OCR_STREAM_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "OCR_STREAM_STARTUP_DEADLINE_S": "2"}
    res = subprocess.run([*entry, "aggregator"], capture_output=True, text=True, timeout=120, env=down, cwd=ROOT)
    assert res.returncode == 1
    assert "waiting for Kafka at 127.0.0.1:1" in res.stderr and "gave up after 2s waiting for Kafka at 127.0.0.1:1" in res.stderr

    # Commands that need nothing do not wait.
    helped = subprocess.run([*entry, "--version"], capture_output=True, text=True, timeout=60, env=down, cwd=ROOT)
    assert helped.returncode == 0 and helped.stdout.startswith("ocr-stream ")
