"""``ocr-stream simulate-vllm`` as a user runs it: the console script, its ready line, signals,
exit codes."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.integration


def _command() -> list[str]:
    script = Path(sys.executable).parent / "ocr-stream"
    return [str(script)] if script.exists() else [shutil.which("ocr-stream") or "ocr-stream"]


def _start(*args: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([*_command(), "simulate-vllm", "--port", "0", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until ready or exit; the test's timeout guards it
    if not line.startswith("listening on http://"):
        proc.kill()
        _, err = proc.communicate(timeout=10)
        raise AssertionError(f"no ready line: {line!r} {err}")
    return proc, line.split("listening on ", 1)[1].strip()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_console_script_serves_and_exits_0_on_signal(sig: signal.Signals) -> None:
    proc, url = _start("--speed", "100", "--max-num-seqs", "8")
    try:
        assert httpx.get(url + "/health", timeout=5).status_code == 200
        assert httpx.get(url + "/v1/models", timeout=5).json()["data"][0]["id"] == "deepseek-ai/DeepSeek-OCR"
        proc.send_signal(sig)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_port_in_use_exits_2_with_a_clear_message() -> None:
    proc, url = _start()
    try:
        port = url.rsplit(":", 1)[1]
        second = subprocess.run([*_command(), "simulate-vllm", "--port", port], capture_output=True, text=True, timeout=60)
        assert second.returncode == 2
        assert f"cannot listen on 127.0.0.1:{port}" in second.stderr
    finally:
        proc.terminate()
        proc.wait(15)


def test_bad_flag_value_exits_2() -> None:
    r = subprocess.run([*_command(), "simulate-vllm", "--speed", "-1"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "speed must be positive" in r.stderr
