"""Transports: Kafka (production) and in-memory (local mode, unit tests), behind one interface."""

from __future__ import annotations

from .base import Consumer, Producer, Record, TopicPartition, Transport

__all__ = ["Consumer", "Producer", "Record", "TopicPartition", "Transport"]
