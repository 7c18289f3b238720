"""``ocr-stream aggregator``: page results into completed documents, exactly once."""

from __future__ import annotations

import argparse
import logging
import re
import signal
import sys
from types import FrameType

from ..cli import restart_process
from ..config import Settings
from ..errors import ClientWedgedError

COMMAND = "aggregator"
HELP = "Assemble page results into documents (document.md/json + one event on ocr.documents each)."
DESCRIPTION = (
    "Consume ocr.results and ocr.pages.dlq in consumer group OCR_STREAM_CONSUMER_GROUP_AGGREGATOR. When every page "
    "of a document has succeeded or failed for good, write results/{doc_id}/document.md and document.json and "
    "publish one event on ocr.documents (complete, partial or failed). Progress lives in the compacted changelog "
    "topic; progress, events and offsets commit in one Kafka transaction, so a crash neither loses pages nor "
    "publishes a document twice. Waits at start-up (up to OCR_STREAM_STARTUP_DEADLINE_S) for the broker, the "
    "topics and the bucket. Serves /metrics and /healthz on OCR_STREAM_METRICS_PORT. SIGTERM/SIGINT: finish "
    "the current transaction and exit 0. Should the Kafka client hang in a transaction past its timeout (a known "
    "librdkafka fault after a broker restart), the process starts itself over with the same arguments."
)

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--burst", action="store_true", help="Process what is waiting, then exit (for tests and batch jobs).")
    parser.add_argument(
        "--instance-id",
        default=None,
        help="Stable id of this instance, part of its transactional id (default: OCR_STREAM_AGGREGATOR_INSTANCE_ID, "
        "else random). Give each instance its own; reuse it on restart.",
    )
    parser.add_argument("--batch-size", type=int, default=500, help="Most records per transaction (default: 500).")
    parser.add_argument(
        "--metrics-port", type=int, default=None, help="Port of /metrics and /healthz (default: OCR_STREAM_METRICS_PORT; 0: off)."
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    from ..observability import MetricsServer
    from ..storage import open_store
    from ..transport.kafka import KafkaTransport
    from ..wait import wait_for_dependencies
    from .service import AggregatorService

    if args.batch_size < 1:
        print("ocr-stream aggregator: --batch-size must be at least 1", file=sys.stderr)
        return 2
    if args.instance_id is not None and not re.fullmatch(r"[A-Za-z0-9._-]{1,100}", args.instance_id):
        print("ocr-stream aggregator: --instance-id must be 1-100 characters of [A-Za-z0-9._-]", file=sys.stderr)
        return 2
    # The broker, the topics (changelog included) and the bucket must be there before anything starts.
    wait_for_dependencies(settings, need={"kafka", "topics", "storage"})
    instance_id = args.instance_id or settings.aggregator_instance_id
    # A stable instance id also makes the consumer a static group member, so that a restarted
    # instance gets its partitions back at once rather than after the session timeout.
    consumer_conf = {"group.instance.id": f"{settings.consumer_group_aggregator}-{instance_id}"} if instance_id else {}
    transport = KafkaTransport(settings.kafka_client_config(), client_id="ocr-stream-aggregator", consumer_conf=consumer_conf)
    store = open_store(settings)
    service = AggregatorService(settings, transport, store, instance_id=instance_id, batch_size=args.batch_size)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal received; stopping", extra={"signal": signum})
        service.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    port = settings.metrics_port if args.metrics_port is None else args.metrics_port
    server = None
    if port:
        server = MetricsServer(service.metrics.registry, service.health, host=settings.metrics_host, port=port).start()
    try:
        return service.run(burst=args.burst)
    except ClientWedgedError as exc:
        # Start over in a fresh process image (same pid, same arguments): its clients fence the
        # wedged ones, abort their open transaction and rebuild the state from the changelog.
        log.error("Kafka client wedged; restarting the aggregator process: %s", exc)
        if server is not None:
            server.stop()
            server = None
        restart_process()
    finally:
        if server is not None:
            server.stop()
        store.close()
        transport.close()
