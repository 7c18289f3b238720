"""The transport contract: what the services rely on, checked against the real Kafka broker AND the
in-memory transport with the same tests, so local mode behaves like production.

Delivery (callbacks with offsets), order within a key, co-partitioning, redelivery of what was not
committed, resuming after the committed offset, pause/resume, seek, rebalancing between live
members, read_committed transactions and offsets committed through a transaction.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from conftest import wait_until

from ocr_stream.errors import BrokerUnavailableError
from ocr_stream.transport.base import Consumer, Producer, Record, TopicPartition, Transport
from ocr_stream.transport.memory import MemoryTransport, partition_for_key

pytestmark = pytest.mark.integration


@dataclass
class Env:
    """One transport under test, with names of its own and everything it opened closed afterwards."""

    kind: str
    transport: Transport
    prefix: str
    opened: list[Any] = field(default_factory=list)

    def topic(self, name: str, partitions: int) -> str:
        full = f"{self.prefix}{name}"
        self.transport.ensure_topics({full: partitions})
        return full

    def producer(self, transactional_id: str | None = None) -> Producer:
        p = self.transport.producer(transactional_id=f"{self.prefix}{transactional_id}" if transactional_id else None)
        self.opened.append(p)
        return p

    def consumer(self, group: str, *, read_committed: bool = True) -> Consumer:
        c = self.transport.consumer(f"{self.prefix}{group}", isolation_read_committed=read_committed)
        self.opened.append(c)
        return c

    def close(self) -> None:
        for obj in reversed(self.opened):
            try:
                obj.close()
            except Exception:  # noqa: BLE001 - already closed by the test
                pass
        self.transport.close()


@pytest.fixture(params=["memory", "kafka"])
def env(request: pytest.FixtureRequest) -> Iterator[Env]:
    if request.param == "memory":
        e = Env("memory", MemoryTransport(), "mem.")
    else:
        from ocr_stream.transport.kafka import KafkaTransport

        s = request.getfixturevalue("make_settings")()
        e = Env("kafka", KafkaTransport(s.kafka_client_config()), s.topic_prefix)
    yield e
    e.close()


def drain(c: Consumer, n: int, timeout_s: float = 30.0, what: str = "records") -> list[Record]:
    """Consume until ``n`` records arrived (fails at the deadline, saying how many came)."""
    got: list[Record] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < n:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {n} {what}; got {len(got)}: "
                                 f"{[(r.partition, r.offset, r.value) for r in got][:10]}")
        got.extend(c.consume(n - len(got), 0.2))
    return got


def wait_assignment(c: Consumer, size: int, timeout_s: float = 30.0) -> list[TopicPartition]:
    """Consume (nothing is expected) until the consumer owns ``size`` partitions."""

    def ok() -> bool:
        assert c.consume(10, 0.2) == [], "no records were expected while waiting for the assignment"
        return len(c.assignment()) == size

    wait_until(ok, timeout_s, interval_s=0.0, what=f"an assignment of {size} partitions")
    return c.assignment()


def produce_all(p: Producer, topic: str, items: Sequence[tuple[bytes | None, bytes]]) -> list[tuple[Exception | None, Record | None]]:
    reports: list[tuple[Exception | None, Record | None]] = []
    for key, value in items:
        p.produce(topic, value, key, on_delivery=lambda err, rec: reports.append((err, rec)))
    assert p.flush(30) == 0
    return reports


def test_delivery_callback_reports_the_offset(env: Env) -> None:
    t = env.topic("delivery", 1)
    reports = produce_all(env.producer(), t, [(b"k", b"v0"), (b"k", b"v1"), (b"k", b"v2")])
    assert [err for err, _ in reports] == [None, None, None]
    recs = [rec for _, rec in reports]
    assert all(r is not None for r in recs)
    assert [(r.topic, r.partition, r.offset, r.key, r.value) for r in recs if r] == [
        (t, 0, 0, b"k", b"v0"), (t, 0, 1, b"k", b"v1"), (t, 0, 2, b"k", b"v2"),
    ]


def test_order_is_kept_within_a_key(env: Env) -> None:
    t = env.topic("order", 4)
    keys = [f"doc-{i}".encode() for i in range(8)]
    items = [(k, f"{k.decode()}:{n}".encode()) for n in range(25) for k in keys]
    produce_all(env.producer(), t, items)
    c = env.consumer("g")
    c.subscribe([t])
    recs = drain(c, len(items))
    for k in keys:
        mine = [r for r in recs if r.key == k]
        assert len({r.partition for r in mine}) == 1, f"key {k!r} was split over partitions"
        assert [r.value for r in mine] == [f"{k.decode()}:{n}".encode() for n in range(25)]
    assert len({r.partition for r in recs}) > 1, "8 keys should not all land on one of 4 partitions"


def test_a_key_has_the_same_partition_in_topics_of_equal_size(env: Env) -> None:
    """ocr.results and the aggregator changelog are co-partitioned by doc_id."""
    a, b = env.topic("copart-a", 6), env.topic("copart-b", 6)
    keys = [f"doc-{i}".encode() for i in range(20)]
    p = env.producer()
    ra = produce_all(p, a, [(k, b"x") for k in keys])
    rb = produce_all(p, b, [(k, b"y") for k in keys])
    part_a = {r.key: r.partition for _, r in ra if r}
    part_b = {r.key: r.partition for _, r in rb if r}
    assert part_a == part_b and len(part_a) == 20
    # Both transports use Kafka's default partitioner, murmur2, as Java and Go producers do.
    assert part_a == {k: partition_for_key(k, 6) for k in keys}


def test_uncommitted_records_are_delivered_again_after_the_consumer_closes(env: Env) -> None:
    t = env.topic("redeliver", 2)
    produce_all(env.producer(), t, [(f"k{i}".encode(), f"v{i}".encode()) for i in range(10)])
    a = env.consumer("g")
    a.subscribe([t])
    first = drain(a, 10)
    a.close()  # without committing: a worker that died mid-flight
    b = env.consumer("g")
    b.subscribe([t])
    again = drain(b, 10)
    assert sorted((r.partition, r.offset, r.value) for r in again) == sorted((r.partition, r.offset, r.value) for r in first)


def test_a_new_owner_resumes_after_the_committed_offset(env: Env) -> None:
    t = env.topic("resume", 1)
    produce_all(env.producer(), t, [(b"k", f"v{i}".encode()) for i in range(10)])
    a = env.consumer("g")
    a.subscribe([t])
    assert len(drain(a, 10)) == 10
    a.commit({(t, 0): 4})
    assert a.committed([(t, 0)]) == {(t, 0): 4}
    a.close()
    b = env.consumer("g")
    b.subscribe([t])
    rest = drain(b, 6)
    assert [r.offset for r in rest] == [4, 5, 6, 7, 8, 9]
    assert [r.value for r in rest] == [f"v{i}".encode() for i in range(4, 10)]


def test_a_paused_partition_delivers_nothing_until_resumed(env: Env) -> None:
    t = env.topic("pause", 1)
    a = env.consumer("g")
    a.subscribe([t])
    assert wait_assignment(a, 1) == [(t, 0)]
    a.pause([(t, 0)])
    produce_all(env.producer(), t, [(b"k", b"v0"), (b"k", b"v1"), (b"k", b"v2")])
    # Another group reads the records, so they are there to be fetched...
    witness = env.consumer("witness")
    witness.subscribe([t])
    assert len(drain(witness, 3)) == 3
    # ... yet the paused consumer gets none of them (a bounded wait: absence cannot be awaited).
    assert a.consume(10, 1.0) == []
    a.resume([(t, 0)])
    assert [r.value for r in drain(a, 3)] == [b"v0", b"v1", b"v2"]


def test_seek_reads_again_from_the_offset(env: Env) -> None:
    t = env.topic("seek", 1)
    produce_all(env.producer(), t, [(b"k", f"v{i}".encode()) for i in range(5)])
    a = env.consumer("g")
    a.subscribe([t])
    assert [r.offset for r in drain(a, 5)] == [0, 1, 2, 3, 4]
    a.seek((t, 0), 2)
    assert [r.offset for r in drain(a, 3)] == [2, 3, 4]


def test_partitions_are_shared_between_live_members_and_returned_when_one_leaves(env: Env) -> None:
    t = env.topic("rebalance", 4)
    events: dict[str, list[tuple[str, list[TopicPartition]]]] = {"a": [], "b": []}

    def cbs(who: str) -> dict[str, Any]:
        return {
            "on_assign": lambda tps: events[who].append(("assign", sorted(tps))),
            "on_revoke": lambda tps: events[who].append(("revoke", sorted(tps))),
        }

    a, b = env.consumer("g"), env.consumer("g")
    a.subscribe([t], **cbs("a"))
    everything = [(t, i) for i in range(4)]
    assert wait_assignment(a, 4) == everything

    b.subscribe([t], **cbs("b"))

    def shared() -> bool:
        assert a.consume(10, 0.1) == [] and b.consume(10, 0.1) == []
        sa, sb = set(a.assignment()), set(b.assignment())
        return len(sa) == 2 and len(sb) == 2 and sa | sb == set(everything)

    wait_until(shared, 60, interval_s=0.0, what="two members with two partitions each")
    revoked_from_a = {tp for kind, tps in events["a"] if kind == "revoke" for tp in tps}
    assigned_to_b = {tp for kind, tps in events["b"] if kind == "assign" for tp in tps}
    assert revoked_from_a == set(b.assignment()) == assigned_to_b

    # Each member now reads its own partitions only, and together they read everything.
    keys = [f"doc-{i}".encode() for i in range(16)]
    produce_all(env.producer(), t, [(k, k) for k in keys])
    got: dict[str, list[Record]] = {"a": [], "b": []}

    def all_read() -> bool:
        got["a"].extend(a.consume(50, 0.1))
        got["b"].extend(b.consume(50, 0.1))
        return len(got["a"]) + len(got["b"]) >= len(keys)

    wait_until(all_read, 30, interval_s=0.0, what="the records of all partitions")
    assert {r.tp for r in got["a"]} <= set(a.assignment())
    assert {r.tp for r in got["b"]} <= set(b.assignment())
    assert sorted(r.value for r in got["a"] + got["b"]) == sorted(keys)

    # b leaves without committing: a takes its partitions back and reads b's records again.
    b.close()
    redelivered: list[Record] = []

    def back() -> bool:
        redelivered.extend(a.consume(50, 0.1))
        return a.assignment() == everything and len(redelivered) >= len(got["b"])

    wait_until(back, 60, interval_s=0.0, what="a to own every partition and re-read b's records")
    assert sorted(r.value for r in redelivered) == sorted(r.value for r in got["b"])


def test_transactions_are_visible_when_committed_and_never_when_aborted(env: Env) -> None:
    t = env.topic("txn", 1)
    p = env.producer(transactional_id="tx-visible")
    p.init_transactions()
    p.begin_transaction()
    p.produce(t, b"a1", b"k")
    p.produce(t, b"a2", b"k")
    p.commit_transaction()
    p.begin_transaction()
    p.produce(t, b"b1", b"k")
    p.flush(30)  # in the log for sure (librdkafka purges what it has not sent yet on abort)
    p.abort_transaction()
    p.begin_transaction()
    p.produce(t, b"c1", b"k")
    p.commit_transaction()

    committed_reader = env.consumer("rc")
    committed_reader.subscribe([t])
    seen = drain(committed_reader, 3)
    assert [r.value for r in seen] == [b"a1", b"a2", b"c1"]

    raw_reader = env.consumer("ru", read_committed=False)
    raw_reader.subscribe([t])
    assert [r.value for r in drain(raw_reader, 4)] == [b"a1", b"a2", b"b1", b"c1"]


def test_an_open_transaction_is_invisible_until_it_commits(env: Env) -> None:
    t = env.topic("txn-open", 1)
    p = env.producer(transactional_id="tx-open")
    p.init_transactions()
    p.begin_transaction()
    p.produce(t, b"x", b"k")
    p.flush(30)

    raw_reader = env.consumer("ru", read_committed=False)
    raw_reader.subscribe([t])
    assert [r.value for r in drain(raw_reader, 1)] == [b"x"]  # it is in the log...

    committed_reader = env.consumer("rc")
    committed_reader.subscribe([t])
    wait_assignment(committed_reader, 1)
    assert committed_reader.consume(10, 1.0) == []  # ...but not readable committed (bounded wait)

    p.commit_transaction()
    assert [r.value for r in drain(committed_reader, 1)] == [b"x"]


def test_watermarks_come_from_the_broker_and_stop_at_an_open_transaction(env: Env) -> None:
    t = env.topic("marks", 1)
    tp = (t, 0)
    produce_all(env.producer(), t, [(b"k", b"1"), (b"k", b"2"), (b"k", b"3")])
    committed_view = env.consumer("marks")  # never subscribed: nothing fetched, nothing cached
    assert committed_view.watermarks([tp]) == {tp: (0, 3)}
    p = env.producer(transactional_id="tx-marks")
    p.init_transactions()
    p.begin_transaction()
    p.produce(t, b"4", b"k")
    p.flush(30)
    assert env.consumer("marks-ru", read_committed=False).watermarks([tp])[tp][1] == 4
    assert committed_view.watermarks([tp])[tp][1] == 3  # the last stable offset
    p.commit_transaction()
    # The commit markers are written after commit_transaction returns; Kafka counts them too.
    wait_until(lambda: committed_view.watermarks([tp])[tp][1] >= 4, 30, what="the last stable offset to pass the commit")


def test_offsets_sent_to_a_transaction_commit_with_it_and_only_with_it(env: Env) -> None:
    src, out = env.topic("tx-src", 1), env.topic("tx-out", 1)
    produce_all(env.producer(), src, [(b"k", f"v{i}".encode()) for i in range(6)])
    c = env.consumer("g")
    c.subscribe([src])
    assert len(drain(c, 6)) == 6
    tp = (src, 0)

    p = env.producer(transactional_id="tx-offsets")
    p.init_transactions()
    p.begin_transaction()
    p.produce(out, b"from-0-3", b"k")
    p.send_offsets_to_transaction({tp: 4}, c)
    p.commit_transaction()
    assert c.committed([tp]) == {tp: 4}

    p.begin_transaction()
    p.produce(out, b"from-4-5", b"k")
    p.send_offsets_to_transaction({tp: 6}, c)
    p.flush(30)
    p.abort_transaction()
    assert c.committed([tp]) == {tp: 4}

    c.close()
    again = env.consumer("g")
    again.subscribe([src])
    assert [r.value for r in drain(again, 2)] == [b"v4", b"v5"]


def test_the_memory_partitioner_matches_kafkas_murmur2(make_settings: Any) -> None:
    """MemoryTransport places keys exactly where Kafka's murmur2 partitioner (Java's default,
    librdkafka's ``murmur2_random``) does, checked against the real broker."""
    from ocr_stream.transport.kafka import KafkaTransport

    s = make_settings()
    kt = KafkaTransport({**s.kafka_client_config(), "partitioner": "murmur2_random"})
    t = f"{s.topic_prefix}murmur"
    kt.ensure_topics({t: 12})
    keys = [f"doc-{i}".encode() for i in range(40)] + [b"", b"a", b"ab", b"abc", "é/1".encode()]
    reports = produce_all(kt.producer(), t, [(k, b"v") for k in keys])
    by_key = {r.key: r.partition for _, r in reports if r}
    assert by_key == {k: partition_for_key(k, 12) for k in keys}
    mem = MemoryTransport()
    mem.ensure_topics({t: 12})
    mem_reports = produce_all(mem.producer(), t, [(k, b"v") for k in keys])
    assert {r.key: r.partition for _, r in mem_reports if r} == by_key


def test_read_partitions_returns_the_committed_records_of_a_changelog(env: Env) -> None:
    """How the aggregator rebuilds its state: every committed record of some partitions, no group."""
    t = env.topic("changelog", 3)
    assert env.transport.partition_count(t) == 3
    p = env.producer(transactional_id="tx-changelog")
    p.init_transactions()
    keys = [f"doc-{i}".encode() for i in range(9)]
    p.begin_transaction()
    for k in keys:
        p.produce(t, k + b":1", k)
    p.commit_transaction()
    p.begin_transaction()
    for k in keys:
        p.produce(t, k + b":aborted", k)
    p.flush(30)
    p.abort_transaction()
    p.begin_transaction()
    for k in keys[:3]:
        p.produce(t, k + b":2", k)
    p.commit_transaction()

    for part in range(3):
        mine = [k for k in keys if partition_for_key(k, 3) == part]
        want = [k + b":1" for k in mine] + [k + b":2" for k in mine if k in keys[:3]]
        got = list(env.transport.read_partitions(t, [part], timeout_s=30))
        assert [r.value for r in got] == want
        assert all(r.partition == part for r in got)
    assert sorted(r.value for r in env.transport.read_partitions(t, [0, 1, 2], timeout_s=30)) == sorted(
        [k + b":1" for k in keys] + [k + b":2" for k in keys[:3]]
    )


def test_partition_count_of_a_missing_topic_is_a_clear_error(env: Env) -> None:
    with pytest.raises(BrokerUnavailableError, match="does not exist"):
        env.transport.partition_count(f"{env.prefix}no-such-topic")
