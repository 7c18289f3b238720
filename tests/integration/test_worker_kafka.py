"""The worker against the real Kafka broker, the real S3 server and the vLLM simulator, with the
real DeepSeek engine: every page once, in-flight bounded (seen from the server's side), each fault
mode of the simulator, two workers sharing (and rebalancing) the partitions."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import Any

import pytest

from ocr_stream.contracts import PageStatus
from ocr_stream.engines.deepseek import DeepSeekEngine
from ocr_stream.errors import ErrorCode
from ocr_stream.simulator.output import TokenDistribution
from ocr_stream.storage import open_store
from ocr_stream.transport.kafka import KafkaTransport
from ocr_stream.worker.service import Worker
from stack import free_port as stack_free_port
from worker_helpers import PeakSampler, WorkerThread, committed_everything, dead_letters, results, submit

pytestmark = pytest.mark.integration

PAGES_PARTITIONS = 24  # topics/ocr.pages.json


def setup(make_settings: Any, sim: Any, **overrides: Any) -> tuple[Any, KafkaTransport, Any]:
    from ocr_stream.topics import TopicAdmin, load_specs

    base: dict[str, Any] = dict(vllm_urls=[sim.url], consumer_group_worker=f"workers-{uuid.uuid4().hex[:8]}", max_in_flight=8, adaptive_in_flight=False, backoff_base_s=0.02,
                                backoff_max_s=0.2, max_attempts=4, shutdown_grace_s=10.0, request_timeout_s=30.0,
                                health_probe_interval_s=0.2)
    base.update(overrides)
    settings = make_settings(**base)
    TopicAdmin(settings.kafka_client_config(), prefix=settings.topic_prefix).apply(load_specs())
    store = open_store(settings)
    store.ensure_bucket()
    return settings, KafkaTransport(settings.kafka_client_config()), store


def worker(settings: Any, transport: KafkaTransport, store: Any, **kw: Any) -> Worker:
    return Worker(settings, transport=transport, store=store, engines={"deepseek": DeepSeekEngine.from_settings(settings)},
                  commit_interval_s=0.3, **kw)


def test_every_page_once_and_in_flight_bounded(make_settings: Any, simulator: Any) -> None:
    sim = simulator(speed=200, max_num_seqs=256)
    settings, transport, store = setup(make_settings, sim, max_in_flight=6)
    docs = {"doc-a": 10, "doc-b": 7, "doc-c": 13}
    submit(settings, transport, store, docs)
    w = worker(settings, transport, store, burst=True, burst_idle_s=1.0)
    with PeakSampler(sim) as peak:
        code = asyncio.run(asyncio.wait_for(w.run(), 90))
    assert code == 0
    got = results(settings, transport, 30)
    seen = Counter((r.doc_id, r.page_no) for r in got)
    assert set(seen) == {(d, n) for d, c in docs.items() for n in range(1, c + 1)}
    assert max(seen.values()) == 1
    assert all(r.status is PageStatus.OK and r.markdown and r.usage.completion_tokens > 0 for r in got)
    assert 1 <= peak.peak <= 6 and w.max_model_in_flight <= 6
    retries = {s.labels["reason"]: s.value for m in w.metrics.registry.collect() for s in m.samples
               if s.name == "ocr_stream_worker_retries_total"}
    assert sim.state()["finished"] == 30 + sum(retries.values()), retries
    assert committed_everything(settings, transport, PAGES_PARTITIONS)


FAULTS: list[tuple[str, dict[str, Any], ErrorCode | None]] = [
    ("503", {"count": 2}, None),
    ("429", {"count": 2, "retry_after_s": 0.05}, None),
    ("garbage", {"count": 1}, None),
    ("reset", {"count": 1}, None),
    ("repeat", {"count": 1}, None),  # the retry with the n-gram processor is spared
    ("slow", {"count": 1, "delay_s": 10.0}, None),  # longer than the request timeout
    ("dead", {"count": 1}, None),
    ("503", {}, ErrorCode.SERVER_ERROR),  # every attempt: attempts run out
    ("repeat", {"ngram_cures": False}, ErrorCode.LENGTH),
]


def test_each_fault_mode_ends_in_success_or_the_dlq_and_the_worker_keeps_running(make_settings: Any, simulator: Any) -> None:
    sim = simulator(speed=200, tokens=TokenDistribution(fixed=300))
    settings, transport, store = setup(make_settings, sim, max_attempts=4, request_timeout_s=5.0)
    wt = WorkerThread(worker(settings, transport, store)).start()
    try:
        expected_failures = 0
        for i, (mode, kw, failure) in enumerate(FAULTS):
            sim.set_faults(mode, **kw)
            doc = f"fault-{i}-{mode}"
            submit(settings, transport, store, {doc: 1})
            mine = [r for r in results(settings, transport, i + 1, timeout_s=60) if r.doc_id == doc]
            assert len(mine) == 1, (mode, kw)
            r = mine[0]
            if failure is None:
                assert r.status is PageStatus.OK, (mode, kw, r.error)
                assert r.attempts >= 2, (mode, kw)
            else:
                expected_failures += 1
                assert r.status is PageStatus.FAILED and r.error is not None, (mode, kw)
                assert r.error.code in (failure, ErrorCode.REPETITION) if failure is ErrorCode.LENGTH else r.error.code is failure, (mode, r.error)
            assert wt.alive, f"worker died after fault {mode}"
        sim.set_faults("none")
        letters = dead_letters(settings, transport, expected_failures)
        assert len(letters) == expected_failures
        assert {d.doc_id for d in letters} == {f"fault-{i}-{m}" for i, (m, _k, f) in enumerate(FAULTS) if f is not None}
    finally:
        wt.stop()
    assert wt.join(30) == 0
    assert committed_everything(settings, transport, PAGES_PARTITIONS)


def test_two_workers_share_the_partitions_and_a_rebalance_loses_nothing(make_settings: Any, simulator: Any) -> None:
    sim = simulator(speed=40, tokens=TokenDistribution(fixed=400))
    settings, transport, store = setup(make_settings, sim, max_in_flight=4, shutdown_grace_s=5.0)
    docs = {f"doc-{i}": 12 for i in range(5)}
    submit(settings, transport, store, docs)
    a = WorkerThread(worker(settings, transport, store, name="worker-a")).start()
    b: WorkerThread | None = None
    try:
        # Let the first worker own everything and get going, then a second one joins: a rebalance
        # moves partitions (with pages in flight) from a to b.
        results(settings, transport, 5, timeout_s=60, settle_s=0.0)
        b = WorkerThread(worker(settings, transport, store, name="worker-b")).start()
        got = results(settings, transport, 60, timeout_s=90)
    finally:
        a.stop()
        if b is not None:
            b.stop()
    assert a.join(30) == 0 and b is not None and b.join(30) == 0
    seen = Counter((r.doc_id, r.page_no) for r in got if r.status is PageStatus.OK)
    assert set(seen) == {(d, n) for d, c in docs.items() for n in range(1, c + 1)}
    assert a.worker.pages_done > 0 and b.worker.pages_done > 0
    assert committed_everything(settings, transport, PAGES_PARTITIONS)


def test_metrics_and_healthz(make_settings: Any, simulator: Any) -> None:
    import socket
    import urllib.error
    import urllib.request

    from worker_helpers import wait_for

    sim = simulator(speed=200, tokens=TokenDistribution(fixed=200))
    settings, transport, store = setup(make_settings, sim)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    w = worker(settings.model_copy(update={"metrics_host": "127.0.0.1"}), transport, store, metrics_port=port)
    wt = WorkerThread(w).start()

    def get(path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError:
            return 0, ""

    try:
        submit(settings, transport, store, {"doc": 3})
        results(settings, transport, 3)
        wait_for(lambda: get("/healthz")[0] == 200, what="/healthz 200")
        # The lag gauge gets its first samples at the worker's first lag refresh (every 5 s).
        wait_for(lambda: "ocr_stream_worker_consumer_lag{" in get("/metrics")[1], what="the consumer lag gauge")
        code, text = get("/metrics")
        assert code == 200
        assert 'ocr_stream_worker_pages_total{engine="deepseek",status="ok"} 3.0' in text
        for name in ("ocr_stream_worker_in_flight ", "ocr_stream_worker_in_flight_limit 8.0", "ocr_stream_worker_queue_seconds_bucket",
                     "ocr_stream_worker_model_latency_seconds_bucket", 'ocr_stream_worker_tokens_total{kind="completion"}',
                     "ocr_stream_worker_consumer_lag{"):
            assert name in text, name
        sim.stop()  # the only model server goes away: not ready any more
        wait_for(lambda: get("/healthz")[0] == 503, what="/healthz 503")
        assert '"model": false' in get("/healthz")[1]
    finally:
        wt.stop()
    assert wt.join(30) == 0


def _jpeg_with_a_large_header() -> bytes:
    """A ~1 MB JPEG (noise) whose frame header comes after a 100 KB ICC profile: beyond the worker's
    first read, and large enough that the server receives it in many pieces."""
    import io
    import random

    from PIL import Image

    noise = random.Random(7).randbytes(700 * 700 * 3)
    buf = io.BytesIO()
    Image.frombytes("RGB", (700, 700), noise).save(buf, format="JPEG", quality=95, icc_profile=bytes(100_000))
    assert len(buf.getvalue()) > 500_000
    return buf.getvalue()


def test_image_transport_url_sends_presigned_urls_that_the_server_fetches(make_settings: Any, simulator: Any) -> None:
    sim = simulator(speed=200, max_num_seqs=64)
    settings, transport, store = setup(make_settings, sim, image_transport="url", max_attempts=2)
    images: dict[tuple[str, int], bytes | None] = {("doc-u", 5): b"%PDF-1.7 not an image", ("doc-u", 6): _jpeg_with_a_large_header()}
    submit(settings, transport, store, {"doc-u": 6}, images=images)
    w = worker(settings, transport, store, burst=True, burst_idle_s=1.0)
    assert asyncio.run(asyncio.wait_for(w.run(), 90)) == 0
    got = {r.page_no: r for r in results(settings, transport, 6)}
    assert sorted(got) == [1, 2, 3, 4, 5, 6]
    errors = {n: got[n].error for n in (1, 2, 3, 4, 6) if got[n].status is not PageStatus.OK}
    assert not errors, errors
    assert all(got[n].markdown for n in (1, 2, 3, 4, 6))
    assert got[5].status is PageStatus.FAILED and got[5].error is not None and got[5].error.code is ErrorCode.UNSUPPORTED_TYPE
    assert [d.error.code for d in dead_letters(settings, transport, 1)] == [ErrorCode.UNSUPPORTED_TYPE]
    # The server fetched every good image itself (page 6 after the worker read it whole to check
    # its header); the bad one never reached it.
    assert sim.state()["images_fetched"] == 5
    assert committed_everything(settings, transport, PAGES_PARTITIONS)


def test_image_transport_url_falls_back_to_inline_when_the_server_cannot_fetch(make_settings: Any, simulator: Any) -> None:
    """A model server that cannot reach the storage refuses the URL (400): the page is retried with
    its bytes, not failed as bad input."""
    sim = simulator(speed=200, max_num_seqs=64)
    settings, transport, store = setup(make_settings, sim, image_transport="url", max_attempts=2,
                                       image_url_endpoint=f"http://127.0.0.1:{stack_free_port()}")
    submit(settings, transport, store, {"doc-f": 3})
    w = worker(settings, transport, store, burst=True, burst_idle_s=1.0)
    assert asyncio.run(asyncio.wait_for(w.run(), 90)) == 0
    got = results(settings, transport, 3)
    assert sorted(r.page_no for r in got if r.status is PageStatus.OK) == [1, 2, 3]
    assert sim.state()["images_fetched"] == 0


def test_image_transport_url_needs_s3_storage(tmp_path: Any) -> None:
    from ocr_stream.config import load_settings
    from ocr_stream.errors import ConfigError
    from ocr_stream.storage import LocalStore
    from ocr_stream.transport.memory import MemoryTransport

    settings = load_settings(storage="local", local_storage_path=tmp_path, image_transport="url")
    with pytest.raises(ConfigError, match="needs S3 storage"):
        Worker(settings, transport=MemoryTransport(), store=LocalStore(tmp_path, bucket=settings.bucket),
               engines={"deepseek": DeepSeekEngine.from_settings(settings)})

