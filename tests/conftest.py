"""Shared fixtures. Real services, not mocks: the Kafka broker and the S3 server come from
tests/stack.py (or testcontainers where a Docker engine answers), started once per session unless
OCR_STREAM_TEST_KAFKA_BOOTSTRAP / OCR_STREAM_TEST_S3_ENDPOINT already point at running ones.

Isolation: every test gets its own topic prefix and bucket, and removes them afterwards.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings as hypothesis_settings

sys.path.insert(0, str(Path(__file__).parent))

# Property tests: no per-example deadline (these machines are shared and noisy); in CI the same
# examples every run, so a red build is reproducible and a green one is not luck.
hypothesis_settings.register_profile("dev", deadline=None)
hypothesis_settings.register_profile("ci", deadline=None, derandomize=True, print_blob=True)
hypothesis_settings.load_profile("ci" if os.environ.get("CI") else "dev")
import stack as stack_mod  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
CORPUS = SHARED / "corpus" / "pdf-samples"
# Each test process (pytest-xdist workers too) leaves its part of the system suite's report here.
SYSTEM_REPORT_DIR = ROOT / ".stack" / "system-report"


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):  # the controlling process, before any worker starts
        import shutil

        shutil.rmtree(SYSTEM_REPORT_DIR, ignore_errors=True)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The system suite's report: faults tried, documents and pages checked, losses, duplicates."""
    import json

    parts = [json.loads(p.read_text()) for p in sorted(SYSTEM_REPORT_DIR.glob("part-*.json"))] if SYSTEM_REPORT_DIR.exists() else []
    if not parts:
        return
    faults: list[str] = []
    for part in parts:
        faults += [f for f in part["faults"] if f not in faults]
    total = {k: sum(part[k] for part in parts) for k in ("documents", "pages", "pages_failed_by_design", "losses", "duplicates")}
    terminalreporter.section("ocr-stream system report")
    terminalreporter.write_line(f"faults tried ({len(faults)}): {', '.join(faults) or '-'}")
    terminalreporter.write_line(f"documents checked: {total['documents']}, pages checked: {total['pages']} "
                                f"(failed on purpose, with their reason: {total['pages_failed_by_design']})")
    terminalreporter.write_line(f"losses: {total['losses']}")
    terminalreporter.write_line(f"duplicate documents: {total['duplicates']}")
    for part in parts:
        for note in part["notes"]:
            terminalreporter.write_line(note)


def wait_until(cond: Callable[[], Any], timeout_s: float = 30.0, interval_s: float = 0.05, what: str = "condition") -> Any:
    """Poll ``cond`` until it returns something truthy; fail the test with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval_s)


def _docker_available() -> bool:
    if os.environ.get("OCR_STREAM_TEST_NO_DOCKER"):
        return False
    try:
        import docker

        docker.from_env(timeout=2).ping()
        return True
    except Exception:  # noqa: BLE001 - no engine, no socket, no package
        return False


@pytest.fixture(scope="session")
def services() -> Iterator[dict[str, str]]:
    """Endpoints of the real Kafka broker and S3 server."""
    env_k, env_s = os.environ.get(stack_mod.KAFKA_ENV), os.environ.get(stack_mod.S3_ENV)
    if env_k and env_s:
        yield {
            "kafka": env_k,
            "s3": env_s,
            "s3_access_key": os.environ.get("OCR_STREAM_TEST_S3_ACCESS_KEY", stack_mod.MINIO_USER),
            "s3_secret_key": os.environ.get("OCR_STREAM_TEST_S3_SECRET_KEY", stack_mod.MINIO_PASSWORD),
        }
        return
    if _docker_available():
        from testcontainers.kafka import KafkaContainer
        from testcontainers.minio import MinioContainer

        with KafkaContainer().with_kraft() as kafka, MinioContainer() as minio:
            cfg = minio.get_config()
            yield {"kafka": kafka.get_bootstrap_server(), "s3": cfg["endpoint"],
                   "s3_access_key": cfg["access_key"], "s3_secret_key": cfg["secret_key"]}
        return
    st = stack_mod.Stack(ROOT / ".stack" / f"pytest-{os.getpid()}")
    try:
        env = st.start()
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"could not start the test services (run `make test`, which installs them): {exc}")
    try:
        yield {"kafka": env[stack_mod.KAFKA_ENV], "s3": env[stack_mod.S3_ENV],
               "s3_access_key": env["OCR_STREAM_TEST_S3_ACCESS_KEY"], "s3_secret_key": env["OCR_STREAM_TEST_S3_SECRET_KEY"]}
    finally:
        st.stop()


def unique(prefix: str = "t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


@pytest.fixture
def make_settings(services: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Settings pointing at the real services with a topic prefix and bucket of this test's own.
    Topics and buckets created through them are deleted afterwards."""
    from ocr_stream.config import load_settings

    made: list[Any] = []

    def factory(**overrides: Any) -> Any:
        base = dict(
            kafka_bootstrap_servers=services["kafka"],
            topic_prefix=f"{unique()}.",
            storage="s3",
            s3_endpoint=services["s3"],
            s3_access_key=services["s3_access_key"],
            s3_secret_key=services["s3_secret_key"],
            bucket=unique("b-"),
            metrics_port=0,
            local_storage_path=tmp_path / "store",
        )
        base.update(overrides)
        s = load_settings(**base)
        made.append(s)
        return s

    yield factory
    _cleanup(made)


def _cleanup(made: list[Any]) -> None:
    from confluent_kafka.admin import AdminClient

    from ocr_stream.storage import open_store

    for s in made:
        if s.topic_prefix:
            try:
                admin = AdminClient(s.kafka_client_config())
                names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(s.topic_prefix)]
                if names:
                    for fut in admin.delete_topics(names, operation_timeout=10).values():
                        try:
                            fut.result(timeout=15)
                        except Exception:  # noqa: BLE001
                            pass
            except Exception:  # noqa: BLE001 - best effort
                pass
        if s.storage == "s3":
            try:
                store: Any = open_store(s)
                if store.client.bucket_exists(s.bucket):
                    for key in list(store.list("")):
                        store.delete(key)
                    store.client.remove_bucket(s.bucket)
            except Exception:  # noqa: BLE001
                pass


@pytest.fixture
def settings(make_settings: Callable[..., Any]) -> Any:
    return make_settings()


@pytest.fixture
def store(settings: Any) -> Any:
    from ocr_stream.storage import open_store

    st = open_store(settings)
    st.ensure_bucket()
    return st


@pytest.fixture
def transport(settings: Any) -> Any:
    from ocr_stream.transport.kafka import KafkaTransport

    return KafkaTransport(settings.kafka_client_config())


@pytest.fixture
def topics(settings: Any) -> Any:
    """Create every topic of topics/ under this test's prefix; returns settings."""
    from ocr_stream.topics import TopicAdmin, load_specs

    TopicAdmin(settings.kafka_client_config(), prefix=settings.topic_prefix).apply(load_specs())
    return settings


def corpus_dir() -> Path:
    if not CORPUS.exists():
        pytest.skip("../shared/corpus is absent (a user's clone)")
    return CORPUS


@pytest.fixture
def simulator() -> Iterator[Callable[..., Any]]:
    """Factory: ``simulator(speed=50, max_num_seqs=64, ...)`` starts a vLLM simulator on a free port
    in this process (fields of ``SimulatorConfig``; ``faults`` may be a dict);
    ``simulator(subprocess=True, args=["--speed", "50"])`` starts ``python -m ocr_stream.simulator``.
    Both have ``.url``, ``.set_faults(...)`` and ``.state()``; all are stopped after the test."""
    from ocr_stream.simulator import SimulatorConfig, SimulatorProcess, SimulatorServer
    from ocr_stream.simulator.config import with_overrides

    started: list[Any] = []

    def factory(*, subprocess: bool = False, args: list[str] | None = None, **config: Any) -> Any:
        if subprocess:
            proc = SimulatorProcess.start(*(args or []), die_with_parent=True)
            started.append(proc)
            return proc
        srv = SimulatorServer(with_overrides(SimulatorConfig(port=0), **config))
        srv.start_in_thread()
        started.append(srv)
        return srv

    yield factory
    for s in reversed(started):
        s.stop()
