"""Every fault mode of the simulator, observed by a real HTTP client, switched at run time."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from ocr_stream.simulator import FaultConfig, set_faults

from conftest import wait_until
from test_simulator_server import chat_body, sse_events

pytestmark = pytest.mark.integration


@pytest.fixture
def sim(simulator: Callable[..., Any]) -> Any:
    return simulator(speed=200)


def post(sim: Any, timeout: float | httpx.Timeout = 30, **extra: Any) -> httpx.Response:
    return httpx.post(sim.url + "/v1/chat/completions", json=chat_body(**extra), timeout=timeout)


def test_admin_endpoint_reads_and_switches_faults(sim: Any) -> None:
    state = httpx.get(sim.url + "/admin/faults").json()
    assert state["mode"] == "none" and state["hits"] == 0
    r = httpx.post(sim.url + "/admin/faults", json={"mode": "503", "rate": 1.0})
    assert r.status_code == 200 and r.json()["mode"] == "503"
    assert post(sim).status_code == 503
    assert httpx.get(sim.url + "/admin/faults").json()["hits"] == 1
    assert httpx.post(sim.url + "/admin/faults", json={"mode": "none"}).status_code == 200
    assert post(sim).status_code == 200
    bad = httpx.post(sim.url + "/admin/faults", json={"mode": "meltdown"})
    assert bad.status_code == 400 and "unknown fault mode" in bad.json()["error"]["message"]
    assert httpx.post(sim.url + "/admin/faults", json={"mode": "503", "typo": 1}).status_code == 400


def test_503(sim: Any) -> None:
    set_faults(sim.url, "503")
    r = post(sim)
    assert r.status_code == 503
    assert r.json()["error"]["code"] == 503 and r.json()["error"]["message"]
    assert httpx.get(sim.url + "/health").status_code == 200  # faults hit chat requests only


def test_429_with_retry_after(sim: Any) -> None:
    sim.set_faults("429", retry_after_s=3)
    r = post(sim)
    assert r.status_code == 429 and r.headers["Retry-After"] == "3"
    sim.set_faults("429", retry_after_s=0.25)
    assert post(sim).headers["Retry-After"] == "0.25"


def test_slow_answers_after_the_clients_timeout(sim: Any) -> None:
    sim.set_faults("slow", delay_s=2.0)
    with pytest.raises(httpx.ReadTimeout):
        post(sim, timeout=httpx.Timeout(5, read=0.3))
    sim.set_faults("slow", delay_s=0.2)
    assert post(sim, timeout=10).status_code == 200  # slow, not broken


def test_reset_mid_body(sim: Any) -> None:
    sim.set_faults("reset")
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        post(sim)
    lines: list[str] = []
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        with httpx.stream("POST", sim.url + "/v1/chat/completions", json=chat_body(stream=True), timeout=30) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                lines.append(line)
    events = sse_events(lines)
    assert events and "[DONE]" not in events  # some chunks came, the end never did
    wait_until(lambda: sim.state()["running"] == 0, 5, what="the reset requests to leave the engine")


def test_garbage_json_and_broken_sse(sim: Any) -> None:
    sim.set_faults("garbage")
    r = post(sim)
    assert r.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        r.json()
    with httpx.stream("POST", sim.url + "/v1/chat/completions", json=chat_body(stream=True), timeout=30) as s:
        lines = [line for line in s.iter_lines() if line]
    with pytest.raises(json.JSONDecodeError):
        sse_events(lines)


def test_repeat_loops_until_length_unless_ngram_is_on(sim: Any) -> None:
    sim.set_faults("repeat")
    r = post(sim, max_tokens=2000).json()
    assert r["choices"][0]["finish_reason"] == "length" and r["usage"]["completion_tokens"] == 2000
    text = r["choices"][0]["message"]["content"]
    assert text[-600:].count("The total amount is due on the same date.") >= 10
    cured = post(sim, max_tokens=2000, vllm_xargs={"ngram_size": 30, "window_size": 90}).json()
    assert cured["choices"][0]["finish_reason"] == "stop"
    # streaming shows the loop as it grows
    with httpx.stream("POST", sim.url + "/v1/chat/completions", json=chat_body(stream=True, max_tokens=500), timeout=30) as s:
        events = sse_events(list(s.iter_lines()))
    assert events[-2]["choices"][0]["finish_reason"] == "length"


def test_dead_engine_answers_health_but_never_requests(sim: Any) -> None:
    sim.set_faults("dead")
    assert httpx.get(sim.url + "/health").status_code == 200
    with pytest.raises(httpx.ReadTimeout):
        post(sim, timeout=httpx.Timeout(5, read=0.5))
    assert httpx.get(sim.url + "/v1/models").status_code == 200
    # a stream gets its status and headers, then nothing
    with httpx.stream("POST", sim.url + "/v1/chat/completions", json=chat_body(stream=True), timeout=httpx.Timeout(5, read=0.5)) as r:
        assert r.status_code == 200
        with pytest.raises(httpx.ReadTimeout):
            r.read()
    sim.set_faults("none")
    assert post(sim).status_code == 200


def test_intermittent_faults_by_rate_and_count(sim: Any) -> None:
    sim.set_faults("503", rate=0.5, seed=11)
    codes = [post(sim, max_tokens=5).status_code for _ in range(30)]
    assert 5 < codes.count(503) < 25 and codes.count(200) == 30 - codes.count(503)
    sim.set_faults("503", count=2)
    assert [post(sim, max_tokens=5).status_code for _ in range(4)] == [503, 503, 200, 200]


def test_faults_at_start(simulator: Callable[..., Any]) -> None:
    sim = simulator(speed=200, faults=FaultConfig(mode="429", retry_after_s=2))
    assert post(sim).status_code == 429
    proc = simulator(subprocess=True, args=["--speed", "200", "--fault", "503", "--fault-count", "1"])
    assert post(proc).status_code == 503
    assert post(proc).status_code == 200
    assert proc.set_faults("garbage")["mode"] == "garbage"
