"""The in-process transport: a small Kafka in memory, for local mode (``ocr-stream run``) and tests.

It keeps the semantics the services rely on, so code that is correct on MemoryTransport is correct
on Kafka (both pass tests/integration/test_transport_contract.py):

- Topics have partitions; a keyed record goes to ``murmur2(key) % partitions`` exactly like Kafka's
  Java default partitioner and librdkafka's ``murmur2_random``, so co-partitioned topics (ocr.results
  and the aggregator changelog) put a key on the same partition number. Records without a key rotate.
- Order is kept within a partition; offsets start at 0 and grow by one per record.
- Consumer groups: committed offsets per partition; the partitions of the subscribed topics are
  shared among the group's live members (balanced, sticky). A partition moves in two steps, like
  Kafka's cooperative protocol: its old owner runs ``on_revoke`` (and may commit) inside its next
  ``consume``, and only then does the new owner get it, in ``on_assign``, starting at the committed
  offset (or the beginning). So records consumed but not committed by a member that leaves or
  closes are delivered again to the next owner.
- Transactions: records of an open transaction are in the log but invisible to read_committed
  consumers, which also stop at the first open transaction's first record (the last stable
  offset); an aborted transaction's records are skipped. ``send_offsets_to_transaction`` commits
  the group's offsets together with the transaction. ``init_transactions`` on a transactional id
  already in use fences the older producer (its open transaction is aborted).
- Delivery callbacks run from ``poll``/``flush`` (and ``commit_transaction``), never from ``produce``.

Everything is guarded by one lock per transport; waiting consumers sleep on one condition variable.
Records are kept for the transport's lifetime (local mode processes a bounded set of documents).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from ..errors import BrokerUnavailableError, InternalError
from .base import Consumer, DeliveryCallback, Producer, RebalanceCallback, Record, TopicPartition, Transport
from .partitioner import murmur2, partition_for_key

log = logging.getLogger(__name__)


class ProducerFencedError(InternalError):
    """Another producer with the same transactional id called ``init_transactions``: this one is a
    zombie and must not write any more (Kafka's PRODUCER_FENCED)."""


class _TxnState:
    OPEN = "open"
    COMMITTED = "committed"
    ABORTED = "aborted"


@dataclass(eq=False)
class _Txn:
    state: str = _TxnState.OPEN
    records: dict[TopicPartition, list[int]] = field(default_factory=dict)
    offsets: dict[str, dict[TopicPartition, int]] = field(default_factory=dict)  # group -> offsets


@dataclass
class _Partition:
    log: list[Record] = field(default_factory=list)
    aborted: set[int] = field(default_factory=set)
    open_txns: dict[_Txn, int] = field(default_factory=dict)  # open transaction -> its first offset here

    def end(self, read_committed: bool) -> int:
        """First offset a consumer may not read yet (last stable offset for read_committed)."""
        if read_committed and self.open_txns:
            return min(self.open_txns.values())
        return len(self.log)


@dataclass(eq=False)
class _Member:
    member_id: str
    topics: list[str]


@dataclass
class _Group:
    members: dict[str, _Member] = field(default_factory=dict)  # join order
    committed: dict[TopicPartition, int] = field(default_factory=dict)
    target: dict[str, set[TopicPartition]] = field(default_factory=dict)
    owner: dict[TopicPartition, str] = field(default_factory=dict)


class MemoryTransport(Transport):
    """An in-process broker. Thread-safe; producers and consumers made here see only each other."""

    def __init__(self, *, default_partitions: int | None = None) -> None:
        """``default_partitions``: create a topic that is produced to before it exists with this many
        partitions (Kafka's ``auto.create.topics.enable`` with ``num.partitions``); None (default):
        such a record fails in its delivery callback, as on a cluster that does not auto-create."""
        if default_partitions is not None and default_partitions < 1:
            raise ValueError(f"default_partitions must be >= 1, got {default_partitions}")
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._topics: dict[str, list[_Partition]] = {}
        self._groups: dict[str, _Group] = {}
        self._txn_ids: dict[str, int] = {}  # transactional id -> the producer that holds it now
        self._txn_producers: dict[str, list[MemoryProducer]] = {}
        self._ids = itertools.count(1)
        self._default_partitions = default_partitions
        self._closed = False

    # --- Transport ---------------------------------------------------------------------------

    def producer(self, *, transactional_id: str | None = None, name: str = "") -> MemoryProducer:
        return MemoryProducer(self, transactional_id=transactional_id, name=name)

    def consumer(self, group_id: str, *, name: str = "", isolation_read_committed: bool = True) -> MemoryConsumer:
        return MemoryConsumer(self, group_id, name=name, read_committed=isolation_read_committed)

    def ensure_topics(self, topics: dict[str, int]) -> None:
        with self._cond:
            for topic, n in topics.items():
                if n < 1:
                    raise ValueError(f"topic {topic}: partition count must be >= 1, got {n}")
                parts = self._topics.setdefault(topic, [])
                while len(parts) < n:
                    parts.append(_Partition())
            for group in self._groups.values():
                self._rebalance(group)
            self._cond.notify_all()

    def partition_count(self, topic: str) -> int:
        with self._lock:
            parts = self._topics.get(topic)
            if not parts:
                raise BrokerUnavailableError(f"topic {topic} does not exist")
            return len(parts)

    def read_partitions(
        self, topic: str, partitions: list[int], *, timeout_s: float = 65.0, wait_for_transactions: bool = True
    ) -> Iterator[Record]:
        if not partitions:
            return
        deadline = time.monotonic() + timeout_s
        with self._cond:
            parts = self._topics.get(topic)
            if not parts:
                raise BrokerUnavailableError(f"topic {topic} does not exist")
            wanted = [parts[p] for p in partitions]
            # Wait for the transactions open now to end, as Kafka's read_committed readers do.
            open_now = {txn for part in wanted for txn in part.open_txns} if wait_for_transactions else set()
            while any(txn.state == _TxnState.OPEN for txn in open_now):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    log.warning("a transaction is still open on %s; reading what is committed", topic)
                    break
                self._cond.wait(remaining)
            # The log only grows and records are immutable: a snapshot of the bounds is enough.
            snapshot = [(part, part.end(read_committed=True), frozenset(part.aborted)) for part in wanted]
        for part, end, aborted in snapshot:
            for off in range(end):
                if off not in aborted:
                    yield part.log[off]

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # --- introspection (tests, local mode's progress) -----------------------------------------

    def partitions(self, topic: str) -> int:
        with self._lock:
            return len(self._topics.get(topic, []))

    def end_offsets(self, topic: str) -> list[int]:
        with self._lock:
            return [len(p.log) for p in self._topics.get(topic, [])]

    def committed_offsets(self, group_id: str) -> dict[TopicPartition, int]:
        with self._lock:
            group = self._groups.get(group_id)
            return dict(group.committed) if group else {}

    # --- internals (called with the lock held) --------------------------------------------------

    def _append(self, topic: str, key: bytes | None, value: bytes | None, headers: tuple[tuple[str, bytes], ...],
                txn: _Txn | None, rotate: int) -> Record:
        parts = self._topics.get(topic)
        if not parts and self._default_partitions is not None:
            parts = self._topics[topic] = [_Partition() for _ in range(self._default_partitions)]
            for group in self._groups.values():
                self._rebalance(group)
        if not parts:
            raise BrokerUnavailableError(f"delivery to {topic} failed: unknown topic (create it with ensure_topics)")
        pno = partition_for_key(key, len(parts)) if key is not None else rotate % len(parts)
        part = parts[pno]
        rec = Record(topic=topic, partition=pno, offset=len(part.log), key=key, value=value,
                     timestamp_ms=int(time.time() * 1000), headers=headers)
        part.log.append(rec)
        if txn is not None:
            part.open_txns.setdefault(txn, rec.offset)
            txn.records.setdefault((topic, pno), []).append(rec.offset)
        self._cond.notify_all()
        return rec

    def _end_txn(self, txn: _Txn, commit: bool) -> None:
        txn.state = _TxnState.COMMITTED if commit else _TxnState.ABORTED
        for (topic, pno), written in txn.records.items():
            part = self._topics[topic][pno]
            part.open_txns.pop(txn, None)
            if not commit:
                part.aborted.update(written)
        if commit:
            for group_id, offsets in txn.offsets.items():
                self._groups.setdefault(group_id, _Group()).committed.update(offsets)
        self._cond.notify_all()

    def _group_partitions(self, topic: str) -> list[TopicPartition]:
        return [(topic, i) for i in range(len(self._topics.get(topic, [])))]

    def _rebalance(self, group: _Group) -> None:
        """Recompute the target assignment: balanced per topic, keeping partitions where they are
        when that stays balanced (sticky), in members' join order."""
        target: dict[str, set[TopicPartition]] = {mid: set() for mid in group.members}
        topics = sorted({t for m in group.members.values() for t in m.topics})
        for topic in topics:
            subs = [mid for mid, m in group.members.items() if topic in m.topics]
            tps = self._group_partitions(topic)
            if not subs or not tps:
                continue
            base, extra = divmod(len(tps), len(subs))
            quota = {mid: base + (1 if i < extra else 0) for i, mid in enumerate(subs)}
            free: list[TopicPartition] = []
            for tp in tps:
                current = next((mid for mid in subs if tp in group.target.get(mid, ())), None)
                if current is not None and quota[current] > 0:
                    target[current].add(tp)
                    quota[current] -= 1
                else:
                    free.append(tp)
            for tp in free:
                mid = next(mid for mid in subs if quota[mid] > 0)
                target[mid].add(tp)
                quota[mid] -= 1
        group.target = target
        self._cond.notify_all()


class MemoryProducer(Producer):
    """A producer of the in-memory broker; idempotent by construction (a produce appends once)."""

    def __init__(self, transport: MemoryTransport, *, transactional_id: str | None = None, name: str = "") -> None:
        self._t = transport
        self.name = name
        self.transactional_id = transactional_id
        self._id = next(transport._ids)
        self._pending: deque[tuple[DeliveryCallback | None, Exception | None, Record | None]] = deque()
        self._pcond = threading.Condition(threading.Lock())
        self._txn: _Txn | None = None
        self._initialized = False
        self._rotate = itertools.count()

    def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        *,
        on_delivery: DeliveryCallback | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        with self._t._lock:
            if self.transactional_id is not None:
                self._check_not_fenced()
                if self._txn is None:
                    raise InternalError(f"produce to {topic} outside a transaction on transactional producer {self.transactional_id}")
            try:
                rec: Record | None = self._t._append(topic, key, value, tuple(headers), self._txn, next(self._rotate))
                err: Exception | None = None
            except BrokerUnavailableError as exc:
                rec, err = None, exc
        with self._pcond:
            self._pending.append((on_delivery, err, rec))
            self._pcond.notify_all()

    def _serve(self) -> int:
        ran = 0
        while True:
            with self._pcond:
                if not self._pending:
                    return ran
                cb, err, rec = self._pending.popleft()
            ran += 1
            if cb is not None:
                cb(err, rec)

    def poll(self, timeout_s: float = 0.0) -> int:
        if timeout_s > 0:
            with self._pcond:
                # Like librdkafka, poll blocks for the timeout when there is nothing to serve.
                self._pcond.wait_for(lambda: bool(self._pending), timeout_s)
        return self._serve()

    def flush(self, timeout_s: float = 30.0) -> int:
        self._serve()
        return 0

    # --- transactions ---------------------------------------------------------------------

    def _check_not_fenced(self) -> None:
        assert self.transactional_id is not None
        if self._t._txn_ids.get(self.transactional_id) != self._id:
            raise ProducerFencedError(
                f"producer fenced: another producer with transactional id {self.transactional_id!r} took over"
                if self._initialized else f"init_transactions was not called on producer {self.transactional_id!r}"
            )

    def init_transactions(self, timeout_s: float = 30.0) -> None:
        if self.transactional_id is None:
            raise InternalError("init_transactions on a producer opened without a transactional id")
        with self._t._lock:
            # Fence the previous holder of this id: its open transaction is aborted, its writes refused.
            for prod in self._t._txn_producers.get(self.transactional_id, []):
                if prod._txn is not None and prod._txn.state == _TxnState.OPEN:
                    self._t._end_txn(prod._txn, commit=False)
                    prod._txn = None
            self._t._txn_ids[self.transactional_id] = self._id
            # Only the newest holder is kept: older ones are fenced and need no further aborting.
            self._t._txn_producers[self.transactional_id] = [self]
            self._initialized = True

    def begin_transaction(self) -> None:
        with self._t._lock:
            self._check_not_fenced()
            if self._txn is not None:
                raise InternalError(f"begin_transaction: a transaction is already open on {self.transactional_id!r}")
            self._txn = _Txn()

    def send_offsets_to_transaction(self, offsets: dict[TopicPartition, int], consumer: Consumer, timeout_s: float = 30.0) -> None:
        if not isinstance(consumer, MemoryConsumer):
            raise InternalError("send_offsets_to_transaction needs a consumer of the same MemoryTransport")
        with self._t._lock:
            self._check_not_fenced()
            if self._txn is None:
                raise InternalError("send_offsets_to_transaction outside a transaction")
            if consumer._member_id not in self._t._groups.get(consumer.group_id, _Group()).members:
                # Kafka refuses offsets from a consumer that is no longer in its group (a zombie).
                raise InternalError(f"consumer {consumer.name or consumer._member_id} is not a member of group {consumer.group_id}")
            foreign = sorted(tp for tp in offsets if tp not in consumer._owned)
            if foreign:
                # KIP-447: offsets carry the consumer's generation, and a member that lost partitions
                # in a rebalance cannot commit for them.
                raise InternalError(f"offsets for partitions {foreign} that consumer {consumer.name or consumer._member_id} does not own")
            self._txn.offsets.setdefault(consumer.group_id, {}).update(offsets)

    def commit_transaction(self, timeout_s: float = 30.0) -> None:
        self._serve()
        with self._t._lock:
            self._check_not_fenced()
            if self._txn is None:
                raise InternalError("commit_transaction without a transaction")
            self._t._end_txn(self._txn, commit=True)
            self._txn = None

    def abort_transaction(self, timeout_s: float = 30.0) -> None:
        self._serve()
        with self._t._lock:
            self._check_not_fenced()
            if self._txn is not None:
                self._t._end_txn(self._txn, commit=False)
                self._txn = None

    def close(self) -> None:
        self._serve()
        with self._t._lock:
            # A transactional producer that goes away mid-transaction: the broker aborts it.
            if self._txn is not None and self._txn.state == _TxnState.OPEN:
                self._t._end_txn(self._txn, commit=False)
                self._txn = None


class MemoryConsumer(Consumer):
    """A member of a consumer group on the in-memory broker. Use it from one thread at a time
    (like a Kafka consumer); commits from other threads are fine."""

    def __init__(self, transport: MemoryTransport, group_id: str, *, name: str = "", read_committed: bool = True) -> None:
        self._t = transport
        self.group_id = group_id
        self.name = name
        self.read_committed = read_committed
        self._member_id = f"{name or 'consumer'}-{next(transport._ids)}"
        self._owned: set[TopicPartition] = set()
        self._position: dict[TopicPartition, int] = {}
        self._paused: set[TopicPartition] = set()
        self._on_assign: RebalanceCallback | None = None
        self._on_revoke: RebalanceCallback | None = None
        self._subscribed = False
        self._closed = False
        self._rr = 0

    def _group(self) -> _Group:
        return self._t._groups.setdefault(self.group_id, _Group())

    def subscribe(self, topics: list[str], *, on_assign: RebalanceCallback | None = None, on_revoke: RebalanceCallback | None = None) -> None:
        if self._closed:
            raise InternalError("subscribe on a closed consumer")
        with self._t._cond:
            self._on_assign, self._on_revoke = on_assign, on_revoke
            group = self._group()
            group.members[self._member_id] = _Member(self._member_id, list(topics))
            self._subscribed = True
            self._t._rebalance(group)

    # --- rebalance ----------------------------------------------------------------------------

    def _pending_change(self) -> tuple[list[TopicPartition], bool]:
        """(partitions to give up, whether some partition is ready to be taken). Lock held."""
        group = self._group()
        target = group.target.get(self._member_id, set())
        revoked = sorted(self._owned - target)
        takeable = any(tp not in self._owned and tp not in group.owner for tp in target)
        return revoked, takeable

    def _sync(self) -> None:
        """Run this member's share of a rebalance: revoke first (callback, then release), then take
        the partitions their old owners have released. Callbacks run without the lock."""
        with self._t._lock:
            if not self._subscribed:
                return
            revoked, _ = self._pending_change()
        if revoked:
            if self._on_revoke is not None:
                self._on_revoke(revoked)
            with self._t._cond:
                group = self._group()
                for tp in revoked:
                    if group.owner.get(tp) == self._member_id:
                        del group.owner[tp]
                    self._owned.discard(tp)
                    self._position.pop(tp, None)
                    self._paused.discard(tp)
                self._t._cond.notify_all()
        with self._t._cond:
            group = self._group()
            target = group.target.get(self._member_id, set())
            added = sorted(tp for tp in target if tp not in self._owned and tp not in group.owner)
            for tp in added:
                group.owner[tp] = self._member_id
                self._owned.add(tp)
                self._position[tp] = group.committed.get(tp, 0)
        if added and self._on_assign is not None:
            self._on_assign(added)

    # --- consuming ------------------------------------------------------------------------------

    def _fetch(self, max_records: int) -> list[Record]:
        out: list[Record] = []
        tps = sorted(tp for tp in self._owned if tp not in self._paused)
        if not tps:
            return out
        # Start at a rotating partition so that one busy partition cannot starve the others.
        self._rr = (self._rr + 1) % len(tps)
        for tp in tps[self._rr:] + tps[: self._rr]:
            part = self._t._topics[tp[0]][tp[1]]
            end = part.end(self.read_committed)
            pos = self._position[tp]
            while pos < end and len(out) < max_records:
                if not (self.read_committed and pos in part.aborted):
                    out.append(part.log[pos])
                pos += 1
            self._position[tp] = pos
            if len(out) >= max_records:
                break
        return out

    def consume(self, max_records: int, timeout_s: float) -> list[Record]:
        if self._closed:
            raise InternalError("consume on a closed consumer")
        deadline = time.monotonic() + max(0.0, timeout_s)
        while True:
            self._sync()
            with self._t._cond:
                records = self._fetch(max_records)
                if records:
                    return records
                revoked, takeable = self._pending_change()
                if revoked or takeable:
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._t._closed:
                    return []
                self._t._cond.wait(remaining)

    def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if not offsets:
            return
        with self._t._cond:
            group = self._group()
            if self._member_id not in group.members:
                raise BrokerUnavailableError(f"offset commit failed: consumer is not a member of group {self.group_id}")
            for tp, off in offsets.items():
                if off < 0:
                    raise ValueError(f"offset for {tp} must be >= 0, got {off}")
            group.committed.update(offsets)

    def committed(self, partitions: list[TopicPartition], timeout_s: float = 10.0) -> dict[TopicPartition, int | None]:
        with self._t._lock:
            group = self._group()
            return {tp: group.committed.get(tp) for tp in partitions}

    def pause(self, partitions: list[TopicPartition]) -> None:
        with self._t._lock:
            self._paused.update(tp for tp in partitions if tp in self._owned)

    def resume(self, partitions: list[TopicPartition]) -> None:
        with self._t._cond:
            self._paused.difference_update(partitions)
            self._t._cond.notify_all()

    def assignment(self) -> list[TopicPartition]:
        with self._t._lock:
            return sorted(self._owned)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        with self._t._cond:
            if tp not in self._owned:
                log.debug("seek on a partition this consumer does not own", extra={"tp": tp})
                return
            self._position[tp] = max(0, offset)
            self._t._cond.notify_all()

    def lag(self) -> dict[TopicPartition, int]:
        with self._t._lock:
            return {tp: max(0, self._t._topics[tp[0]][tp[1]].end(self.read_committed) - self._position[tp]) for tp in self._owned}

    def watermarks(self, partitions: list[TopicPartition], timeout_s: float = 5.0) -> dict[TopicPartition, tuple[int, int]]:
        with self._t._lock:
            return {tp: (0, self._t._topics[tp[0]][tp[1]].end(self.read_committed)) for tp in partitions}

    def close(self) -> None:
        if self._closed:
            return
        with self._t._lock:
            owned = sorted(self._owned)
        if owned and self._on_revoke is not None:
            self._on_revoke(owned)
        with self._t._cond:
            group = self._group()
            for tp in owned:
                if group.owner.get(tp) == self._member_id:
                    del group.owner[tp]
            group.members.pop(self._member_id, None)
            group.target.pop(self._member_id, None)
            self._owned.clear()
            self._position.clear()
            self._closed = True
            self._t._rebalance(group)


__all__ = ["MemoryConsumer", "MemoryProducer", "MemoryTransport", "ProducerFencedError", "murmur2", "partition_for_key"]
