"""The transport on Apache Kafka through confluent-kafka (librdkafka).

Producers are idempotent with acks=all; consumers never auto-commit and read committed records only.
Client options from settings (SASL, SSL, ...) pass through to librdkafka untouched.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_INVALID,
    Consumer as _KConsumer,
    KafkaError,
    KafkaException,
    Message,
    Producer as _KProducer,
    TopicPartition as _KTP,
)

from ..errors import BrokerUnavailableError, ClientWedgedError
from .base import Consumer, DeliveryCallback, Producer, RebalanceCallback, Record, TopicPartition, Transport

log = logging.getLogger(__name__)


def _record(msg: Message) -> Record:
    ts = msg.timestamp()
    return Record(
        topic=msg.topic() or "",
        partition=msg.partition() or 0,
        offset=msg.offset() or 0,
        key=msg.key(),
        value=msg.value(),
        timestamp_ms=ts[1] if ts else 0,
        headers=_headers(msg.headers()),
    )


def _headers(raw: Any) -> tuple[tuple[str, bytes], ...]:
    out = []
    for k, v in raw or ():
        out.append((str(k), v.encode() if isinstance(v, str) else (v or b"")))
    return tuple(out)


class KafkaProducer(Producer):
    def __init__(self, conf: dict[str, Any]) -> None:
        self._p = _KProducer(conf)
        self._wedged = ""

    def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        *,
        on_delivery: DeliveryCallback | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        def cb(err: KafkaError | None, msg: Message) -> None:
            if on_delivery is not None:
                on_delivery(None if err is None else BrokerUnavailableError(f"delivery to {topic} failed: {err.str()}"),
                            _record(msg) if err is None else None)

        while True:
            try:
                self._p.produce(topic, value, key, on_delivery=cb, headers=list(headers) or None)
                return
            except BufferError:
                # Local queue full: serve callbacks to make room rather than grow without bound.
                self._p.poll(0.1)

    def poll(self, timeout_s: float = 0.0) -> int:
        return int(self._p.poll(timeout_s))

    def flush(self, timeout_s: float = 30.0) -> int:
        return int(self._p.flush(timeout_s))

    # librdkafka can block in a transactional call far past the timeout it was given: after a
    # broker restart, send_offsets_to_transaction waited forever on a stale group coordinator
    # (librdkafka #5456, #5511; seen with 2.16 against Kafka 4.1). Each call therefore runs on a
    # helper thread and is given up WEDGE_GRACE_S after its own timeout: the producer is then
    # marked wedged and every later call fails at once with ClientWedgedError.
    WEDGE_GRACE_S = 15.0

    def _bounded(self, what: str, fn: Callable[[], None], timeout_s: float) -> None:
        if self._wedged:
            raise ClientWedgedError(self._wedged)
        done = threading.Event()
        failure: list[BaseException] = []

        def call() -> None:
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                failure.append(exc)
            finally:
                done.set()

        threading.Thread(target=call, name=f"kafka-{what}", daemon=True).start()
        limit = timeout_s + self.WEDGE_GRACE_S
        if not done.wait(limit):
            self._wedged = (f"Kafka producer: {what} did not return within {limit:.0f}s (its timeout is {timeout_s:.0f}s); "
                            "the client is wedged and must be replaced")
            raise ClientWedgedError(self._wedged)
        if failure:
            raise failure[0]

    def init_transactions(self, timeout_s: float = 30.0) -> None:
        self._bounded("init_transactions", lambda: self._p.init_transactions(timeout_s), timeout_s)

    def begin_transaction(self) -> None:
        if self._wedged:
            raise ClientWedgedError(self._wedged)
        self._p.begin_transaction()

    def send_offsets_to_transaction(self, offsets: dict[TopicPartition, int], consumer: Consumer, timeout_s: float = 30.0) -> None:
        assert isinstance(consumer, KafkaConsumer)
        tps = [_KTP(t, p, o) for (t, p), o in offsets.items()]
        metadata = consumer._c.consumer_group_metadata()
        self._bounded("send_offsets_to_transaction", lambda: self._p.send_offsets_to_transaction(tps, metadata, timeout_s), timeout_s)

    def commit_transaction(self, timeout_s: float = 30.0) -> None:
        self._bounded("commit_transaction", lambda: self._p.commit_transaction(timeout_s), timeout_s)

    def abort_transaction(self, timeout_s: float = 30.0) -> None:
        self._bounded("abort_transaction", lambda: self._p.abort_transaction(timeout_s), timeout_s)

    @property
    def wedged(self) -> bool:
        return bool(self._wedged)

    def close(self) -> None:
        if not self._wedged:  # a wedged client's queue belongs to a transaction that is given up
            self._p.flush(30)


class KafkaConsumer(Consumer):
    def __init__(self, conf: dict[str, Any]) -> None:
        self._c = _KConsumer(conf)

    def subscribe(self, topics: list[str], *, on_assign: RebalanceCallback | None = None, on_revoke: RebalanceCallback | None = None) -> None:
        def assigned(_c: Any, parts: list[_KTP]) -> None:
            if on_assign:
                on_assign([(p.topic, p.partition) for p in parts])

        def revoked(_c: Any, parts: list[_KTP]) -> None:
            if on_revoke:
                on_revoke([(p.topic, p.partition) for p in parts])

        self._c.subscribe(topics, on_assign=assigned, on_revoke=revoked, on_lost=revoked)

    def consume(self, max_records: int, timeout_s: float) -> list[Record]:
        out = []
        for msg in self._c.consume(max_records, timeout_s):
            err = msg.error()
            if err is None:
                out.append(_record(msg))
            elif err.code() == KafkaError._PARTITION_EOF:
                continue
            elif err.fatal():
                raise BrokerUnavailableError(f"fatal consumer error: {err.str()}")
            else:
                log.warning("consumer error: %s", err.str())
        return out

    def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if not offsets:
            return
        try:
            self._c.commit(offsets=[_KTP(t, p, o) for (t, p), o in offsets.items()], asynchronous=False)
        except KafkaException as exc:
            err = exc.args[0]
            if getattr(err, "code", lambda: None)() == KafkaError._NO_OFFSET:
                return
            raise BrokerUnavailableError(f"offset commit failed: {err}") from exc

    def committed(self, partitions: list[TopicPartition], timeout_s: float = 10.0) -> dict[TopicPartition, int | None]:
        res = self._c.committed([_KTP(t, p) for t, p in partitions], timeout=timeout_s)
        return {(r.topic, r.partition): (None if r.offset == OFFSET_INVALID or r.offset < 0 else r.offset) for r in res}

    def pause(self, partitions: list[TopicPartition]) -> None:
        if partitions:
            self._c.pause([_KTP(t, p) for t, p in partitions])

    def resume(self, partitions: list[TopicPartition]) -> None:
        if partitions:
            self._c.resume([_KTP(t, p) for t, p in partitions])

    def assignment(self) -> list[TopicPartition]:
        return [(p.topic, p.partition) for p in self._c.assignment()]

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self._c.seek(_KTP(tp[0], tp[1], offset))

    def lag(self) -> dict[TopicPartition, int]:
        out = {}
        unknown = []
        for p in self._c.assignment():
            try:
                lo, hi = self._c.get_watermark_offsets(p, timeout=1.0, cached=True)
                pos = self._c.position([p])[0].offset
            except KafkaException:
                continue
            if hi < 0:
                continue
            if pos >= 0:
                out[(p.topic, p.partition)] = max(0, hi - pos)
            else:
                unknown.append((p, lo, hi))
        if unknown:
            # No record consumed yet since assignment: the position is unset, so start from the
            # group's committed offset (or the beginning, for a new group).
            try:
                committed = {(c.topic, c.partition): c.offset for c in self._c.committed([p for p, _lo, _hi in unknown], timeout=2.0)}
            except KafkaException:
                committed = {}
            for p, lo, hi in unknown:
                start = committed.get((p.topic, p.partition), -1)
                out[(p.topic, p.partition)] = max(0, hi - (start if start >= 0 else lo))
        return out

    def watermarks(self, partitions: list[TopicPartition], timeout_s: float = 5.0) -> dict[TopicPartition, tuple[int, int]]:
        out = {}
        for t, p in partitions:
            try:
                lo, hi = self._c.get_watermark_offsets(_KTP(t, p), timeout=timeout_s, cached=False)
            except KafkaException as exc:
                raise BrokerUnavailableError(f"cannot read the offsets of {t}[{p}]: {exc.args[0]}") from exc
            out[(t, p)] = (lo, hi)
        return out

    def close(self) -> None:
        self._c.close()


class KafkaTransport(Transport):
    def __init__(self, conf: dict[str, str], *, client_id: str = "ocr-stream", consumer_conf: dict[str, str] | None = None) -> None:
        self.conf = dict(conf)
        self.client_id = client_id
        # Properties for group consumers only, e.g. group.instance.id (static membership: a restarted
        # instance gets its partitions back at once instead of after the session timeout).
        self.consumer_conf = dict(consumer_conf or {})

    def producer(self, *, transactional_id: str | None = None, name: str = "") -> KafkaProducer:
        conf: dict[str, Any] = {
            "client.id": f"{self.client_id}{'-' + name if name else ''}",
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "compression.type": "lz4",
            "message.timeout.ms": 120_000,
            # Kafka's default partitioner (murmur2 of the key), as Java and Go producers use: records
            # keyed doc_id then land on the same partition number in ocr.results and the aggregator's
            # changelog whoever wrote them (librdkafka's default, consistent_random, hashes with CRC32).
            "partitioner": "murmur2_random",
            **self.conf,
        }
        if transactional_id:
            conf["transactional.id"] = transactional_id
            # librdkafka requires message.timeout.ms <= transaction.timeout.ms (default 60 s).
            conf.setdefault("transaction.timeout.ms", 60_000)
            conf["message.timeout.ms"] = min(int(conf["message.timeout.ms"]), int(conf["transaction.timeout.ms"]))
        return KafkaProducer(conf)

    def consumer(self, group_id: str, *, name: str = "", isolation_read_committed: bool = True) -> KafkaConsumer:
        conf: dict[str, Any] = {
            "client.id": f"{self.client_id}{'-' + name if name else ''}",
            "group.id": group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed" if isolation_read_committed else "read_uncommitted",
            "partition.assignment.strategy": "cooperative-sticky",
            "session.timeout.ms": 15_000,
            "heartbeat.interval.ms": 2_000,
            "max.poll.interval.ms": 600_000,
            **self.conf,
            **self.consumer_conf,
        }
        return KafkaConsumer(conf)

    def ensure_topics(self, topics: dict[str, int]) -> None:
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient(dict[str, Any](self.conf))
        md = admin.list_topics(timeout=30)
        new = [NewTopic(t, num_partitions=n, replication_factor=1) for t, n in topics.items() if t not in md.topics]
        if not new:
            return
        for name, fut in admin.create_topics(new, request_timeout=30).items():
            try:
                fut.result(timeout=30)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise BrokerUnavailableError(f"cannot create topic {name}: {exc.args[0]}") from exc

    def _reader(self, isolation: str, *, eof: bool = False) -> _KConsumer:
        # A group id is required by librdkafka but never joined: partitions are assigned by hand.
        return _KConsumer({
            "client.id": f"{self.client_id}-reader",
            "group.id": f"{self.client_id}-reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": eof,
            "auto.offset.reset": "earliest",
            "isolation.level": isolation,
            **self.conf,
        })

    def partition_count(self, topic: str) -> int:
        from confluent_kafka.admin import AdminClient

        conf: dict[str, Any] = dict(self.conf)
        admin = AdminClient(conf)
        # A topic created a moment ago may be missing from metadata for a while: ask again briefly.
        deadline = time.monotonic() + 10
        while True:
            try:
                md = admin.list_topics(topic=topic, timeout=30)
            except KafkaException as exc:
                raise BrokerUnavailableError(f"cannot reach Kafka: {exc.args[0]}") from exc
            t = md.topics.get(topic)
            if t is not None and t.error is None and t.partitions:
                return len(t.partitions)
            if time.monotonic() > deadline:
                raise BrokerUnavailableError(f"topic {topic} does not exist (create it with `ocr-stream topics apply`)")
            time.sleep(0.2)

    def read_partitions(
        self, topic: str, partitions: list[int], *, timeout_s: float = 65.0, wait_for_transactions: bool = True
    ) -> Iterator[Record]:
        if not partitions:
            return
        deadline = time.monotonic() + timeout_s
        wait_until = deadline if wait_for_transactions else time.monotonic()
        committed = self._reader("read_committed", eof=True)
        uncommitted = self._reader("read_uncommitted")
        try:
            # The read_committed high watermark is the last stable offset: it stops short of the end
            # while a transaction is open. Wait for it to reach the end as it was when we started.
            def watermarks(c: _KConsumer, p: int) -> tuple[int, int]:
                # Retried: right after a topic is created or a leader moves, the broker answers
                # NOT_LEADER / UNKNOWN_TOPIC_OR_PART for a while.
                while True:
                    try:
                        lo, hi = c.get_watermark_offsets(_KTP(topic, p), timeout=10, cached=False)
                        return int(lo), int(hi)
                    except KafkaException as exc:
                        if time.monotonic() > deadline or exc.args[0].fatal():
                            raise BrokerUnavailableError(f"cannot read {topic}[{p}] offsets: {exc.args[0]}") from exc
                        time.sleep(0.2)

            ends: dict[int, int] = {}
            for p in partitions:
                _lo, hw = watermarks(uncommitted, p)
                lo, lso = watermarks(committed, p)
                while lso < hw and time.monotonic() < wait_until:
                    time.sleep(0.1)
                    lo, lso = watermarks(committed, p)
                if lso < hw and wait_for_transactions:
                    log.warning("a transaction is still open on %s[%d]; reading what is committed", topic, p)
                if lso > lo:
                    ends[p] = lso
            if not ends:
                return
            deadline = time.monotonic() + timeout_s  # the wait above does not eat into the read
            committed.assign([_KTP(topic, p, OFFSET_BEGINNING) for p in ends])
            pending = set(ends)
            while pending:
                if time.monotonic() > deadline:
                    raise BrokerUnavailableError(f"timed out reading {topic} partitions {sorted(pending)}")
                for msg in committed.consume(1000, 0.5):
                    err = msg.error()
                    part = msg.partition() or 0
                    if err is None:
                        yield _record(msg)
                        if (msg.offset() or 0) + 1 >= ends[part]:
                            pending.discard(part)
                    elif err.code() == KafkaError._PARTITION_EOF:
                        pending.discard(part)
                    elif err.fatal():
                        raise BrokerUnavailableError(f"fatal error reading {topic}: {err.str()}")
                    else:
                        log.warning("error reading %s: %s", topic, err.str())
        finally:
            committed.close()
            uncommitted.close()
