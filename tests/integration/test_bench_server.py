"""`ocr-stream bench --vllm-url URL` (the real-server mode) runs unchanged against the simulator
started as a separate process, exactly as it would against a `vllm serve` on a GPU."""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

READY = "listening on "


def _cli() -> list[str]:
    exe = shutil.which("ocr-stream", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "ocr_stream"]


@pytest.fixture
def simulator_url() -> Iterator[str]:
    """`ocr-stream simulate-vllm --port 0` as a child process; its URL from the `listening on` line."""
    proc = subprocess.Popen([*_cli(), "simulate-vllm", "--port", "0", "--speed", "50", "--max-num-seqs", "64",
                             "--tokens-fixed", "400"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    stdout = proc.stdout

    def pump() -> None:
        for line in stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    try:
        deadline = time.monotonic() + 30
        url = None
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if line.startswith(READY):
                url = line[len(READY):].strip()
        assert url, f"the simulator did not print its URL (exit {proc.poll()}): {proc.stderr.read() if proc.poll() is not None else ''}"  # type: ignore[union-attr]
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _bench(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*_cli(), "bench", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OCR_STREAM_LOG_LEVEL": "WARNING", **(env or {})})


def test_bench_against_a_separate_simulator_process(simulator_url: str, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    res = _bench("--vllm-url", simulator_url, "--in-flight", "4,16", "--pages", "24", "--ignore-eos",
                 "--max-tokens", "50", "--gpu-price", "3.6", "--json", str(out))
    assert res.returncode == 0, res.stderr

    data = json.loads(out.read_text())
    assert data["servers"] == [simulator_url]
    levels = data["levels"]
    assert [lv["in_flight"] for lv in levels] == [4, 16]
    for lv in levels:
        assert lv["pages"] == 24 and lv["failed"] == 0, lv
        assert lv["pages_per_s"] > 0
        # --ignore-eos --max-tokens 50: the server must generate exactly 50 tokens for every page.
        assert lv["output_tokens_per_page_min"] == lv["output_tokens_per_page_max"] == 50, lv
        assert lv["output_tokens"] == 24 * 50
        assert lv["output_tokens_per_s"] == pytest.approx(50 * lv["pages_per_s"], rel=0.01)
        # $/1,000 pages = price per hour / pages per hour x 1,000.
        assert lv["cost_per_1000_pages"] == pytest.approx(3.6 / (lv["pages_per_s"] * 3600) * 1000, rel=0.01)
        assert 0 < lv["latency_p50_s"] <= lv["latency_p95_s"] <= lv["latency_p99_s"]
    # The table on stdout names every level.
    rows = [line.split() for line in res.stdout.splitlines()[1:]]
    assert [r[0] for r in rows] == ["4", "16"]


def test_bench_without_ignore_eos_reports_the_servers_own_lengths(simulator_url: str, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    res = _bench("--vllm-url", simulator_url, "--in-flight", "8", "--pages", "8", "--json", str(out))
    assert res.returncode == 0, res.stderr
    (lv,) = json.loads(out.read_text())["levels"]
    # The simulator was started with --tokens-fixed 400: every page stops by itself at 400 tokens.
    assert lv["output_tokens_per_page_min"] == lv["output_tokens_per_page_max"] == 400
    assert lv["cost_per_1000_pages"] is None  # no --gpu-price


def test_bench_with_an_unreachable_server_fails_with_exit_1(tmp_path: Path) -> None:
    res = _bench("--vllm-url", "http://127.0.0.1:9", "--in-flight", "2", "--pages", "2", "--json", str(tmp_path / "b.json"),
                 env={"OCR_STREAM_MAX_ATTEMPTS": "1"})
    assert res.returncode == 1, (res.stdout, res.stderr)
