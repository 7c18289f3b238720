#!/usr/bin/env python3
"""The real services the tests need, on 127.0.0.1: a single-node Apache Kafka broker (KRaft) and MinIO.

    python tests/stack.py install          # fetch/build what is missing (cached, idempotent)
    python tests/stack.py up               # start both unless already running; print the env to use
    python tests/stack.py down             # stop what `up` started
    python tests/stack.py run -- CMD...    # up, run CMD with the env set, stop what was started

Kafka's jars come from Maven Central (tests/kafka/pom.xml) and run with the JDK on this machine;
MinIO is built with `go install` through the Go module proxy. Both are cached under
$OCR_STREAM_CACHE (default ~/.cache/ocr-stream). Ports are free ones picked at start-up.

If OCR_STREAM_TEST_KAFKA_BOOTSTRAP / OCR_STREAM_TEST_S3_ENDPOINT are already set and answer,
those services are used and left alone. Standard library only: it runs before the venv exists.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("OCR_STREAM_CACHE", Path.home() / ".cache" / "ocr-stream"))
STATE = ROOT / ".stack"

KAFKA_VERSION = "4.1.1"
MINIO_MODULE = "github.com/minio/minio@v0.0.0-20260212201848-7aac2a2c5b7c"
MINIO_USER = "ocrstream"
MINIO_PASSWORD = "ocrstream-secret"  # test-only credentials of a loopback server

KAFKA_ENV = "OCR_STREAM_TEST_KAFKA_BOOTSTRAP"
S3_ENV = "OCR_STREAM_TEST_S3_ENDPOINT"


def log(msg: str) -> None:
    print(f"[stack] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    """A port nothing listens on, below the kernel's ephemeral range: a port the kernel picked for
    us could be taken by an outgoing connection of another test before our server binds it."""
    import random

    lo, _hi = 32768, 60999
    try:
        lo = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    for _ in range(200):
        port = random.randrange(15000, max(15001, lo))
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # fall back to a kernel-chosen port
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def wait_for(what: str, check, deadline_s: float, proc: subprocess.Popen | None = None, logfile: Path | None = None) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if check():
            return
        if proc is not None and proc.poll() is not None:
            tail = logfile.read_text()[-3000:] if logfile and logfile.exists() else ""
            raise RuntimeError(f"{what} exited with {proc.returncode} before it was ready:\n{tail}")
        time.sleep(0.2)
    raise RuntimeError(f"{what} not ready after {deadline_s:.0f}s")


# ---------------------------------------------------------------- install


def kafka_libs() -> Path:
    libs = CACHE / f"kafka-{KAFKA_VERSION}" / "libs"
    if (libs / f"kafka_2.13-{KAFKA_VERSION}.jar").exists():
        return libs
    if not shutil.which("java") or not shutil.which("mvn"):
        raise RuntimeError("Kafka needs a JDK (java) and Maven (mvn) on PATH")
    log(f"fetching Kafka {KAFKA_VERSION} jars from Maven Central into {libs}")
    tmp = libs.with_name("libs.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    subprocess.run(
        ["mvn", "-q", "-B", "-f", str(ROOT / "tests" / "kafka" / "pom.xml"),
         f"-Dkafka.version={KAFKA_VERSION}", "dependency:copy-dependencies",
         f"-DoutputDirectory={tmp}", "-DincludeScope=runtime"],
        check=True,
    )
    tmp.rename(libs)
    return libs


def minio_bin() -> Path:
    exe = CACHE / "bin" / "minio"
    if exe.exists():
        return exe
    if not shutil.which("go"):
        raise RuntimeError("MinIO is built with Go: no `go` on PATH")
    log(f"building MinIO with go install {MINIO_MODULE} (a few minutes, once)")
    env = dict(os.environ, GOBIN=str(exe.parent), CGO_ENABLED="0")
    subprocess.run(["go", "install", MINIO_MODULE], check=True, env=env)
    return exe


def install() -> None:
    kafka_libs()
    minio_bin()


# ---------------------------------------------------------------- services


def start_kafka(workdir: Path, *, port: int | None = None, controller_port: int | None = None,
                keep_data: bool = False) -> tuple[subprocess.Popen, str]:
    """Start a broker in ``workdir``. ``port``/``controller_port`` (default: free ones) and
    ``keep_data=True`` restart a stopped broker where it was, with its topics and offsets."""
    libs = kafka_libs()
    port, ctl = port or free_port(), controller_port or free_port()
    data = workdir / "kafka-data"
    if not keep_data:
        shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True, exist_ok=True)
    props = workdir / "server.properties"
    props.write_text(
        "\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{ctl}",
            f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{ctl}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
            "controller.listener.names=CONTROLLER",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            f"log.dirs={data}",
            "num.partitions=3",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=10",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "transaction.state.log.num.partitions=10",
            "group.initial.rebalance.delay.ms=0",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "auto.create.topics.enable=false",
            "log.segment.bytes=16777216",
            "",
        ])
    )
    (workdir / "log4j2.yaml").write_text(
        "Configuration:\n  Appenders:\n    Console:\n      name: STDOUT\n      PatternLayout:\n"
        "        Pattern: \"[%d] %p %m (%c)%n\"\n  Loggers:\n    Root:\n      level: WARN\n"
        "      AppenderRef:\n        - ref: STDOUT\n"
    )
    cp = f"{libs}/*"
    java = ["java", "-Xms256m", "-Xmx768m", "-XX:+UseG1GC", f"-Dlog4j2.configurationFile={workdir / 'log4j2.yaml'}", "-cp", cp]
    if not (data / "meta.properties").exists():  # a restart keeps its formatted data dir
        subprocess.run(
            java + ["kafka.tools.StorageTool", "format", "-t", uuid.uuid4().hex[:22], "-c", str(props), "--ignore-formatted"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
    logfile = workdir / "kafka.log"
    proc = subprocess.Popen(java + ["kafka.Kafka", str(props)], stdout=logfile.open("a"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    wait_for("Kafka broker", lambda: port_open("127.0.0.1", port), 90, proc, logfile)
    return proc, f"127.0.0.1:{port}"


def minio_ready(endpoint: str, *, tls: bool = False) -> bool:
    try:
        import ssl

        ctx = ssl._create_unverified_context() if tls else None  # noqa: S323 - readiness probe of our own server
        with urllib.request.urlopen(f"{'https' if tls else 'http'}://{endpoint}/minio/health/ready", timeout=1, context=ctx) as r:
            return r.status == 200
    except OSError:
        return False


def start_minio(workdir: Path, *, port: int | None = None, keep_data: bool = False, user: str = MINIO_USER,
                password: str = MINIO_PASSWORD, certs_dir: Path | None = None) -> tuple[subprocess.Popen, str]:
    """Start MinIO in ``workdir``. ``port`` (default: a free one) and ``keep_data=True`` restart a
    stopped server where it was, with its buckets and objects; ``user``/``password`` are its root
    credentials; ``certs_dir`` (public.crt, private.key) serves TLS."""
    exe = minio_bin()
    port, console = port or free_port(), free_port()
    data = workdir / "minio-data"
    if not keep_data:
        shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, MINIO_ROOT_USER=user, MINIO_ROOT_PASSWORD=password,
               MINIO_BROWSER="off", MINIO_UPDATE="off", MINIO_CI_CD="1")
    logfile = workdir / "minio.log"
    certs = ["--certs-dir", str(certs_dir)] if certs_dir else []
    proc = subprocess.Popen(
        [str(exe), "server", str(data), "--address", f"127.0.0.1:{port}", "--console-address", f"127.0.0.1:{console}", "--quiet", *certs],
        stdout=logfile.open("a"), stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    endpoint = f"127.0.0.1:{port}"
    wait_for("MinIO", lambda: minio_ready(endpoint, tls=certs_dir is not None), 60, proc, logfile)
    return proc, endpoint


def stop_process(proc: subprocess.Popen, timeout_s: float = 30.0) -> int:
    """Stop a service started above (its whole process group): SIGTERM, SIGKILL after ``timeout_s``."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


def kafka_reachable(bootstrap: str) -> bool:
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    return bool(port) and port_open(host or "127.0.0.1", int(port))


class Stack:
    """Starts what is not already running; `stop()` stops only what it started."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[subprocess.Popen] = []
        self.env: dict[str, str] = {}

    def start(self) -> dict[str, str]:
        self.workdir.mkdir(parents=True, exist_ok=True)
        bootstrap = os.environ.get(KAFKA_ENV, "")
        if bootstrap and kafka_reachable(bootstrap):
            log(f"using running Kafka at {bootstrap}")
        else:
            proc, bootstrap = start_kafka(self.workdir)
            self.procs.append(proc)
            log(f"Kafka {KAFKA_VERSION} (KRaft) on {bootstrap}")
        endpoint = os.environ.get(S3_ENV, "")
        if endpoint and minio_ready(endpoint):
            log(f"using running S3 server at {endpoint}")
            user = os.environ.get("OCR_STREAM_TEST_S3_ACCESS_KEY", MINIO_USER)
            password = os.environ.get("OCR_STREAM_TEST_S3_SECRET_KEY", MINIO_PASSWORD)
        else:
            proc, endpoint = start_minio(self.workdir)
            self.procs.append(proc)
            user, password = MINIO_USER, MINIO_PASSWORD
            log(f"MinIO on {endpoint}")
        self.env = {
            KAFKA_ENV: bootstrap,
            S3_ENV: endpoint,
            "OCR_STREAM_TEST_S3_ACCESS_KEY": user,
            "OCR_STREAM_TEST_S3_SECRET_KEY": password,
        }
        return self.env

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()


def main(argv: list[str]) -> int:
    cmd = argv[0] if argv else "help"
    if cmd == "install":
        install()
        return 0
    if cmd == "up":
        stack = Stack(STATE)
        env = stack.start()
        (STATE / "pids.json").write_text(json.dumps([p.pid for p in stack.procs]))
        (STATE / "env").write_text("".join(f"export {k}={v}\n" for k, v in env.items()))
        print((STATE / "env").read_text(), end="")
        log(f"left running; `source {STATE / 'env'}` to use it, `python tests/stack.py down` to stop")
        return 0
    if cmd == "down":
        pids = STATE / "pids.json"
        for pid in json.loads(pids.read_text()) if pids.exists() else []:
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        pids.unlink(missing_ok=True)
        return 0
    if cmd == "run":
        rest = argv[1:]
        if rest and rest[0] == "--":
            rest = rest[1:]
        if not rest:
            log("usage: stack.py run -- CMD...")
            return 2
        stack = Stack(STATE / f"run-{os.getpid()}")
        try:
            env = stack.start()
            return subprocess.call(rest, env=dict(os.environ, **env))
        finally:
            stack.stop()
            shutil.rmtree(stack.workdir, ignore_errors=True)
    print(__doc__)
    return 0 if cmd in ("help", "-h", "--help") else 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
