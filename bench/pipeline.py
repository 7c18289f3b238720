"""End-to-end pipeline runs through the real broker and object store, against the simulator.

One run: a simulator process (fixed capacity: ``--speed``, ``--max-num-seqs``, ``--tokens-fixed``),
fresh topics under a prefix of its own, an aggregator process and worker process(es) (``ocr-stream
worker``, or the first plan's seed engine with ``python -m bench.seed``). After a warm-up document
has gone all the way through (so start-up is not timed), the run's page events — made beforehand by
the real producer, images already in storage — are published at once, and the clock runs from that
moment to the last document event on ``ocr.documents``. That time is compared with the fastest the
simulator itself can finish exactly those pages (its own batch model, everything sent at once).

Worker CPU is read from /proc (utime + stime of the worker processes and their children) just
before and just after the timed part; the model's time is spent in the simulator, another process.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ocr_stream.config import Settings, load_settings
from ocr_stream.contracts import PageEvent, encode, utcnow
from ocr_stream.simulator import SimulatorConfig, SimulatorProcess
from ocr_stream.simulator.batching import BatchModel, SimRequest, Timing
from ocr_stream.simulator.output import TokenDistribution
from ocr_stream.topics import DOCUMENTS, PAGES, RESULTS, TopicAdmin, load_specs

from .report import steady_rate

CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Services:
    """Where the real Kafka broker and S3 server are (``tests/stack.py run`` exports them)."""

    kafka: str
    s3_endpoint: str
    s3_access_key: str
    s3_secret_key: str

    @classmethod
    def from_env(cls) -> Services:
        try:
            return cls(os.environ["OCR_STREAM_TEST_KAFKA_BOOTSTRAP"], os.environ["OCR_STREAM_TEST_S3_ENDPOINT"],
                       os.environ.get("OCR_STREAM_TEST_S3_ACCESS_KEY", "ocrstream"),
                       os.environ.get("OCR_STREAM_TEST_S3_SECRET_KEY", "ocrstream-secret"))
        except KeyError as exc:
            raise SystemExit(f"bench: {exc.args[0]} is not set: run `make bench` (or `source .stack/env` with the test "
                             "services up)") from None

    def settings(self, **overrides: Any) -> Settings:
        base: dict[str, Any] = dict(kafka_bootstrap_servers=self.kafka, storage="s3", s3_endpoint=self.s3_endpoint,
                                    s3_access_key=self.s3_access_key, s3_secret_key=self.s3_secret_key, metrics_port=0)
        base.update(overrides)
        return load_settings(**base)


def settings_env(s: Settings) -> dict[str, str]:
    """The OCR_STREAM_* environment that gives a child process these settings (the fields a run sets)."""
    return {
        "OCR_STREAM_KAFKA_BOOTSTRAP_SERVERS": s.kafka_bootstrap_servers,
        "OCR_STREAM_STORAGE": s.storage,
        "OCR_STREAM_S3_ENDPOINT": s.s3_endpoint,
        "OCR_STREAM_S3_ACCESS_KEY": s.s3_access_key.get_secret_value(),
        "OCR_STREAM_S3_SECRET_KEY": s.s3_secret_key.get_secret_value(),
        "OCR_STREAM_BUCKET": s.bucket,
        "OCR_STREAM_TOPIC_PREFIX": s.topic_prefix,
        "OCR_STREAM_CONSUMER_GROUP_WORKER": s.consumer_group_worker,
        "OCR_STREAM_CONSUMER_GROUP_AGGREGATOR": s.consumer_group_aggregator,
        "OCR_STREAM_VLLM_URLS": ",".join(s.vllm_urls),
        "OCR_STREAM_MAX_IN_FLIGHT": str(s.max_in_flight),
        "OCR_STREAM_ADAPTIVE_IN_FLIGHT": "true" if s.adaptive_in_flight else "false",
        "OCR_STREAM_IMAGE_TRANSPORT": s.image_transport,
        "OCR_STREAM_METRICS_PORT": "0",
        "OCR_STREAM_LOG_LEVEL": "WARNING",
        "OCR_STREAM_STARTUP_DEADLINE_S": "60",
    }


# --------------------------------------------------------------------------- the corpus


@dataclass
class Corpus:
    """Page events made by the real producer (images in storage), and what each page costs the
    simulator: (prompt tokens, output tokens) per image key."""

    events: list[PageEvent]
    costs: dict[str, tuple[int, int]]
    doc_pages: int

    def run_events(self, run: str, pages: int) -> list[PageEvent]:
        """``pages`` page events for documents named after ``run`` (``doc_pages`` pages each),
        pointing at the corpus's stored images; the last document may be shorter."""
        out: list[PageEvent] = []
        docs = math.ceil(pages / self.doc_pages)
        now = utcnow()
        for d in range(docs):
            count = min(self.doc_pages, pages - d * self.doc_pages)
            for p in range(count):
                src = self.events[(d * self.doc_pages + p) % len(self.events)]
                out.append(src.model_copy(update={"doc_id": f"{run}-d{d:03d}", "page_no": p + 1, "page_count": count,
                                                  "submitted_at": now}))
        return out

    def workload(self, events: list[PageEvent]) -> list[tuple[int, int]]:
        return [self.costs[ev.image.key] for ev in events]


def prepare_corpus(services: Services, bucket: str, pdf: Path, *, tokens: int) -> Corpus:
    """Submit ``pdf`` with the real producer (render, JPEG, store in ``bucket``) into an in-memory
    broker, and keep its page events for the runs."""
    from ocr_stream.producer.submit import SubmitOptions, Submitter
    from ocr_stream.storage import open_store
    from ocr_stream.transport.memory import MemoryTransport

    settings = services.settings(bucket=bucket, max_pages=100_000)
    store = open_store(settings)
    store.ensure_bucket()
    transport = MemoryTransport(default_partitions=24)
    topic = settings.topic(PAGES)
    transport.ensure_topics({topic: 24, settings.topic("ocr.pages.dlq"): 4})
    with Submitter(settings, store=store, producer=transport.producer(name="bench")) as submitter:
        result = submitter.submit_file(pdf, SubmitOptions(doc_id="corpus"))
    events = sorted((PageEvent.model_validate_json(r.value) for r in transport.read_partitions(topic, list(range(24)))
                     if r.value is not None), key=lambda e: e.page_no)
    if len(events) != result.page_count:
        raise RuntimeError(f"corpus: {len(events)} page events for {result.page_count} pages")
    cfg = SimulatorConfig(tokens=TokenDistribution(fixed=tokens))
    costs = {ev.image.key: cfg.page_cost(store.get_key(ev.image.key), prompt=ev.prompt) for ev in events}
    return Corpus(events=events, costs=costs, doc_pages=32)


# --------------------------------------------------------------------------- the ideal run


def ideal_completion_times(timing: Timing, workload: list[tuple[int, int]], *, max_num_seqs: int, in_flight: int,
                           ngram: bool = False) -> list[float]:
    """Completion time (model seconds) of each page for an ideal client keeping ``in_flight``
    requests open against the simulator's batch model (``simulate_closed_loop``, page by page).
    With ``in_flight >= len(workload)`` this is the fastest the engine can finish the workload."""
    model = BatchModel(timing=timing, max_num_seqs=max_num_seqs)
    queue = list(reversed(workload))
    n = 0
    times: list[float] = []

    def send(now: float) -> None:
        nonlocal n
        prompt, out = queue.pop()
        model.submit(SimRequest(f"r{n}", prompt, out, ngram), now)
        n += 1

    for _ in range(min(in_flight, len(queue))):
        send(0.0)
    while len(times) < len(workload):
        t = model.next_event_time()
        if t is None:
            break
        model.advance(t)
        finished = model.take_finished()
        while finished:
            times.extend([model.clock] * len(finished))
            for _ in finished:
                if queue:
                    send(model.clock)
            finished = model.take_finished()
    return times


# --------------------------------------------------------------------------- processes and CPU


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo.extend(_children(p))
    return pids


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of ``pids`` (all their threads), from /proc/<pid>/stat."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / CLK_TCK


def _stop(proc: subprocess.Popen[bytes], name: str, timeout_s: float = 45.0) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log(f"{name} did not stop within {timeout_s:.0f} s; killing it")
            proc.kill()
            proc.wait(10)
    return proc.returncode


# --------------------------------------------------------------------------- one run


@dataclass(frozen=True)
class RunSpec:
    name: str
    pages: int
    in_flight: int
    """Per worker process."""
    processes: int = 1
    speed: float = 4.0
    max_num_seqs: int = 256
    tokens: int = 1000
    chunk_tokens: int = 16
    image_transport: str = "inline"
    """OCR_STREAM_IMAGE_TRANSPORT of the worker: ``inline`` or ``url``."""
    seed_engine: bool = False

    @property
    def total_in_flight(self) -> int:
        return self.in_flight * self.processes


@dataclass
class RunResult:
    spec: dict[str, Any]
    pages: int
    documents: int
    failed_pages: int
    wall_s: float
    pages_per_s: float
    """Pages / (first page event published → last document event read)."""
    sim_best_pages_per_s: float
    """The simulator's own fastest finish of exactly these pages (everything sent at once)."""
    efficiency: float
    """pages_per_s / sim_best_pages_per_s: the whole run, start and tail included."""
    steady_pages_per_s: float
    """Pages/s between the moments 10% and 90% of the pages had completed (page results)."""
    sim_best_steady_pages_per_s: float
    """The same window of the simulator's fastest run of these pages."""
    steady_efficiency: float
    """steady_pages_per_s / sim_best_steady_pages_per_s."""
    sim_best_at_in_flight_pages_per_s: float
    """The fastest finish for an ideal client with this run's in-flight budget."""
    sim_capacity_pages_per_s: float
    """The simulator's steady-state maximum for this workload (at max-num-seqs, formula)."""
    engine_mean_batch: float | None
    worker_cpu_s: float
    worker_cpu_ms_per_page: float
    aggregator_cpu_ms_per_page: float
    simulator_cpu_ms_per_page: float
    completion_tokens_per_page: float | None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


def _simulator_args(spec: RunSpec) -> list[str]:
    return ["--speed", str(spec.speed), "--max-num-seqs", str(spec.max_num_seqs), "--tokens-fixed", str(spec.tokens),
            "--chunk-tokens", str(spec.chunk_tokens)]


def run_pipeline(spec: RunSpec, corpus: Corpus, services: Services, bucket: str, *, timeout_s: float = 240.0) -> RunResult:
    """One timed run (see the module docstring)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient

    tag = uuid.uuid4().hex[:6]
    sim = SimulatorProcess.start(*_simulator_args(spec), die_with_parent=True)
    settings = services.settings(topic_prefix=f"bench{tag}.", bucket=bucket, vllm_urls=[sim.url], max_in_flight=spec.in_flight,
                                 adaptive_in_flight=False, consumer_group_worker=f"bench-w-{tag}",
                                 consumer_group_aggregator=f"bench-a-{tag}", image_transport=spec.image_transport)
    conf: dict[str, Any] = dict(settings.kafka_client_config())
    admin_topics = TopicAdmin(conf, prefix=settings.topic_prefix)
    admin_topics.apply(load_specs())
    env = {**os.environ, **settings_env(settings)}
    logdir = Path(tempfile.mkdtemp(prefix=f"bench-{spec.name}-"))
    procs: dict[str, subprocess.Popen[bytes]] = {}
    monitor = None
    try:
        def start(name: str, argv: list[str]) -> None:
            with open(logdir / f"{name}.log", "wb") as out:
                procs[name] = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)

        start("aggregator", [sys.executable, "-m", "ocr_stream.aggregator"])
        if spec.seed_engine:
            start("worker", [sys.executable, "-m", "bench.seed", "--max-in-flight", str(spec.in_flight)])
        else:
            start("worker", [sys.executable, "-m", "ocr_stream", "worker", "--processes", str(spec.processes),
                             "--max-in-flight", str(spec.in_flight)])

        monitor = Consumer({**conf, "group.id": f"bench-monitor-{tag}", "enable.auto.commit": False,
                            "isolation.level": "read_committed", "auto.offset.reset": "earliest"})
        admin = AdminClient(conf)
        topics_md = admin.list_topics(timeout=10).topics
        assign = [TopicPartition(settings.topic(t), p, OFFSET_BEGINNING)
                  for t in (RESULTS, DOCUMENTS) for p in topics_md[settings.topic(t)].partitions]
        monitor.assign(assign)
        producer = Producer({**conf, "acks": "all", "linger.ms": 5, "partitioner": "murmur2_random"})
        results_topic, docs_topic = settings.topic(RESULTS), settings.topic(DOCUMENTS)
        seen_pages: dict[tuple[str, int], float] = {}
        failed: set[tuple[str, int]] = set()
        docs: dict[str, float] = {}
        tokens: dict[tuple[str, int], int] = {}

        def publish(events: list[PageEvent]) -> None:
            for ev in events:
                producer.produce(settings.topic(PAGES), encode(ev), ev.key.encode())
                producer.poll(0)
            if producer.flush(60) != 0:
                raise RuntimeError("page events were not acknowledged by the broker")

        def drain(prefix: str, want_docs: int, deadline: float) -> None:
            import json

            while len([d for d in docs if d.startswith(prefix)]) < want_docs:
                for name, p in procs.items():
                    if p.poll() is not None:
                        raise RuntimeError(f"{name} exited with {p.returncode} (log: {logdir / (name + '.log')}): "
                                           f"{(logdir / (name + '.log')).read_text(errors='replace')[-1500:]}")
                if time.time() > deadline:
                    raise TimeoutError(f"{spec.name}: {len([d for d in docs if d.startswith(prefix)])} of {want_docs} documents "
                                       f"after the deadline (logs in {logdir})")
                for msg in monitor.consume(500, 0.1):
                    value = msg.value()
                    if msg.error() or value is None:
                        continue
                    data = json.loads(value)
                    if msg.topic() == results_topic:
                        key = (data["doc_id"], data["page_no"])
                        if key not in seen_pages:
                            seen_pages[key] = msg.timestamp()[1] / 1000.0
                            tokens[key] = int((data.get("usage") or {}).get("completion_tokens", 0))
                        if data.get("status") == "failed":
                            failed.add(key)
                    elif msg.topic() == docs_topic:
                        docs.setdefault(data["doc_id"], time.time())

        # Warm-up: a small document through every stage, and every worker process in the group.
        t_start = time.time()
        publish(corpus.run_events(f"warm{tag}", 2 * spec.processes))
        drain(f"warm{tag}", 1, t_start + 120)
        if failed:
            raise RuntimeError(f"{spec.name}: the warm-up pages failed (logs in {logdir}): "
                               f"{(logdir / 'worker.log').read_text(errors='replace')[-1500:]}")
        _wait_members(admin, settings.consumer_group_worker, spec.processes, deadline=time.time() + 60)

        events = corpus.run_events(f"run{tag}", spec.pages)
        want = len({ev.doc_id for ev in events})
        worker_pids = process_tree(procs["worker"].pid)
        agg_pids = process_tree(procs["aggregator"].pid)
        state0 = sim.state()
        w0, a0, s0 = cpu_seconds(worker_pids), cpu_seconds(agg_pids), cpu_seconds([sim.pid])
        log(f"{spec.name}: {spec.pages} pages, {spec.processes} process(es) x {spec.in_flight} in flight"
            f"{' (seed engine)' if spec.seed_engine else ''}, simulator speed {spec.speed}, chunk tokens {spec.chunk_tokens}"
        f"{', images by URL' if spec.image_transport == 'url' else ''}")
        t0 = time.time()
        publish(events)
        drain(f"run{tag}", want, t0 + timeout_s)
        t_end = max(v for d, v in docs.items() if d.startswith(f"run{tag}"))
        w1, a1, s1 = cpu_seconds(worker_pids), cpu_seconds(agg_pids), cpu_seconds([sim.pid])
        state1 = sim.state()
    finally:
        for name in ("worker", "aggregator"):
            if name in procs:
                code = _stop(procs[name], name)
                if code not in (0, None):
                    log(f"{spec.name}: {name} exited with {code} (log in {logdir})")
        sim.stop()
        if monitor is not None:
            monitor.close()
        try:
            admin_topics.delete([settings.topic(s.name) for s in load_specs()])
        except Exception as exc:  # noqa: BLE001 - cleanup is best effort; the run's numbers stand
            log(f"could not delete the run's topics: {exc}")

    run_pages = {k: v for k, v in seen_pages.items() if k[0].startswith(f"run{tag}")}
    n = len(run_pages)
    wall = t_end - t0
    workload = corpus.workload(events)
    cfg = SimulatorConfig(speed=spec.speed, max_num_seqs=spec.max_num_seqs, tokens=TokenDistribution(fixed=spec.tokens))
    ngram = spec.seed_engine
    ideal = [t / spec.speed for t in ideal_completion_times(cfg.timing, workload, max_num_seqs=spec.max_num_seqs,
                                                             in_flight=len(workload), ngram=ngram)]
    best = len(ideal) / max(ideal)
    ideal_budget = ideal_completion_times(cfg.timing, workload, max_num_seqs=spec.max_num_seqs,
                                          in_flight=spec.total_in_flight, ngram=ngram)
    best_budget = spec.speed * len(ideal_budget) / max(ideal_budget)
    steady = steady_rate(list(run_pages.values()))
    best_steady = steady_rate(ideal)
    capacity = cfg.capacity(workload=workload, ngram_fraction=1.0 if ngram else 0.0)
    d_model = float(state1.get("model_time_s", 0)) - float(state0.get("model_time_s", 0))
    d_running = float(state1.get("running_seconds", 0)) - float(state0.get("running_seconds", 0))
    run_tokens = [tokens[k] for k in run_pages]
    notes = []
    n_failed = len([k for k in failed if k in run_pages])
    if n_failed:
        notes.append(f"{n_failed} of {n} pages failed (logs in {logdir})")
    else:
        shutil.rmtree(logdir, ignore_errors=True)  # kept only when something went wrong
    pps = n / wall if wall > 0 else math.nan
    return RunResult(
        spec=asdict(spec), pages=n, documents=want, failed_pages=n_failed, notes=notes,
        wall_s=round(wall, 3), pages_per_s=round(pps, 3),
        sim_best_pages_per_s=round(best, 3), efficiency=round(pps / best, 4),
        steady_pages_per_s=round(steady, 3), sim_best_steady_pages_per_s=round(best_steady, 3),
        steady_efficiency=round(steady / best_steady, 4),
        sim_best_at_in_flight_pages_per_s=round(best_budget, 3), sim_capacity_pages_per_s=round(capacity, 3),
        engine_mean_batch=round(d_running / d_model, 1) if d_model > 0 else None,
        worker_cpu_s=round(w1 - w0, 3), worker_cpu_ms_per_page=round((w1 - w0) * 1000 / max(1, n), 3),
        aggregator_cpu_ms_per_page=round((a1 - a0) * 1000 / max(1, n), 3),
        simulator_cpu_ms_per_page=round((s1 - s0) * 1000 / max(1, n), 3),
        completion_tokens_per_page=round(sum(run_tokens) / len(run_tokens), 1) if run_tokens else None,
    )


def _wait_members(admin: Any, group: str, members: int, *, deadline: float) -> None:
    """Wait until the worker group is stable with ``members`` members, each holding partitions, so
    that no rebalance happens during the timed part."""
    from confluent_kafka import ConsumerGroupState

    last = "unknown"
    while time.time() < deadline:
        try:
            desc = admin.describe_consumer_groups([group])[group].result(timeout=10)
            assigned = [m for m in desc.members if m.assignment and m.assignment.topic_partitions]
            last = f"{desc.state}, {len(assigned)} of {members} members with partitions"
            if desc.state == ConsumerGroupState.STABLE and len(assigned) == members:
                return
        except Exception as exc:  # noqa: BLE001 - the group may not exist yet
            last = repr(exc)
        time.sleep(0.5)
    raise TimeoutError(f"worker group {group} not ready: {last}")
