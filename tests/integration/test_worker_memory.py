"""The worker service end to end on the in-memory transport and a local folder store, with a
scripted engine: every page once, the budget, each failure path, shutdown. Fast and deterministic
(burst mode); the same flows run against real Kafka, S3 and the simulator in test_worker_kafka.py."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from ocr_stream.config import load_settings
from ocr_stream.contracts import PageStatus, decode, PageResult
from ocr_stream.engines.base import OcrRequest
from ocr_stream.errors import ErrorCode, LengthError, ModelServerError, RateLimitedError, RepetitionError
from ocr_stream.storage import LocalStore, page_result_key
from ocr_stream.topics import DLQ, PAGES, RESULTS
from ocr_stream.transport.memory import MemoryTransport
from ocr_stream.worker.service import Worker
from worker_helpers import FakeEngine, committed_everything, dead_letters, default_output, results, submit

pytestmark = pytest.mark.integration

PARTS = 4


def make(tmp_path: Path, **overrides: Any) -> tuple[Any, MemoryTransport, LocalStore]:
    base: dict[str, Any] = dict(
        storage="local", local_storage_path=tmp_path / "store", topic_prefix=f"t{uuid.uuid4().hex[:6]}.",
        max_in_flight=4, adaptive_in_flight=False, metrics_port=0, backoff_base_s=0.01, backoff_max_s=0.05,
        max_attempts=3, shutdown_grace_s=5.0,
    )
    base.update(overrides)
    settings = load_settings(**base)
    transport = MemoryTransport()
    transport.ensure_topics({settings.topic(PAGES): PARTS, settings.topic(RESULTS): 2, settings.topic(DLQ): 1})
    store = LocalStore(settings.local_storage_path, bucket=settings.bucket)
    store.ensure_bucket()
    return settings, transport, store


def run_worker(settings: Any, transport: MemoryTransport, store: LocalStore, engine: FakeEngine, **kw: Any) -> tuple[int, Worker]:
    worker = Worker(settings, transport=transport, store=store, engines={"deepseek": engine}, burst=True, burst_idle_s=0.2, **kw)
    code = asyncio.run(asyncio.wait_for(worker.run(), 60))
    return code, worker


def test_every_page_of_several_documents_once_within_the_budget(tmp_path: Path) -> None:
    settings, transport, store = make(tmp_path, max_in_flight=4)
    submit(settings, transport, store, {"doc-a": 7, "doc-b": 5, "doc-c": 9})
    engine = FakeEngine(delay_s=0.02)
    code, worker = run_worker(settings, transport, store, engine)
    assert code == 0
    got = results(settings, transport, 21)
    assert sorted((r.doc_id, r.page_no) for r in got) == sorted(
        [("doc-a", n) for n in range(1, 8)] + [("doc-b", n) for n in range(1, 6)] + [("doc-c", n) for n in range(1, 10)])
    assert all(r.status is PageStatus.OK and r.markdown == f"# {r.doc_id} page {r.page_no}" for r in got)
    assert all(r.metadata == {"case": f"{r.doc_id}/{r.page_no}"} and r.usage.completion_tokens == 20 for r in got)
    assert engine.max_current == 4  # the budget was used, and never exceeded
    assert worker.max_model_in_flight <= 4
    assert committed_everything(settings, transport, PARTS)
    stored = decode(PageResult, store.get_key(page_result_key("doc-b", 3)))
    assert stored.markdown == "# doc-b page 3" and stored.result_ref is not None


def test_adaptive_limit_follows_the_engine(tmp_path: Path) -> None:
    settings, transport, store = make(tmp_path, max_in_flight=16, adaptive_in_flight=True)
    submit(settings, transport, store, {"doc-a": 12})
    engine = FakeEngine(delay_s=0.05, suggested=2)
    code, _ = run_worker(settings, transport, store, engine)
    assert code == 0
    assert engine.max_current <= 2


def test_failure_modes_end_in_success_or_the_dlq_with_the_right_reason(tmp_path: Path) -> None:
    settings, transport, store = make(tmp_path, max_attempts=3)

    def script(req: OcrRequest, call: int) -> Any:
        p = req.page_no
        if p == 1 and call <= 2:
            raise ModelServerError("503 Service Unavailable")
        if p == 2:
            raise ModelServerError("503 Service Unavailable")
        if p == 3 and not req.repetition_control:
            raise RepetitionError("loop detected")
        if p == 4:
            raise RepetitionError("loop detected")
        if p == 5 and call == 1:
            raise RateLimitedError("429", retry_after_s=0.05)
        if p == 6:
            raise LengthError("finish_reason length")
        if p == 7 and call == 1:
            raise RuntimeError("engine bug")
        return None

    engine = FakeEngine(script=script)
    overrides = {("doc", 9): {"image": {"bucket": "elsewhere", "key": "pages/doc/00009.jpg"}},
                 ("doc", 11): {"engine": "tesseract"}}
    images: dict[tuple[str, int], bytes | None] = {("doc", 8): None, ("doc", 10): b"GIF89a not an image we send"}
    submit(settings, transport, store, {"doc": 11}, overrides=overrides, images=images, raw=[b'{"doc_id": "doc", "page_no": "x"}'])
    code, worker = run_worker(settings, transport, store, engine)
    assert code == 0

    by_page = {r.page_no: r for r in results(settings, transport, 11)}
    assert len(by_page) == 11
    ok = {n for n, r in by_page.items() if r.status is PageStatus.OK}
    assert ok == {1, 3, 5, 7}
    expected = {2: ErrorCode.SERVER_ERROR, 4: ErrorCode.REPETITION, 6: ErrorCode.LENGTH, 8: ErrorCode.NOT_FOUND,
                9: ErrorCode.FORBIDDEN_LOCATION, 10: ErrorCode.UNSUPPORTED_TYPE, 11: ErrorCode.CONFIG}
    for n, code_ in expected.items():
        r = by_page[n]
        assert r.status is PageStatus.FAILED and r.error is not None and r.error.code is code_, (n, r.error)
    assert by_page[2].error is not None and by_page[2].error.transient and by_page[2].attempts == 3
    assert "gave up after 3 attempts" in (by_page[2].error.message if by_page[2].error else "")

    letters = dead_letters(settings, transport, 8)
    reasons = {(d.page_no, d.error.code) for d in letters if d.page is not None}
    assert reasons == {(n, c) for n, c in expected.items()}
    schema = [d for d in letters if d.page is None]
    assert len(schema) == 1 and schema[0].error.code is ErrorCode.SCHEMA_VIOLATION
    assert schema[0].raw == '{"doc_id": "doc", "page_no": "x"}' and schema[0].doc_id == "doc" and schema[0].page_no is None
    assert "page_no" in schema[0].error.message

    # Page 3 was retried with the server's repetition control on; 9 was never fetched nor sent.
    assert [r.repetition_control for r in engine.requests if r.page_no == 3] == [False, True]
    assert not any(r.page_no in (8, 9, 10, 11) for r in engine.requests)
    assert engine.calls[("doc", 2)] == 3 and engine.calls[("doc", 4)] == 2
    assert committed_everything(settings, transport, PARTS)
    m = worker.metrics.registry
    assert m.get_sample_value("ocr_stream_worker_page_failures_total", {"reason": "not_found"}) == 1
    assert m.get_sample_value("ocr_stream_worker_retries_total", {"reason": "server_error"}) == 4
    assert m.get_sample_value("ocr_stream_worker_pages_total", {"status": "ok", "engine": "deepseek"}) == 4


def test_large_results_travel_by_reference(tmp_path: Path) -> None:
    settings, transport, store = make(tmp_path, inline_text_limit=1000)
    big = "x" * 5000
    engine = FakeEngine(script=lambda req, call: default_output(req, big) if req.page_no == 1 else None)
    submit(settings, transport, store, {"doc": 2})
    assert run_worker(settings, transport, store, engine)[0] == 0
    by_page = {r.page_no: r for r in results(settings, transport, 2)}
    assert by_page[1].markdown is None and by_page[1].blocks is None and by_page[1].result_ref is not None
    assert decode(PageResult, store.get(by_page[1].result_ref)).markdown == big
    assert by_page[2].markdown == "# doc page 2"


def test_stop_drains_in_flight_pages_commits_and_hands_back_the_rest(tmp_path: Path) -> None:
    settings, transport, store = make(tmp_path, max_in_flight=3)
    submit(settings, transport, store, {"doc": 12})

    async def main() -> tuple[int, FakeEngine]:
        engine = FakeEngine(delay_s=0.2)
        worker = Worker(settings, transport=transport, store=store, engines={"deepseek": engine})
        task = asyncio.create_task(worker.run())
        while engine.max_current < 3:
            await asyncio.sleep(0.01)
        worker.request_stop()  # what SIGTERM does
        code = await asyncio.wait_for(task, 30)
        return code, engine

    code, engine = asyncio.run(main())
    assert code == 0
    first = results(settings, transport, 3)
    assert len(first) == sum(engine.calls.values()) == 3  # the three in flight finished, nothing new started
    # A second worker picks up exactly where the first one committed.
    engine2 = FakeEngine()
    assert run_worker(settings, transport, store, engine2)[0] == 0
    got = results(settings, transport, 12)
    assert sorted(r.page_no for r in got) == list(range(1, 13))
    assert committed_everything(settings, transport, PARTS)


def test_pages_still_running_after_the_grace_period_are_left_uncommitted(tmp_path: Path) -> None:
    settings, transport, store = make(tmp_path, max_in_flight=2, shutdown_grace_s=0.2)
    submit(settings, transport, store, {"doc": 2})

    async def main() -> int:
        forever = asyncio.Event()

        async def stuck(_req: OcrRequest) -> None:
            await forever.wait()

        engine = FakeEngine(script=lambda req, call: stuck(req))
        worker = Worker(settings, transport=transport, store=store, engines={"deepseek": engine})
        task = asyncio.create_task(worker.run())
        while engine.current < 2:
            await asyncio.sleep(0.01)
        worker.request_stop()
        return await asyncio.wait_for(task, 10)

    assert asyncio.run(main()) == 0
    assert not committed_everything(settings, transport, PARTS)
    assert run_worker(settings, transport, store, FakeEngine())[0] == 0
    assert sorted(r.page_no for r in results(settings, transport, 2)) == [1, 2]


def test_a_full_budget_pauses_the_partitions_and_bounds_what_is_held(tmp_path: Path) -> None:
    settings, transport, store = make(tmp_path, max_in_flight=8)
    submit(settings, transport, store, {"doc": 40})
    engine = FakeEngine(delay_s=0.05)
    worker = Worker(settings, transport=transport, store=store, engines={"deepseek": engine}, burst=True, burst_idle_s=0.2)
    seen_paused = False
    most_held = 0

    async def main() -> int:
        nonlocal seen_paused, most_held
        task = asyncio.create_task(worker.run())
        while not task.done():
            most_held = max(most_held, worker.budget.held)
            if worker._intake is not None and worker._intake.paused():
                seen_paused = True
            await asyncio.sleep(0.005)
        return await task

    assert asyncio.run(main()) == 0
    assert seen_paused
    assert most_held <= 8 + 2  # the budget plus its small ready queue (a quarter of it)
    assert engine.max_current == 8
    assert len(results(settings, transport, 40)) == 40


def test_output_that_cannot_become_a_result_fails_the_page_not_the_worker(tmp_path: Path) -> None:
    import dataclasses

    settings, transport, store = make(tmp_path)

    def script(req: OcrRequest, call: int) -> Any:
        out = default_output(req)
        return dataclasses.replace(out, latency_ms=-1.0) if req.page_no == 1 else out

    submit(settings, transport, store, {"doc": 3})
    code, _ = run_worker(settings, transport, store, FakeEngine(script=script))
    assert code == 0
    by_page = {r.page_no: r for r in results(settings, transport, 3)}
    assert by_page[1].status is PageStatus.FAILED and by_page[1].error is not None and by_page[1].error.code is ErrorCode.INTERNAL
    assert by_page[2].status is PageStatus.OK and by_page[3].status is PageStatus.OK


class _SlowFirstFetch(MemoryTransport):
    """A broker whose first fetch responses are slow, as a loaded Kafka broker's can be: for the
    first ``delay_s`` the consumer gets no records and cannot tell its lag (Kafka learns a
    partition's end from its first fetch response)."""

    def __init__(self, delay_s: float) -> None:
        super().__init__()
        self.delay_s = delay_s

    def consumer(self, group_id: str, *, name: str = "", isolation_read_committed: bool = True) -> Any:
        consumer = super().consumer(group_id, name=name, isolation_read_committed=isolation_read_committed)
        ready_at = time.monotonic() + self.delay_s
        consume, lag = consumer.consume, consumer.lag

        def slow_consume(max_records: int, timeout_s: float) -> list[Any]:
            if time.monotonic() < ready_at:
                consume(0, 0.0)  # rebalance callbacks still run
                time.sleep(timeout_s)
                return []
            return consume(max_records, timeout_s)

        consumer.consume = slow_consume  # type: ignore[method-assign]
        consumer.lag = lambda: {} if time.monotonic() < ready_at else lag()  # type: ignore[method-assign]
        return consumer


def test_burst_mode_waits_for_records_published_before_the_assignment_however_slow_the_fetch(tmp_path: Path) -> None:
    settings, _, store = make(tmp_path)
    transport = _SlowFirstFetch(delay_s=2.0)  # ten times the burst idle time
    transport.ensure_topics({settings.topic(PAGES): PARTS, settings.topic(RESULTS): 2, settings.topic(DLQ): 1})
    submit(settings, transport, store, {"doc": 12})
    code, worker = run_worker(settings, transport, store, FakeEngine())
    assert code == 0
    assert worker.pages_done == 12
    assert committed_everything(settings, transport, PARTS)


def test_burst_mode_exits_at_once_when_nothing_was_published(tmp_path: Path) -> None:
    settings, transport, store = make(tmp_path)
    code, worker = run_worker(settings, transport, store, FakeEngine())
    assert code == 0 and worker.pages_done == 0
