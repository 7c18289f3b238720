"""deploy/vllm/start-engines.sh with a stand-in ``vllm`` on PATH (a real HTTP server per engine that
takes a moment to "load"): engines start one after another, each on its GPU with its memory share
and DESIGN.md §4's flags; Prometheus targets are written; one engine dying stops the rest."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import ROOT, wait_until  # noqa: E402

pytestmark = pytest.mark.integration

SCRIPT = ROOT / "deploy" / "vllm" / "start-engines.sh"

FAKE_VLLM = textwrap.dedent(
    """\
    #!{python}
    # Stand-in for `vllm serve`: records its arguments, "loads" for FAKE_VLLM_DELAY seconds, then
    # answers /health. FAKE_VLLM_DIE_PORT: that engine exits 3 FAKE_VLLM_DIE_AFTER s after listening.
    import json, os, sys, threading, time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    args = sys.argv[1:]
    port = int(args[args.index("--port") + 1])

    def record(event):
        with open(os.environ["FAKE_VLLM_LOG"], "a") as f:
            f.write(json.dumps({{"event": event, "port": port, "t": time.time(), "args": args,
                                "cuda": os.environ.get("CUDA_VISIBLE_DEVICES")}}) + "\\n")

    record("start")
    if os.environ.get("FAKE_VLLM_FAIL_PORT") == str(port):
        sys.exit(4)
    time.sleep(float(os.environ.get("FAKE_VLLM_DELAY", "0.5")))

    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), H)
    record("listening")
    if os.environ.get("FAKE_VLLM_DIE_PORT") == str(port):
        threading.Timer(float(os.environ.get("FAKE_VLLM_DIE_AFTER", "1")), lambda: os._exit(3)).start()
    server.serve_forever()
    """
)


def free_port_run(n: int) -> int:
    """A base port with ``n`` consecutive free ports."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = int(s.getsockname()[1])
        if base + n > 65535:
            continue
        ok = True
        for p in range(base, base + n):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no run of free ports")


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Engines:
    def __init__(self, tmp: Path, **env: str) -> None:
        fakebin = tmp / "bin"
        fakebin.mkdir(parents=True)
        vllm = fakebin / "vllm"
        vllm.write_text(FAKE_VLLM.format(python=sys.executable))
        vllm.chmod(vllm.stat().st_mode | stat.S_IEXEC)
        self.log = tmp / "vllm.log"
        self.targets = tmp / "targets" / "vllm.json"
        self.env = {
            **os.environ,
            "PATH": f"{fakebin}:{os.environ['PATH']}",
            "FAKE_VLLM_LOG": str(self.log),
            "VLLM_TARGETS_FILE": str(self.targets),
            "VLLM_HOSTNAME": "vllm",
            "VLLM_HEALTH_POLL_S": "0.1",
            **env,
        }
        self.env.pop("CUDA_VISIBLE_DEVICES", None)
        self.proc: subprocess.Popen[str] | None = None

    def run(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(SCRIPT), *args], env=self.env, capture_output=True, text=True, timeout=timeout)

    def start(self) -> subprocess.Popen[str]:
        self.proc = subprocess.Popen(["bash", str(SCRIPT)], env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        return self.proc

    def events(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def engines(tmp_path: Path) -> Iterator[Any]:
    made: list[Engines] = []

    def factory(**env: str) -> Engines:
        e = Engines(tmp_path / f"e{len(made)}", **env)
        made.append(e)
        return e

    yield factory
    for e in made:
        e.stop()


def test_engines_start_one_after_another_with_their_share_and_flags(engines: Any) -> None:
    base = free_port_run(4)
    e = engines(VLLM_GPUS="0,1", ENGINES_PER_GPU="2", VLLM_BASE_PORT=str(base), FAKE_VLLM_DELAY="0.4")
    proc = e.start()
    ports = list(range(base, base + 4))
    wait_until(lambda: e.run("health").returncode == 0, timeout_s=60, what="all four engines healthy")
    assert proc.poll() is None

    ev = e.events()
    starts = {x["port"]: x for x in ev if x["event"] == "start"}
    ready = {x["port"]: x for x in ev if x["event"] == "listening"}
    assert sorted(starts) == ports
    for prev, nxt in zip(ports, ports[1:], strict=False):
        # Never two engines loading at once: the next starts only once the previous answers.
        assert starts[nxt]["t"] >= ready[prev]["t"], f"engine on {nxt} started before {prev} was healthy"
    assert [starts[p]["cuda"] for p in ports] == ["0", "0", "1", "1"]
    for p in ports:
        args = starts[p]["args"]
        assert args[:2] == ["serve", "deepseek-ai/DeepSeek-OCR"]
        line = " ".join(args)
        assert f"--port {p}" in line and "--gpu-memory-utilization 0.440" in line and "--tensor-parallel-size 1" in line
        assert "--logits_processors vllm.model_executor.models.deepseek_ocr:NGramPerReqLogitsProcessor" in line
        assert "--no-enable-prefix-caching" in line and "--mm-processor-cache-gb 0" in line

    targets = json.loads(e.targets.read_text())
    assert targets == [{"targets": [f"vllm:{p}" for p in ports], "labels": {"job": "vllm", "model": "deepseek-ai/DeepSeek-OCR"}}]

    # SIGTERM (docker stop) stops every engine.
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 143
    wait_until(lambda: not any(listening(p) for p in ports), timeout_s=10, what="engines stopped")


def test_an_engine_dying_takes_the_others_down(engines: Any) -> None:
    base = free_port_run(2)
    e = engines(VLLM_GPUS="0", ENGINES_PER_GPU="2", VLLM_BASE_PORT=str(base), FAKE_VLLM_DELAY="0.2",
                FAKE_VLLM_DIE_PORT=str(base), FAKE_VLLM_DIE_AFTER="1.5")
    proc = e.start()
    rc = proc.wait(timeout=30)
    assert rc == 3, proc.stderr.read() if proc.stderr else ""  # the dead engine's status: compose restarts the container
    err = proc.stderr.read() if proc.stderr else ""
    assert "an engine exited with status 3" in err
    wait_until(lambda: not listening(base + 1), timeout_s=10, what="the surviving engine stopped")


def test_an_engine_failing_to_start_stops_the_start_up(engines: Any) -> None:
    base = free_port_run(2)
    e = engines(VLLM_GPUS="0", ENGINES_PER_GPU="2", VLLM_BASE_PORT=str(base), FAKE_VLLM_FAIL_PORT=str(base + 1))
    proc = e.start()
    assert proc.wait(timeout=30) == 1
    assert f"engine 2 (port {base + 1}) exited while starting" in (proc.stderr.read() if proc.stderr else "")
    wait_until(lambda: not listening(base), timeout_s=10, what="the first engine stopped")


def test_plan_and_bad_settings(engines: Any) -> None:
    e = engines(VLLM_GPUS="0,1,2,3", TENSOR_PARALLEL="2", ENGINES_PER_GPU="3", VLLM_BASE_PORT="9000")
    out = e.run("plan")
    assert out.returncode == 0
    assert out.stdout.splitlines() == [
        "gpu=0,1 port=9000 gpu_memory_utilization=0.293",
        "gpu=0,1 port=9001 gpu_memory_utilization=0.293",
        "gpu=0,1 port=9002 gpu_memory_utilization=0.293",
        "gpu=2,3 port=9003 gpu_memory_utilization=0.293",
        "gpu=2,3 port=9004 gpu_memory_utilization=0.293",
        "gpu=2,3 port=9005 gpu_memory_utilization=0.293",
    ]
    for env, msg in [
        ({"VLLM_GPUS": "0,1,2", "TENSOR_PARALLEL": "2"}, "3 GPUs cannot be split into tensor-parallel groups of 2"),
        ({"VLLM_GPUS": "0", "ENGINES_PER_GPU": "0"}, "ENGINES_PER_GPU must be a positive integer, got '0'"),
        ({"VLLM_GPUS": "0", "VLLM_GPU_MEMORY_TOTAL": "1.5"}, "VLLM_GPU_MEMORY_TOTAL must be a fraction in (0, 1], got '1.5'"),
    ]:
        bad = engines(**env)
        res = bad.run("plan")
        assert res.returncode == 1 and msg in res.stderr, res.stderr
    started = time.monotonic()
    res = engines(VLLM_GPUS="0", VLLM_BASE_PORT=str(free_port_run(2))).run("health")
    assert res.returncode == 1 and "is not healthy" in res.stderr and time.monotonic() - started < 20
