"""Which offsets may be committed: the highest *contiguous* finished offset of each partition.

Pages finish out of order (a short page overtakes a long one, a retried page waits on a timer), but
a Kafka commit is one number per partition that says "everything before this is done". Committing
past an unfinished page would lose it if the worker died, so the commit point of a partition is the
lowest offset still pending, or one past the highest offset seen when nothing is pending.

Offsets need not be consecutive (transaction markers and compaction leave gaps), so the tracker
never assumes ``offset + 1`` follows ``offset``: it only knows which offsets it handed out.

Pure logic: no I/O, no clock, no Kafka import. One instance per consumer, used from one thread.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

TopicPartition = tuple[str, int]


@dataclass
class _Partition:
    pending: set[int] = field(default_factory=set)
    heap: list[int] = field(default_factory=list)  # pending offsets, lazily cleaned of finished ones
    next_offset: int | None = None  # one past the highest offset seen
    committed: int | None = None  # last commit point handed out by ``to_commit``


class OffsetTracker:
    """Tracks records handed out for processing and computes safe commit points.

    ``start(tp, offset)`` when a record is taken, ``finish(tp, offset)`` once its outcome is
    acknowledged by the broker, ``to_commit()`` for the offsets (Kafka convention: next to read)
    that moved since the last call."""

    def __init__(self) -> None:
        self._parts: dict[TopicPartition, _Partition] = {}

    # ------------------------------------------------------------------ assignment

    def assign(self, tps: list[TopicPartition]) -> None:
        """Begin tracking partitions (state from an earlier ownership is forgotten)."""
        for tp in tps:
            self._parts[tp] = _Partition()

    def revoke(self, tps: list[TopicPartition]) -> None:
        """Forget partitions; records still pending on them belong to the next owner."""
        for tp in tps:
            self._parts.pop(tp, None)

    def partitions(self) -> list[TopicPartition]:
        return list(self._parts)

    def owns(self, tp: TopicPartition) -> bool:
        return tp in self._parts

    # ------------------------------------------------------------------ records

    def start(self, tp: TopicPartition, offset: int) -> None:
        """A record was taken for processing. Records of one partition arrive in offset order;
        an offset at or below one already seen (a seek back, a redelivery) is tracked again."""
        part = self._parts.get(tp)
        if part is None:
            part = self._parts[tp] = _Partition()
        if offset in part.pending:
            return
        part.pending.add(offset)
        heapq.heappush(part.heap, offset)
        if part.next_offset is None or offset >= part.next_offset:
            part.next_offset = offset + 1

    def finish(self, tp: TopicPartition, offset: int) -> bool:
        """A record's outcome is durable. Returns False when the record is not tracked (its
        partition was revoked meanwhile: the new owner will redo it)."""
        part = self._parts.get(tp)
        if part is None or offset not in part.pending:
            return False
        part.pending.discard(offset)
        # Drop finished offsets from the top of the heap so its head is the lowest pending one.
        while part.heap and part.heap[0] not in part.pending:
            heapq.heappop(part.heap)
        return True

    def pending(self, tp: TopicPartition | None = None) -> int:
        """How many records are started and not finished (in one partition, or in all)."""
        if tp is not None:
            part = self._parts.get(tp)
            return len(part.pending) if part else 0
        return sum(len(p.pending) for p in self._parts.values())

    # ------------------------------------------------------------------ commits

    def commit_point(self, tp: TopicPartition) -> int | None:
        """The offset to commit for ``tp`` (next to read), or None when nothing was seen."""
        part = self._parts.get(tp)
        if part is None or part.next_offset is None:
            return None
        if part.heap:
            return part.heap[0]
        return part.next_offset

    def to_commit(self, tps: list[TopicPartition] | None = None) -> dict[TopicPartition, int]:
        """Commit points that advanced since the last call (for ``tps``, or every partition).
        The caller commits them; calling again without progress returns nothing."""
        out: dict[TopicPartition, int] = {}
        for tp in list(self._parts) if tps is None else tps:
            point = self.commit_point(tp)
            part = self._parts.get(tp)
            if point is None or part is None:
                continue
            if part.committed is None or point > part.committed:
                out[tp] = point
        return out

    def committed(self, offsets: dict[TopicPartition, int]) -> None:
        """Record that ``offsets`` were committed (so ``to_commit`` stops offering them)."""
        for tp, off in offsets.items():
            part = self._parts.get(tp)
            if part is not None and (part.committed is None or off > part.committed):
                part.committed = off
