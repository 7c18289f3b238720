"""``ocr-stream run``: the whole pipeline on one machine, with no Kafka, no S3 and (by default) no GPU.

The same producer, worker and aggregator code as the distributed services, wired in one process:

    Submitter ──► MemoryTransport (ocr.pages) ──► Worker (asyncio, its own thread) ──► ocr.results
        │                                                                                   │
        └── page images ──► LocalStore (a work folder in OUTDIR) ◄── AggregatorService ◄────┘
                                                                   (thread; transactions in memory)

Only the transport (MemoryTransport) and the storage (LocalStore) differ from production, so a
document gives the same document.md here as through Kafka with the same engine (a test checks it).
When every document is published, its outputs are copied to ``OUTDIR/<name>/``: document.md,
document.json, pages/NNNNN.jpg and, with ``--draw-boxes``, boxes/NNNNN.jpg. The work folder is
removed at the end.

Engines: ``tesseract`` (embedded, CPU, default), ``rapidocr`` (embedded, optional extra) or
``vllm`` (DeepSeek-OCR behind one or more ``--vllm-url``: the full speed of a GPU box, no Kafka).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import queue
import re
import shutil
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO

from .config import Settings
from .contracts import DocumentEvent, DocumentStatus, Mode, PageResult, PageStatus, decode
from .engines.base import Engine
from .errors import BadInputError, ConfigError, InternalError, OcrStreamError, SchemaViolationError
from .storage.base import page_result_key
from .storage.local import LocalStore
from .topics import CHANGELOG, DLQ, DOCUMENTS, PAGES, REQUESTS, RESULTS
from .transport.memory import MemoryTransport

if TYPE_CHECKING:
    # The producer pulls in PyMuPDF: imported when a run starts, not whenever the CLI loads.
    from .producer.submit import SubmitOptions

COMMAND = "run"
HELP = "OCR documents on this machine in one process: no Kafka, no S3; Tesseract on the CPU by default"
DESCRIPTION = (
    "Run the producer, worker and aggregator in one process, through an in-memory transport and a work "
    "folder, and write OUTDIR/<name>/document.md, document.json and pages/*.jpg for every document "
    "(boxes/*.jpg too with --draw-boxes). PATH may be a file, a directory (searched recursively) or a "
    "glob. Engines: tesseract (default: embedded, no network, no GPU), rapidocr (embedded; pip install "
    "'ocr-stream[rapidocr]'), vllm (DeepSeek-OCR on the servers given with --vllm-url). Prints a summary; "
    "exit codes: 0 every document complete, 1 some document was rejected or has failed pages, "
    "2 usage or configuration error."
)

log = logging.getLogger(__name__)

#: ``--engine`` choice → the engine name that page events carry (and the registry knows).
ENGINES = {"tesseract": "tesseract", "rapidocr": "rapidocr", "vllm": "deepseek"}

#: Partitions of the in-memory topics. Results and changelog must be equal (co-partitioned).
LOCAL_PARTITIONS = {PAGES: 8, RESULTS: 4, CHANGELOG: 4, DLQ: 1, DOCUMENTS: 1, REQUESTS: 1}

_LOCAL_GROUP_DOCUMENTS = "ocr-stream-local-documents"
_LOCAL_GROUP_PROGRESS = "ocr-stream-local-progress"


# =============================================================================== results


@dataclass
class DocumentOutcome:
    """One input document: where its outputs went, or why it was rejected."""

    label: str
    name: str | None = None
    doc_id: str | None = None
    page_count: int = 0
    status: DocumentStatus | None = None
    """None when the document was rejected before any page was published."""
    output_dir: Path | None = None
    failed_pages: list[tuple[int, str]] = field(default_factory=list)
    """(page_no, "code: message") of each page that failed for good."""
    rejected: str | None = None

    @property
    def ok(self) -> bool:
        return self.rejected is None and self.status == DocumentStatus.COMPLETE


@dataclass
class LocalReport:
    documents: list[DocumentOutcome] = field(default_factory=list)
    pages: int = 0
    seconds: float = 0.0
    engine: str = ""

    @property
    def exit_code(self) -> int:
        return 0 if self.documents and all(d.ok for d in self.documents) else 1

    @property
    def pages_per_second(self) -> float:
        return self.pages / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        docs = [d for d in self.documents if d.rejected is None]
        by_status: dict[str, int] = {}
        for d in docs:
            by_status[str(d.status)] = by_status.get(str(d.status), 0) + 1
        rejected = len(self.documents) - len(docs)
        parts = [f"{n} {s}" for s, n in sorted(by_status.items())] + ([f"{rejected} rejected"] if rejected else [])
        lines = [
            f"{len(self.documents)} document(s) ({', '.join(parts) or 'none'}), {self.pages} page(s) in "
            f"{self.seconds:.1f} s ({self.pages_per_second:.2f} pages/s) with {self.engine}"
        ]
        for d in self.documents:
            if d.rejected is not None:
                lines.append(f"  {d.label}: rejected: {d.rejected}")
                continue
            where = d.output_dir / "document.md" if d.output_dir else "?"
            state = str(d.status)
            if d.failed_pages:
                state += f", {len(d.failed_pages)} of {d.page_count} pages failed"
            lines.append(f"  {d.label} -> {where} ({state}, {d.page_count} page(s))")
            for page_no, why in d.failed_pages[:20]:
                lines.append(f"      page {page_no}: {why}")
            if len(d.failed_pages) > 20:
                lines.append(f"      ... and {len(d.failed_pages) - 20} more")
        return "\n".join(lines)


# =============================================================================== engines


def make_engine(name: str, settings: Settings) -> Engine:
    """The engine called ``name`` (``tesseract``, ``rapidocr``, ``deepseek``) built from the settings."""
    from .engines.registry import create_engine

    return create_engine(name, settings)


# =============================================================================== services in threads


class _ServiceThread(threading.Thread):
    """Runs a service's blocking ``run`` and keeps its exit code or exception."""

    def __init__(self, name: str, target: Callable[[], int], stop: Callable[[], None]) -> None:
        super().__init__(name=name, daemon=True)
        self._target_fn = target
        self._stop_fn = stop
        self.code: int | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.code = self._target_fn()
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            self.error = exc
            log.error("%s stopped with an error: %s", self.name, exc, exc_info=True)

    def stop(self) -> None:
        self._stop_fn()

    def failed(self) -> str | None:
        """Why the service ended, if it ended (it should run until stopped)."""
        if self.is_alive():
            return None
        if self.error is not None:
            return f"{self.name} failed: {type(self.error).__name__}: {self.error}"
        return f"{self.name} stopped unexpectedly (exit code {self.code})"


def _worker_thread(settings: Settings, transport: MemoryTransport, store: LocalStore, engines: Mapping[str, Engine]) -> _ServiceThread:
    from .worker.service import Worker

    worker = Worker(settings, transport=transport, store=store, engines=engines, metrics_port=0, name="local-worker")
    stop = threading.Event()

    async def main() -> int:
        task = asyncio.create_task(worker.run())
        # request_stop must run on the worker's loop, and only once run() has set it up: poll.
        while not task.done():
            if stop.is_set():
                worker.request_stop()
            await asyncio.wait({task}, timeout=0.1)
        return task.result()

    return _ServiceThread("worker", lambda: asyncio.run(main()), stop.set)


def _aggregator_thread(settings: Settings, transport: MemoryTransport, store: LocalStore) -> _ServiceThread:
    from .aggregator.service import AggregatorService

    aggregator = AggregatorService(settings, transport, store, instance_id=f"local-{uuid.uuid4().hex[:8]}")
    return _ServiceThread("aggregator", aggregator.run, aggregator.stop)


# =============================================================================== the run


def _unique_names(labels: Iterable[tuple[str, Path]]) -> dict[str, str]:
    """label → a folder name from the file's stem, unique within this run (``a``, ``a-2``, ...)."""
    used: set[str] = set()
    out: dict[str, str] = {}
    for label, path in labels:
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem).strip("._") or "document"
        name, n = base, 1
        while name.lower() in used:
            n += 1
            name = f"{base}-{n}"
        used.add(name.lower())
        out[label] = name
    return out


def run_local(
    paths: list[str],
    outdir: Path,
    settings: Settings,
    *,
    engine: str = "tesseract",
    options: SubmitOptions | None = None,
    draw_boxes: bool = False,
    progress: bool = True,
    err: TextIO | None = None,
    engines: Mapping[str, Engine] | None = None,
) -> LocalReport:
    """OCR the documents ``paths`` name into ``outdir``; returns what happened to each.

    ``engine`` is the engine name page events carry (``tesseract``, ``rapidocr``, ``deepseek``);
    ``options`` a producer ``SubmitOptions`` (mode, prompt, password); ``engines`` replaces the
    engines built from the settings (tests). Raises ConfigError when the engine cannot be built and
    InternalError when a service of the pipeline stops on its own."""
    from .producer.cli import expand_inputs
    from .producer.submit import SubmitOptions

    started = time.monotonic()
    outdir.mkdir(parents=True, exist_ok=True)
    # The work folder sits in OUTDIR: same file system, and nothing is left in /tmp on a crash.
    work = outdir / f".ocr-stream-work-{uuid.uuid4().hex[:8]}"
    settings = settings.model_copy(update={
        "storage": "local", "local_storage_path": work, "metrics_port": 0, "engine": engine, "allowed_buckets": [],
    })
    opts = replace(options if options is not None else SubmitOptions(), engine=engine)
    try:
        built = dict(engines) if engines is not None else {engine: make_engine(engine, settings)}
        pipeline = _Pipeline(settings, work, built, err=err if err is not None else sys.stderr, progress=progress)
        report = pipeline.run(list(expand_inputs(paths)), opts)
        for outcome in report.documents:
            doc = pipeline.published.get(outcome.doc_id or "")
            if doc is None or outcome.rejected is not None:
                continue
            assert outcome.name is not None
            outcome.output_dir = outdir / outcome.name
            write_outputs(pipeline.store, doc, outcome.output_dir, draw_boxes=draw_boxes)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report.engine = engine
    report.seconds = time.monotonic() - started
    return report


class _Pipeline:
    """One run: the transport, the store, the services in threads, and the bookkeeping of the main
    thread, which watches ocr.results (progress) and ocr.documents (completion)."""

    def __init__(self, settings: Settings, work: Path, engines: Mapping[str, Engine], *, err: TextIO, progress: bool) -> None:
        self.settings = settings
        self.err = err
        self.progress = progress
        self.transport = MemoryTransport()
        self.transport.ensure_topics({settings.topic(t): n for t, n in LOCAL_PARTITIONS.items()})
        self.store = LocalStore(work, bucket=settings.bucket)
        self.store.ensure_bucket()
        self.services = [
            _aggregator_thread(settings, self.transport, self.store),
            _worker_thread(settings, self.transport, self.store, engines),
        ]
        self.events: queue.SimpleQueue[tuple[str, str, Any]] = queue.SimpleQueue()
        self.stop_submitting = threading.Event()
        self.outcomes: dict[str, DocumentOutcome] = {}
        self.doc_labels: dict[str, list[str]] = {}  # doc_id -> inputs with that content (usually one)
        self.seen_pages: set[tuple[str, int]] = set()
        self.failed_pages: dict[str, dict[int, str]] = {}
        self.published: dict[str, DocumentEvent] = {}
        self.submitting = True

    def run(self, inputs: list[tuple[str, Path | None, str | None]], options: SubmitOptions) -> LocalReport:
        from tqdm import tqdm

        names = _unique_names((label, path) for label, path, _ in inputs if path is not None)
        self.outcomes = {label: DocumentOutcome(label=label, name=names.get(label)) for label, _p, _e in inputs}
        t = self.transport
        documents = t.consumer(_LOCAL_GROUP_DOCUMENTS, name="local-documents")
        documents.subscribe([self.settings.topic(DOCUMENTS)])
        results = t.consumer(_LOCAL_GROUP_PROGRESS, name="local-progress")
        results.subscribe([self.settings.topic(RESULTS)])
        submitter = threading.Thread(target=self._submit_all, args=(inputs, options), name="local-submit", daemon=True)
        bar = tqdm(total=0, unit="page", file=self.err, disable=None if self.progress else True, dynamic_ncols=True, desc="OCR")
        try:
            for svc in self.services:
                svc.start()
            submitter.start()
            while self.submitting or not all(d in self.published for d in self.doc_labels):
                self._drain_events(bar)
                for rec in results.consume(500, 0.1):
                    if self._on_result(rec.value):
                        bar.update(1)
                for rec in documents.consume(100, 0.0):
                    try:
                        doc = decode(DocumentEvent, rec.value)
                    except SchemaViolationError:
                        continue
                    self.published[doc.doc_id] = doc
                for svc in self.services:
                    why = svc.failed()
                    if why is not None:
                        raise InternalError(f"local pipeline stopped: {why}")
        finally:
            self.stop_submitting.set()
            bar.close()
            for svc in reversed(self.services):
                svc.stop()
            for svc in reversed(self.services):
                svc.join(60.0)
            documents.close()
            results.close()
            t.close()
        return self._report()

    def _submit_all(self, inputs: list[tuple[str, Path | None, str | None]], options: SubmitOptions) -> None:
        """The producer, on a thread of its own so that the main thread shows progress meanwhile."""
        from .producer.submit import Submitter

        try:
            with Submitter(self.settings, store=self.store, producer=self.transport.producer(name="local-submit")) as submitter:
                for label, path, problem in inputs:
                    if self.stop_submitting.is_set():
                        break
                    if path is None:
                        self.events.put(("rejected", label, problem or "not found"))
                        continue

                    def on_open(doc_id: str, n: int, label: str = label) -> None:
                        self.events.put(("open", label, (doc_id, n)))

                    try:
                        submitter.submit_file(path, replace(options, source=str(path)), on_open=on_open)
                    except OcrStreamError as exc:
                        self.events.put(("rejected", label, str(exc)))
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            self.events.put(("crashed", "", exc))
        finally:
            self.events.put(("done", "", None))

    def _drain_events(self, bar: Any) -> None:
        from tqdm import tqdm

        while True:
            try:
                kind, label, payload = self.events.get_nowait()
            except queue.Empty:
                return
            if kind == "open":
                doc_id, pages = payload
                out = self.outcomes[label]
                out.doc_id, out.page_count = doc_id, pages
                if doc_id not in self.doc_labels:  # the same content twice is one document
                    bar.total += pages
                    bar.refresh()
                self.doc_labels.setdefault(doc_id, []).append(label)
            elif kind == "rejected":
                out = self.outcomes[label]
                out.rejected = payload
                if out.doc_id is not None:
                    # Rejected after it opened (e.g. storage failed): nothing to wait for.
                    labels = self.doc_labels.get(out.doc_id, [])
                    if label in labels:
                        labels.remove(label)
                    if not labels and self.doc_labels.pop(out.doc_id, None) is not None:
                        bar.total -= out.page_count
                        bar.refresh()
                tqdm.write(f"ocr-stream run: {label}: {payload}", file=self.err)
            elif kind == "crashed":
                raise InternalError(f"submitting the documents failed: {payload}") from payload
            elif kind == "done":
                self.submitting = False

    def _on_result(self, value: bytes | None) -> bool:
        """Count a page result; True when it is the first for its page."""
        try:
            res = decode(PageResult, value)
        except SchemaViolationError:
            return False
        if (res.doc_id, res.page_no) in self.seen_pages:
            return False  # the worker's failed result and the one forwarded from the DLQ
        self.seen_pages.add((res.doc_id, res.page_no))
        if res.status == PageStatus.FAILED and res.error is not None:
            self.failed_pages.setdefault(res.doc_id, {})[res.page_no] = f"{res.error.code.value}: {res.error.message}"
        return True

    def _report(self) -> LocalReport:
        report = LocalReport(documents=list(self.outcomes.values()))
        for doc_id, labels in self.doc_labels.items():
            doc = self.published[doc_id]
            failed = self.failed_pages.get(doc_id) or {f.page_no: f"{f.error.code.value}: {f.error.message}" for f in doc.failed_pages}
            for label in labels:
                out = self.outcomes[label]
                out.status, out.page_count, out.failed_pages = doc.status, doc.page_count, sorted(failed.items())
            report.pages += doc.page_count
        return report


# =============================================================================== outputs


def write_outputs(store: LocalStore, doc: DocumentEvent, target: Path, *, draw_boxes: bool = False) -> None:
    """Copy a published document's files from the store into ``target`` (replacing an earlier run's)."""
    for sub in ("pages", "boxes"):
        shutil.rmtree(target / sub, ignore_errors=True)
    (target / "pages").mkdir(parents=True, exist_ok=True)
    if doc.markdown_ref is not None:
        (target / "document.md").write_bytes(store.get(doc.markdown_ref))
    if doc.json_ref is not None:
        (target / "document.json").write_bytes(store.get(doc.json_ref))
    prefix = f"pages/{doc.doc_id}/"
    images = {}
    for key in store.list(prefix):
        name = key[len(prefix):]
        (target / "pages" / name).write_bytes(store.get_key(key))
        images[name.split(".")[0]] = target / "pages" / name
    if draw_boxes:
        (target / "boxes").mkdir(exist_ok=True)
        for page_no in range(1, doc.page_count + 1):
            image = images.get(f"{page_no:05d}")
            key = page_result_key(doc.doc_id, page_no)
            if image is None or not store.exists(key):
                continue
            result = decode(PageResult, store.get_key(key))
            draw_page_boxes(image, result, target / "boxes" / f"{page_no:05d}.jpg")


_LABEL_COLOURS = {"title": (214, 39, 40), "text": (31, 119, 180), "table": (44, 160, 44), "image": (255, 127, 14)}


def draw_page_boxes(image_path: Path, result: PageResult, target: Path) -> None:
    """The page image with each block's box (page pixels) outlined and labelled."""
    from PIL import Image, ImageDraw, ImageFont

    with Image.open(image_path) as img:
        page = img.convert("RGB")
    draw = ImageDraw.Draw(page)
    width = max(2, round(max(page.size) / 600))
    font_size = max(12, round(max(page.size) / 90))
    try:
        font: Any = ImageFont.load_default(size=font_size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        font = ImageFont.load_default()
    for block in result.blocks or []:
        if block.box is None:
            continue
        x1, y1, x2, y2 = block.box
        colour = _LABEL_COLOURS.get(block.label, (148, 103, 189))
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=width)
        draw.text((x1 + width, max(0, y1 - font_size - width)), block.label, fill=colour, font=font)
    page.save(target, "JPEG", quality=90)


# =============================================================================== text comparison


_MARKER = re.compile(r"^<!--.*?-->\s*$", re.MULTILINE)
_MD_SYNTAX = re.compile(r"^\s{0,3}(?:#{1,6}\s+|[-*+]\s+|>\s?)", re.MULTILINE)


def plain_text(markdown: str) -> str:
    """The text of a document.md without page markers, heading marks, list bullets or emphasis:
    what a reference transcript holds."""
    text = _MARKER.sub("", markdown)
    text = _MD_SYNTAX.sub("", text)
    return re.sub(r"(\*\*|__|`)", "", text)


def character_error_rate_of(markdown_path: Path, reference_path: Path) -> float:
    """CER of a document.md's text against a reference transcript (whitespace-normalised)."""
    from .engines.metrics import character_error_rate

    return character_error_rate(reference_path.read_text(encoding="utf-8"), plain_text(markdown_path.read_text(encoding="utf-8")))


# =============================================================================== CLI


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="PATH", help="files, directories (recursive) or globs (quote them: 'scans/*.pdf')")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="OUTDIR",
                   help="folder for the results: OUTDIR/<name>/document.md, document.json, pages/*.jpg")
    p.add_argument("--engine", choices=sorted(ENGINES), default="tesseract",
                   help="tesseract (default; CPU, no network), rapidocr (CPU; needs the rapidocr extra) or "
                        "vllm (DeepSeek-OCR on --vllm-url servers)")
    p.add_argument("--vllm-url", action="append", default=None, metavar="URL",
                   help="base URL of a vLLM server with DeepSeek-OCR (repeat for several; implies --engine vllm; "
                        "default OCR_STREAM_VLLM_URLS)")
    p.add_argument("--max-in-flight", type=int, default=None, metavar="M",
                   help="most pages in flight at once (default OCR_STREAM_MAX_IN_FLIGHT; Tesseract uses one per core)")
    p.add_argument("--mode", choices=[m.value for m in Mode], help="DeepSeek-OCR resolution mode (default OCR_STREAM_MODE)")
    p.add_argument("--prompt", help="markdown, free, figure, or literal prompt text (DeepSeek-OCR; default OCR_STREAM_PROMPT)")
    p.add_argument("--draw-boxes", action="store_true", help="also write boxes/*.jpg: the pages with their blocks' boxes drawn")
    p.add_argument("--password", help="password of encrypted PDFs (visible in the process list: prefer --password-file)")
    p.add_argument("--password-file", type=Path, help="file whose first line is the password of encrypted PDFs")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace, settings: Settings) -> int:
    from .producer.submit import SubmitOptions

    engine_choice = "vllm" if args.vllm_url and args.engine == "tesseract" else args.engine
    update: dict[str, Any] = {}
    if args.vllm_url:
        for url in args.vllm_url:
            if not url.startswith(("http://", "https://")):
                raise ConfigError(f"--vllm-url {url!r} is not an http(s) URL")
        update["vllm_urls"] = [u.rstrip("/") for u in args.vllm_url]
    if args.max_in_flight is not None:
        if not 1 <= args.max_in_flight <= 100_000:
            raise ConfigError("--max-in-flight must be between 1 and 100000")
        update["max_in_flight"] = args.max_in_flight
    if update:
        settings = settings.model_copy(update=update)
    if args.output.exists() and not args.output.is_dir():
        raise ConfigError(f"-o {args.output}: exists and is not a folder")
    password = args.password
    if args.password_file is not None:
        try:
            lines = args.password_file.read_text().splitlines()
        except OSError as exc:
            raise ConfigError(f"--password-file {args.password_file}: {exc.strerror}") from exc
        password = lines[0] if lines else ""
    options = SubmitOptions(mode=Mode(args.mode) if args.mode else None, prompt=args.prompt, password=password)
    # SIGTERM ends the run like Ctrl-C: services stopped, the work folder removed (exit 130).
    previous = signal.signal(signal.SIGTERM, _interrupt) if threading.current_thread() is threading.main_thread() else None
    try:
        report = run_local(args.paths, args.output, settings, engine=ENGINES[engine_choice], options=options,
                           draw_boxes=args.draw_boxes, progress=not args.no_progress)
    except BadInputError as exc:
        raise ConfigError(str(exc)) from exc
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    print(report.summary(), flush=True)
    return report.exit_code


__all__ = [
    "COMMAND", "DESCRIPTION", "ENGINES", "HELP", "DocumentOutcome", "LocalReport", "character_error_rate_of",
    "configure", "draw_page_boxes", "make_engine", "plain_text", "run", "run_local", "write_outputs",
]
