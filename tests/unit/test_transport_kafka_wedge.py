"""A librdkafka call that blocks past its own timeout (librdkafka #5456/#5511: a transactional
producer waiting forever on a stale coordinator after a broker restart) is given up, the producer
is marked wedged, and the process can start itself over. No broker needed: the confluent-kafka
producer inside the wrapper is replaced by a stub."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ocr_stream.errors import ClientWedgedError
from ocr_stream.transport.kafka import KafkaProducer


class _StubProducer:
    def __init__(self) -> None:
        self.release = threading.Event()
        self.flushed = False

    def commit_transaction(self, timeout: float) -> None:
        self.release.wait()  # ignores its timeout, as librdkafka did

    def abort_transaction(self, timeout: float) -> None:
        raise RuntimeError("abort failed")

    def begin_transaction(self) -> None:
        pass

    def flush(self, timeout: float) -> int:
        self.flushed = True
        return 0


def _producer() -> tuple[KafkaProducer, _StubProducer]:
    producer = KafkaProducer.__new__(KafkaProducer)
    stub = _StubProducer()
    producer._p = stub  # type: ignore[assignment]
    producer._wedged = ""
    producer.WEDGE_GRACE_S = 0.2
    return producer, stub


def test_a_call_blocked_past_its_timeout_wedges_the_producer_and_every_later_call_fails_at_once() -> None:
    producer, stub = _producer()
    t0 = time.monotonic()
    with pytest.raises(ClientWedgedError, match="commit_transaction did not return"):
        producer.commit_transaction(timeout_s=0.1)
    assert time.monotonic() - t0 < 5
    assert producer.wedged
    with pytest.raises(ClientWedgedError):
        producer.begin_transaction()
    with pytest.raises(ClientWedgedError):
        producer.abort_transaction(timeout_s=0.1)
    producer.close()
    assert not stub.flushed, "close must not wait on a wedged client's queue"
    stub.release.set()


def test_errors_of_a_call_that_returns_in_time_are_raised_unchanged() -> None:
    producer, _ = _producer()
    with pytest.raises(RuntimeError, match="abort failed"):
        producer.abort_transaction(timeout_s=1.0)
    assert not producer.wedged


def test_restart_process_runs_the_same_command_line_again_in_the_same_process(tmp_path: Path) -> None:
    marker = tmp_path / "runs"
    script = (
        "import os, pathlib, sys, threading\n"
        "from ocr_stream.cli import restart_process\n"
        f"m = pathlib.Path({str(marker)!r})\n"
        "runs = (m.read_text() if m.exists() else '') + f'{os.getpid()} {sys.argv[1]}\\n'\n"
        "m.write_text(runs)\n"
        "threading.Thread(target=threading.Event().wait, daemon=True).start()  # a thread that never returns\n"
        "if runs.count('\\n') == 1:\n"
        "    restart_process()\n"
    )
    out = subprocess.run([sys.executable, "-c", script, "arg-1"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    first, second = marker.read_text().splitlines()
    assert first == second  # same pid, same argument
