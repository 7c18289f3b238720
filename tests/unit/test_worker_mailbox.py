"""LoopMailbox: calls posted from other threads run on the loop, in order, every one of them, with
one loop wake-up per batch rather than one per call."""

from __future__ import annotations

import asyncio
import threading

from ocr_stream.worker.intake import LoopMailbox


def test_calls_from_threads_all_run_on_the_loop_in_order_with_few_wakeups() -> None:
    async def main() -> tuple[list[tuple[int, int]], int, set[int]]:
        loop = asyncio.get_running_loop()
        mailbox = LoopMailbox(loop)
        got: list[tuple[int, int]] = []
        threads_seen: set[int] = set()
        wakeups = 0
        original = loop.call_soon_threadsafe

        def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
            nonlocal wakeups
            wakeups += 1
            return original(*args, **kwargs)

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
        done = asyncio.Event()

        def record(producer: int, i: int) -> None:
            threads_seen.add(threading.get_ident())
            got.append((producer, i))
            if len(got) == 4000:
                done.set()

        def produce(producer: int) -> None:
            for i in range(1000):
                mailbox.post(record, producer, i)

        workers = [threading.Thread(target=produce, args=(p,)) for p in range(4)]
        for w in workers:
            w.start()
        await asyncio.wait_for(done.wait(), 30)
        for w in workers:
            w.join()
        return got, wakeups, threads_seen

    got, wakeups, threads_seen = asyncio.run(main())
    assert len(got) == 4000
    for p in range(4):
        assert [i for q, i in got if q == p] == list(range(1000))  # each thread's calls in order
    assert len(threads_seen) == 1  # all on the loop's thread
    assert wakeups < 4000


def test_a_failing_call_does_not_drop_the_ones_after_it() -> None:
    async def main() -> list[int]:
        mailbox = LoopMailbox(asyncio.get_running_loop())
        out: list[int] = []
        done = asyncio.Event()

        def boom() -> None:
            raise RuntimeError("boom")

        def after(value: int) -> None:
            out.append(value)
            done.set()

        t = threading.Thread(target=lambda: (mailbox.post(boom), mailbox.post(after, 1)))
        t.start()
        t.join()
        await asyncio.wait_for(done.wait(), 10)
        return out

    assert asyncio.run(main()) == [1]
