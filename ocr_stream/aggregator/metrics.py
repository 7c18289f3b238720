"""The aggregator's Prometheus metrics (prefix ``ocr_stream_aggregator_``), in a registry of their own
so that several services can live in one process (local mode, tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PREFIX = "ocr_stream_aggregator_"


class AggregatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.documents = Counter(f"{PREFIX}documents_total", "Documents published, by status.", ["status"], registry=r)
        self.pages = Counter(f"{PREFIX}pages_total", "Pages counted towards their document, by page status.", ["status"], registry=r)
        self.duplicates = Counter(f"{PREFIX}duplicates_total", "Page results for pages already counted (ignored).", registry=r)
        self.replaced = Counter(f"{PREFIX}replaced_total", "Failed pages replaced by a later success of the same page.", registry=r)
        self.late = Counter(f"{PREFIX}late_results_total", "Page results for documents already published (ignored).", registry=r)
        self.invalid = Counter(
            f"{PREFIX}invalid_results_total", "Messages on ocr.results that do not parse or contradict their document (ignored).", registry=r
        )
        self.dead_letters = Counter(f"{PREFIX}dead_letters_total", "Dead letters read, by outcome (attributed, unattributable).", ["outcome"], registry=r)
        self.misrouted = Counter(
            f"{PREFIX}misrouted_results_total",
            "Results on a partition other than murmur2(doc_id): the producer does not use Kafka's default partitioner.",
            registry=r,
        )
        self.open_documents = Gauge(f"{PREFIX}open_documents", "Documents with pages still missing, on this instance.", registry=r)
        self.stuck_documents = Gauge(f"{PREFIX}stuck_documents", "Open documents with no new page for longer than stuck_after_s.", registry=r)
        self.deadline_closed = Counter(f"{PREFIX}deadline_closed_total", "Documents closed as partial at close_partial_after_s.", registry=r)
        self.transactions = Counter(f"{PREFIX}transactions_total", "Kafka transactions, by outcome (committed, aborted).", ["outcome"], registry=r)
        self.transaction_seconds = Histogram(
            f"{PREFIX}transaction_seconds", "Time from begin to commit of a transaction (includes document assembly).",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=r,
        )
        self.assembly_seconds = Histogram(
            f"{PREFIX}assembly_seconds", "Time to read a document's page results and write document.md/json.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60), registry=r,
        )
        self.rebuild_seconds = Histogram(
            f"{PREFIX}rebuild_seconds", "Time to rebuild state from the changelog on an assignment.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120), registry=r,
        )
        self.assigned_partitions = Gauge(f"{PREFIX}assigned_partitions", "ocr.results partitions owned by this instance.", registry=r)
