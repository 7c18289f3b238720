"""The aggregator killed with SIGKILL at random moments while results flow, and restarted: every
document is published exactly once (read_committed on ocr.documents), none is lost, and the outputs
are the bytes the pure assembly gives."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections import Counter, deque
from pathlib import Path
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
from conftest import ROOT, wait_until

from ocr_stream.contracts import DocumentStatus
from ocr_stream.storage.base import document_json_key, document_md_key
from ocr_stream.transport.kafka import KafkaTransport
from stack import free_port  # noqa: E402 - below the ephemeral port range (tests/stack.py)

pytestmark = pytest.mark.system

KILLS = 15


class Aggregator:
    """``python -m ocr_stream.aggregator`` as a subprocess, its stderr (JSON log lines) followed."""

    def __init__(self, settings: Any, *, metrics_port: int = 0) -> None:
        env = dict(os.environ)
        env.update({
            "OCR_STREAM_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
            "OCR_STREAM_TOPIC_PREFIX": settings.topic_prefix,
            "OCR_STREAM_STORAGE": "s3",
            "OCR_STREAM_S3_ENDPOINT": settings.s3_endpoint,
            "OCR_STREAM_S3_ACCESS_KEY": settings.s3_access_key.get_secret_value(),
            "OCR_STREAM_S3_SECRET_KEY": settings.s3_secret_key.get_secret_value(),
            "OCR_STREAM_BUCKET": settings.bucket,
            "OCR_STREAM_METRICS_PORT": str(metrics_port),
            "OCR_STREAM_CONSUMER_GROUP_AGGREGATOR": settings.consumer_group_aggregator,
            "OCR_STREAM_LOG_LEVEL": "INFO",
        })
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ocr_stream.aggregator", "--instance-id", "agg-0", "--batch-size", "5"],
            cwd=ROOT, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
        )
        self.assigned = threading.Event()
        self.published = threading.Event()
        self.lines: deque[str] = deque(maxlen=200)
        threading.Thread(target=self._follow, daemon=True).start()

    def _follow(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            if "state rebuilt" in line:
                self.assigned.set()
            elif "document published" in line:
                self.published.set()

    def log_tail(self) -> str:
        return "".join(self.lines)[-4000:]


def test_sigkill_at_random_moments_publishes_each_document_exactly_once(make_settings: Any, transport: KafkaTransport) -> None:
    topics, store = isolated(make_settings)
    rng = random.Random(int(os.environ.get("OCR_STREAM_TEST_SEED", "7")))
    docs = {}
    for i in range(60):
        count = rng.randint(1, 12)
        failed = rng.sample(range(1, count + 1), rng.choice([0, 0, 0, 1, 2]) if count > 2 else 0)
        if i == 0:
            failed = list(range(1, count + 1))  # one document fails everywhere
        docs[f"doc-{i:02d}"] = page_results(f"doc-{i:02d}", count, failed)
    results = [r for rs in docs.values() for r in rs]
    store_results(store, results)
    # Documents complete throughout the run (so that kills land around publications): results come
    # roughly document after document, shuffled and duplicated within each, and a few duplicates of
    # earlier documents arrive late.
    items: list[Any] = []
    for rs in docs.values():
        items += shuffled_with_duplicates([*rs, *(dead_letter_for(r) for r in rs if r.error)], rng)
    size = len(items) // (KILLS + 1) + 1
    chunks = [items[i * size:(i + 1) * size] for i in range(KILLS + 1)]
    for i in range(1, KILLS + 1):
        chunks[i] += rng.sample(results, 3)

    procs: list[subprocess.Popen[str]] = []
    try:
        run_cycles(topics, store, transport, docs, chunks, rng, procs)
    finally:
        for proc in procs:  # leave nothing running, whatever failed
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def run_cycles(topics: Any, store: Any, transport: KafkaTransport, docs: dict[str, Any],
               chunks: list[list[Any]], rng: random.Random, procs: list[subprocess.Popen[str]]) -> None:
    kill_moments = []
    for cycle in range(KILLS):
        agg = Aggregator(topics)
        procs.append(agg.proc)
        send(transport, topics, chunks[cycle])
        # Fault injection, three kinds of moment: (0) at random after start, often before it has its
        # partitions; (1) shortly after it got them, while it rebuilds or starts processing; (2) just
        # after it published a document, while later transactions of the chunk are in flight.
        mode = cycle % 3 if cycle > 0 else 1  # cycle 0 lets the group form (a member killed while a new group forms holds it up ~30 s)
        if mode == 0:
            delay = rng.uniform(0.2, 2.5)
            threading.Event().wait(delay)
        elif mode == 1:
            assert agg.assigned.wait(60), f"no assignment within 60 s:\n{agg.log_tail()}"
            delay = rng.uniform(0.0, 0.3)
            threading.Event().wait(delay)
        else:
            if not agg.published.wait(30):
                raise AssertionError(f"nothing published within 30 s:\n{agg.log_tail()}")
            delay = rng.uniform(0.0, 0.03)
            threading.Event().wait(delay)
        kill_moments.append((mode, round(delay, 2)))
        assert agg.proc.poll() is None, f"aggregator exited on its own:\n{agg.log_tail()}"
        agg.proc.send_signal(signal.SIGKILL)
        agg.proc.wait(10)

    port = free_port()
    final = Aggregator(topics, metrics_port=port)
    procs.append(final.proc)
    try:
        send(transport, topics, chunks[KILLS])
        events = wait_until(lambda: (e := document_events(transport, topics)) and len({x.doc_id for x in e}) >= len(docs) and e,
                            90, what=f"events for all {len(docs)} documents")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
            assert resp.status == 200 and json.loads(resp.read())["ok"] is True
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            assert b"ocr_stream_aggregator_documents_total" in resp.read()
    finally:
        final.proc.send_signal(signal.SIGTERM)
        rc = final.proc.wait(60)
    assert rc == 0, final.log_tail()

    # Read again after the clean stop: anything published late would show up now.
    events = document_events(transport, topics)
    counts = Counter(e.doc_id for e in events)
    assert counts == dict.fromkeys(docs, 1), f"kills at {kill_moments}: {counts}"
    for e in events:
        rs = docs[e.doc_id]
        failed = [r.page_no for r in rs if r.error]
        expected_status = DocumentStatus.COMPLETE if not failed else DocumentStatus.FAILED if len(failed) == len(rs) else DocumentStatus.PARTIAL
        assert e.status == expected_status and [f.page_no for f in e.failed_pages] == failed
        md, js = expected_outputs(rs)
        assert store.get_key(document_md_key(e.doc_id)) == md
        assert store.get_key(document_json_key(e.doc_id)) == js
