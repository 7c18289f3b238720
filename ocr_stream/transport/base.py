"""The transport interface: the part of Kafka the services use, small enough for an in-memory twin.

Shaped after confluent-kafka so the Kafka implementation is thin. Both implementations pass the
same contract tests (tests/integration/test_transport_contract.py): delivery, order within a key,
redelivery of uncommitted records after a consumer dies, transactions that are all or nothing.

Offsets follow Kafka's convention: a committed offset is the *next* record to read.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

TopicPartition = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int = 0
    headers: tuple[tuple[str, bytes], ...] = field(default=())

    @property
    def tp(self) -> TopicPartition:
        return (self.topic, self.partition)


DeliveryCallback = Callable[[Exception | None, "Record | None"], None]
RebalanceCallback = Callable[[list[TopicPartition]], None]


class Producer(ABC):
    @abstractmethod
    def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        *,
        on_delivery: DeliveryCallback | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        """Queue a record; ``on_delivery(err, record)`` runs from ``poll``/``flush`` once the broker
        acknowledged it (acks=all) or it failed for good."""

    @abstractmethod
    def poll(self, timeout_s: float = 0.0) -> int:
        """Serve delivery callbacks; returns how many ran."""

    @abstractmethod
    def flush(self, timeout_s: float = 30.0) -> int:
        """Wait until everything queued is acknowledged; returns how many are still queued."""

    # Transactions (only on a producer opened with a transactional id).
    def init_transactions(self, timeout_s: float = 30.0) -> None:
        raise NotImplementedError

    def begin_transaction(self) -> None:
        raise NotImplementedError

    def send_offsets_to_transaction(self, offsets: dict[TopicPartition, int], consumer: Consumer, timeout_s: float = 30.0) -> None:
        raise NotImplementedError

    def commit_transaction(self, timeout_s: float = 30.0) -> None:
        raise NotImplementedError

    def abort_transaction(self, timeout_s: float = 30.0) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.flush()


class Consumer(ABC):
    @abstractmethod
    def subscribe(
        self,
        topics: list[str],
        *,
        on_assign: RebalanceCallback | None = None,
        on_revoke: RebalanceCallback | None = None,
    ) -> None:
        """Join the group. Callbacks run inside ``poll``/``consume``."""

    @abstractmethod
    def consume(self, max_records: int, timeout_s: float) -> list[Record]:
        """Up to ``max_records`` records from unpaused partitions, waiting at most ``timeout_s``."""

    @abstractmethod
    def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit the next offset to read, per partition (synchronous)."""

    @abstractmethod
    def committed(self, partitions: list[TopicPartition], timeout_s: float = 10.0) -> dict[TopicPartition, int | None]: ...

    @abstractmethod
    def pause(self, partitions: list[TopicPartition]) -> None: ...

    @abstractmethod
    def resume(self, partitions: list[TopicPartition]) -> None: ...

    @abstractmethod
    def assignment(self) -> list[TopicPartition]: ...

    @abstractmethod
    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Read ``tp`` from ``offset`` next (used to hand back records that were not processed)."""

    @abstractmethod
    def close(self) -> None:
        """Leave the group (uncommitted records go to the partitions' next owner)."""

    def lag(self) -> dict[TopicPartition, int]:
        """Records behind the end of each assigned partition (best effort)."""
        return {}

    @abstractmethod
    def watermarks(self, partitions: list[TopicPartition], timeout_s: float = 5.0) -> dict[TopicPartition, tuple[int, int]]:
        """First and end offset of each partition, asked of the broker now (the end is the last
        stable offset for a read_committed consumer). Raises BrokerUnavailableError when it cannot
        answer in time."""


class Transport(ABC):
    """A factory of producers and consumers on one cluster (or one in-process broker)."""

    @abstractmethod
    def producer(self, *, transactional_id: str | None = None, name: str = "") -> Producer: ...

    @abstractmethod
    def consumer(self, group_id: str, *, name: str = "", isolation_read_committed: bool = True) -> Consumer: ...

    @abstractmethod
    def ensure_topics(self, topics: dict[str, int]) -> None:
        """Make sure the topics exist with at least these partition counts (tests and local mode)."""

    def read_partitions(
        self, topic: str, partitions: list[int], *, timeout_s: float = 65.0, wait_for_transactions: bool = True
    ) -> Iterator[Record]:
        """Every committed record of these partitions of ``topic``, from their beginning to their end,
        outside any consumer group (read_committed: records of aborted transactions are skipped).

        Used to rebuild state from a changelog. With ``wait_for_transactions``, a transaction still
        open on a partition when the call starts is waited for (up to ``timeout_s``, then what is
        committed is read), so that a predecessor's last transaction is either seen or known to be
        aborted; without, the read stops at the first open transaction at once."""
        raise NotImplementedError

    def partition_count(self, topic: str) -> int:
        """Number of partitions of ``topic`` (BrokerUnavailableError when it does not exist)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the transport holds."""
