"""Start-up waits (ocr_stream/wait.py): the loop's order, reporting and deadline, with fake checks and
a fake clock; the real checks against real services are in tests/integration/test_deploy_cluster.py."""

from __future__ import annotations

import logging

import pytest

from ocr_stream.config import load_settings
from ocr_stream.errors import ErrorCode, TransientError
from ocr_stream.wait import Dependency, DependencyTimeoutError, dependencies, wait_until_ready


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


def after(clock: FakeClock, ready_at: float, reason: str = "not yet", calls: list[str] | None = None, name: str = "") -> Dependency:
    def check(_timeout: float) -> str | None:
        if calls is not None:
            calls.append(name)
        return None if clock.now >= ready_at else reason

    return Dependency(name or "dep", f"the {name or 'dep'} service", check)


def test_returns_when_all_are_ready_with_the_time_each_took() -> None:
    clock = FakeClock()
    deps = [after(clock, 0.0, name="kafka"), after(clock, 3.0, name="storage"), after(clock, 5.0, name="model")]
    took = wait_until_ready(deps, 60, interval_s=1.0, clock=clock, sleep=clock.sleep)
    assert took == {"kafka": 0.0, "storage": 3.0, "model": 5.0}


def test_deadline_names_what_never_came_up_and_why() -> None:
    clock = FakeClock()
    deps = [after(clock, 0.0, name="kafka"), after(clock, 1e9, reason="bucket 'x' does not exist yet", name="storage")]
    with pytest.raises(DependencyTimeoutError) as err:
        wait_until_ready(deps, 10, interval_s=1.0, clock=clock, sleep=clock.sleep)
    msg = str(err.value)
    assert "the storage service" in msg and "bucket 'x' does not exist yet" in msg
    assert "kafka" not in msg  # the one that came up is not blamed
    assert clock.now == pytest.approx(10, abs=1.0)  # gave up at the deadline, not before or long after
    # A timeout is transient (a supervisor restarts the service) and carries the deadline code.
    assert isinstance(err.value, TransientError) and err.value.code == ErrorCode.DEADLINE


def test_topics_are_not_asked_for_before_the_broker_answers() -> None:
    clock = FakeClock()
    calls: list[str] = []
    deps = [after(clock, 4.0, calls=calls, name="kafka"), after(clock, 0.0, calls=calls, name="topics")]
    wait_until_ready(deps, 60, interval_s=1.0, clock=clock, sleep=clock.sleep)
    first_topics = calls.index("topics")
    assert calls[:first_topics] == ["kafka"] * first_topics and first_topics == 5  # t = 0, 1, 2, 3 fail; 4 succeeds


def test_says_what_it_waits_for_then_stays_quiet_until_the_next_report(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    deps = [after(clock, 25.0, reason="connection refused", name="kafka")]
    with caplog.at_level(logging.INFO, logger="ocr_stream.wait"):
        wait_until_ready(deps, 60, interval_s=1.0, report_every_s=10.0, clock=clock, sleep=clock.sleep)
    waiting = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in waiting] == ["waiting for the kafka service: connection refused"] * 3  # t = 0, 10, 20
    ready = [r for r in caplog.records if r.levelno == logging.INFO]
    assert len(ready) == 1 and "ready" in ready[0].getMessage() and ready[0].after_s == 25.0  # type: ignore[attr-defined]


def test_dependencies_follow_the_settings() -> None:
    s = load_settings(kafka_bootstrap_servers="k1:9092", s3_endpoint="s3:9000", bucket="pages", vllm_urls="http://a:8000,http://b:8001")
    deps = {d.name: d.what for d in dependencies(s, {"kafka", "storage", "model", "topics"})}
    assert deps == {
        "kafka": "Kafka at k1:9092",
        "topics": "topics with prefix ''",
        "storage": "object storage at s3:9000/pages",
        "model": "model server at http://a:8000, http://b:8001",
    }
    assert [d.name for d in dependencies(s, {"model", "kafka"})] == ["kafka", "model"]  # start-up order
    with pytest.raises(ValueError, match="unknown dependencies \\['gpu'\\]"):
        dependencies(s, {"kafka", "gpu"})


def test_local_storage_is_ready_at_once(tmp_path: object) -> None:
    s = load_settings(storage="local", local_storage_path=str(tmp_path))
    (dep,) = dependencies(s, {"storage"})
    assert dep.check(1.0) is None
