"""Every metric on the Grafana dashboard exists and moves: the splitter, a worker and the aggregator
run as the deployment runs them (``ocr-stream splitter|worker|aggregator`` subprocesses) against the
real broker, the real S3 server and the vLLM simulator (standing in for the engines, with vLLM's
metric names); their /metrics are sampled while documents flow, and each series the dashboard
queries must show up and change."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import ROOT, wait_until  # noqa: E402
from deploy_support import PROMETHEUS_METRICS, Sampler, dashboard_metrics, wait_for_url  # noqa: E402
from worker_helpers import jpeg_bytes, page_event, submit  # noqa: E402

from ocr_stream.contracts import DocumentEvent, DocumentRequest, ObjectRef, decode, encode
from ocr_stream.storage.base import page_image_key
from ocr_stream.topics import DOCUMENTS, PAGES, REQUESTS, TopicAdmin, load_specs
from stack import free_port  # noqa: E402 - below the ephemeral port range (tests/stack.py)

pytestmark = pytest.mark.integration


def service_env(settings: Any, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCR_STREAM_") or k.startswith("OCR_STREAM_TEST_")}
    env.update({
        "OCR_STREAM_KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "OCR_STREAM_TOPIC_PREFIX": settings.topic_prefix,
        "OCR_STREAM_STORAGE": "s3",
        "OCR_STREAM_S3_ENDPOINT": settings.s3_endpoint,
        "OCR_STREAM_S3_ACCESS_KEY": settings.s3_access_key.get_secret_value(),
        "OCR_STREAM_S3_SECRET_KEY": settings.s3_secret_key.get_secret_value(),
        "OCR_STREAM_BUCKET": settings.bucket,
        "OCR_STREAM_VLLM_URLS": ",".join(settings.vllm_urls),
        "OCR_STREAM_METRICS_HOST": "127.0.0.1",
        "OCR_STREAM_LOG_LEVEL": "WARNING",
        **extra,
    })
    return env


class Services:
    """ocr-stream services as subprocesses; stopped with SIGTERM (as `docker stop` does)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, args: list[str], env: dict[str, str]) -> None:
        log = (self.tmp / f"{name}.log").open("wb")
        self.procs[name] = subprocess.Popen([sys.executable, "-m", "ocr_stream.cli", *args], env=env, cwd=ROOT,
                                            stdout=log, stderr=subprocess.STDOUT)

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")[-4000:]

    def alive(self) -> None:
        for name, p in self.procs.items():
            assert p.poll() is None, f"{name} exited with {p.returncode}:\n{self.log(name)}"

    def stop(self) -> dict[str, int]:
        codes = {}
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for name, p in self.procs.items():
            try:
                codes[name] = p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                codes[name] = p.wait(10)
        return codes


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Services]:
    s = Services(tmp_path)
    yield s
    s.stop()


@pytest.fixture
def simulator() -> Iterator[Any]:
    from ocr_stream.simulator.process import SimulatorProcess

    # Two running slots: the worker's pages queue at the engine, so running, waiting and KV-cache
    # use all move, as they do on a busy GPU. Slow enough that a 48-page backlog takes several of the
    # worker's 2-second lag refreshes to drain, so the lag gauge is seen above zero.
    sim = SimulatorProcess.start("--speed", "8", "--max-num-seqs", "2", "--tokens-fixed", "300")
    yield sim
    sim.stop()


def png_page(text: str) -> bytes:
    img = Image.new("RGB", (600, 800), "white")
    ImageDraw.Draw(img).text((40, 40), text, fill="black")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def documents(transport: Any, settings: Any) -> dict[str, DocumentEvent]:
    topic = settings.topic(DOCUMENTS)
    parts = list(range(transport.partition_count(topic)))
    return {e.doc_id: e for e in (decode(DocumentEvent, r.value) for r in transport.read_partitions(topic, parts, timeout_s=10) if r.value)}


@pytest.mark.timeout(600)
def test_every_dashboard_metric_exists_and_moves(
    make_settings: Callable[..., Any], store: Any, transport: Any, simulator: Any, procs: Services
) -> None:
    settings = make_settings(bucket=store.bucket, vllm_urls=simulator.url)
    TopicAdmin(settings.kafka_client_config(), prefix=settings.topic_prefix).apply(load_specs())
    ports = {"worker": free_port(), "aggregator": free_port(), "splitter": free_port()}
    fast_retries = {"OCR_STREAM_BACKOFF_BASE_S": "0.05", "OCR_STREAM_BACKOFF_MAX_S": "0.2"}
    procs.start("aggregator", ["aggregator", "--metrics-port", str(ports["aggregator"])],
                   service_env(settings, OCR_STREAM_STUCK_AFTER_S="1"))
    procs.start("worker", ["worker", "--metrics-port", str(ports["worker"]), "--max-in-flight", "16"],
                   service_env(settings, **fast_retries))
    procs.start("splitter", ["splitter"], service_env(settings, OCR_STREAM_METRICS_PORT=str(ports["splitter"])))

    urls = {name: f"http://127.0.0.1:{port}/metrics" for name, port in ports.items()}
    urls["vllm"] = f"{simulator.url}/metrics"
    sampler = Sampler(urls)
    for url in urls.values():
        wait_for_url(url)
    sampler.start()
    wait_until(lambda: all(n >= 2 for n in sampler.scrapes.values()), timeout_s=30, what="a baseline scrape of every service")

    # A few transient server errors, so that retries by reason move too.
    simulator.set_faults("503", rate=1.0, count=3)
    # doc-a: clean, and more pages than the worker holds (in flight + ready queue), so ocr.pages has
    # a backlog; doc-b: one page whose image is not an image (fails for good: DLQ);
    # doc-c: 3 pages of which only 2 arrive for now (an open, then stuck, document);
    # doc-s: a document in storage, split by the splitter from a request.
    submit(settings, transport, store, {"doc-a": 48, "doc-b": 8}, images={("doc-b", 5): b"this is not an image"})
    producer = transport.producer(name="test-submit-c")
    for n in (1, 2):
        store.put(page_image_key("doc-c", n), jpeg_bytes(), "image/jpeg")
        ev = page_event(store, "doc-c", n, 3)
        producer.produce(settings.topic(PAGES), encode(ev), ev.key.encode())
    store.put("incoming/doc-s.png", png_page("a page for the splitter"), "image/png")
    request = DocumentRequest(doc_id="doc-s", source=ObjectRef(bucket=store.bucket, key="incoming/doc-s.png"))
    producer.produce(settings.topic(REQUESTS), encode(request), b"doc-s")
    assert producer.flush(30) == 0

    def published(*ids: str) -> bool:
        procs.alive()
        return set(ids) <= set(documents(transport, settings))

    wait_until(lambda: published("doc-a", "doc-b", "doc-s"), timeout_s=180, interval_s=0.5, what="doc-a, doc-b and doc-s published")
    wait_until(lambda: sampler.moved("ocr_stream_aggregator_stuck_documents"), timeout_s=60, what="doc-c reported stuck")

    # The last page of doc-c arrives: it completes, and the stuck gauge goes back down.
    store.put(page_image_key("doc-c", 3), jpeg_bytes(), "image/jpeg")
    ev = page_event(store, "doc-c", 3, 3)
    producer.produce(settings.topic(PAGES), encode(ev), ev.key.encode())
    assert producer.flush(30) == 0
    wait_until(lambda: published("doc-c"), timeout_s=90, interval_s=0.5, what="doc-c published")
    # The worker's lag gauge is refreshed every 2 s: wait for it to see the backlog drained.
    wait_until(lambda: 0.0 in {v for vs in sampler.last("ocr_stream_worker_consumer_lag").values() for v in vs},
               timeout_s=60, what="the worker's lag gauge back at zero")
    sampler.sample_once()
    sampler.stop()

    docs = documents(transport, settings)
    assert docs["doc-a"].status.value == "complete" and docs["doc-b"].status.value == "partial"
    assert [f.page_no for f in docs["doc-b"].failed_pages] == [5]

    wanted = dashboard_metrics() - PROMETHEUS_METRICS
    missing = sorted(m for m in wanted if not sampler.seen(m))
    assert not missing, f"dashboard metrics no service exposed: {missing}"
    still = sorted(m for m in wanted if not sampler.moved(m))
    assert not still, f"dashboard metrics that did not move while documents flowed: {still}"

    # The services stop cleanly on SIGTERM, as `docker compose stop` asks them to.
    codes = procs.stop()
    assert codes == {"aggregator": 0, "worker": 0, "splitter": 0}, {n: procs.log(n) for n, c in codes.items() if c}
