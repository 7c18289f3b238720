"""The OCR worker: page events in, page results out, with a bounded number of pages in flight.

One asyncio event loop per process. A consumer thread (intake.py) feeds records to the loop up to
the in-flight budget and pauses the partitions while the budget is full. Each record becomes one
task that runs the page to its end:

    decode PageEvent ─ bad → DLQ (schema_violation, raw payload kept)
    engine served here? ─ no → DLQ + failed result (config)
    bucket allowed? ─ no → DLQ + failed result (forbidden_location); never fetched
    fetch image ─ missing → DLQ + failed result (not_found)
    check bytes (type, pixels) ─ bad → DLQ + failed result
    engine.ocr ─ transient → wait (timer, the page keeps its slot) and retry; see retry.py
    put results/{doc_id}/pages/{page_no:05d}.json        (idempotent)
    produce PageResult to ocr.results keyed doc_id      (await the broker's ack)
    mark the offset finished                             (commit follows, contiguous only)

Offsets are committed every ``commit_interval_s``, on revocation and at shutdown, never past the
first unfinished record of a partition (offsets.py). Any crash therefore loses nothing: records not
committed are read again by the partition's next owner (at-least-once; the aggregator dedups).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import random
import time
from collections import deque
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from ..config import Settings
from ..contracts import DeadLetter, ErrorInfo, PageEvent, PageResult, PageStatus, decode, encode, is_valid_doc_id
from ..engines.base import Engine, OcrOutput, OcrRequest, PageImage
from ..errors import (
    BadInputError,
    BrokerUnavailableError,
    ConfigError,
    CorruptDocumentError,
    ErrorCode,
    InternalError,
    LengthError,
    ModelServerError,
    OcrStreamError,
    SchemaViolationError,
    StorageUnavailableError,
    UnsupportedTypeError,
)
from ..storage.base import ObjectStore, page_result_key
from ..topics import DLQ, PAGES, RESULTS
from ..transport.base import Consumer, Producer, Record, TopicPartition, Transport
from .budget import InFlightBudget
from .images import check_image
from .intake import ConsumerThread, DeliveryPoller, LoopMailbox
from .metrics import WorkerMetrics
from .offsets import OffsetTracker
from .retry import Action, Decision, RetryPolicy

log = logging.getLogger(__name__)

# Enough for the header of a JPEG with EXIF and an ICC profile, a PNG or a WebP.
_IMAGE_HEAD_BYTES = 64 * 1024

_RAW_LIMIT = 65536


class _PublishFailed(Exception):
    """The broker did not acknowledge a result within every attempt: the worker stops (exit 1) and
    the page's record, uncommitted, goes to the next owner."""


class Worker:
    """One worker process's service. ``await run()`` returns the exit code."""

    def __init__(
        self,
        settings: Settings,
        *,
        transport: Transport,
        store: ObjectStore,
        engines: Mapping[str, Engine],
        metrics: WorkerMetrics | None = None,
        burst: bool = False,
        burst_idle_s: float = 1.0,
        commit_interval_s: float = 1.0,
        metrics_port: int | None = None,
        name: str = "worker",
        rng: random.Random | None = None,
    ) -> None:
        if not engines:
            raise ConfigError("a worker needs at least one engine")
        if (settings.image_transport == "url" and any(e.accepts_image_urls for e in engines.values())
                and type(store).presign_get is ObjectStore.presign_get):
            raise ConfigError(f"OCR_STREAM_IMAGE_TRANSPORT=url needs S3 storage; {type(store).__name__} cannot hand out object URLs")
        self.settings = settings
        self.transport = transport
        self.store = store
        self.engines = dict(engines)
        self.metrics = metrics or WorkerMetrics()
        self.burst = burst
        self.burst_idle_s = burst_idle_s
        self.commit_interval_s = commit_interval_s
        self.metrics_port = settings.metrics_port if metrics_port is None else metrics_port
        self.name = name
        self.rng = rng or random.Random()
        self.policy = RetryPolicy(
            max_attempts=settings.max_attempts,
            backoff_base_s=settings.backoff_base_s,
            backoff_max_s=settings.backoff_max_s,
            repetition_policy=settings.repetition_policy,
        )
        self.budget = InFlightBudget(settings.max_in_flight, adaptive=settings.adaptive_in_flight)
        self.tracker = OffsetTracker()
        self.pages_topic = settings.topic(PAGES)
        self.results_topic = settings.topic(RESULTS)
        self.dlq_topic = settings.topic(DLQ)

        self._ready: deque[Record] = deque()
        self._tasks: dict[asyncio.Task[None], Record] = {}
        self._received = 0
        self._last_record = time.monotonic()
        self._lag: dict[TopicPartition, int] = {}
        # Burst mode: per owned partition, where the consumer started and where the partition
        # ended when it was assigned (asked of the broker then).
        self._burst_ends: dict[TopicPartition, tuple[int, int]] = {}
        self._stopping: asyncio.Event | None = None
        self._stop_requested = False
        self._exit_code = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._mailbox: LoopMailbox | None = None
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._intake: ConsumerThread | None = None
        self._poller: DeliveryPoller | None = None
        self._admin: Any = None
        self.max_model_in_flight = 0
        """Highest number of engine calls open at once (for tests and the benchmark)."""
        self._model_in_flight = 0
        self.pages_done = 0

    # ================================================================== lifecycle

    def request_stop(self, exit_code: int = 0) -> None:
        """Stop fetching, drain and return from ``run`` (what SIGTERM does). Safe from any thread,
        and before ``run`` started (it then stops as soon as it is up)."""
        if exit_code and not self._exit_code:
            self._exit_code = exit_code
        self._stop_requested = True
        loop, event = self._loop, self._stopping
        if loop is None or event is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            event.set()
        else:
            loop.call_soon_threadsafe(event.set)

    async def run(self) -> int:
        loop = self._loop = asyncio.get_running_loop()
        self._mailbox = LoopMailbox(loop)
        self._stopping = asyncio.Event()
        # Storage calls run in threads (the MinIO SDK is synchronous); the default pool of
        # min(32, cores + 4) threads would cap them at 6 on a small host.
        loop.set_default_executor(ThreadPoolExecutor(max_workers=64, thread_name_prefix="ocr-io"))
        for engine in self.engines.values():
            await engine.start()
        self.budget.update(e.suggested_in_flight() for e in self.engines.values())
        self._producer = self.transport.producer(name=f"{self.name}-results")
        self._consumer = self.transport.consumer(self.settings.consumer_group_worker, name=self.name)
        self._poller = DeliveryPoller(self._producer, poll_s=0.5, name=f"{self.name}-delivery")
        self._intake = ConsumerThread(
            self._consumer,
            [self.pages_topic],
            loop,
            credits=self._credits,
            on_records=self._on_records,
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lag=self._on_lag,
            on_ends=self._on_ends if self.burst else None,
            revoke_timeout_s=self.settings.shutdown_grace_s + 10.0,
            lag_interval_s=0.5 if self.burst else 5.0,
            poll_s=0.05 if self.burst else 0.25,
            name=f"{self.name}-consumer",
        )
        server = self._start_metrics_server()
        self._poller.start()
        self._intake.start()
        controller = asyncio.create_task(self._control(), name="worker-control")
        controller.add_done_callback(self._control_ended)
        log.info("worker started", extra={"topic": self.pages_topic, "group": self.settings.consumer_group_worker,
                                          "engines": sorted(self.engines), "max_in_flight": self.budget.max_in_flight})
        if self._stop_requested:
            self._stopping.set()
        try:
            await self._stopping.wait()
        finally:
            controller.cancel()
            await asyncio.gather(controller, return_exceptions=True)
            await self._shutdown()
            if server is not None:
                server.stop()
        return self._exit_code

    async def _shutdown(self) -> None:
        assert self._intake is not None and self._consumer is not None and self._producer is not None
        intake = self._intake
        intake.stop_fetching()
        # Records taken but not started are handed back (left uncommitted).
        self.budget.held -= len(self._ready)
        self._ready.clear()
        tasks = list(self._tasks)
        if tasks:
            log.info("draining", extra={"in_flight": len(tasks), "grace_s": self.settings.shutdown_grace_s})
            _done, pending = await asyncio.wait(tasks, timeout=self.settings.shutdown_grace_s)
            for t in pending:
                t.cancel()
            if pending:
                log.warning("grace period over; pages left to the next owner", extra={"pages": len(pending)})
                await asyncio.gather(*pending, return_exceptions=True)
        await asyncio.to_thread(self._producer.flush, 30.0)
        if intake.is_alive():
            try:
                await self._commit()
            except Exception as exc:  # noqa: BLE001 - uncommitted pages are redone by the next owner
                log.warning("final commit failed: %s", exc)
            try:
                # close() runs the revoke callback, which drains nothing now and commits what is left.
                await intake.close()
            except Exception as exc:  # noqa: BLE001
                log.warning("consumer close failed: %s", exc)
        intake.stop()
        await asyncio.to_thread(intake.join, 10.0)
        assert self._poller is not None
        self._poller.stop()
        await asyncio.to_thread(self._poller.join, 5.0)
        for engine in self.engines.values():
            try:
                await engine.aclose()
            except Exception:  # noqa: BLE001
                log.warning("engine close failed", exc_info=True)
        log.info("worker stopped", extra={"pages": self.pages_done, "exit_code": self._exit_code})

    def _control_ended(self, task: asyncio.Task[None]) -> None:
        # Without the controller nothing is committed any more: a bug there must stop the worker.
        if not task.cancelled() and task.exception() is not None:
            log.error("worker control loop failed", exc_info=task.exception())
            self.request_stop(1)

    async def _control(self) -> None:
        """Adaptive limit, periodic commits, burst exit, gauges."""
        assert self._intake is not None and self._stopping is not None
        next_commit = time.monotonic() + self.commit_interval_s
        while True:
            await asyncio.sleep(0.25)
            old = self.budget.limit
            self.budget.update(e.suggested_in_flight() for e in self.engines.values())
            if self.budget.limit > old:
                self._start_ready()
            m = self.metrics
            m.in_flight_limit.set(self.budget.limit)
            m.in_flight.set(self.budget.active)
            m.paused.set(1 if self._intake.paused() else 0)
            now = time.monotonic()
            if now >= next_commit:
                next_commit = now + self.commit_interval_s
                try:
                    await self._commit()
                except Exception as exc:  # noqa: BLE001 - retried at the next tick
                    log.warning("offset commit failed: %s", exc)
            if self._intake.error is not None or not self._intake.is_alive():
                log.error("consumer stopped; worker exits", extra={"error": str(self._intake.error)})
                self.request_stop(1)
            if self.burst and self._burst_done(now):
                log.info("burst: nothing left to do", extra={"pages": self.pages_done})
                self.request_stop(0)

    def _burst_done(self, now: float) -> bool:
        """Burst mode's exit condition: every record that was in an owned partition when it was
        assigned is finished, and nothing is in progress. The ends are asked of the broker at
        assignment, so a partition whose first fetch is slow is never taken for drained."""
        intake = self._intake
        assert intake is not None
        if not intake.assigned_once.is_set():
            return False
        if self.budget.held or self._ready or self._in_transit():
            return False
        owned = self.tracker.partitions()
        if set(owned) != intake.assigned:
            return False  # a rebalance is being applied
        quiet = now - self._last_record
        for tp in owned:
            ends = self._burst_ends.get(tp)
            if ends is None:
                return False  # not asked of the broker yet
            start, end = ends
            point = self.tracker.commit_point(tp)
            if max(start, point if point is not None else start) >= end:
                continue
            # The end may lie past the last record (a transaction marker of an upstream producer
            # that uses transactions): the consumer's own lag says it read everything.
            if self._lag.get(tp) == 0 and not self.tracker.pending(tp) and quiet >= 3 * self.burst_idle_s:
                continue
            return False
        return True

    async def _commit(self) -> None:
        assert self._intake is not None and self._consumer is not None
        offsets = self.tracker.to_commit()
        if not offsets:
            return
        consumer = self._consumer

        def commit() -> dict[TopicPartition, int]:
            owned = set(consumer.assignment())
            mine = {tp: o for tp, o in offsets.items() if tp in owned}
            consumer.commit(mine)
            return mine

        done = await self._intake.call(commit)
        self.tracker.committed(done)
        if done:
            self.metrics.commits.inc()

    # ================================================================== intake callbacks (loop thread)

    def _in_transit(self) -> int:
        return (self._intake.handed if self._intake else 0) - self._received

    def _credits(self) -> int:
        # Called from the consumer thread: reads ints written by the loop (atomic under the GIL).
        # Beyond the budget, a small ready queue (a quarter of it, at most 32 records) is kept
        # filled, so a finished page is replaced at once rather than at the consumer's next poll.
        prefetch = min(32, self.budget.limit // 4)
        return self.budget.credits(self._in_transit()) + prefetch

    def _on_assign(self, tps: list[TopicPartition]) -> None:
        self.tracker.assign(tps)
        for tp in tps:
            self._burst_ends.pop(tp, None)
        self._last_record = time.monotonic()  # burst mode: give the new partitions a first fetch
        log.info("partitions assigned", extra={"partitions": [p for _t, p in tps]})

    async def _on_revoke(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        """Runs on the loop while the consumer thread waits in its revoke callback: no new work
        for these partitions, finish theirs within the grace period, then say what to commit."""
        revoked = set(tps)
        kept = [r for r in self._ready if r.tp not in revoked]
        dropped = len(self._ready) - len(kept)
        if dropped:
            self._ready = deque(kept)
            self.budget.held -= dropped
        tasks = [t for t, rec in self._tasks.items() if rec.tp in revoked]
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=self.settings.shutdown_grace_s)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        if self._producer is not None and tasks:
            await asyncio.to_thread(self._producer.flush, 10.0)
        offsets = {tp: o for tp, o in self.tracker.to_commit(tps).items()}
        self.tracker.revoke(tps)
        for tp in tps:
            self._burst_ends.pop(tp, None)
        log.info("partitions revoked", extra={"partitions": [p for _t, p in tps], "commit": {str(k[1]): v for k, v in offsets.items()}})
        return offsets

    def _on_ends(self, ends: dict[TopicPartition, tuple[int, int]]) -> None:
        for tp, start_end in ends.items():
            if self.tracker.owns(tp):
                self._burst_ends[tp] = start_end

    def _on_lag(self, lag: dict[TopicPartition, int]) -> None:
        self._lag = lag
        self.metrics.set_lag(lag)

    def _on_records(self, records: list[Record]) -> None:
        self._received += len(records)
        self._last_record = time.monotonic()
        stopping = self._stopping is not None and self._stopping.is_set()
        for rec in records:
            self.tracker.start(rec.tp, rec.offset)
            if stopping:
                continue  # handed back: stays pending, so uncommitted
            self.budget.held += 1
            self._ready.append(rec)
        self._start_ready()

    def _start_ready(self) -> None:
        while self._ready and self.budget.can_start():
            rec = self._ready.popleft()
            self.budget.active += 1
            task = asyncio.create_task(self._run_page(rec))
            self._tasks[task] = rec

    # ================================================================== one page

    async def _run_page(self, rec: Record) -> None:
        t0 = time.monotonic()
        task = asyncio.current_task()
        try:
            await self._page(rec)
            self.tracker.finish(rec.tp, rec.offset)
            self.pages_done += 1
            self.metrics.page_seconds.observe(time.monotonic() - t0)
        except asyncio.CancelledError:
            raise
        except _PublishFailed as exc:
            log.error("results cannot be published; stopping", extra={"error": str(exc)})
            self.request_stop(1)
        except Exception:  # noqa: BLE001 - a bug: the page stays uncommitted, the worker stops
            log.exception("page handling failed unexpectedly", extra={"partition": rec.partition, "offset": rec.offset})
            self.request_stop(1)
        finally:
            if task is not None:
                self._tasks.pop(task, None)
            self.budget.active -= 1
            self.budget.held -= 1
            if not (self._stopping and self._stopping.is_set()):
                self._start_ready()

    async def _page(self, rec: Record) -> None:
        try:
            page = decode(PageEvent, rec.value)
        except SchemaViolationError as exc:
            await self._reject(rec, exc)
            return
        ctx = {"doc_id": page.doc_id, "page_no": page.page_no}
        engine = self.engines.get(page.engine)
        if engine is None:
            unserved = ConfigError(f"engine {page.engine!r} is not served by this worker (it serves {', '.join(sorted(self.engines))})")
            await self._fail(rec, page, unserved, Decision(Action.GIVE_UP, unserved.code), attempts=0)
            return
        queued = (datetime.now(UTC) - page.submitted_at).total_seconds()
        if queued >= 0:
            self.metrics.queue_seconds.observe(queued)
        repetition_control = self.policy.initial_repetition_control()
        image: PageImage | None = None
        inline = False
        attempts = 0
        while True:
            attempts += 1
            try:
                if image is None or image.url is not None:  # a presigned URL is signed afresh for each attempt
                    image = await self._fetch_image(page, inline=inline)
                await self._wait_for_server(engine)
                out = await self._call_engine(engine, page, image, repetition_control, attempts)
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - classified by type in the retry policy
                if isinstance(exc, BadInputError) and image is not None and image.url is not None and not inline:
                    # Refused with the image by URL: the server may have failed to fetch it (storage
                    # unreachable from there, a URL expired in a queue). The page is bad only if it
                    # is refused with its bytes too: try once more, inline.
                    inline, image = True, None
                    self.metrics.retries.labels(exc.code.value).inc()
                    log.warning("the model server refused the page by image URL; retrying with the image inline",
                                extra={**ctx, "attempt": attempts, "error": str(exc)[:500]})
                    continue
                decision = self.policy.decide(exc, attempts=attempts, repetition_control=repetition_control, rng=self.rng)
                if not decision.retry and isinstance(exc, StorageUnavailableError):
                    # Storage down is not the page's fault: failing it would turn an outage into
                    # failed pages. Stop as when results cannot be stored; the page stays uncommitted.
                    raise _PublishFailed(f"cannot read {page.image}: {exc}") from exc
                if not decision.retry:
                    await self._fail(rec, page, exc, decision, attempts)
                    return
                self.metrics.retries.labels(decision.code.value).inc()
                log.info("retrying page", extra={**ctx, "attempt": attempts, "reason": decision.code.value,
                                                 "delay_s": round(decision.delay_s, 3), "error": str(exc)})
                repetition_control = decision.repetition_control
                if decision.delay_s > 0:
                    await asyncio.sleep(decision.delay_s)
        try:
            result = self._result(page, out, attempts)
        except Exception as exc:  # noqa: BLE001 - e.g. output that does not fit the contract
            # A page whose output cannot be turned into a result would fail the same way on every
            # redelivery: fail it for good instead of stopping the worker on it again and again.
            bad = InternalError(f"cannot build the page result: {type(exc).__name__}: {exc}")
            await self._fail(rec, page, bad, Decision(Action.GIVE_UP, bad.code), attempts)
            return
        await self._succeed(page, out, result)

    async def _wait_for_server(self, engine: Engine) -> None:
        """While every server of the engine is out of its pool (ejected, being probed), a request
        would fail at once and burn an attempt: wait for one to come back, at most
        backoff_max_s + health_probe_interval_s, then try anyway (the attempt counts)."""
        if await engine.healthy():
            return
        deadline = time.monotonic() + self.settings.backoff_max_s + self.settings.health_probe_interval_s
        while time.monotonic() < deadline:
            await asyncio.sleep(min(0.1, self.settings.health_probe_interval_s / 2))
            if await engine.healthy():
                return

    async def _fetch_image(self, page: PageEvent, *, inline: bool = False) -> PageImage:
        # The allow-list is checked before any I/O: a message never makes us fetch elsewhere.
        self.store.check_readable(page.image)
        if not inline and self.settings.image_transport == "url" and self.engines[page.engine].accepts_image_urls:
            return await self._image_by_url(page)
        data = await self.store.aget(page.image)
        return check_image(data, max_pixels=self.settings.max_page_pixels)

    async def _image_by_url(self, page: PageEvent) -> PageImage:
        """OCR_STREAM_IMAGE_TRANSPORT=url: check the image's type and pixel count from its first
        bytes, then hand the server a presigned URL instead of the bytes. An image whose header
        does not fit in the first read is read whole and checked as for inline transport."""
        head = await self.store.aget_head(page.image, _IMAGE_HEAD_BYTES)
        try:
            checked = check_image(head, max_pixels=self.settings.max_page_pixels)
        except (CorruptDocumentError, UnsupportedTypeError):
            if len(head) < _IMAGE_HEAD_BYTES:
                raise  # the whole image was read: it is bad
            checked = check_image(await self.store.aget(page.image), max_pixels=self.settings.max_page_pixels)
        url = self.store.presign_get(page.image, self.settings.image_url_expiry_s)
        return dataclasses.replace(checked, data=b"", url=url)

    async def _call_engine(self, engine: Engine, page: PageEvent, image: PageImage, repetition_control: bool, attempts: int) -> OcrOutput:
        request = OcrRequest(
            image=image,
            mode=page.mode,
            prompt=page.prompt,
            repetition_control=repetition_control,
            max_tokens=self.settings.max_tokens,
            attempt=page.attempt + attempts - 1,
            doc_id=page.doc_id,
            page_no=page.page_no,
        )
        self._model_in_flight += 1
        self.max_model_in_flight = max(self.max_model_in_flight, self._model_in_flight)
        self.metrics.model_in_flight.inc()
        t0 = time.monotonic()
        try:
            # The engine enforces request_timeout_s; this is the belt that keeps a wedged engine
            # from holding a page (and its partition's commits) forever.
            async with asyncio.timeout(self.settings.request_timeout_s + 30.0):
                out = await engine.ocr(request)
        except TimeoutError as exc:
            raise ModelServerError(f"engine {engine.name} did not answer within {self.settings.request_timeout_s:.0f}s",
                                   code=ErrorCode.TIMEOUT) from exc
        finally:
            self._model_in_flight -= 1
            self.metrics.model_in_flight.dec()
            self.metrics.model_latency.labels(page.engine).observe(time.monotonic() - t0)
        if out.finish_reason == "length":
            raise LengthError(f"output hit the token limit ({out.usage.completion_tokens} tokens)")
        return out

    # ================================================================== outcomes

    def _result(self, page: PageEvent, out: OcrOutput, attempts: int) -> PageResult:
        return PageResult(
            doc_id=page.doc_id,
            page_no=page.page_no,
            page_count=page.page_count,
            status=PageStatus.OK,
            markdown=out.markdown,
            blocks=out.blocks,
            result_ref=self.store.ref(page_result_key(page.doc_id, page.page_no)),
            usage=out.usage,
            finish_reason=out.finish_reason,
            latency_ms=out.latency_ms,
            model=out.model or None,
            engine=page.engine,
            mode=page.mode,
            image_width=page.image_width,
            image_height=page.image_height,
            attempts=page.attempt + attempts,
            submitted_at=page.submitted_at,
            source=page.source,
            metadata=page.metadata,
        )

    async def _succeed(self, page: PageEvent, out: OcrOutput, full: PageResult) -> None:
        key = page_result_key(page.doc_id, page.page_no)
        body = encode(full)
        await self._store_result(page, key, body)
        if len(body) <= self.settings.inline_text_limit:
            message = body  # the stored JSON is the message: serialised once
        else:
            message = encode(full.model_copy(update={"markdown": None, "blocks": None}))
        await self._publish(self.results_topic, page.doc_id.encode(), message)
        self.metrics.pages.labels("ok", page.engine).inc()
        self.metrics.add_tokens(out.usage.prompt_tokens, out.usage.completion_tokens)
        log.debug("page done", extra={"doc_id": page.doc_id, "page_no": page.page_no, "attempts": full.attempts})

    async def _store_result(self, page: PageEvent, key: str, body: bytes) -> None:
        attempts = 0
        while True:
            attempts += 1
            try:
                await self.store.aput(key, body, "application/json")
                return
            except OcrStreamError as exc:
                if not exc.transient or attempts >= self.policy.max_attempts:
                    raise _PublishFailed(f"cannot store {key}: {exc}") from exc
                self.metrics.retries.labels(exc.code.value).inc()
                await asyncio.sleep(self.policy.backoff(attempts, self.rng))

    async def _fail(self, rec: Record, page: PageEvent, exc: BaseException, decision: Decision, attempts: int) -> None:
        """Terminal failure: a dead letter, and a failed result so the document completes (partial)."""
        text = str(exc) if isinstance(exc, OcrStreamError) else f"{type(exc).__name__}: {exc}"
        if decision.exhausted:
            text = f"gave up after {attempts} attempts: {text}"
        info = ErrorInfo(code=decision.code, message=text[:4096], transient=decision.exhausted)
        total = page.attempt + attempts
        letter = DeadLetter(
            doc_id=page.doc_id, page_no=page.page_no, page_count=page.page_count, attempts=total, error=info, page=page,
            origin_topic=rec.topic, origin_partition=rec.partition, origin_offset=rec.offset,
        )
        result = PageResult(
            doc_id=page.doc_id, page_no=page.page_no, page_count=page.page_count, status=PageStatus.FAILED,
            engine=page.engine, mode=page.mode, image_width=page.image_width, image_height=page.image_height,
            attempts=total, error=info, submitted_at=page.submitted_at, source=page.source, metadata=page.metadata,
        )
        await asyncio.gather(
            self._publish(self.dlq_topic, page.key.encode(), encode(letter)),
            self._publish(self.results_topic, page.doc_id.encode(), encode(result)),
        )
        self.metrics.pages.labels("failed", page.engine).inc()
        self.metrics.failures.labels(decision.code.value).inc()
        log.warning("page failed", extra={"doc_id": page.doc_id, "page_no": page.page_no, "reason": decision.code.value,
                                          "attempts": total, "error": text[:500]})

    async def _reject(self, rec: Record, exc: SchemaViolationError) -> None:
        """A message that is not a page event: to the DLQ with the reason and the raw payload."""
        raw = (rec.value or b"").decode("utf-8", errors="replace")
        doc_id, page_no, page_count = _salvage(raw)
        letter = DeadLetter(
            doc_id=doc_id, page_no=page_no, page_count=page_count, attempts=0,
            error=ErrorInfo(code=exc.code, message=str(exc)[:4096]),
            raw=raw[:_RAW_LIMIT], origin_topic=rec.topic, origin_partition=rec.partition, origin_offset=rec.offset,
        )
        await self._publish(self.dlq_topic, rec.key, encode(letter))
        self.metrics.pages.labels("failed", "unknown").inc()
        self.metrics.failures.labels(exc.code.value).inc()
        log.warning("rejected a message that is not a page event",
                    extra={"partition": rec.partition, "offset": rec.offset, "error": str(exc)[:500]})

    async def _publish(self, topic: str, key: bytes | None, value: bytes) -> None:
        """Produce and wait for the broker's acknowledgement (acks=all), retrying a failed delivery."""
        assert self._producer is not None and self._loop is not None and self._mailbox is not None
        loop, mailbox = self._loop, self._mailbox
        attempts = 0
        while True:
            attempts += 1
            fut: asyncio.Future[None] = loop.create_future()

            def delivered(err: Exception | None, _rec: Record | None, fut: asyncio.Future[None] = fut) -> None:
                mailbox.post(_resolve, fut, err)

            self._producer.produce(topic, value, key, on_delivery=delivered)
            try:
                await fut
                return
            except BrokerUnavailableError as exc:
                if attempts >= self.policy.max_attempts:
                    raise _PublishFailed(str(exc)) from exc
                self.metrics.retries.labels(exc.code.value).inc()
                await asyncio.sleep(self.policy.backoff(attempts, self.rng))

    # ================================================================== health

    def health(self) -> dict[str, bool]:
        """Broker, storage and at least one model server answer (called from the HTTP thread)."""
        checks = {"broker": self._broker_ok(), "storage": False, "model": False}
        try:
            checks["storage"] = bool(self.store.ping())
        except Exception:  # noqa: BLE001
            checks["storage"] = False
        loop = self._loop
        if loop is not None and not loop.is_closed():
            for engine in self.engines.values():
                try:
                    if asyncio.run_coroutine_threadsafe(engine.healthy(), loop).result(timeout=3.0):
                        checks["model"] = True
                        break
                except Exception:  # noqa: BLE001
                    continue
        return checks

    def _broker_ok(self) -> bool:
        intake = self._intake
        if intake is None or not intake.is_alive() or intake.error is not None:
            return False
        ping = getattr(self.transport, "ping", None)
        try:
            if callable(ping):
                return bool(ping())
            conf = getattr(self.transport, "conf", None)
            if isinstance(conf, dict):
                # Kafka: ask the cluster for the topic's metadata on a client of its own (a
                # metadata call on the consumer's handle waits behind its poll).
                if self._admin is None:
                    from confluent_kafka.admin import AdminClient

                    self._admin = AdminClient(dict(conf))
                md = self._admin.list_topics(self.pages_topic, timeout=2.0)
                return bool(md.brokers)
        except Exception:  # noqa: BLE001 - health is a yes/no question
            return False
        # Other transports (in memory): the consumer thread polled lately.
        return time.monotonic() - intake.last_poll < 10.0

    def _start_metrics_server(self) -> Any:
        if not self.metrics_port:
            return None
        from ..observability import MetricsServer

        server = MetricsServer(self.metrics.registry, self.health, host=self.settings.metrics_host, port=self.metrics_port)
        self.metrics_port = server.port
        return server.start()


def _resolve(fut: asyncio.Future[None], err: Exception | None) -> None:
    if fut.done():
        return
    if err is None:
        fut.set_result(None)
    else:
        fut.set_exception(err if isinstance(err, BrokerUnavailableError) else BrokerUnavailableError(str(err)))


def _salvage(raw: str) -> tuple[str | None, int | None, int | None]:
    """doc_id, page_no, page_count from a message that failed validation, when they look sane
    (so the DLQ entry can be traced to its document)."""
    try:
        obj = json.loads(raw)
    except ValueError:
        return None, None, None
    if not isinstance(obj, dict):
        return None, None, None
    doc_id = obj.get("doc_id")
    doc_id = doc_id if isinstance(doc_id, str) and is_valid_doc_id(doc_id) else None
    page_no = obj.get("page_no")
    page_no = page_no if isinstance(page_no, int) and not isinstance(page_no, bool) and page_no >= 1 else None
    page_count = obj.get("page_count")
    page_count = page_count if isinstance(page_count, int) and not isinstance(page_count, bool) and page_count >= 1 else None
    return doc_id, page_no, page_count
