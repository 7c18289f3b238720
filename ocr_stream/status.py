"""``ocr-stream status [DOC_ID]``: where a document stands, or how far behind each consumer group is.

- With a document id: its progress from the aggregator's state (the compacted changelog, key =
  doc_id): pages done, failed (with the reason), pending; or, once the aggregator has published it
  and dropped its state, the document event on ``ocr.documents``.
- Without: for every consumer group, per topic, the records between its committed offsets and the
  end of each partition (Kafka's AdminClient: list_consumer_groups, list_consumer_group_offsets,
  list_offsets). With a topic prefix set, only that prefix's topics are shown.

Both read the cluster only; they change nothing (no offsets are committed).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .config import Settings
from .contracts import DocumentEvent, DocumentProgress, FailedPage, decode, is_valid_doc_id
from .errors import BrokerUnavailableError, ConfigError, SchemaViolationError
from .topics import CHANGELOG, DOCUMENTS

log = logging.getLogger(__name__)

COMMAND = "status"
HELP = "a document's progress (pages done, failed, pending), or without an id the lag of every consumer group"
DESCRIPTION = (
    "With DOC_ID: the document's progress from the aggregator's state (pages done, failed, pending), or its "
    "published document event. Without: per consumer group and topic, how many records are not yet consumed "
    "(lag = end of partition - committed offset). Exit codes: 0 shown, 1 unknown document, 2 bad usage."
)


# ----------------------------------------------------------------------------- pure: lag


@dataclass(frozen=True)
class PartitionLag:
    partition: int
    committed: int | None  # None: the group never committed on this partition
    end: int
    start: int

    @property
    def lag(self) -> int:
        # Without a commit, a group starts where auto.offset.reset puts it; the services use
        # "earliest", so everything still retained is outstanding.
        base = self.start if self.committed is None or self.committed < 0 else max(self.committed, self.start)
        return max(0, self.end - base)


@dataclass(frozen=True)
class GroupTopicLag:
    group: str
    topic: str
    state: str
    partitions: tuple[PartitionLag, ...]

    @property
    def lag(self) -> int:
        return sum(p.lag for p in self.partitions)

    @property
    def uncommitted_partitions(self) -> int:
        return sum(1 for p in self.partitions if p.committed is None or p.committed < 0)

    def as_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "topic": self.topic,
            "state": self.state,
            "lag": self.lag,
            "partitions": [{**asdict(p), "lag": p.lag} for p in self.partitions],
        }


def group_topic_lags(
    group: str,
    state: str,
    committed: dict[tuple[str, int], int],
    watermarks: dict[tuple[str, int], tuple[int, int]],
) -> list[GroupTopicLag]:
    """Lag of one group per topic it has committed on. ``watermarks`` holds (start, end) for every
    partition of those topics, so partitions the group never committed on count too."""
    topics = sorted({t for t, _ in committed})
    out = []
    for topic in topics:
        parts = sorted(p for t, p in watermarks if t == topic)
        rows = tuple(
            PartitionLag(p, committed.get((topic, p)), end=watermarks[(topic, p)][1], start=watermarks[(topic, p)][0]) for p in parts
        )
        out.append(GroupTopicLag(group, topic, state, rows))
    return out


def format_lag_table(rows: Sequence[GroupTopicLag], *, partitions: bool = False) -> str:
    if not rows:
        return "no consumer group has committed offsets on these topics\n"
    head = ("GROUP", "TOPIC", "STATE", "PARTITIONS", "LAG")
    body = [(r.group, r.topic, r.state, str(len(r.partitions)), str(r.lag)) for r in rows]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    lines = []
    for cells in [head, *body]:
        lines.append("  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip())
    if partitions:
        for r in rows:
            lines.append("")
            lines.append(f"{r.group} / {r.topic}:")
            for p in r.partitions:
                committed = "-" if p.committed is None or p.committed < 0 else str(p.committed)
                lines.append(f"  partition {p.partition:>3}  committed {committed:>10}  end {p.end:>10}  lag {p.lag:>8}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- pure: a document


Range = tuple[int, int]  # inclusive [first, last]


def ranges_of(pages: Iterable[int]) -> list[Range]:
    """``[1, 2, 3, 5, 7, 8]`` → ``[(1, 3), (5, 5), (7, 8)]``."""
    out: list[Range] = []
    for p in sorted(set(pages)):
        if out and p == out[-1][1] + 1:
            out[-1] = (out[-1][0], p)
        else:
            out.append((p, p))
    return out


def merge_ranges(ranges: Iterable[Sequence[int]]) -> list[Range]:
    """Sorted, disjoint ranges from any (possibly overlapping or adjacent) ones."""
    out: list[Range] = []
    for a, b in sorted((int(r[0]), int(r[1])) for r in ranges):
        if out and a <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def count_pages(ranges: Iterable[Range]) -> int:
    return sum(b - a + 1 for a, b in ranges)


def missing_ranges(page_count: int, accounted: Iterable[Range]) -> list[Range]:
    """Pages 1..page_count not covered by ``accounted``."""
    out: list[Range] = []
    nxt = 1
    for a, b in merge_ranges(accounted):
        if a > nxt:
            out.append((nxt, min(a - 1, page_count)))
        nxt = max(nxt, b + 1)
        if nxt > page_count:
            break
    if nxt <= page_count:
        out.append((nxt, page_count))
    return out


def format_ranges(ranges: Iterable[Range], *, limit: int = 12) -> str:
    """``[(1, 3), (5, 5)]`` → ``"1-3, 5"`` (at most ``limit`` ranges, then "…")."""
    rs = list(ranges)
    parts = [str(a) if a == b else f"{a}-{b}" for a, b in rs[:limit]]
    if len(rs) > limit:
        parts.append(f"... ({len(rs) - limit} more ranges)")
    return ", ".join(parts)


@dataclass(frozen=True)
class DocumentStatusView:
    """What ``status DOC_ID`` shows, from either source. Page sets are inclusive ranges, so a
    document of a million pages costs no more to show than one of ten."""

    doc_id: str
    source: str  # "aggregator state" | "document event"
    page_count: int
    done: list[Range]
    failed: list[FailedPage]
    status: str  # "in progress" | "complete" | "partial" | "failed"
    updated_at: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pending(self) -> list[Range]:
        return missing_ranges(self.page_count, [*self.done, *((f.page_no, f.page_no) for f in self.failed)])

    @classmethod
    def from_progress(cls, p: DocumentProgress) -> DocumentStatusView:
        return cls(
            doc_id=p.doc_id,
            source="aggregator state",
            page_count=p.page_count,
            done=merge_ranges(p.pages_ok),
            failed=sorted(p.pages_failed, key=lambda f: f.page_no),
            status=p.published.value if p.published is not None else "in progress",
            updated_at=p.updated_at.isoformat(),
            extra={"first_seen_at": p.first_seen_at.isoformat()},
        )

    @classmethod
    def from_event(cls, e: DocumentEvent) -> DocumentStatusView:
        failed = sorted(e.failed_pages, key=lambda f: f.page_no)
        # The document is closed: every page that did not fail succeeded.
        done = missing_ranges(e.page_count, [(f.page_no, f.page_no) for f in failed])
        return cls(
            doc_id=e.doc_id,
            source="document event",
            page_count=e.page_count,
            done=done,
            failed=failed,
            status=e.status.value,
            updated_at=e.completed_at.isoformat(),
            extra={"markdown": str(e.markdown_ref) if e.markdown_ref else None, "json": str(e.json_ref) if e.json_ref else None},
        )

    def as_dict(self) -> dict[str, Any]:
        pending = self.pending
        return {
            "doc_id": self.doc_id,
            "source": self.source,
            "status": self.status,
            "page_count": self.page_count,
            "done": count_pages(self.done),
            "failed": len(self.failed),
            "pending": count_pages(pending),
            "pages_done": [list(r) for r in self.done],
            "pages_failed": [{"page_no": f.page_no, "code": f.error.code.value, "message": f.error.message} for f in self.failed],
            "pages_pending": [list(r) for r in pending],
            "updated_at": self.updated_at,
            **self.extra,
        }

    def render(self) -> str:
        pending = self.pending
        lines = [
            f"document {self.doc_id}: {self.status} ({self.source})",
            f"  pages:   {self.page_count}",
            f"  done:    {count_pages(self.done)}" + (f"  ({format_ranges(self.done)})" if self.done else ""),
            f"  failed:  {len(self.failed)}",
        ]
        for f in self.failed[:20]:
            lines.append(f"           page {f.page_no}: {f.error.code.value}: {f.error.message[:120]}")
        if len(self.failed) > 20:
            lines.append(f"           ... and {len(self.failed) - 20} more (--json lists all)")
        lines.append(f"  pending: {count_pages(pending)}" + (f"  ({format_ranges(pending)})" if pending else ""))
        if self.updated_at:
            lines.append(f"  updated: {self.updated_at}")
        for k, v in self.extra.items():
            if v not in (None, False):
                lines.append(f"  {k.replace('_', ' ')}: {v}")
        return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- I/O: lag


def _admin(settings: Settings) -> Any:
    from confluent_kafka.admin import AdminClient

    conf: dict[str, str | int | float | bool] = dict(settings.kafka_client_config())
    return AdminClient(conf)


def cluster_lag(settings: Settings, *, timeout_s: float = 15.0, groups: Sequence[str] = ()) -> list[GroupTopicLag]:
    """Lag of every consumer group (or of ``groups``) on the topics under ``settings.topic_prefix``.

    Errors Kafka calls retriable (a partition's leadership moving, a group coordinator loading) are
    retried until ``timeout_s``; then, or on any other error, BrokerUnavailableError."""
    from confluent_kafka import KafkaException

    admin = _admin(settings)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return _cluster_lag_once(admin, settings, timeout_s=timeout_s, groups=groups)
        except KafkaException as exc:
            err: Any = exc.args[0] if exc.args else None
            if not (hasattr(err, "retriable") and err.retriable()) or time.monotonic() + 0.5 > deadline:
                reason = err.str() if hasattr(err, "str") else str(err)
                raise BrokerUnavailableError(
                    f"cannot read consumer group offsets from Kafka at {settings.kafka_bootstrap_servers}: {reason}"
                ) from exc
            log.info("retrying a retriable Kafka error", extra={"error": str(err)})
            time.sleep(0.5)


def _cluster_lag_once(admin: Any, settings: Settings, *, timeout_s: float, groups: Sequence[str]) -> list[GroupTopicLag]:
    from confluent_kafka import ConsumerGroupTopicPartitions, KafkaError, KafkaException, TopicPartition
    from confluent_kafka.admin import OffsetSpec

    listing = admin.list_consumer_groups(request_timeout=timeout_s).result(timeout=timeout_s)
    states = {g.group_id: (g.state.name if g.state is not None else "UNKNOWN") for g in listing.valid}
    wanted = [g for g in sorted(states) if not groups or g in groups]
    for g in groups:
        if g not in states:
            states[g] = "UNKNOWN"
            wanted.append(g)
    committed_by_group: dict[str, dict[tuple[str, int], int]] = {}
    for gid in wanted:
        fut = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(gid)], request_timeout=timeout_s)[gid]
        try:
            res = fut.result(timeout=timeout_s)
        except KafkaException as exc:
            if exc.args and getattr(exc.args[0], "code", lambda: None)() == KafkaError.GROUP_ID_NOT_FOUND:
                continue  # deleted since it was listed
            raise
        committed_by_group[gid] = {
            (tp.topic, tp.partition): tp.offset
            for tp in (res.topic_partitions or [])
            if _ours(settings, tp.topic)
        }
    topics = sorted({t for c in committed_by_group.values() for t, _ in c})
    watermarks: dict[tuple[str, int], tuple[int, int]] = {}
    if topics:
        md = admin.list_topics(timeout=timeout_s)
        tps = [TopicPartition(t, p) for t in topics if t in md.topics for p in md.topics[t].partitions]
        earliest, latest = OffsetSpec.earliest(), OffsetSpec.latest()  # type: ignore[no-untyped-call]
        starts = admin.list_offsets({tp: earliest for tp in tps}, request_timeout=timeout_s)
        ends = admin.list_offsets({tp: latest for tp in tps}, request_timeout=timeout_s)
        for tp in tps:
            watermarks[(tp.topic, tp.partition)] = (starts[tp].result(timeout=timeout_s).offset, ends[tp].result(timeout=timeout_s).offset)
    present = {t for t, _ in watermarks}
    rows: list[GroupTopicLag] = []
    for gid, committed in committed_by_group.items():
        mine = {k: v for k, v in committed.items() if k[0] in present}
        rows.extend(group_topic_lags(gid, states[gid], mine, watermarks))
    return rows


def _ours(settings: Settings, topic: str) -> bool:
    if topic.startswith("__"):
        return False
    return topic.startswith(settings.topic_prefix) if settings.topic_prefix else True


# ----------------------------------------------------------------------------- I/O: a document


def latest_value(settings: Settings, topic: str, key: str, *, timeout_s: float = 30.0) -> bytes | None:
    """The last committed value for ``key`` on a (compacted) topic; None when the key is absent or
    its last record is a tombstone. Reads every partition: it assumes nothing about the partitioner
    of whoever wrote the topic (an upstream system may use another)."""
    from .transport.kafka import KafkaTransport

    transport = KafkaTransport(settings.kafka_client_config(), client_id="ocr-stream-status")
    wanted = key.encode()
    found: bytes | None = None
    try:
        partitions = list(range(transport.partition_count(topic)))
        for rec in transport.read_partitions(topic, partitions, timeout_s=timeout_s):
            if rec.key == wanted:
                found = rec.value
    finally:
        transport.close()
    return found


def read_aggregator_state(settings: Settings, doc_id: str, *, timeout_s: float) -> DocumentProgress | None:
    """The document's progress from the aggregator's changelog, through the aggregator's own reader
    (``ocr_stream.aggregator.service.read_progress``: it knows which partition holds the key)."""
    try:
        from .aggregator.service import read_progress
    except ImportError:  # an install without the aggregator: scan the changelog ourselves
        raw = latest_value(settings, settings.topic(CHANGELOG), doc_id, timeout_s=timeout_s)
        return None if raw is None else decode(DocumentProgress, raw)
    from .transport.kafka import KafkaTransport

    transport = KafkaTransport(settings.kafka_client_config(), client_id="ocr-stream-status")
    try:
        return read_progress(transport, settings, doc_id, timeout_s=timeout_s)
    finally:
        transport.close()


def document_status(settings: Settings, doc_id: str, *, timeout_s: float = 30.0) -> DocumentStatusView | None:
    """The document's progress, from the aggregator's state or else its published event; None if unknown."""
    progress = read_aggregator_state(settings, doc_id, timeout_s=timeout_s)
    if progress is not None:
        return DocumentStatusView.from_progress(progress)
    raw = latest_value(settings, settings.topic(DOCUMENTS), doc_id, timeout_s=timeout_s)
    if raw is not None:
        return DocumentStatusView.from_event(decode(DocumentEvent, raw))
    return None


# ----------------------------------------------------------------------------- command


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("doc_id", nargs="?", metavar="DOC_ID", help="a document id; without it, the lag of every consumer group")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--partitions", action="store_true", help="lag: also show every partition")
    p.add_argument("--group", action="append", default=[], metavar="GROUP", help="lag: only this consumer group (repeatable)")
    p.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS", help="give up reading the cluster after this long (default: %(default)s)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.doc_id is None:
        rows = cluster_lag(settings, timeout_s=args.timeout, groups=args.group)
        if args.json:
            print(json.dumps([r.as_dict() for r in rows], indent=2))
        else:
            sys.stdout.write(format_lag_table(rows, partitions=args.partitions))
        return 0
    if not is_valid_doc_id(args.doc_id):
        raise ConfigError(f"{args.doc_id!r} is not a document id (1-128 characters of [A-Za-z0-9._-])")
    try:
        view = document_status(settings, args.doc_id, timeout_s=args.timeout)
    except SchemaViolationError as exc:
        raise BrokerUnavailableError(f"the state of {args.doc_id} does not parse: {exc}") from exc
    if view is None:
        print(f"ocr-stream: document {args.doc_id} is unknown: not in the aggregator's state nor on "
              f"{settings.topic(DOCUMENTS)} (not submitted yet, or no page of it has been OCR'd)", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(view.as_dict(), indent=2))
    else:
        sys.stdout.write(view.render())
    return 0
