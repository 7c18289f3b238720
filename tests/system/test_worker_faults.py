"""The worker as a subprocess (``python -m ocr_stream worker``) against the real broker, the real
S3 server and the simulator: SIGKILL mid-run loses no page; SIGTERM drains, commits, exits 0
(also with --processes 2, where the parent forwards the signal)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from ocr_stream.contracts import PageEvent, PageStatus, decode
from ocr_stream.simulator.output import TokenDistribution
from ocr_stream.storage import open_store
from ocr_stream.topics import PAGES, TopicAdmin, load_specs
from ocr_stream.transport.kafka import KafkaTransport
from worker_helpers import committed_everything, read_all, results, submit

pytestmark = pytest.mark.system

PARTITIONS = 24


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait(10)


def setup(make_settings: Any, sim: Any, **overrides: Any) -> tuple[Any, KafkaTransport, Any]:
    base: dict[str, Any] = dict(vllm_urls=[sim.url], consumer_group_worker=f"workers-{uuid.uuid4().hex[:8]}", max_in_flight=4,
                                adaptive_in_flight=False, backoff_base_s=0.05, backoff_max_s=0.5, shutdown_grace_s=20.0,
                                request_timeout_s=30.0)
    base.update(overrides)
    settings = make_settings(**base)
    TopicAdmin(settings.kafka_client_config(), prefix=settings.topic_prefix).apply(load_specs())
    store = open_store(settings)
    store.ensure_bucket()
    return settings, KafkaTransport(settings.kafka_client_config()), store


def env_for(settings: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCR_STREAM_") or k.startswith("OCR_STREAM_TEST_")}
    values = {
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers, "TOPIC_PREFIX": settings.topic_prefix,
        "CONSUMER_GROUP_WORKER": settings.consumer_group_worker, "STORAGE": "s3", "S3_ENDPOINT": settings.s3_endpoint,
        "S3_ACCESS_KEY": settings.s3_access_key.get_secret_value(), "S3_SECRET_KEY": settings.s3_secret_key.get_secret_value(),
        "BUCKET": settings.bucket, "VLLM_URLS": ",".join(settings.vllm_urls), "MAX_IN_FLIGHT": str(settings.max_in_flight),
        "ADAPTIVE_IN_FLIGHT": "false", "BACKOFF_BASE_S": str(settings.backoff_base_s), "BACKOFF_MAX_S": str(settings.backoff_max_s),
        "SHUTDOWN_GRACE_S": str(settings.shutdown_grace_s), "REQUEST_TIMEOUT_S": str(settings.request_timeout_s),
        # A killed member holds its partitions until its session times out: keep that short.
        "KAFKA_CONFIG": '{"session.timeout.ms": "6000", "heartbeat.interval.ms": "1000"}',
        "METRICS_PORT": "0", "LOG_LEVEL": os.environ.get("OCR_STREAM_TEST_WORKER_LOG_LEVEL", "WARNING"),
    }
    env.update({f"OCR_STREAM_{k}": v for k, v in values.items()})
    return env


def start_worker(settings: Any, procs: list[subprocess.Popen[bytes]], *args: str) -> subprocess.Popen[bytes]:
    log = open(os.environ.get("OCR_STREAM_TEST_WORKER_LOG", os.devnull), "ab")  # noqa: SIM115 - closed with the process
    p = subprocess.Popen([sys.executable, "-m", "ocr_stream", "worker", *args], env=env_for(settings), stdout=subprocess.DEVNULL, stderr=log)
    procs.append(p)
    return p


def assert_nothing_lost(settings: Any, transport: KafkaTransport, pages: int) -> None:
    """Every page has an ok result, and every committed offset's page has one."""
    got = results(settings, transport, pages, timeout_s=60)
    ok = {(r.doc_id, r.page_no) for r in got if r.status is PageStatus.OK}
    assert len(ok) == pages


def assert_commits_cover_only_finished_pages(settings: Any, transport: KafkaTransport, finished: set[tuple[str, int]]) -> None:
    topic = settings.topic(PAGES)
    consumer = transport.consumer(settings.consumer_group_worker, name="check")
    try:
        committed = consumer.committed([(topic, p) for p in range(PARTITIONS)])
    finally:
        consumer.close()
    records = read_all(transport, topic, 1, settle_s=0.5)
    for rec in records:
        if rec.offset < (committed.get(rec.tp) or 0):
            ev = decode(PageEvent, rec.value)
            assert (ev.doc_id, ev.page_no) in finished, f"offset {rec.offset} of partition {rec.partition} committed without a result"


def test_sigkill_mid_run_loses_no_page(make_settings: Any, simulator: Any, procs: list[subprocess.Popen[bytes]]) -> None:
    sim = simulator(speed=5, tokens=TokenDistribution(fixed=400))
    settings, transport, store = setup(make_settings, sim)
    submit(settings, transport, store, {f"doc-{i}": 12 for i in range(4)})
    w = start_worker(settings, procs)
    before = results(settings, transport, 8, timeout_s=60, settle_s=0.0)
    w.send_signal(signal.SIGKILL)
    assert w.wait(10) == -signal.SIGKILL
    assert len({(r.doc_id, r.page_no) for r in before}) < 48, "the worker finished before it was killed: nothing tested"
    w2 = start_worker(settings, procs, "--burst")
    assert w2.wait(120) == 0
    assert_nothing_lost(settings, transport, 48)
    assert committed_everything(settings, transport, PARTITIONS)


@pytest.mark.parametrize("processes", [1, 2])
def test_sigterm_drains_commits_and_exits_0(make_settings: Any, simulator: Any, procs: list[subprocess.Popen[bytes]], processes: int) -> None:
    sim = simulator(speed=5, tokens=TokenDistribution(fixed=400))
    settings, transport, store = setup(make_settings, sim)
    submit(settings, transport, store, {f"doc-{i}": 12 for i in range(4)})
    w = start_worker(settings, procs, "--processes", str(processes))
    results(settings, transport, 6, timeout_s=60, settle_s=0.0)
    w.send_signal(signal.SIGTERM)
    assert w.wait(40) == 0
    sim_running = sim.engine.model.num_running
    assert sim_running == 0, "in-flight requests were abandoned instead of drained"
    finished = {(r.doc_id, r.page_no) for r in results(settings, transport, 6, timeout_s=30) if r.status is PageStatus.OK}
    assert len(finished) < 48, "the worker finished before SIGTERM: nothing tested"
    assert_commits_cover_only_finished_pages(settings, transport, finished)
    assert start_worker(settings, procs, "--burst").wait(60) == 0
    assert_nothing_lost(settings, transport, 48)
    assert committed_everything(settings, transport, PARTITIONS)
