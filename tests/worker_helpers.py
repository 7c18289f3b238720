"""Helpers for the worker's tests: a scriptable fake engine, page submission, topic reading."""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from PIL import Image

from ocr_stream.contracts import Block, DeadLetter, ObjectRef, PageEvent, PageResult, RenderSettings, Usage, decode, encode
from ocr_stream.engines.base import Engine, OcrOutput, OcrRequest
from ocr_stream.storage.base import ObjectStore, page_image_key
from ocr_stream.topics import DLQ, PAGES, RESULTS
from ocr_stream.transport.base import Record, Transport

_JPEG: bytes | None = None


def jpeg_bytes() -> bytes:
    global _JPEG
    if _JPEG is None:
        buf = io.BytesIO()
        Image.new("RGB", (64, 80), "white").save(buf, format="JPEG", quality=90)
        _JPEG = buf.getvalue()
    return _JPEG


Script = Callable[[OcrRequest, int], Awaitable[OcrOutput] | OcrOutput | None]


class FakeEngine(Engine):
    """An engine whose answer per page is scripted. ``script(request, call_no)`` returns an output,
    raises, or returns None for the default answer. Tracks concurrency and every request."""

    name = "fake"

    def __init__(self, *, delay_s: float = 0.0, script: Script | None = None, suggested: int | None = None) -> None:
        self.delay_s = delay_s
        self.script = script
        self.suggested = suggested
        self.current = 0
        self.max_current = 0
        self.requests: list[OcrRequest] = []
        self.calls: dict[tuple[str, int], int] = {}

    async def ocr(self, request: OcrRequest) -> OcrOutput:
        key = (request.doc_id, request.page_no)
        self.calls[key] = self.calls.get(key, 0) + 1
        self.requests.append(request)
        self.current += 1
        self.max_current = max(self.max_current, self.current)
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            if self.script is not None:
                out = self.script(request, self.calls[key])
                if asyncio.iscoroutine(out) or isinstance(out, Awaitable):
                    out = await out
                if out is not None:
                    return out
            return default_output(request)
        finally:
            self.current -= 1

    def suggested_in_flight(self) -> int | None:
        return self.suggested


def default_output(request: OcrRequest, markdown: str | None = None) -> OcrOutput:
    text = markdown if markdown is not None else f"# {request.doc_id} page {request.page_no}"
    return OcrOutput(
        markdown=text,
        blocks=[Block(label="title", text=text, box=(0, 0, 10, 10))],
        raw_text=text,
        usage=Usage(prompt_tokens=100, completion_tokens=20),
        finish_reason="stop",
        model="fake-ocr",
        latency_ms=1.0,
    )


def page_event(store: ObjectStore, doc_id: str, page_no: int, page_count: int, **overrides: Any) -> PageEvent:
    data = jpeg_bytes()
    fields: dict[str, Any] = dict(
        doc_id=doc_id, page_no=page_no, page_count=page_count,
        image=ObjectRef(bucket=store.bucket, key=page_image_key(doc_id, page_no)),
        image_width=64, image_height=80, image_bytes=len(data),
        render=RenderSettings(dpi=None, long_side=80, format="jpeg", quality=90),
        metadata={"case": f"{doc_id}/{page_no}"},
    )
    fields.update(overrides)
    return PageEvent(**fields)


def submit(
    settings: Any,
    transport: Transport,
    store: ObjectStore,
    docs: dict[str, int],
    *,
    overrides: dict[tuple[str, int], dict[str, Any]] | None = None,
    images: dict[tuple[str, int], bytes | None] | None = None,
    raw: list[bytes] = (),  # type: ignore[assignment]
) -> list[PageEvent]:
    """Store page images and produce one page event per page (plus ``raw`` messages as they are)."""
    overrides = overrides or {}
    images = images or {}
    producer = transport.producer(name="test-submit")
    events = []
    for doc_id, count in docs.items():
        for n in range(1, count + 1):
            data = images.get((doc_id, n), jpeg_bytes())
            if data is not None:
                store.put(page_image_key(doc_id, n), data, "image/jpeg")
            ev = page_event(store, doc_id, n, count, **overrides.get((doc_id, n), {}))
            producer.produce(settings.topic(PAGES), encode(ev), ev.key.encode())
            events.append(ev)
    for value in raw:
        producer.produce(settings.topic(PAGES), value, b"raw")
    assert producer.flush(30) == 0
    return events


def read_all(transport: Transport, topic: str, want: int, *, timeout_s: float = 30.0, settle_s: float = 0.3) -> list[Record]:
    """Every record of ``topic``, read from each partition's beginning to its end, once at least
    ``want`` are there (and, with ``settle_s``, no more arrived for that long). Reading to the end
    offsets, not until the consumer goes quiet: under load a consumer can be quiet before it has
    fetched every partition, and a check built on a partial read would fail wrongly."""
    deadline = time.monotonic() + timeout_s
    parts = list(range(transport.partition_count(topic)))
    stable_since: float | None = None
    last = -1
    while True:
        out = list(transport.read_partitions(topic, parts, timeout_s=10.0))
        if len(out) >= want:
            if settle_s <= 0:
                return out
            if len(out) != last:
                stable_since, last = time.monotonic(), len(out)
            elif stable_since is not None and time.monotonic() - stable_since >= settle_s:
                return out
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out: {len(out)} of {want} records on {topic}")
        time.sleep(0.1)  # poll interval of the wait above


def results(settings: Any, transport: Transport, want: int, **kw: Any) -> list[PageResult]:
    return [decode(PageResult, r.value) for r in read_all(transport, settings.topic(RESULTS), want, **kw)]


def dead_letters(settings: Any, transport: Transport, want: int, **kw: Any) -> list[DeadLetter]:
    return [decode(DeadLetter, r.value) for r in read_all(transport, settings.topic(DLQ), want, **kw)]


def committed_everything(settings: Any, transport: Transport, partitions: int) -> bool:
    """True when the worker group's committed offsets reached the end of every pages partition."""
    topic = settings.topic(PAGES)
    consumer = transport.consumer(settings.consumer_group_worker, name="test-check")
    try:
        tps = [(topic, p) for p in range(partitions)]
        committed = consumer.committed(tps)
        ends = end_offsets(transport, topic, partitions)
        return all((committed.get(tp) or 0) >= ends[tp[1]] for tp in tps)
    finally:
        consumer.close()


def end_offsets(transport: Transport, topic: str, partitions: int) -> list[int]:
    if hasattr(transport, "end_offsets"):
        return list(transport.end_offsets(topic))
    from confluent_kafka import Consumer as KConsumer, TopicPartition as KTP

    c = KConsumer({**transport.conf, "group.id": "offsets-probe"})  # type: ignore[attr-defined]
    try:
        return [c.get_watermark_offsets(KTP(topic, p), timeout=10)[1] for p in range(partitions)]
    finally:
        c.close()


class WorkerThread:
    """A Worker running on its own event loop in a thread (as in a worker process)."""

    def __init__(self, worker: Any) -> None:
        import threading

        self.worker = worker
        self.code: int | None = None
        self.error: BaseException | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        async def main() -> int:
            self.loop = asyncio.get_running_loop()
            return int(await self.worker.run())

        try:
            self.code = asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            self.error = exc

    def start(self) -> WorkerThread:
        self._thread.start()
        return self

    def stop(self) -> None:
        """What SIGTERM does."""
        deadline = time.monotonic() + 10
        while self.loop is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self.worker.request_stop)

    def join(self, timeout_s: float = 60.0) -> int:
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise AssertionError("worker did not stop in time")
        if self.error is not None:
            raise self.error
        assert self.code is not None
        return self.code

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()


class PeakSampler:
    """Samples a simulator's running + waiting requests on a thread; ``peak`` is the most seen."""

    def __init__(self, sim: Any, interval_s: float = 0.002) -> None:
        import threading

        self.sim = sim
        self.peak = 0
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        # The engine's counters, read directly: state() also computes the capacity (tens of ms).
        model = self.sim.engine.model
        while not self._stop.is_set():
            self.peak = max(self.peak, int(model.num_running) + int(model.num_waiting))
            time.sleep(self._interval_s)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(5)


def wait_for(cond: Callable[[], Any], timeout_s: float = 30.0, what: str = "condition") -> Any:
    from conftest import wait_until

    return wait_until(cond, timeout_s, what=what)
