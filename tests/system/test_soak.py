"""A bounded soak: documents at a fixed rate for OCR_STREAM_TEST_SOAK_S seconds (default 45) through
two workers and an aggregator, with faults injected at random (worker SIGKILLs, 503 bursts), then
the invariants, pages/s, latency percentiles and the memory of the worker and aggregator over time
(sampled RSS: no growth beyond a bound). The numbers go into the report printed at the end of the run.

Rate and length are small so that CI stays within its budget; run it longer by hand with
``OCR_STREAM_TEST_SOAK_S=600 OCR_STREAM_TEST_SOAK_RATE=2 pytest tests/system/test_soak.py``."""

from __future__ import annotations

import os
import random
import statistics
import threading
import time
from typing import Any

import pytest
from harness import REPORT, Pipeline, Service, percentile

from ocr_stream.producer import SubmitOptions, Submitter

pytestmark = [pytest.mark.system, pytest.mark.slow]

SOAK_S = float(os.environ.get("OCR_STREAM_TEST_SOAK_S", "45"))
RATE = float(os.environ.get("OCR_STREAM_TEST_SOAK_RATE", "1.0"))  # documents a second
MB = 1024 * 1024


class RssSampler:
    """Samples the RSS of some services once a second on a thread."""

    def __init__(self, services: dict[str, Service]) -> None:
        self.services = services
        self.samples: dict[str, list[tuple[float, int]]] = {name: [] for name in services}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.t0 = time.monotonic()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            for name, svc in self.services.items():
                if svc.alive:
                    self.samples[name].append((time.monotonic() - self.t0, svc.rss_bytes()))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(5)

    def growth(self, name: str) -> tuple[float, float]:
        """(median RSS in the second quarter, median RSS in the last quarter), in MB: the first
        quarter is warm-up (imports, first connections, caches filling)."""
        values = [v for _, v in self.samples[name]]
        n = len(values)
        assert n >= 8, f"too few RSS samples of {name}: {n}"
        early = statistics.median(values[n // 4: n // 2])
        late = statistics.median(values[3 * n // 4:])
        return early / MB, late / MB


def test_soak_at_a_fixed_rate_with_random_faults(make_pipeline: Any) -> None:
    rng = random.Random(int(os.environ.get("OCR_STREAM_TEST_SEED", "11")))
    p: Pipeline = make_pipeline(max_attempts=8, max_in_flight=16).start(
        workers=2, sim_args=("--speed", "20", "--tokens-fixed", "300", "--max-num-seqs", "64"))
    sim, steady, victim = p.sims[0], p.workers[0], p.workers[1]
    pdfs = p.make_pdfs(int(SOAK_S * RATE) + 1, [rng.randint(1, 4) for _ in range(int(SOAK_S * RATE) + 1)], tag="soak")
    faults: list[str] = []
    docs: dict[str, int] = {}
    with RssSampler({"worker": steady, "aggregator": p.aggregators[0]}) as rss, \
            Submitter(p.settings, store=p.store, producer=p.transport.producer(name="soak")) as sub:
        t0 = time.monotonic()
        next_kill, next_burst = t0 + rng.uniform(5, 15), t0 + rng.uniform(3, 8)
        for i, path in enumerate(pdfs):
            # Pacing of the load generator (a fixed document rate), not a wait for a condition.
            delay = t0 + i / RATE - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            result = sub.submit_file(path, SubmitOptions())
            docs[result.doc_id] = result.page_count
            now = time.monotonic()
            if now >= next_kill:
                victim.kill()
                victim.start()
                faults.append(f"kill@{now - t0:.0f}s")
                next_kill = now + rng.uniform(10, 20)
            if now >= next_burst:
                sim.set_faults("503", rate=1.0, count=rng.randint(3, 10))
                faults.append(f"503x@{now - t0:.0f}s")
                next_burst = now + rng.uniform(5, 10)
        submitted_s = time.monotonic() - t0
        p.submitted.update(docs)
        out = p.check(docs, fault="soak (random worker kills, 503 bursts)", timeout_s=180)
        total_s = time.monotonic() - t0
    assert any(f.startswith("kill") for f in faults) and any(f.startswith("503") for f in faults), faults

    events = list(out.events.values())
    pages = sum(docs.values())
    latencies = [(e.completed_at - e.submitted_at).total_seconds() for e in events if e.submitted_at]
    first = min(e.submitted_at for e in events if e.submitted_at)
    last = max(e.completed_at for e in events)
    throughput = pages / max(1e-3, (last - first).total_seconds())
    mem = {name: rss.growth(name) for name in ("worker", "aggregator")}
    line = (f"soak: {len(docs)} documents, {pages} pages in {submitted_s:.0f}s at {RATE:g} doc/s "
            f"(all done after {total_s:.0f}s): {throughput:.2f} pages/s end to end; document latency "
            f"p50 {percentile(latencies, 50):.2f}s p95 {percentile(latencies, 95):.2f}s p99 {percentile(latencies, 99):.2f}s "
            f"max {max(latencies):.2f}s; RSS MB (2nd quarter -> last quarter) "
            + ", ".join(f"{k} {a:.0f}->{b:.0f}" for k, (a, b) in mem.items())
            + f"; faults: {' '.join(faults)}")
    REPORT.notes.append(line)
    print(line)
    for name, (early, late) in mem.items():
        # Bounded: a leak of a few KB a page over this run would still pass; a buffer that keeps
        # every page (hundreds of KB each) would not.
        assert late <= early * 1.25 + 30, f"{name} RSS grew from {early:.0f} MB to {late:.0f} MB: {rss.samples[name]}"
