"""``ocr-stream splitter``: the producer as a service, for upstream systems that only have a file in
object storage.

It consumes DocumentRequest messages from ``ocr.documents.requests`` (consumer group
``OCR_STREAM_CONSUMER_GROUP_SPLITTER``), one at a time, and for each:

1. checks the source bucket is one it may read (``OCR_STREAM_BUCKET`` + ``OCR_STREAM_ALLOWED_BUCKETS``)
   and the object's size against the limit, before reading a byte;
2. streams the object to a temporary file (never whole in memory);
3. runs exactly the code ``ocr-stream submit`` runs (``Submitter.submit_file``): validation, page
   images, page events, waiting for the broker's acknowledgements;
4. commits the request's offset.

A message may also be an S3 event notification (``{"Records": [...]}``, as MinIO's Kafka target and
AWS S3 write them): each ObjectCreated record becomes a request with the default options. Point a
bucket's notifications at the requests topic and uploading a file is all an upstream system does.

A request that is wrong (does not follow the schema, names a forbidden bucket or a missing object,
is not a valid document) becomes a DeadLetter on ``ocr.pages.dlq`` (keyed by doc_id, or the object
key, or the record's own key; ``page_no`` null; the original message in ``raw``) and is committed.
Storage or broker trouble is retried with backoff for as long as it lasts (the request is not the
problem, so it is not dead-lettered); offsets are not committed meanwhile.

Delivery: at least once. A splitter that dies mid-document leaves the request uncommitted; the next
owner of the partition splits it again, producing the same objects and the same page events (the
request's ``submitted_at`` is used, so even that field is identical), which the aggregator counts once.

Scale: run several splitters in one group; each request is one partition's work, and the page
events of one document still spread over all of ``ocr.pages``' partitions.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import unquote_plus

from prometheus_client import CollectorRegistry, Counter
from pydantic import ValidationError

from .. import topics
from ..config import Settings
from ..contracts import DeadLetter, DocumentRequest, ObjectRef, decode, describe_validation_error, encode, error_info, utcnow
from ..errors import (
    BadInputError,
    BrokerUnavailableError,
    InternalError,
    NotFoundError,
    SchemaViolationError,
    StorageUnavailableError,
    TransientError,
)
from ..storage import ObjectStore
from ..transport import Consumer, Record, Transport
from .limits import Limits
from .submit import ProducerMetrics, SubmitOptions, SubmitResult, Submitter

COMMAND = "splitter"
HELP = "service: split documents named by requests on ocr.documents.requests into page events"
DESCRIPTION = (
    "Consume document requests (an object in storage plus options) from ocr.documents.requests, render "
    "each document into page images and publish its page events, exactly as `ocr-stream submit` does. "
    "Bad requests go to the DLQ with the reason. Runs until SIGTERM/SIGINT (or, with --burst, until idle)."
)

log = logging.getLogger(__name__)

_CHUNK = 1024 * 1024
_RAW_LIMIT = 65536


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--burst", action="store_true", help="exit once no request arrived for --idle-exit-s seconds (batch jobs, tests)")
    p.add_argument("--idle-exit-s", type=float, default=5.0, help="idle time before --burst exits (default 5)")
    p.add_argument("--workdir", type=Path, default=None, help="where source files are downloaded to (default: the system temp folder)")


def download_object(store: ObjectStore, ref: ObjectRef, dest: Path) -> int:
    """Stream ``ref`` into ``dest`` (1 MiB at a time); returns the bytes written.

    Raises ForbiddenLocationError, NotFoundError, or StorageUnavailableError."""
    store.check_readable(ref)
    client = getattr(store, "client", None)
    if client is not None and hasattr(client, "get_object"):  # S3Store (MinIO SDK)
        return _download_s3(client, ref, dest, endpoint=getattr(store, "endpoint", ""))
    local_path = getattr(store, "_path", None)
    if callable(local_path):  # LocalStore: copy the file
        src = local_path(ref.bucket, ref.key)
        try:
            shutil.copyfile(src, dest)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise NotFoundError(f"no object at {ref}") from exc
        return dest.stat().st_size
    data = store.get(ref)  # another store: no streaming API, fall back to a whole read
    dest.write_bytes(data)
    return len(data)


def _download_s3(client: Any, ref: ObjectRef, dest: Path, *, endpoint: str) -> int:
    import urllib3
    from minio.error import S3Error

    written = 0
    try:
        resp = client.get_object(ref.bucket, ref.key)
        try:
            with dest.open("wb") as f:
                for chunk in resp.stream(_CHUNK):
                    f.write(chunk)
                    written += len(chunk)
        finally:
            resp.close()
            resp.release_conn()
    except S3Error as exc:
        if exc.code in ("NoSuchKey", "NoSuchBucket", "NoSuchObject"):
            raise NotFoundError(f"no object at {ref}") from exc
        if exc.code == "AccessDenied":
            raise StorageUnavailableError(f"get {ref}: access denied by the S3 server (check the credentials)") from exc
        raise StorageUnavailableError(f"get {ref}: S3 error {exc.code}") from exc
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise StorageUnavailableError(f"get {ref}: S3 server at {endpoint} unavailable ({type(exc).__name__})") from exc
    return written


def parse_requests(value: bytes | None) -> list[DocumentRequest]:
    """The requests in one message: a DocumentRequest, or an S3 event notification (the format
    MinIO's Kafka notification target and AWS S3 write: ``{"Records": [...]}``), whose
    ObjectCreated records each become a request with the settings' default options, the object's
    key URL-decoded, and the event time as ``submitted_at``. Other events (deletes) give nothing.
    Raises SchemaViolationError naming what is wrong."""
    if value is not None:
        try:
            obj = json.loads(value)
        except ValueError:
            obj = None
        if isinstance(obj, dict) and isinstance(obj.get("Records"), list) and "source" not in obj:
            return _from_s3_event(obj["Records"])
    return [decode(DocumentRequest, value)]


def _from_s3_event(records: list[Any]) -> list[DocumentRequest]:
    out = []
    for i, rec in enumerate(records):
        try:
            name = str(rec["eventName"])
            bucket = rec["s3"]["bucket"]["name"]
            key = unquote_plus(rec["s3"]["object"]["key"])
        except (KeyError, TypeError) as exc:
            raise SchemaViolationError(f"S3 event: Records[{i}] lacks eventName, s3.bucket.name or s3.object.key") from exc
        if not name.removeprefix("s3:").startswith("ObjectCreated:"):
            continue
        try:
            out.append(DocumentRequest(
                source=ObjectRef(bucket=bucket, key=key), metadata={"s3_event": name},
                submitted_at=rec.get("eventTime") or utcnow(),
            ))
        except ValidationError as exc:
            raise SchemaViolationError(f"S3 event: Records[{i}]: {describe_validation_error(exc)}") from exc
    return out


def _redacted_raw(value: bytes | None) -> str | None:
    """The original message for the dead letter, without its password (the DLQ keeps things long)."""
    if value is None:
        return None
    try:
        obj = json.loads(value)
    except ValueError:
        obj = None
    if isinstance(obj, dict):
        if obj.get("password") is not None:
            obj["password"] = "***"
        text = json.dumps(obj)
    else:
        text = value.decode("utf-8", errors="replace")
        if "password" in text:
            text = "(not shown: the message may hold a password)"
    return text[:_RAW_LIMIT]


class Splitter:
    """The service loop. ``run`` until ``stop`` is set (or, in burst mode, until idle)."""

    def __init__(
        self,
        settings: Settings,
        *,
        transport: Transport,
        store: ObjectStore,
        registry: CollectorRegistry | None = None,
        workdir: Path | None = None,
    ) -> None:
        self.settings = settings
        self.transport = transport
        self.store = store
        self.workdir = workdir
        self.limits = Limits.from_settings(settings)
        self.requests_topic = settings.topic(topics.REQUESTS)
        self.dlq_topic = settings.topic(topics.DLQ)
        self.registry = registry if registry is not None else CollectorRegistry()
        self.producer = transport.producer(name="splitter")
        self.submitter = Submitter(settings, store=store, producer=self.producer, metrics=ProducerMetrics(self.registry))
        self.requests = Counter("ocr_stream_splitter_requests_total", "Document requests handled, by outcome.", ["outcome"], registry=self.registry)
        self.stop = threading.Event()
        self.last_error: str | None = None

    # ------------------------------------------------------------------------------ loop

    def run(self, *, burst: bool = False, idle_exit_s: float = 5.0) -> int:
        consumer = self.transport.consumer(self.settings.consumer_group_splitter, name="splitter")
        consumer.subscribe([self.requests_topic])
        last_work = time.monotonic()
        try:
            while not self.stop.is_set():
                records = consumer.consume(1, 0.5)
                if not records:
                    if burst and time.monotonic() - last_work > idle_exit_s:
                        break
                    continue
                for record in records:
                    if not self._handle(record):
                        return 0  # stopped while waiting out an outage; the request stays uncommitted
                    self._commit(consumer, record)
                last_work = time.monotonic()
        finally:
            consumer.close()
            self.producer.flush(10.0)
            self.submitter.close()
        return 0

    def _commit(self, consumer: Consumer, record: Record) -> None:
        try:
            consumer.commit({record.tp: record.offset + 1})
        except BrokerUnavailableError as exc:
            # Lost the partition (rebalance) or the broker: the next owner repeats the request,
            # which is harmless (same objects, same events).
            log.warning("could not commit a request's offset", extra={"partition": record.partition, "offset": record.offset, "error": str(exc)})

    def _handle(self, record: Record) -> bool:
        """Process one message (a request, or an S3 event with several objects) to a final
        outcome; False when stopped before that (the message stays uncommitted)."""
        try:
            requests = parse_requests(record.value)
        except BadInputError as exc:
            self._dead_letter(record, None, exc)
            return True
        for request in requests:
            if not self._process(record, request):
                return False
        return True

    def _process(self, record: Record, request: DocumentRequest) -> bool:
        attempt = unexpected = 0
        while True:
            try:
                result = self.split(request)
            except BadInputError as exc:
                self._dead_letter(record, request, exc)
                return True
            except TransientError as exc:
                attempt += 1
                self.last_error = str(exc)
                if not self._wait_to_retry(request, attempt, exc):
                    return False
                continue
            except Exception as exc:  # noqa: BLE001 - a bug or a library surprise on this input
                # Retried a few times (it may be the machine), then dead-lettered: a request that
                # always crashes the splitter must not block its partition forever.
                unexpected += 1
                log.exception("unexpected error on a request", extra={"doc_id": request.doc_id, "source": str(request.source)})
                if unexpected >= self.settings.max_attempts:
                    self._dead_letter(record, request, InternalError(f"{request.source}: {type(exc).__name__}: {exc}"))
                    return True
                if not self._wait_to_retry(request, unexpected, exc):
                    return False
                continue
            self.last_error = None
            self.requests.labels("ok" if result.ok else "partial").inc()
            log.info("request split", extra={"doc_id": result.doc_id, "page_count": result.page_count, "source": result.source})
            return True

    def _wait_to_retry(self, request: DocumentRequest, attempt: int, exc: BaseException) -> bool:
        """Back off before another attempt; False when asked to stop meanwhile."""
        delay = min(self.settings.backoff_max_s, self.settings.backoff_base_s * 2 ** min(attempt - 1, 20))
        delay = random.uniform(delay / 2, delay)
        self.requests.labels("retried").inc()
        log.warning("request failed; retrying", extra={
            "doc_id": request.doc_id, "source": str(request.source), "attempt": attempt,
            "delay_s": round(delay, 2), "error": str(exc)})
        return not self.stop.wait(delay)

    # ------------------------------------------------------------------------------ work

    def split(self, request: DocumentRequest) -> SubmitResult:
        """Download the request's object and submit it. Raises BadInputError or TransientError."""
        self.store.check_readable(request.source)
        size = self.store.size(request.source)
        try:
            self.limits.check_file_size(size)
        except BadInputError as exc:
            raise type(exc)(f"{request.source}: {exc}") from exc
        with tempfile.TemporaryDirectory(prefix="ocr-stream-split-", dir=self.workdir) as tmp:
            path = Path(tmp) / "source"
            download_object(self.store, request.source, path)
            options = SubmitOptions(
                doc_id=request.doc_id, mode=request.mode, prompt=request.prompt, engine=request.engine,
                password=request.password, metadata=request.metadata, source=str(request.source),
                submitted_at=request.submitted_at,
            )
            try:
                return self.submitter.submit_file(path, options)
            except BadInputError as exc:
                raise type(exc)(f"{request.source}: {exc}") from exc

    def _dead_letter(self, record: Record, request: DocumentRequest | None, exc: BaseException) -> None:
        raw = _redacted_raw(record.value)
        letter = DeadLetter(
            doc_id=request.doc_id if request else None, error=error_info(exc), raw=raw,
            origin_topic=record.topic, origin_partition=record.partition, origin_offset=record.offset,
        )
        key = (request.doc_id or request.source.key) if request else None
        key_bytes = key.encode() if key else record.key
        failed: list[Exception] = []

        def on_delivery(err: Exception | None, _rec: Record | None) -> None:
            if err is not None:
                failed.append(err)

        while True:
            self.producer.produce(self.dlq_topic, encode(letter), key_bytes, on_delivery=on_delivery)
            remaining = self.producer.flush(60.0)
            if remaining == 0 and not failed:
                break
            # The DLQ is not reachable: keep the request uncommitted until it is.
            log.error("cannot write to the DLQ; retrying", extra={"error": str(failed[-1]) if failed else "flush timed out"})
            failed.clear()
            if self.stop.wait(self.settings.backoff_base_s):
                break
        self.requests.labels("dead_lettered").inc()
        log.warning("request dead-lettered", extra={
            "doc_id": letter.doc_id, "source": str(request.source) if request else None,
            "partition": record.partition, "offset": record.offset, "error": str(exc)})

    def health(self) -> dict[str, bool]:
        return {"storage": self.store.ping(), "no_outage": self.last_error is None}


def run(args: argparse.Namespace, settings: Settings) -> int:
    from ..observability import MetricsServer
    from ..storage import open_store
    from ..transport.kafka import KafkaTransport

    store = open_store(settings)
    transport = KafkaTransport(settings.kafka_client_config(), client_id="ocr-stream-splitter")
    splitter = Splitter(settings, transport=transport, store=store, workdir=args.workdir)
    server = None
    if settings.metrics_port:
        server = MetricsServer(splitter.registry, splitter.health, host=settings.metrics_host, port=settings.metrics_port).start()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.warning("stopping after the current request", extra={"signal": signum})
        splitter.stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        return splitter.run(burst=args.burst, idle_exit_s=args.idle_exit_s)
    finally:
        if server is not None:
            server.stop()
        store.close()
