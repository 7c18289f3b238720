"""The worker's Prometheus metrics, in a registry of their own (one per worker process).

    ocr_stream_worker_pages_total{status,engine}      pages finished: status ok | failed
    ocr_stream_worker_page_failures_total{reason}     terminal failures (DLQ), by error code
    ocr_stream_worker_retries_total{reason}           attempts retried, by error code
    ocr_stream_worker_in_flight                       pages taken from Kafka and not finished
    ocr_stream_worker_in_flight_limit                 the current budget (adaptive or fixed)
    ocr_stream_worker_model_requests_in_flight        engine calls open right now
    ocr_stream_worker_paused                          1 while partitions are paused (budget full)
    ocr_stream_worker_queue_seconds                   submitted_at → first attempt starts
    ocr_stream_worker_model_latency_seconds{engine}   one engine call (successful or not)
    ocr_stream_worker_page_seconds                    record taken → outcome acknowledged
    ocr_stream_worker_tokens_total{kind}              prompt | completion tokens of successful pages
    ocr_stream_worker_consumer_lag{partition}         records behind the end of each assigned partition
    ocr_stream_worker_commits_total                   offset commits made
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
_QUEUE_BUCKETS = (0.01, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 6 * 3600)


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        p = "ocr_stream_worker_"
        self.pages = Counter(p + "pages_total", "Pages finished, by outcome and engine.", ["status", "engine"], registry=r)
        self.failures = Counter(p + "page_failures_total", "Pages that failed for good (sent to the DLQ), by reason.", ["reason"], registry=r)
        self.retries = Counter(p + "retries_total", "Page attempts retried, by reason.", ["reason"], registry=r)
        self.in_flight = Gauge(p + "in_flight", "Pages taken from Kafka and not yet finished.", registry=r)
        self.in_flight_limit = Gauge(p + "in_flight_limit", "Current in-flight budget.", registry=r)
        self.model_in_flight = Gauge(p + "model_requests_in_flight", "Engine calls open right now.", registry=r)
        self.paused = Gauge(p + "paused", "1 while the assigned partitions are paused because the budget is full.", registry=r)
        self.queue_seconds = Histogram(p + "queue_seconds", "Time from submitted_at to the page's first attempt.", buckets=_QUEUE_BUCKETS, registry=r)
        self.model_latency = Histogram(p + "model_latency_seconds", "Duration of one engine call.", ["engine"], buckets=_LATENCY_BUCKETS, registry=r)
        self.page_seconds = Histogram(p + "page_seconds", "Time from taking a record to its outcome being acknowledged.", buckets=_LATENCY_BUCKETS, registry=r)
        self.tokens = Counter(p + "tokens_total", "Tokens of successful pages.", ["kind"], registry=r)
        self.lag = Gauge(p + "consumer_lag", "Records behind the end of each assigned partition of ocr.pages.", ["partition"], registry=r)
        self.commits = Counter(p + "commits_total", "Offset commits made.", registry=r)
        self._prompt_tokens = self.tokens.labels("prompt")
        self._completion_tokens = self.tokens.labels("completion")

    def add_tokens(self, prompt: int, completion: int) -> None:
        self._prompt_tokens.inc(prompt)
        self._completion_tokens.inc(completion)

    def set_lag(self, lag: dict[tuple[str, int], int]) -> None:
        self.lag.clear()
        for (_topic, partition), n in lag.items():
            self.lag.labels(str(partition)).set(n)
