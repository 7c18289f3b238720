"""What only the in-memory transport needs checking on its own: the hash (against Kafka's published
vectors), fencing, the last stable offset, a waiting consumer waking up, and threads. The shared
behaviour is in tests/integration/test_transport_contract.py, run against Kafka too."""

from __future__ import annotations

import threading

import pytest

from ocr_stream.errors import BrokerUnavailableError, InternalError
from ocr_stream.transport.base import Record
from ocr_stream.transport.memory import MemoryTransport, ProducerFencedError, murmur2, partition_for_key


@pytest.mark.parametrize(
    ("data", "expected"),
    [  # org.apache.kafka.common.utils.UtilsTest#testMurmur2
        (b"21", -973932308),
        (b"foobar", -790332482),
        (b"a-little-bit-long-string", -985981536),
        (b"a-little-bit-longer-string", -1486304829),
        (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
        (b"abc", 479470107),
    ],
)
def test_murmur2_matches_kafkas_test_vectors(data: bytes, expected: int) -> None:
    assert murmur2(data) == expected


def test_partition_for_key_is_in_range_and_stable() -> None:
    for n in (1, 3, 12, 24):
        parts = [partition_for_key(f"doc-{i}".encode(), n) for i in range(200)]
        assert all(0 <= p < n for p in parts)
        assert parts == [partition_for_key(f"doc-{i}".encode(), n) for i in range(200)]
    assert len(set(partition_for_key(f"doc-{i}".encode(), 12) for i in range(200))) == 12


def _drain(consumer: object, n: int) -> list[Record]:
    out: list[Record] = []
    for _ in range(100):
        out.extend(consumer.consume(n - len(out), 0.05))  # type: ignore[attr-defined]
        if len(out) >= n:
            break
    return out


def test_a_second_init_transactions_fences_the_first_producer_and_aborts_its_transaction() -> None:
    t = MemoryTransport()
    t.ensure_topics({"out": 1})
    old = t.producer(transactional_id="agg-1")
    old.init_transactions()
    old.begin_transaction()
    old.produce("out", b"zombie", b"k")
    new = t.producer(transactional_id="agg-1")
    new.init_transactions()
    with pytest.raises(ProducerFencedError, match="fenced"):
        old.commit_transaction()
    with pytest.raises(ProducerFencedError):
        old.begin_transaction()
    new.begin_transaction()
    new.produce("out", b"fresh", b"k")
    new.commit_transaction()
    c = t.consumer("g")
    c.subscribe(["out"])
    assert [r.value for r in _drain(c, 1)] == [b"fresh"]


def test_read_committed_stops_at_an_open_transaction_and_reads_on_after_it() -> None:
    t = MemoryTransport()
    t.ensure_topics({"t": 1})
    tx = t.producer(transactional_id="tx")
    tx.init_transactions()
    plain = t.producer()
    plain.produce("t", b"before", b"k")
    tx.begin_transaction()
    tx.produce("t", b"in-txn", b"k")
    plain.produce("t", b"after", b"k")  # behind the open transaction: not readable committed yet
    c = t.consumer("g")
    c.subscribe(["t"])
    assert [r.value for r in _drain(c, 1)] == [b"before"]
    assert c.consume(10, 0.05) == []
    assert c.lag() == {("t", 0): 0}
    tx.commit_transaction()
    assert [r.value for r in _drain(c, 2)] == [b"in-txn", b"after"]


def test_a_waiting_consumer_wakes_when_a_record_arrives() -> None:
    t = MemoryTransport()
    t.ensure_topics({"t": 2})
    c = t.consumer("g")
    c.subscribe(["t"])
    assert c.consume(1, 0.01) == []  # joined and assigned
    got: list[Record] = []
    waiter = threading.Thread(target=lambda: got.extend(c.consume(1, 30.0)))
    waiter.start()
    t.producer().produce("t", b"v", b"k")
    waiter.join(10)
    assert not waiter.is_alive() and [r.value for r in got] == [b"v"]


def test_many_threads_produce_and_every_record_is_consumed_once_in_key_order() -> None:
    t = MemoryTransport()
    t.ensure_topics({"t": 6})
    per_thread, threads = 300, 6

    def work(i: int) -> None:
        p = t.producer()
        for n in range(per_thread):
            p.produce("t", f"{i}:{n}".encode(), f"key-{i}".encode())
        p.flush()

    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for th in pool:
        th.start()
    consumers = [t.consumer("g"), t.consumer("g")]
    for c in consumers:
        c.subscribe(["t"])
    seen: list[Record] = []
    for th in pool:
        th.join()
    for _ in range(400):
        for c in consumers:
            seen.extend(c.consume(500, 0.01))
        if len(seen) >= per_thread * threads:
            break
    assert len(seen) == per_thread * threads
    for i in range(threads):
        mine = [int(r.value.split(b":")[1]) for r in seen if r.key == f"key-{i}".encode() and r.value]
        assert mine == list(range(per_thread))


def test_producing_to_a_missing_topic_fails_in_the_delivery_callback() -> None:
    t = MemoryTransport()
    p = t.producer()
    reports: list[tuple[Exception | None, Record | None]] = []
    p.produce("nope", b"v", on_delivery=lambda e, r: reports.append((e, r)))
    assert reports == []  # callbacks run from poll/flush only
    p.flush()
    assert len(reports) == 1 and isinstance(reports[0][0], BrokerUnavailableError) and reports[0][1] is None
    assert "unknown topic" in str(reports[0][0])


def test_offsets_for_partitions_the_consumer_lost_cannot_go_into_a_transaction() -> None:
    t = MemoryTransport()
    t.ensure_topics({"in": 2, "out": 1})
    a = t.consumer("g")
    a.subscribe(["in"])
    a.consume(1, 0.01)
    assert a.assignment() == [("in", 0), ("in", 1)]
    b = t.consumer("g")
    b.subscribe(["in"])
    a.consume(1, 0.01)  # a gives up one partition
    b.consume(1, 0.01)
    lost = next(tp for tp in [("in", 0), ("in", 1)] if tp not in a.assignment())
    p = t.producer(transactional_id="tx")
    p.init_transactions()
    p.begin_transaction()
    with pytest.raises(InternalError, match="does not own"):
        p.send_offsets_to_transaction({lost: 1}, a)
    p.send_offsets_to_transaction({a.assignment()[0]: 0}, a)
    p.commit_transaction()


def test_default_partitions_creates_a_topic_on_first_produce() -> None:
    t = MemoryTransport(default_partitions=3)
    p = t.producer()
    p.produce("auto", b"v", b"k")
    p.flush()
    assert t.partition_count("auto") == 3
    with pytest.raises(ValueError):
        MemoryTransport(default_partitions=0)
