"""Kafka's default partitioner (murmur2 of the key): which partition holds a key.

The one implementation lives in ocr_stream/transport/partitioner.py; this module gives the
aggregator its view of it (an unsigned hash, as Kafka's test vectors are written)."""

from __future__ import annotations

from ..transport.partitioner import murmur2 as _signed_murmur2
from ..transport.partitioner import partition_for_key as partition_for


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash of ``data`` (seed 0x9747b28c), as an unsigned 32-bit integer."""
    return _signed_murmur2(data) & 0xFFFFFFFF


__all__ = ["murmur2", "partition_for"]
