"""The simulator as a subprocess (what system tests and benchmarks use), and a tiny admin client
that works for both forms."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import urllib.request
from dataclasses import asdict, dataclass, field
from typing import IO, Any

from .faults import FaultConfig, coerce_faults

READY_PREFIX = "listening on "


def set_faults(url: str, mode: str | FaultConfig | dict[str, Any] = "none", *, timeout_s: float = 5.0, **settings: Any) -> dict[str, Any]:
    """Switch the fault mode of the simulator at ``url`` (``POST /admin/faults``); return its new
    fault state. Example: ``set_faults(url, "429", rate=0.5, retry_after_s=0.2)``."""
    return _admin(url, "/admin/faults", asdict(coerce_faults(mode, **settings)), timeout_s)


def get_state(url: str, timeout_s: float = 5.0) -> dict[str, Any]:
    """``GET /admin/state``: running, waiting, finished, aborted, tokens, capacity, faults."""
    return _admin(url, "/admin/state", None, timeout_s)


def _admin(url: str, path: str, payload: dict[str, Any] | None, timeout_s: float) -> dict[str, Any]:
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(url.rstrip("/") + path, data=data, method="GET" if data is None else "POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310 - loopback test server
        result: dict[str, Any] = json.loads(resp.read())
        return result


@dataclass
class SimulatorProcess:
    """A running ``python -m ocr_stream.simulator`` child. Start with :meth:`start`."""

    proc: subprocess.Popen[str]
    url: str
    args: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, *args: str, port: int = 0, timeout_s: float = 30.0, env: dict[str, str] | None = None,
              die_with_parent: bool = False) -> SimulatorProcess:
        """Start the simulator with CLI ``args`` (e.g. ``"--speed", "50"``) and wait until it prints
        its URL. Raises RuntimeError (with its stderr) if it exits or stays silent.
        ``die_with_parent`` (Linux): the child gets SIGTERM when the thread that started it ends,
        so a test run killed midway leaves no simulator behind."""
        argv = [sys.executable, "-m", "ocr_stream.simulator", "--port", str(port), *args]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, **(env or {})},
                                preexec_fn=_parent_death_signal if die_with_parent else None)  # noqa: PLW1509
        assert proc.stdout is not None and proc.stderr is not None
        lines: queue.Queue[str | None] = queue.Queue()
        err: list[str] = []
        _pump(proc.stdout, lines)
        _echo(proc.stderr, err)
        try:
            line = lines.get(timeout=timeout_s)
        except queue.Empty:
            line = None
        if line is None or not line.startswith(READY_PREFIX):
            proc.kill()
            proc.wait(5)
            raise RuntimeError(f"the simulator did not start ({' '.join(argv)}): {line!r} {''.join(err)[-2000:]}")
        return cls(proc, line[len(READY_PREFIX):].strip(), list(args))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def set_faults(self, mode: str | FaultConfig | dict[str, Any] = "none", **settings: Any) -> dict[str, Any]:
        return set_faults(self.url, mode, **settings)

    def state(self) -> dict[str, Any]:
        return get_state(self.url)

    def stop(self, timeout_s: float = 10.0) -> int:
        """SIGTERM, then SIGKILL if it does not exit within ``timeout_s``; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout_s)
        return int(self.proc.returncode)

    def kill(self) -> None:
        """SIGKILL: the engine dies at once (connections reset, port closed)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def _parent_death_signal() -> None:
    try:
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    except Exception:  # noqa: BLE001 - not Linux: the child just outlives a killed parent
        pass


def _echo(stream: IO[str], keep: list[str]) -> None:
    """Pass the child's log lines on to our stderr (pytest captures them), keeping the last few
    for the error message if it fails to start."""

    def run() -> None:
        for line in stream:
            keep.append(line)
            del keep[:-50]
            sys.stderr.write(line)

    threading.Thread(target=run, daemon=True).start()


def _pump(stream: IO[str], out: queue.Queue[str | None]) -> None:
    def run() -> None:
        for line in stream:
            out.put(line)
        out.put(None)

    threading.Thread(target=run, daemon=True).start()
