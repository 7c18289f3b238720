"""The adaptive in-flight controller (pure decision function) and the /metrics parser."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ocr_stream.engines.adaptive import ControllerConfig, ServerLoad, next_limit, parse_vllm_metrics, wait_target

CFG = ControllerConfig(min_in_flight=4, max_in_flight=512)


def simulate(capacity: int, workers: int, ticks: int, cfg: ControllerConfig = CFG, start: int = 16, kv_at: float | None = None) -> list[list[int]]:
    """A server running at most ``capacity`` requests, the rest queued, fed by ``workers`` workers that
    always have pages (each keeps exactly its limit in flight). Returns each tick's limits."""
    limits = [start] * workers
    history = []
    for _ in range(ticks):
        total = sum(limits)
        running = min(total, capacity)
        kv = None if kv_at is None else min(1.0, total / kv_at)
        load = ServerLoad(running=running, waiting=total - running, kv_usage=kv)
        limits = [next_limit(lim, load, lim, cfg) for lim in limits]
        history.append(list(limits))
    return history


def test_one_worker_fills_the_batch_and_keeps_a_short_queue() -> None:
    history = simulate(capacity=256, workers=1, ticks=40)
    final = history[-1][0]
    # Full batch (>= capacity) and a queue near the target (~10% of running), not the max of 512.
    assert 256 <= final <= 256 + 2 * wait_target(ServerLoad(256, 0), CFG) + 2
    # Reaches a full batch quickly from a small start (slow start), within ~10 scrapes.
    assert any(h[0] >= 256 for h in history[:10])


def test_several_workers_share_one_server_without_overrunning_it() -> None:
    history = simulate(capacity=128, workers=4, ticks=80)
    total = sum(history[-1])
    assert 128 <= total <= 128 + 2 * wait_target(ServerLoad(128, 0), CFG) + 4 * 2


def test_queue_too_long_shrinks_the_limit() -> None:
    load = ServerLoad(running=100, waiting=200)
    assert next_limit(300, load, 300, CFG) < 300


def test_share_scales_the_decrease() -> None:
    """A worker with a small part of the server's load sheds only its part of the excess."""
    load = ServerLoad(running=100, waiting=200)
    big = 300 - next_limit(300, load, 300, CFG)
    small = 30 - next_limit(30, load, 30, CFG)
    assert 0 < small < big


def test_idle_limit_is_held() -> None:
    """Fewer pages than the limit allows: no evidence the server could take more."""
    assert next_limit(100, ServerLoad(running=10, waiting=0), ours=10, cfg=CFG) == 100


def test_full_kv_cache_stops_growth() -> None:
    assert next_limit(100, ServerLoad(running=100, waiting=0, kv_usage=0.99), ours=100, cfg=CFG) == 100
    assert next_limit(100, ServerLoad(running=100, waiting=0, kv_usage=0.5), ours=100, cfg=CFG) > 100


def test_kv_bound_server_settles_below_its_max_num_seqs() -> None:
    # The server runs at most 256 but its KV cache fills at 150: the queue, not running, tells.
    history = simulate(capacity=256, workers=1, ticks=60, kv_at=150)
    assert history[-1][0] <= 256


@given(
    limit=st.integers(min_value=1, max_value=10_000),
    running=st.floats(min_value=0, max_value=10_000, allow_nan=False),
    waiting=st.floats(min_value=0, max_value=10_000, allow_nan=False),
    ours=st.integers(min_value=0, max_value=10_000),
    kv=st.none() | st.floats(min_value=0, max_value=1),
)
def test_always_within_bounds(limit: int, running: float, waiting: float, ours: int, kv: float | None) -> None:
    new = next_limit(limit, ServerLoad(running, waiting, kv), ours, CFG)
    assert CFG.min_in_flight <= new <= CFG.max_in_flight


def test_config_is_validated() -> None:
    with pytest.raises(ValueError):
        ControllerConfig(min_in_flight=10, max_in_flight=5)
    with pytest.raises(ValueError):
        ControllerConfig(slow_start_factor=1.0)


VLLM_METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="deepseek-ai/DeepSeek-OCR"} 120.0
vllm:num_requests_running{engine="1",model_name="deepseek-ai/DeepSeek-OCR"} 100.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="deepseek-ai/DeepSeek-OCR"} 7.0
vllm:num_requests_waiting{engine="1",model_name="deepseek-ai/DeepSeek-OCR"} 3.0 1732700000000
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="deepseek-ai/DeepSeek-OCR"} 0.41
vllm:kv_cache_usage_perc{engine="1",model_name="deepseek-ai/DeepSeek-OCR"} 0.63
vllm:num_requests_running_created 1.7e9
process_cpu_seconds_total 12.5
"""


def test_parse_vllm_metrics_sums_engines() -> None:
    load = parse_vllm_metrics(VLLM_METRICS)
    assert load == ServerLoad(running=220.0, waiting=10.0, kv_usage=0.63)


def test_parse_older_gauge_names_and_no_labels() -> None:
    text = "vllm:num_requests_running 3\nvllm:num_requests_waiting 0\nvllm:gpu_cache_usage_perc 0.2\n"
    assert parse_vllm_metrics(text) == ServerLoad(running=3.0, waiting=0.0, kv_usage=0.2)


@pytest.mark.parametrize("text", ["", "not prometheus at all", "vllm:num_requests_running 3\n", "vllm:num_requests_running{x=\"1\"} abc\nvllm:num_requests_waiting 1\n"])
def test_parse_without_both_gauges_is_none(text: str) -> None:
    assert parse_vllm_metrics(text) is None


@given(st.text(max_size=500))
def test_parse_never_raises(text: str) -> None:
    parse_vllm_metrics(text)
