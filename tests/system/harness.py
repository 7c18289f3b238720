"""The cross-service system-test harness: the real broker, the real S3 server, the vLLM simulator,
and ocr-stream's services (`worker`, `aggregator`, `submit`) as subprocesses, with helpers to kill,
stop and restart them, to submit documents, to wait for their document events, and to check the
invariants of DESIGN.md §3 afterwards:

1. every submitted document ends with exactly one document event (read_committed);
2. every page is either in the document (document.json, status ok, with text) or listed as failed
   with its reason (error code and message), in document.json and in the event;
3. no page result is missing from storage (results/{doc_id}/pages/{page_no:05d}.json of every ok page);
4. nothing is stuck: the workers' committed offsets reach the end of ocr.pages and the aggregator
   has no open document.

Every check is added to ``REPORT``, which tests/system/conftest.py prints at the end of the run.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from ocr_stream.config import Settings
from ocr_stream.contracts import DeadLetter, DocumentEvent, PageResult, PageStatus, decode
from ocr_stream.simulator import SimulatorProcess
from ocr_stream.storage import open_store
from ocr_stream.storage.base import ObjectStore, document_json_key, page_result_key
from ocr_stream.topics import DLQ, DOCUMENTS, PAGES, TopicAdmin, load_specs
from ocr_stream.transport.kafka import KafkaTransport
from stack import free_port  # noqa: E402 - below the ephemeral port range (tests/stack.py)

ROOT = Path(__file__).resolve().parents[2]

# Settings that make retries and failovers quick in a test (every fault test overrides what it needs).
FAST: dict[str, Any] = dict(
    max_attempts=3,
    backoff_base_s=0.05,
    backoff_max_s=0.5,
    request_timeout_s=20.0,
    connect_timeout_s=2.0,
    shutdown_grace_s=10.0,
    health_probe_interval_s=0.5,
    max_in_flight=8,
    adaptive_in_flight=False,
    long_side=640,  # small page images: the producer renders and the simulator reads them fast
    jpeg_quality=80,
    startup_deadline_s=120.0,
)
# A killed worker holds its partitions until its session times out: keep that short (workers only:
# these are consumer properties).
WORKER_KAFKA = {"session.timeout.ms": "6000", "heartbeat.interval.ms": "1000"}


def settings_env(settings: Settings, **extra: Any) -> dict[str, str]:
    """The process environment that gives a service exactly ``settings`` (every field as its
    ``OCR_STREAM_*`` variable), plus ``extra`` overrides; other OCR_STREAM_ variables are dropped."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCR_STREAM_") or k.startswith("OCR_STREAM_TEST_")}
    values: dict[str, Any] = {name: getattr(settings, name) for name in Settings.model_fields}
    values.update(extra)
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, Enum):
            value = value.value
        elif isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, list):
            value = ",".join(map(str, value))
        elif isinstance(value, dict):
            value = json.dumps(value)
        env[f"OCR_STREAM_{name.upper()}"] = str(value)
    return env


# ------------------------------------------------------------------------------------------ report


@dataclass
class SystemReport:
    """What the system suite checked, printed at the end of the run (pytest_terminal_summary)."""

    faults: list[str] = field(default_factory=list)
    documents: int = 0
    pages: int = 0
    pages_failed_by_design: int = 0
    losses: int = 0
    duplicates: int = 0
    notes: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fault(self, name: str) -> None:
        with self.lock:
            if name not in self.faults:
                self.faults.append(name)

    def lines(self) -> list[str]:
        out = [
            f"faults tried ({len(self.faults)}): {', '.join(self.faults) or '-'}",
            f"documents checked: {self.documents}, pages checked: {self.pages} "
            f"(failed on purpose, with their reason: {self.pages_failed_by_design})",
            f"losses: {self.losses}",
            f"duplicate documents: {self.duplicates}",
        ]
        out += self.notes
        return out


REPORT = SystemReport()


# ---------------------------------------------------------------------------------------- services


class Service:
    """One ocr-stream service as a subprocess; stderr (JSON log lines) goes to ``log_path``."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path, cwd: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.stopped = False  # stopped on purpose (term/kill without a restart): not watched
        self.start()

    def start(self) -> Service:
        assert self.proc is None or self.proc.poll() is not None, f"{self.name} is running"
        self.starts += 1
        self.stopped = False
        with self.log_path.open("ab") as log:
            log.write(f"--- start {self.starts}: {' '.join(self.argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def kill(self) -> int:
        """SIGKILL (the whole process group: a worker's spawned children die too)."""
        assert self.proc is not None
        self.stopped = True
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        return self.proc.wait(20)

    def term(self, timeout_s: float = 60.0) -> int:
        """SIGTERM to the service (not its group: the service forwards it) and wait for its exit code."""
        assert self.proc is not None
        self.stopped = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.name} did not exit within {timeout_s:.0f}s of SIGTERM:\n{self.log_tail()}") from None

    def restart(self) -> Service:
        if self.alive:
            self.kill()
        return self.start()

    def rss_bytes(self) -> int:
        """Resident memory of the process and its children (0 once it exited)."""
        total = 0
        for pid in [self.pid, *_children(self.pid)]:
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
            except OSError:
                pass
        return total

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n: int = 4000) -> str:
        return self.log_text()[-n:]


def _die_with_parent() -> None:
    """Linux: SIGKILL the service when the test process goes (a killed pytest leaves nothing running)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux
        pass


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    kids = [int(p) for p in text.split()]
    return kids + [g for k in kids for g in _children(k)]


# ---------------------------------------------------------------------------------------- documents


def make_pdf(path: Path, pages: int, tag: str) -> Path:
    """A small text PDF whose content (so whose derived doc_id) is unique to ``tag``."""
    import pymupdf

    doc = pymupdf.open()
    for n in range(1, pages + 1):
        page = doc.new_page(width=300, height=400)
        page.insert_text((30, 60), f"{tag}", fontsize=14)
        page.insert_text((30, 90), f"page {n} of {pages}", fontsize=12)
    doc.save(str(path))
    doc.close()
    return path


@dataclass
class Outcome:
    """What check() found, for assertions beyond the invariants."""

    events: dict[str, DocumentEvent]
    documents: dict[str, dict[str, Any]]  # doc_id -> document.json

    def failed_pages(self, doc_id: str) -> dict[int, str]:
        return {f.page_no: f.error.code.value for f in self.events[doc_id].failed_pages}


class Pipeline:
    """Simulators, workers and an aggregator as subprocesses, all on ``settings``. Close with ``close()``."""

    def __init__(self, settings: Settings, workdir: Path, *, log_level: str = "WARNING") -> None:
        self.settings = settings
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_level = log_level
        self.store: ObjectStore = open_store(settings)
        self.transport = KafkaTransport(settings.kafka_client_config())
        self.sims: list[SimulatorProcess] = []
        self.workers: list[Service] = []
        self.aggregators: list[Service] = []
        self.others: list[Service] = []
        self.submitted: dict[str, int] = {}
        self._n = 0
        self.aggregator_metrics_port = 0

    # -- setup ---------------------------------------------------------------------------------

    def create_topics_and_bucket(self) -> Pipeline:
        TopicAdmin(self.settings.kafka_client_config(), prefix=self.settings.topic_prefix).apply(load_specs())
        self.store.ensure_bucket()
        return self

    def env(self, **extra: Any) -> dict[str, str]:
        return settings_env(self.settings, log_level=self.log_level, **extra)

    def start_simulator(self, *args: str) -> SimulatorProcess:
        sim = SimulatorProcess.start(*args, die_with_parent=True)
        self.sims.append(sim)
        return sim

    def _service(self, name: str, argv: list[str], env: dict[str, str]) -> Service:
        self._n += 1
        return Service(name, [sys.executable, "-m", *argv], env, self.workdir / f"{name}-{self._n}.log", self.workdir)

    def start_worker(self, *args: str, **env: Any) -> Service:
        urls = env.pop("vllm_urls", [s.url for s in self.sims] or self.settings.vllm_urls)
        env.setdefault("kafka_config", {**WORKER_KAFKA, **self.settings.kafka_config})
        w = self._service(f"worker{len(self.workers)}", ["ocr_stream", "worker", *args],
                          self.env(vllm_urls=urls, metrics_port=0, **env))
        self.workers.append(w)
        return w

    def start_aggregator(self, *args: str, instance_id: str = "agg-0", **env: Any) -> Service:
        if not self.aggregator_metrics_port:
            self.aggregator_metrics_port = free_port()
        a = self._service(f"aggregator{len(self.aggregators)}",
                          ["ocr_stream.aggregator", "--instance-id", instance_id, "--batch-size", "50", *args],
                          self.env(metrics_port=self.aggregator_metrics_port, metrics_host="127.0.0.1", **env))
        self.aggregators.append(a)
        return a

    def start(self, *, workers: int = 1, sim_args: Iterable[str] = ("--speed", "50", "--tokens-fixed", "200")) -> Pipeline:
        """Topics, bucket, one simulator, ``workers`` workers and one aggregator."""
        self.create_topics_and_bucket()
        if sim_args is not None:
            self.start_simulator(*sim_args)
        for _ in range(workers):
            self.start_worker()
        self.start_aggregator()
        return self

    def close(self) -> None:
        for svc in [*self.workers, *self.aggregators, *self.others]:
            if svc.alive:
                svc.kill()
        for sim in self.sims:
            sim.stop()

    # -- input ---------------------------------------------------------------------------------

    def make_pdfs(self, count: int, pages: int | list[int] = 3, *, tag: str = "") -> list[Path]:
        folder = self.workdir / f"in-{uuid.uuid4().hex[:6]}"
        folder.mkdir()
        sizes = pages if isinstance(pages, list) else [pages] * count
        return [make_pdf(folder / f"doc{i}.pdf", sizes[i], f"{tag or folder.name} document {i}") for i in range(count)]

    def submit(self, paths: Iterable[Path], *args: str, expect_rc: int | None = 0, timeout_s: float = 120.0,
               **env: Any) -> tuple[dict[str, int], subprocess.CompletedProcess[str]]:
        """``ocr-stream submit PATHS``: returns {doc_id: pages} of what went through, and the process."""
        proc = subprocess.run([sys.executable, "-m", "ocr_stream", "submit", "--no-progress", *map(str, paths), *args],
                              env=self.env(**env), cwd=self.workdir, capture_output=True, text=True, timeout=timeout_s)
        if expect_rc is not None:
            assert proc.returncode == expect_rc, f"submit exited {proc.returncode}:\n{proc.stderr[-3000:]}"
        docs: dict[str, int] = {}
        for line in proc.stdout.splitlines():
            parts = line.split("\t")
            if len(parts) == 3:
                docs[parts[0]] = int(parts[1])
        self.submitted.update(docs)
        return docs, proc

    def submit_inproc(self, paths: Iterable[Path], **options: Any) -> dict[str, int]:
        """The producer library in this process (no interpreter start-up): {doc_id: pages}."""
        from ocr_stream.producer import SubmitOptions, Submitter

        docs: dict[str, int] = {}
        with Submitter(self.settings, store=self.store, producer=self.transport.producer(name="harness-submit")) as sub:
            for path in paths:
                result = sub.submit_file(path, SubmitOptions(**options))
                docs[result.doc_id] = result.page_count
        self.submitted.update(docs)
        return docs

    def submit_new(self, count: int, pages: int | list[int] = 3, *, cli: bool = False, **kw: Any) -> dict[str, int]:
        """``count`` new PDFs of ``pages`` pages, submitted in this process (or with ``ocr-stream submit``)."""
        paths = self.make_pdfs(count, pages)
        docs = self.submit(paths, **kw)[0] if cli else self.submit_inproc(paths, **kw)
        assert len(docs) == count, docs
        return docs

    # -- output --------------------------------------------------------------------------------

    def document_events(self) -> list[DocumentEvent]:
        """Every committed event on ocr.documents (read_committed, from the beginning)."""
        topic = self.settings.topic(DOCUMENTS)
        parts = list(range(self.transport.partition_count(topic)))
        records = self.transport.read_partitions(topic, parts, wait_for_transactions=False)
        return [decode(DocumentEvent, r.value) for r in records if r.value is not None]

    def dead_letters(self) -> list[DeadLetter]:
        topic = self.settings.topic(DLQ)
        parts = list(range(self.transport.partition_count(topic)))
        return [decode(DeadLetter, r.value) for r in self.transport.read_partitions(topic, parts, wait_for_transactions=False)
                if r.value is not None]

    def services(self) -> list[Service]:
        return [*self.workers, *self.aggregators]

    def wait_documents(self, doc_ids: Iterable[str], timeout_s: float = 90.0, *, watch: Iterable[Service] | None = None) -> list[DocumentEvent]:
        """Wait until every one of ``doc_ids`` has a document event; fail naming the missing ones
        (and the log tails of the services) at the deadline, or at once when a ``watch``ed service
        exits (default: every service not stopped on purpose)."""
        want = set(doc_ids)
        watch = [s for s in self.services() if not s.stopped] if watch is None else list(watch)
        deadline = time.monotonic() + timeout_s
        events: list[DocumentEvent] = []
        while time.monotonic() < deadline:
            events = self.document_events()
            if want <= {e.doc_id for e in events}:
                return events
            for svc in watch:
                assert svc.alive, f"{svc.name} exited with {svc.returncode}:\n{svc.log_tail()}"
            time.sleep(0.25)
        missing = sorted(want - {e.doc_id for e in events})
        tails = "\n".join(f"== {s.name}\n{s.log_tail(1500)}" for s in [*self.workers, *self.aggregators][-4:])
        raise AssertionError(f"timed out after {timeout_s:.0f}s: no document event for {missing}\n{tails}")

    def worker_lag(self) -> int:
        """Records of ocr.pages not yet committed by the worker group; -1 while the broker cannot say
        (e.g. its group coordinator is still loading after a restart)."""
        from confluent_kafka import KafkaException

        topic = self.settings.topic(PAGES)
        n = self.transport.partition_count(topic)
        consumer = self.transport.consumer(self.settings.consumer_group_worker, name="harness-lag")
        try:
            committed = consumer.committed([(topic, p) for p in range(n)])
        except KafkaException:
            return -1
        finally:
            consumer.close()
        ends = self.transport.end_offsets(topic) if hasattr(self.transport, "end_offsets") else _end_offsets(self.settings, topic, n)
        return sum(max(0, ends[p] - (committed.get((topic, p)) or 0)) for p in range(n))

    def aggregator_metric(self, name: str) -> float | None:
        """A metric of the running aggregator (sum over label sets), None when it does not answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.aggregator_metrics_port}/metrics", timeout=3) as resp:
                text = resp.read().decode()
        except OSError:
            return None
        total, seen = 0.0, False
        for line in text.splitlines():
            if line.startswith(name) and (line[len(name)] in " {"):
                total += float(line.rsplit(" ", 1)[1])
                seen = True
        return total if seen else None

    def check(self, docs: dict[str, int] | None = None, *, fault: str, expect_failed: dict[str, dict[int, str | None]] | None = None,
              timeout_s: float = 90.0, check_commits: bool = True, watch: Iterable[Service] | None = None) -> Outcome:
        """Wait for ``docs`` (default: every document this pipeline submitted) and assert the invariants.
        ``expect_failed``: {doc_id: {page_no: error code or None (any)}} pages that must fail; every
        other page must succeed. Records the check in ``REPORT``."""
        docs = dict(self.submitted if docs is None else docs)
        REPORT.fault(fault)
        expect_failed = expect_failed or {}
        self.wait_documents(docs, timeout_s, watch=watch)
        return self.verify(docs, fault=fault, expect_failed=expect_failed, check_commits=check_commits)

    def verify(self, docs: dict[str, int], *, fault: str, expect_failed: dict[str, dict[int, str | None]],
               check_commits: bool = True, record: bool = True) -> Outcome:
        """The invariants, now (no waiting). ``record=False`` leaves REPORT alone (self-tests)."""
        events = self.document_events()
        counts = Counter(e.doc_id for e in events)
        problems: list[str] = []
        losses = duplicates = pages = by_design = 0
        final: dict[str, DocumentEvent] = {}
        documents: dict[str, dict[str, Any]] = {}
        for doc_id, page_count in docs.items():
            n = counts.get(doc_id, 0)
            if n != 1:
                problems.append(f"{doc_id}: {n} document events")
                losses += n == 0
                duplicates += n > 1
                if n == 0:
                    continue
            ev = next(e for e in events if e.doc_id == doc_id)
            final[doc_id] = ev
            pages += page_count
            want_failed = expect_failed.get(doc_id, {})
            problems += self._check_document(ev, page_count, want_failed, documents)
            by_design += len(want_failed)
        if check_commits:
            # Commits trail results by up to a second (and a killed member's partitions by its
            # session timeout): "stuck" means the lag does not reach 0 within the deadline.
            lag = wait_value(lambda: float(self.worker_lag()), 0.0, 45)
            if lag:
                problems.append(f"{lag:.0f} page events never committed by the workers")
            if self.aggregators and self.aggregators[-1].alive:
                open_docs = wait_value(lambda: self.aggregator_metric("ocr_stream_aggregator_open_documents"), 0.0, 15)
                if open_docs:
                    problems.append(f"the aggregator holds {open_docs:.0f} open documents")
        lost_pages = sum(1 for p in problems if "lost" in p)
        if not record:
            assert not problems, f"[{fault}] invariants broken:\n" + "\n".join(problems[:40])
            return Outcome(final, documents)
        with REPORT.lock:
            REPORT.documents += len(docs)
            REPORT.pages += pages
            REPORT.pages_failed_by_design += by_design
            REPORT.losses += losses + lost_pages
            REPORT.duplicates += duplicates
        assert not problems, f"[{fault}] invariants broken:\n" + "\n".join(problems[:40])
        return Outcome(final, documents)

    def _check_document(self, ev: DocumentEvent, page_count: int, want_failed: dict[int, str | None],
                        documents: dict[str, dict[str, Any]]) -> list[str]:
        doc_id = ev.doc_id
        problems = []
        if ev.page_count != page_count or ev.pages_ok + ev.pages_failed != page_count:
            problems.append(f"{doc_id}: event counts {ev.pages_ok}+{ev.pages_failed} of {ev.page_count}, submitted {page_count}")
        failed_in_event = {f.page_no: f for f in ev.failed_pages}
        for page_no, code in want_failed.items():
            f = failed_in_event.get(page_no)
            if f is None:
                problems.append(f"{doc_id}: page {page_no} should have failed, event says it did not")
            elif code is not None and f.error.code.value != code:
                problems.append(f"{doc_id}: page {page_no} failed with {f.error.code.value}, expected {code}: {f.error.message}")
        for page_no, f in failed_in_event.items():
            if page_no not in want_failed:
                problems.append(f"{doc_id}: page {page_no} failed unexpectedly: {f.error.code.value}: {f.error.message}")
            if not f.error.message:
                problems.append(f"{doc_id}: page {page_no} failed without a reason")
        try:
            doc = json.loads(self.store.get_key(document_json_key(doc_id)))
        except Exception as exc:  # noqa: BLE001 - reported as a broken invariant
            return [*problems, f"{doc_id}: document.json lost: {exc}"]
        documents[doc_id] = doc
        by_page = {p["page_no"]: p for p in doc.get("pages", [])}
        for n in range(1, page_count + 1):
            p = by_page.get(n)
            if p is None:
                problems.append(f"{doc_id}: page {n} lost: neither in document.json nor listed as failed")
            elif p["status"] == "ok":
                if not p.get("markdown"):
                    problems.append(f"{doc_id}: page {n} is ok but has no text in document.json")
                try:
                    stored = decode(PageResult, self.store.get_key(page_result_key(doc_id, n)))
                    if stored.status is not PageStatus.OK:
                        problems.append(f"{doc_id}: page {n}: stored result is {stored.status}")
                except Exception as exc:  # noqa: BLE001
                    problems.append(f"{doc_id}: page {n} result lost from storage: {exc}")
            elif not (p.get("error") or {}).get("code") or not (p.get("error") or {}).get("message"):
                problems.append(f"{doc_id}: page {n} failed without a reason in document.json")
            elif n not in failed_in_event:
                problems.append(f"{doc_id}: page {n} failed in document.json, not in the event")
        return problems


def wait_value(get: Callable[[], float | None], want: float, timeout_s: float) -> float | None:
    """Poll ``get`` until it returns ``want``; the last value otherwise."""
    deadline = time.monotonic() + timeout_s
    value = get()
    while value != want and time.monotonic() < deadline:
        time.sleep(0.2)
        value = get()
    return value


def _end_offsets(settings: Settings, topic: str, partitions: int) -> list[int]:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({**settings.kafka_client_config(), "group.id": f"probe-{uuid.uuid4().hex[:6]}"})
    try:
        return [c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(partitions)]
    finally:
        c.close()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]
