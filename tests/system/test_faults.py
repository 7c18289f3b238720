"""Faults injected while documents flow through the whole pipeline (ocr-stream submit -> worker
subprocesses -> aggregator subprocess, real broker, real S3 server, simulator subprocesses), then the
invariants of tests/system/harness.py: every document exactly once, every page ok or failed with its
reason, no result missing from storage, nothing stuck.

The worker-only and aggregator-only kill tests live in test_worker_faults.py / test_aggregator_kill.py;
these are the cross-service ones. Broker restart and storage outage are in test_outages.py."""

from __future__ import annotations

import io
from typing import Any

import pytest
from conftest import wait_until
from harness import Pipeline

from ocr_stream.contracts import encode
from ocr_stream.storage.base import page_image_key, page_result_key
from ocr_stream.topics import DOCUMENTS

pytestmark = pytest.mark.system

# Slow enough that pages are in flight when a process is killed (~0.3 s of model time a page).
SLOW_SIM = ("--speed", "4", "--tokens-fixed", "300", "--max-num-seqs", "16")


def running(sim: Any) -> bool:
    return int(sim.state()["running"]) > 0


def test_worker_sigkill_mid_page_repeatedly(make_pipeline: Any) -> None:
    p: Pipeline = make_pipeline().start(workers=2, sim_args=SLOW_SIM)
    docs = p.submit_new(4, 4)
    sim = p.sims[0]
    victim = p.workers[0]
    for _ in range(3):
        wait_until(lambda: running(sim), 60, what="pages in flight at the model server")
        assert victim.kill() == -9
        victim.start()
    p.check(docs, fault="worker SIGKILL mid-page (x3)", timeout_s=120)


def test_worker_sigterm_hands_back_and_exits_0(make_pipeline: Any) -> None:
    p: Pipeline = make_pipeline().start(workers=1, sim_args=SLOW_SIM)
    docs = p.submit_new(3, 4)
    wait_until(lambda: running(p.sims[0]), 60, what="pages in flight")
    assert p.workers[0].term(60) == 0, p.workers[0].log_tail()
    assert int(p.sims[0].state()["running"]) == 0, "SIGTERM left requests running at the model server"
    p.start_worker()
    p.check(docs, fault="worker SIGTERM")


def test_aggregator_sigkill_while_documents_complete(make_pipeline: Any) -> None:
    p: Pipeline = make_pipeline().start(workers=1, sim_args=("--speed", "10", "--tokens-fixed", "300"))
    docs = p.submit_new(6, [1, 2, 3, 4, 5, 6])
    agg = p.aggregators[0]
    wait_until(lambda: p.document_events(), 60, what="a first document event")
    assert agg.kill() == -9
    agg.start()
    wait_until(lambda: len(p.document_events()) >= 3, 60, what="three document events")
    agg.kill()
    agg.start()  # same --instance-id: aborts its predecessor's open transaction at once
    p.check(docs, fault="aggregator SIGKILL (x2)", watch=[agg])


def test_poison_page_fails_its_document_only(make_pipeline: Any) -> None:
    """A page the model server refuses every time: its document ends partial with the reason; the
    other documents are complete."""
    p = make_pipeline()
    p.create_topics_and_bucket()
    docs = p.submit_new(3, 3)
    poisoned = next(iter(docs))
    # A JPEG header on garbage: passes the worker's header check, the model server cannot decode it.
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (300, 400), "white").save(buf, format="JPEG")
    head = buf.getvalue()[:200]
    p.store.put(page_image_key(poisoned, 2), head + b"\x00" * 5000, "image/jpeg")
    p.start_simulator("--speed", "50", "--tokens-fixed", "200")
    p.start_worker()
    p.start_aggregator()
    out = p.check(docs, fault="poison page", expect_failed={poisoned: {2: None}})
    assert out.events[poisoned].status.value == "partial"
    assert all(out.events[d].status.value == "complete" for d in docs if d != poisoned)

    # The check itself catches what it is there for: a duplicate document event, a lost result.
    other = next(d for d in docs if d != poisoned)
    producer = p.transport.producer(name="saboteur")
    producer.produce(p.settings.topic(DOCUMENTS), encode(out.events[other]), other.encode())
    assert producer.flush(30) == 0
    with pytest.raises(AssertionError, match=f"{other}: 2 document events"):
        p.verify(docs, fault="self-test", expect_failed={poisoned: {2: None}}, record=False)
    p.store.delete(page_result_key(poisoned, 1))
    with pytest.raises(AssertionError, match=f"{poisoned}: page 1 result lost from storage"):
        p.verify({poisoned: docs[poisoned]}, fault="self-test", expect_failed={poisoned: {2: None}}, record=False)


# Every fault hits at most 8 requests and pages get 10 attempts: no page may fail for good, whatever
# the order of requests (a server taken out of the pool after failures is probed back in).
MODEL_FAULTS: dict[str, dict[str, Any]] = {
    "503": dict(mode="503", rate=0.5, count=8, seed=1),
    "429 Retry-After": dict(mode="429", rate=0.5, count=8, retry_after_s=0.2, seed=2),
    "timeout": dict(mode="slow", rate=1.0, count=4, delay_s=30),
    "connection reset": dict(mode="reset", rate=0.5, count=8, seed=3),
    "garbage": dict(mode="garbage", rate=0.5, count=8, seed=4),
    "repetition (cured by n-gram retry)": dict(mode="repeat", rate=1.0),
}


@pytest.mark.parametrize("name", list(MODEL_FAULTS))
def test_model_server_fault_is_retried_and_nothing_lost(make_pipeline: Any, name: str) -> None:
    p: Pipeline = make_pipeline(max_attempts=10, request_timeout_s=2.0).start(workers=1, sim_args=("--speed", "50", "--tokens-fixed", "200"))
    sim = p.sims[0]
    first = p.submit_new(2, 3)
    sim.set_faults(**MODEL_FAULTS[name])  # while the first documents are in flight
    docs = p.submit_new(3, 3)
    p.check({**first, **docs}, fault=f"model server {name}")
    faults = sim.state()["faults"]
    assert faults["hits"] > 0, f"the fault never hit: {faults}"


def test_endless_repetition_fails_pages_with_a_reason(make_pipeline: Any) -> None:
    p: Pipeline = make_pipeline(max_tokens=400).start(workers=1, sim_args=("--speed", "50", "--tokens-fixed", "200"))
    p.sims[0].set_faults("repeat", rate=1.0, ngram_cures=False)
    docs = p.submit_new(2, 2)
    out = p.check(docs, fault="model server endless repetition",
                  expect_failed={d: dict.fromkeys(range(1, n + 1)) for d, n in docs.items()})
    for d in docs:
        assert out.events[d].status.value == "failed"
        assert set(out.failed_pages(d).values()) <= {"repetition", "length"}, out.failed_pages(d)


def test_dead_engine_with_healthy_health_check(make_pipeline: Any) -> None:
    """One engine hangs every request while /health says 200, the other is fine: every page ends
    ok (through the good one) and the dead one is taken out of the pool."""
    p: Pipeline = make_pipeline(request_timeout_s=2.0, max_attempts=6).start(workers=0, sim_args=None)
    dead = p.start_simulator("--speed", "50", "--tokens-fixed", "200", "--fault", "dead")
    good = p.start_simulator("--speed", "50", "--tokens-fixed", "200")
    p.start_worker()
    docs = p.submit_new(3, 4)
    p.check(docs, fault="dead engine (health OK)", watch=p.workers)
    assert dead.state()["faults"]["hits"] > 0, "the dead engine never got a request: nothing tested"
    assert good.state()["finished"] >= 12


def test_duplicate_submission_gives_one_document_each(make_pipeline: Any) -> None:
    p: Pipeline = make_pipeline().start(workers=1, sim_args=("--speed", "20", "--tokens-fixed", "200"))
    paths = p.make_pdfs(3, 3)
    docs, _ = p.submit(paths)  # the real `ocr-stream submit`
    again = p.submit_inproc(paths)  # while the first submission's pages are in flight
    assert again == docs
    p.wait_documents(docs, 60)
    third = p.submit_inproc(paths)  # after the documents were published
    assert third == docs
    p.check(docs, fault="duplicate submission (x3)")
    # the late duplicates were processed (not still waiting) and changed nothing
    wait_until(lambda: p.worker_lag() == 0, 60, what="late duplicates consumed")
    p.verify(docs, fault="duplicate submission (x3)", expect_failed={})


def test_rebalance_under_load_add_and_remove_a_worker(make_pipeline: Any) -> None:
    p: Pipeline = make_pipeline().start(workers=1, sim_args=SLOW_SIM)
    docs = p.submit_new(6, 4)
    sim = p.sims[0]
    wait_until(lambda: running(sim), 60, what="pages in flight")
    second = p.start_worker()
    # wait until the newcomer took work (its partitions were assigned) ...
    before = int(sim.state()["finished"])
    wait_until(lambda: int(sim.state()["finished"]) >= before + 3, 60, what="progress after the join")
    # ... then remove the first one while pages flow
    assert p.workers[0].term(60) == 0, p.workers[0].log_tail()
    p.check(docs, fault="rebalance under load (worker added, one removed)", watch=[second], timeout_s=120)
