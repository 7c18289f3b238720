"""The transport on Apache Kafka through confluent-kafka (librdkafka).

Producers are idempotent with acks=all; consumers never auto-commit and read committed records only.
Client options from settings (SASL, SSL, ...) pass through to librdkafka untouched.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from confluent_kafka import (
    OFFSET_INVALID,
    Consumer as _KConsumer,
    KafkaError,
    KafkaException,
    Message,
    Producer as _KProducer,
    TopicPartition as _KTP,
)

from ..errors import BrokerUnavailableError
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
        headers=tuple((k, v or b"") for k, v in (msg.headers() or [])),
    )


class KafkaProducer(Producer):
    def __init__(self, conf: dict[str, Any]) -> None:
        self._p = _KProducer(conf)

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

    def init_transactions(self, timeout_s: float = 30.0) -> None:
        self._p.init_transactions(timeout_s)

    def begin_transaction(self) -> None:
        self._p.begin_transaction()

    def send_offsets_to_transaction(self, offsets: dict[TopicPartition, int], consumer: Consumer, timeout_s: float = 30.0) -> None:
        assert isinstance(consumer, KafkaConsumer)
        tps = [_KTP(t, p, o) for (t, p), o in offsets.items()]
        self._p.send_offsets_to_transaction(tps, consumer._c.consumer_group_metadata(), timeout_s)

    def commit_transaction(self, timeout_s: float = 30.0) -> None:
        self._p.commit_transaction(timeout_s)

    def abort_transaction(self, timeout_s: float = 30.0) -> None:
        self._p.abort_transaction(timeout_s)

    def close(self) -> None:
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
        for p in self._c.assignment():
            try:
                lo, hi = self._c.get_watermark_offsets(p, timeout=1.0, cached=True)
                pos = self._c.position([p])[0].offset
            except KafkaException:
                continue
            if hi >= 0:
                out[(p.topic, p.partition)] = max(0, hi - (pos if pos >= 0 else lo))
        return out

    def close(self) -> None:
        self._c.close()


class KafkaTransport(Transport):
    def __init__(self, conf: dict[str, str], *, client_id: str = "ocr-stream") -> None:
        self.conf = dict(conf)
        self.client_id = client_id

    def producer(self, *, transactional_id: str | None = None, name: str = "") -> KafkaProducer:
        conf: dict[str, Any] = {
            "client.id": f"{self.client_id}{'-' + name if name else ''}",
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "compression.type": "lz4",
            "message.timeout.ms": 120_000,
            **self.conf,
        }
        if transactional_id:
            conf["transactional.id"] = transactional_id
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
        }
        return KafkaConsumer(conf)

    def ensure_topics(self, topics: dict[str, int]) -> None:
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient(self.conf)
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
