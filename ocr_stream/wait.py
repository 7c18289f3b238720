"""Start-up waits: a service blocks until the broker, the object storage and the model server(s) it
needs answer, or gives up at a deadline with one sentence naming what never came up.

    from ocr_stream.wait import wait_for_dependencies

    wait_for_dependencies(settings, need={"kafka", "storage", "model"})   # before building clients

Dependencies (``need``):

- ``kafka``: a broker answers a metadata request at ``kafka_bootstrap_servers``.
- ``topics``: every topic of topics/ exists under ``topic_prefix`` (created by ``ocr-stream topics apply``).
- ``storage``: the S3 server answers and the bucket exists (created by the one-shot bucket job);
  a local folder is always ready.
- ``model``: at least one model server of ``vllm_urls`` answers ``GET /health`` with 200 (vLLM does so
  once the model is loaded). The others are named in the log; the worker probes and adds them later.

While waiting it logs, at WARNING, what it waits for and why it is not ready yet (first failure, then
every ``report_every_s``), and at INFO how long each dependency took. Compose's ``depends_on``
orders start-up on one host; this wait is what makes a service correct anywhere else (Kubernetes,
a restart while the broker is down, several hosts).

Also a command: ``python -m ocr_stream.wait kafka storage model --deadline 300``; the ocr-stream
image's entrypoint (deploy/docker-entrypoint.sh) runs it before each service with what that service needs.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any

import httpx

from .config import Settings
from .errors import ConfigError, ErrorCode, TransientError

log = logging.getLogger("ocr_stream.wait")  # not __name__: also run as __main__

KNOWN = ("kafka", "topics", "storage", "model")
DEFAULT_NEED = frozenset({"kafka", "storage", "model"})

COMMAND = "wait"
HELP = "wait until the broker, topics, storage and model servers answer (start-up dependency check)"
DESCRIPTION = (
    "Block until every named dependency answers, logging what is still awaited; exit 0 when all are ready, "
    "1 at the deadline with the ones that never came up. DEPS: " + ", ".join(KNOWN) + "."
)


class DependencyTimeoutError(TransientError):
    """A dependency did not become ready before the start-up deadline."""

    code = ErrorCode.DEADLINE


# A check returns None when the dependency is ready, else a short reason it is not.
Check = Callable[[float], "str | None"]


@dataclass(frozen=True)
class Dependency:
    name: str
    what: str  # shown to people: "Kafka at kafka:9092"
    check: Check


# ----------------------------------------------------------------------------- checks


class _LastClientError(logging.Handler):
    """Keeps librdkafka's last warning or error (e.g. "SASL SCRAM-SHA-512 mechanism handshake
    failed"), which says more than the "Broker transport failure" a failed request reports."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.message = ""

    def emit(self, record: logging.LogRecord) -> None:
        # "FAIL [rdkafka#producer-1] [thrd:...]: host:port/bootstrap: ... failed: ..." -> from the host on.
        self.message = re.sub(r"^\w+ (?:\[[^\]]*\] )*\[thrd:[^\]]*\]: ", "", record.getMessage()).strip()


def _admin(settings: Settings) -> tuple[Any, _LastClientError]:
    from confluent_kafka.admin import AdminClient

    # librdkafka prints every refused connection to stderr; the wait reports the outcome itself,
    # with the client's last complaint.
    quiet = logging.Logger("ocr_stream.wait.librdkafka")
    last = _LastClientError()
    quiet.addHandler(last)
    conf: dict[str, str | int | float | bool] = dict(settings.kafka_client_config())
    return AdminClient(conf, logger=quiet), last


def _kafka_reason(exc: Exception, admin: Any, last: _LastClientError) -> str:
    admin.poll(0)  # librdkafka hands its log lines over in poll()
    err: Any = exc.args[0] if exc.args else "no answer"
    reason = str(err.str()) if hasattr(err, "str") else str(err)
    if last.message and last.message not in reason:
        reason += f"; the client said: {last.message}"
    return reason


def kafka_check(settings: Settings) -> Check:
    def check(timeout_s: float) -> str | None:
        from confluent_kafka import KafkaException

        admin, last = _admin(settings)
        try:
            md = admin.list_topics(timeout=max(0.5, timeout_s))
        except KafkaException as exc:
            return _kafka_reason(exc, admin, last)
        if not md.brokers:
            return "no broker in the metadata"
        return None

    return check


def topics_check(settings: Settings, names: Iterable[str] | None = None) -> Check:
    def check(timeout_s: float) -> str | None:
        from confluent_kafka import KafkaException

        from .topics import load_specs

        wanted = [settings.topic(n) for n in names] if names is not None else [settings.topic(s.name) for s in load_specs()]
        admin, last = _admin(settings)
        try:
            existing = set(admin.list_topics(timeout=max(0.5, timeout_s)).topics)
        except KafkaException as exc:
            return _kafka_reason(exc, admin, last)
        missing = [t for t in wanted if t not in existing]
        if missing:
            return "missing topics " + ", ".join(missing) + " (run `ocr-stream topics apply`)"
        return None

    return check


def storage_check(settings: Settings) -> Check:
    def check(timeout_s: float) -> str | None:
        if settings.storage == "local":
            return None
        import urllib3

        from .storage.s3 import http_pool, minio_client

        http = http_pool(settings, timeout=urllib3.Timeout(connect=min(5.0, timeout_s), read=max(1.0, timeout_s)), retries=False)
        client = minio_client(settings, http)
        try:
            if not client.bucket_exists(settings.bucket):
                return f"bucket {settings.bucket!r} does not exist yet"
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready"; the reason is reported
            return f"{type(exc).__name__}: {exc}"[:300]
        finally:
            http.clear()
        return None

    return check


def model_check(settings: Settings) -> Check:
    def check(timeout_s: float) -> str | None:
        headers = {}
        if settings.vllm_api_key is not None:
            headers["Authorization"] = f"Bearer {settings.vllm_api_key.get_secret_value()}"
        timeout = httpx.Timeout(max(0.5, timeout_s), connect=min(settings.connect_timeout_s, max(0.5, timeout_s)))
        down: list[str] = []
        with httpx.Client(timeout=timeout, headers=headers, limits=httpx.Limits(max_connections=4)) as client:
            for url in settings.vllm_urls:
                try:
                    r = client.get(f"{url}/health")
                except httpx.HTTPError as exc:
                    down.append(f"{url} ({type(exc).__name__})")
                    continue
                if r.status_code != 200:
                    down.append(f"{url} (HTTP {r.status_code})")
        if len(down) == len(settings.vllm_urls):
            return "no model server answers /health: " + ", ".join(down)
        if down:
            log.warning("some model servers are not ready; starting with the others", extra={"not_ready": down})
        return None

    return check


def dependencies(settings: Settings, need: Collection[str], *, topics: Iterable[str] | None = None) -> list[Dependency]:
    """The checks for ``need``, in start-up order (broker before topics). ``topics``: the topic
    names (without prefix) that must exist, default every topic in topics/."""
    unknown = sorted(set(need) - set(KNOWN))
    if unknown:
        raise ValueError(f"unknown dependencies {unknown}; known: {', '.join(KNOWN)}")
    deps = []
    if "kafka" in need:
        deps.append(Dependency("kafka", f"Kafka at {settings.kafka_bootstrap_servers}", kafka_check(settings)))
    if "topics" in need:
        deps.append(Dependency("topics", f"topics with prefix {settings.topic_prefix!r}", topics_check(settings, topics)))
    if "storage" in need:
        where = str(settings.local_storage_path) if settings.storage == "local" else f"{settings.s3_endpoint}/{settings.bucket}"
        deps.append(Dependency("storage", f"object storage at {where}", storage_check(settings)))
    if "model" in need:
        deps.append(Dependency("model", "model server at " + ", ".join(settings.vllm_urls), model_check(settings)))
    return deps


# ----------------------------------------------------------------------------- the wait


def wait_until_ready(
    deps: list[Dependency],
    deadline_s: float,
    *,
    interval_s: float = 1.0,
    report_every_s: float = 10.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, float]:
    """Poll every dependency until all are ready; returns seconds each took. Raises
    DependencyTimeoutError at the deadline naming each one still not ready and why."""
    start = clock()
    end = start + deadline_s
    pending = list(deps)
    reasons: dict[str, str] = {}
    last_report: dict[str, float] = {}
    took: dict[str, float] = {}
    while True:
        for dep in list(pending):
            # Dependencies are checked in order: topics are not asked for before the broker answers.
            if dep.name == "topics" and any(d.name == "kafka" for d in pending):
                continue
            remaining = end - clock()
            reason = dep.check(max(0.5, min(5.0, remaining)))
            now = clock()
            if reason is None:
                pending.remove(dep)
                took[dep.name] = now - start
                log.info(f"{dep.what} is ready", extra={"dependency": dep.name, "after_s": round(now - start, 2)})
                continue
            reasons[dep.name] = reason
            if dep.name not in last_report or now - last_report[dep.name] >= report_every_s:
                last_report[dep.name] = now
                log.warning(
                    f"waiting for {dep.what}: {reason}",
                    extra={"dependency": dep.name, "waited_s": round(now - start, 1), "left_s": round(max(0.0, end - now), 1)},
                )
        if not pending:
            return took
        if clock() >= end:
            missing = "; ".join(f"{d.what} ({reasons.get(d.name, 'not checked: an earlier dependency is missing')})" for d in pending)
            raise DependencyTimeoutError(f"gave up after {deadline_s:.0f}s waiting for {missing}")
        sleep(min(interval_s, max(0.0, end - clock())))


def wait_for_dependencies(
    settings: Settings,
    need: Collection[str] = DEFAULT_NEED,
    deadline_s: float | None = None,
    *,
    topics: Iterable[str] | None = None,
    interval_s: float = 1.0,
) -> dict[str, float]:
    """Block until every dependency in ``need`` (kafka, topics, storage, model) is ready.

    ``deadline_s`` defaults to ``settings.startup_deadline_s``. Returns the seconds each dependency
    took; raises DependencyTimeoutError (an OcrStreamError: the CLI exits 1) at the deadline."""
    if deadline_s is None:
        deadline_s = settings.startup_deadline_s
    return wait_until_ready(dependencies(settings, need, topics=topics), deadline_s, interval_s=interval_s)


# ----------------------------------------------------------------------------- command


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("deps", nargs="*", metavar="DEP", help=f"what to wait for: {', '.join(KNOWN)} (default: kafka storage model)")
    p.add_argument("--deadline", type=float, default=None, metavar="SECONDS",
                   help="give up after this long (default: OCR_STREAM_STARTUP_DEADLINE_S)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    need = set(args.deps) if args.deps else set(DEFAULT_NEED)
    try:
        deps = dependencies(settings, need)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    deadline = args.deadline if args.deadline is not None else settings.startup_deadline_s
    took = wait_until_ready(deps, deadline)
    for name, seconds in took.items():
        print(f"{name}: ready after {seconds:.1f}s")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m ocr_stream.wait``: the same as ``ocr-stream wait``, whether or not the CLI lists it."""
    from .cli import run_command

    return run_command(sys.modules[__name__], argv, prog="python -m ocr_stream.wait", who="ocr-stream")


if __name__ == "__main__":
    sys.exit(main())
