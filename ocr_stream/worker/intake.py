"""The threads between the blocking Kafka client and the worker's event loop.

``ConsumerThread`` owns the consumer: every call on it (consume, pause, resume, commit, close)
happens on this one thread, so the event loop never blocks on the broker and the rebalance
callbacks may block (they wait for the loop to drain revoked partitions). It takes at most as many
records as the loop has budget for, pauses every assigned partition while the budget is full, and
hands records over in batches (one loop wake-up per batch, not per record).

``DeliveryPoller`` serves the producer's delivery reports on a thread of its own, so an
acknowledgement reaches the loop within a millisecond without the loop polling on a timer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from ..transport.base import Consumer, Producer, Record, TopicPartition

log = logging.getLogger(__name__)

T = TypeVar("T")


class ConsumerThread(threading.Thread):
    def __init__(
        self,
        consumer: Consumer,
        topics: list[str],
        loop: asyncio.AbstractEventLoop,
        *,
        credits: Callable[[], int],
        on_records: Callable[[list[Record]], None],
        on_assign: Callable[[list[TopicPartition]], None],
        on_revoke: Callable[[list[TopicPartition]], Coroutine[Any, Any, dict[TopicPartition, int]]],
        on_lag: Callable[[dict[TopicPartition, int]], None],
        revoke_timeout_s: float,
        on_ends: Callable[[dict[TopicPartition, tuple[int, int]]], None] | None = None,
        poll_s: float = 0.05,
        lag_interval_s: float = 2.0,
        max_batch: int = 500,
        name: str = "consumer",
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.consumer = consumer
        self.topics = topics
        self.loop = loop
        self._credits = credits
        self._on_records = on_records
        self._on_assign = on_assign
        self._on_revoke = on_revoke
        self._on_lag = on_lag
        self._on_ends = on_ends
        # Newly assigned partitions whose start (committed offset) and end are still to be asked
        # of the broker, for burst mode's "everything published before the assignment is done".
        self._need_ends: set[TopicPartition] = set()
        self._next_ends = 0.0
        self.assigned: set[TopicPartition] = set()
        """The partitions this consumer owns now (written by this thread, in the rebalance callbacks)."""
        self._revoke_timeout_s = revoke_timeout_s
        self._poll_s = poll_s
        self._lag_interval_s = lag_interval_s
        self._max_batch = max_batch
        self._commands: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = queue.SimpleQueue()
        self._stop_event = threading.Event()
        self._fetching = True
        self._paused: set[TopicPartition] = set()
        # Assigned partitions whose pause flag is not known: librdkafka keeps a partition's pause
        # across a revoke and a later re-assignment to this consumer (e.g. after the group was lost
        # while the budget was full), so each new partition is paused or resumed explicitly once.
        self._unknown: set[TopicPartition] = set()
        self.handed = 0
        """Records handed to the loop so far (written by this thread only)."""
        self.assigned_once = threading.Event()
        self.error: BaseException | None = None
        self.last_poll = time.monotonic()
        self._next_lag = 0.0

    # ------------------------------------------------------------------ API for the loop

    async def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the consumer thread (between two polls) and await its result."""
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._commands.put((fn, fut))
        return await asyncio.wrap_future(fut)

    def stop_fetching(self) -> None:
        """Take no more records: every partition is paused from the next poll on."""
        self._fetching = False

    def stop(self) -> None:
        self._stop_event.set()

    async def close(self) -> None:
        """Leave the group (the revoke callback commits what is finished) and end the thread."""

        def close() -> None:
            self._stop_event.set()
            self.consumer.close()

        await self.call(close)

    # ------------------------------------------------------------------ the thread

    def run(self) -> None:
        try:
            self.consumer.subscribe(self.topics, on_assign=self._assigned, on_revoke=self._revoked)
            while not self._stop_event.is_set():
                self._run_commands()
                if self._stop_event.is_set():
                    break
                credits = self._credits() if self._fetching else 0
                self._reconcile_pause(credits > 0)
                records = self.consumer.consume(max(1, min(credits, self._max_batch)), self._poll_s)
                self.last_poll = time.monotonic()
                if records:
                    self.handed += len(records)
                    self.loop.call_soon_threadsafe(self._on_records, records)
                now = time.monotonic()
                if self._need_ends and now >= self._next_ends:
                    self._fetch_ends(now)
                if now >= self._next_lag:
                    self._next_lag = now + self._lag_interval_s
                    try:
                        self._on_lag(self.consumer.lag())
                    except Exception:  # noqa: BLE001 - lag is best effort
                        log.debug("consumer lag unavailable", exc_info=True)
            self._run_commands()
        except BaseException as exc:  # noqa: BLE001 - reported to the loop, which stops the worker
            self.error = exc
            log.error("consumer thread failed: %s", exc, exc_info=True)
        finally:
            # Commands queued after the thread stopped would otherwise wait forever.
            while True:
                try:
                    _fn, fut = self._commands.get_nowait()
                except queue.Empty:
                    break
                if not fut.done():
                    fut.set_exception(RuntimeError("consumer thread stopped"))

    def _run_commands(self) -> None:
        while True:
            try:
                fn, fut = self._commands.get_nowait()
            except queue.Empty:
                return
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
                fut.set_exception(exc)

    def _reconcile_pause(self, want_records: bool) -> None:
        assignment = set(self.consumer.assignment())
        self._paused &= assignment
        unknown = self._unknown & assignment
        self._unknown -= unknown
        if want_records:
            stale = self._paused | unknown
            if stale:
                self.consumer.resume(sorted(stale))
                self._paused.clear()
        else:
            new = (assignment - self._paused) | unknown
            if new:
                self.consumer.pause(sorted(new))
                self._paused |= new

    def paused(self) -> bool:
        return bool(self._paused)

    def _fetch_ends(self, now: float) -> None:
        assert self._on_ends is not None
        self._need_ends &= self.assigned
        tps = sorted(self._need_ends)
        if not tps:
            return
        try:
            marks = self.consumer.watermarks(tps)
            committed = self.consumer.committed(tps, timeout_s=5.0)
        except Exception as exc:  # noqa: BLE001 - asked again shortly
            log.info("partition offsets not available yet: %s", exc)
            self._next_ends = now + 1.0
            return
        self._need_ends.difference_update(tps)
        # Where the group has no committed offset, the consumer starts at the first offset
        # (auto.offset.reset=earliest).
        ends = {tp: (start if (start := committed.get(tp)) is not None else lo, hi) for tp, (lo, hi) in marks.items()}
        self.loop.call_soon_threadsafe(self._on_ends, ends)

    # ------------------------------------------------------------------ rebalance (inside consume)

    def _assigned(self, tps: list[TopicPartition]) -> None:
        self._unknown |= set(tps)
        self.assigned |= set(tps)
        if self._on_ends is not None:
            self._need_ends |= set(tps)
        self.assigned_once.set()
        self._next_lag = time.monotonic() + 0.5  # soon: after the new partitions' first fetch
        if tps:
            self.loop.call_soon_threadsafe(self._on_assign, tps)

    def _revoked(self, tps: list[TopicPartition]) -> None:
        if not tps:
            return
        # Records of these partitions that were paused stay behind for the next owner.
        self._paused -= set(tps)
        self._unknown -= set(tps)
        self.assigned -= set(tps)
        self._need_ends -= set(tps)
        if self.loop.is_closed():
            return
        try:
            fut = asyncio.run_coroutine_threadsafe(self._on_revoke(tps), self.loop)
            offsets = fut.result(timeout=self._revoke_timeout_s)
        except Exception as exc:  # noqa: BLE001 - nothing committed: the next owner redoes the pages
            log.warning("revoked partitions were not drained (%s); leaving them uncommitted", exc)
            return
        if offsets:
            try:
                self.consumer.commit(offsets)
            except Exception as exc:  # noqa: BLE001 - e.g. partitions lost, not revoked: the new owner redoes
                log.warning("commit on revoke failed: %s", exc)


class LoopMailbox:
    """Hands calls from other threads to an event loop in batches: one loop wake-up (a write to
    its self-pipe) for all the calls posted until the loop gets to them, instead of one per call
    as ``call_soon_threadsafe`` does. Delivery reports arrive in bursts of dozens per producer poll."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._calls: deque[tuple[Callable[..., None], tuple[Any, ...]]] = deque()
        self._scheduled = False

    def post(self, fn: Callable[..., None], *args: Any) -> None:
        """From any thread. Calls run on the loop in the order they were posted."""
        self._calls.append((fn, args))
        if not self._scheduled:
            self._scheduled = True
            try:
                self._loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # the loop is closed: nobody waits for these any more
                self._scheduled = False

    def _drain(self) -> None:
        # Cleared before draining: a call posted meanwhile either is drained here or schedules
        # another drain (at worst an empty one), never neither.
        self._scheduled = False
        calls = self._calls
        while calls:
            fn, args = calls.popleft()
            try:
                fn(*args)
            except Exception:  # noqa: BLE001 - one bad callback must not drop the others
                log.exception("callback from another thread failed")


class DeliveryPoller(threading.Thread):
    """Calls ``producer.poll`` so that delivery callbacks run promptly."""

    def __init__(self, producer: Producer, *, poll_s: float = 0.1, name: str = "delivery") -> None:
        super().__init__(name=name, daemon=True)
        self.producer = producer
        self._poll_s = poll_s
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self.producer.poll(self._poll_s)
            except Exception:  # noqa: BLE001 - keep serving; a failed delivery surfaces in its callback
                log.warning("producer poll failed", exc_info=True)
                time.sleep(self._poll_s)

    def stop(self) -> None:
        self._stop_event.set()
