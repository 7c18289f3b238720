"""Infrastructure outages while documents flow: the broker stopped and restarted on the same port
and data, the S3 server stopped and restarted on the same port and data. Each test has a broker or
S3 server of its own (tests/stack.py), so the other tests never see the outage.

Services may exit during an outage (a worker that cannot publish or store after every retry exits 1,
by design: its pages stay uncommitted); the harness restarts them as an orchestrator would, and the
report notes it. The invariants must hold either way."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import stack as stack_mod
from conftest import wait_until
from harness import REPORT, Pipeline

pytestmark = [pytest.mark.system, pytest.mark.slow]

SIM = ("--speed", "6", "--tokens-fixed", "300", "--max-num-seqs", "16")
# Few pages in flight, so that pages are still being fetched and published when the outage starts;
# INFO logs, so that the services' retries show that they noticed it.
OUTAGE: dict[str, Any] = dict(max_in_flight=2, log_level="INFO")
# How long the outage lasts: the fault itself, not a wait for a condition.
OUTAGE_S = 5.0


class Restartable:
    """A broker or S3 server of the test's own that can be stopped and started again where it was."""

    def __init__(self, kind: str, workdir: Path) -> None:
        self.kind = kind
        self.workdir = workdir
        self.port = stack_mod.free_port()
        self.controller_port = stack_mod.free_port()
        self.proc: Any = None
        self.address = ""
        self.start(keep_data=False)

    def start(self, *, keep_data: bool = True) -> None:
        if self.kind == "kafka":
            self.proc, self.address = stack_mod.start_kafka(self.workdir, port=self.port, controller_port=self.controller_port,
                                                            keep_data=keep_data)
        else:
            self.proc, self.address = stack_mod.start_minio(self.workdir, port=self.port, keep_data=keep_data)

    def stop(self) -> None:
        stack_mod.stop_process(self.proc)
        assert not stack_mod.port_open("127.0.0.1", self.port)


@pytest.fixture
def own_kafka(tmp_path: Path) -> Iterator[Restartable]:
    k = Restartable("kafka", tmp_path / "kafka")
    yield k
    stack_mod.stop_process(k.proc)


@pytest.fixture
def own_minio(tmp_path: Path) -> Iterator[Restartable]:
    m = Restartable("minio", tmp_path / "minio")
    yield m
    stack_mod.stop_process(m.proc)


def supervise(p: Pipeline, stop: threading.Event, restarted: list[str]) -> threading.Thread:
    """Restart any service that exits (what an orchestrator does), noting it."""

    def run() -> None:
        while not stop.wait(0.5):
            for svc in [*p.workers, *p.aggregators]:
                if svc.proc is not None and svc.returncode is not None:
                    restarted.append(f"{svc.name} exit {svc.returncode}")
                    svc.start()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def run_outage(p: Pipeline, server: Restartable, fault: str) -> None:
    sim = p.sims[0]
    docs = p.submit_new(6, 4)
    wait_until(lambda: p.document_events(), 90, what="a first document event before the outage")
    stop, restarted = threading.Event(), []  # type: ignore[var-annotated]
    supervise(p, stop, restarted)
    try:
        server.stop()
        before = int(sim.state()["finished"])
        threading.Event().wait(OUTAGE_S)
        server.start()
        # The aggregator may take up to its transaction timeout plus the wedge grace (45 s) to
        # notice a wedged Kafka client and start itself over.
        p.check(docs, fault=fault, timeout_s=150, watch=())
    finally:
        stop.set()
    if restarted:
        REPORT.notes.append(f"{fault}: services restarted after exiting during the outage: {', '.join(restarted)}")
    logs = "\n".join(svc.log_text() for svc in p.services())
    if "Kafka client wedged" in logs:
        REPORT.notes.append(f"{fault}: the aggregator's Kafka client wedged in a transaction and the process started itself over")
    assert int(sim.state()["finished"]) >= before
    assert restarted or any(w in logs.lower() for w in ("unavailable", "refused", "disconnect")), \
        "no service noticed the outage: nothing was tested"


def test_broker_stopped_and_restarted_mid_run(own_kafka: Restartable, make_pipeline: Any) -> None:
    p: Pipeline = make_pipeline(kafka_bootstrap_servers=own_kafka.address, **OUTAGE).start(workers=1, sim_args=SIM)
    run_outage(p, own_kafka, "broker stopped and restarted")


def test_s3_server_unavailable_for_a_while(own_minio: Restartable, make_pipeline: Any) -> None:
    p: Pipeline = make_pipeline(s3_endpoint=own_minio.address, s3_access_key=stack_mod.MINIO_USER,
                                s3_secret_key=stack_mod.MINIO_PASSWORD, **OUTAGE).start(workers=1, sim_args=SIM)
    run_outage(p, own_minio, "S3 server unavailable")
