"""Kafka's default partitioner in pure Python: which partition holds a key.

Java's and Go's default producers, and ours (librdkafka with ``partitioner=murmur2_random``), put a
keyed record on ``(murmur2(key) & 0x7fffffff) % partitions``. The in-memory transport partitions
the same way, and the aggregator uses it to find a document's changelog partition.
"""

from __future__ import annotations

_MASK32 = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash (``org.apache.kafka.common.utils.Utils.murmur2``), as a signed 32-bit int."""
    m, r = 0x5BD1E995, 24
    length = len(data)
    h = (0x9747B28C ^ length) & _MASK32
    for i in range(length // 4):
        k = int.from_bytes(data[4 * i : 4 * i + 4], "little")
        k = (k * m) & _MASK32
        k ^= k >> r
        k = (k * m) & _MASK32
        h = (h * m) & _MASK32
        h ^= k
    tail = length & ~3
    rest = length % 4
    if rest == 3:
        h ^= data[tail + 2] << 16
    if rest >= 2:
        h ^= data[tail + 1] << 8
    if rest >= 1:
        h ^= data[tail]
        h = (h * m) & _MASK32
    h ^= h >> 13
    h = (h * m) & _MASK32
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for_key(key: bytes | str, partitions: int) -> int:
    """The partition Kafka's default (murmur2) partitioner picks for ``key``."""
    if partitions < 1:
        raise ValueError("partitions must be >= 1")
    data = key.encode() if isinstance(key, str) else key
    return (murmur2(data) & 0x7FFFFFFF) % partitions
