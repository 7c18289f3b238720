"""OffsetTracker: commits never pass the first unfinished record of a partition."""

from __future__ import annotations

import random

from hypothesis import given, settings, strategies as st

from ocr_stream.worker.offsets import OffsetTracker

TP = ("ocr.pages", 0)
TP2 = ("ocr.pages", 1)


def test_commit_stops_at_first_unfinished_offset() -> None:
    t = OffsetTracker()
    t.assign([TP])
    for off in range(5):
        t.start(TP, off)
    t.finish(TP, 0)
    t.finish(TP, 2)
    t.finish(TP, 3)
    assert t.commit_point(TP) == 1
    t.finish(TP, 1)
    assert t.commit_point(TP) == 4
    t.finish(TP, 4)
    assert t.commit_point(TP) == 5


def test_nothing_seen_means_nothing_to_commit() -> None:
    t = OffsetTracker()
    t.assign([TP])
    assert t.commit_point(TP) is None
    assert t.to_commit() == {}


def test_gaps_in_offsets_do_not_block_commits() -> None:
    # Transaction markers leave holes: offsets 10, 12, 15 are the records.
    t = OffsetTracker()
    for off in (10, 12, 15):
        t.start(TP, off)
    t.finish(TP, 12)
    assert t.commit_point(TP) == 10
    t.finish(TP, 10)
    assert t.commit_point(TP) == 15
    t.finish(TP, 15)
    assert t.commit_point(TP) == 16


def test_to_commit_reports_only_progress() -> None:
    t = OffsetTracker()
    t.start(TP, 0)
    t.start(TP2, 7)
    t.finish(TP, 0)
    assert t.to_commit() == {TP: 1, TP2: 7}
    t.committed({TP: 1, TP2: 7})
    assert t.to_commit() == {}
    t.finish(TP2, 7)
    assert t.to_commit() == {TP2: 8}
    assert t.to_commit([TP]) == {}


def test_revoked_partition_is_forgotten_and_late_finish_is_ignored() -> None:
    t = OffsetTracker()
    t.start(TP, 0)
    t.start(TP, 1)
    t.revoke([TP])
    assert not t.finish(TP, 0)
    assert t.to_commit() == {}
    assert t.pending() == 0
    # Reassigned later: a fresh start from whatever the group had committed.
    t.assign([TP])
    t.start(TP, 1)
    assert t.commit_point(TP) == 1


def test_finishing_an_unknown_offset_changes_nothing() -> None:
    t = OffsetTracker()
    t.start(TP, 3)
    assert not t.finish(TP, 4)
    assert t.commit_point(TP) == 3
    assert t.pending(TP) == 1


def test_redelivered_lower_offset_holds_the_commit_back() -> None:
    t = OffsetTracker()
    t.start(TP, 5)
    t.finish(TP, 5)
    t.start(TP, 3)  # seek back / redelivery
    assert t.commit_point(TP) == 3
    t.finish(TP, 3)
    assert t.commit_point(TP) == 6


def test_starting_the_same_offset_twice_tracks_it_once() -> None:
    t = OffsetTracker()
    t.start(TP, 0)
    t.start(TP, 0)
    assert t.pending(TP) == 1
    t.finish(TP, 0)
    assert t.commit_point(TP) == 1


@settings(max_examples=200, deadline=None)
@given(n=st.integers(min_value=1, max_value=60), seed=st.integers(min_value=0, max_value=10_000),
       gaps=st.lists(st.integers(min_value=1, max_value=3), min_size=60, max_size=60))
def test_commit_point_is_always_the_lowest_unfinished_offset(n: int, seed: int, gaps: list[int]) -> None:
    rng = random.Random(seed)
    offsets, off = [], 0
    for i in range(n):
        off += gaps[i]
        offsets.append(off)
    t = OffsetTracker()
    for o in offsets:
        t.start(TP, o)
    order = offsets[:]
    rng.shuffle(order)
    finished: set[int] = set()
    last_commit = 0
    for o in order:
        t.finish(TP, o)
        finished.add(o)
        unfinished = [x for x in offsets if x not in finished]
        expected = min(unfinished) if unfinished else offsets[-1] + 1
        point = t.commit_point(TP)
        assert point == expected
        assert point >= last_commit  # never moves backwards
        last_commit = point
        # Everything below the commit point is finished.
        assert all(x in finished for x in offsets if x < point)
