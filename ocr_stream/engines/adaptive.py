"""Adaptive in-flight control: size what a worker sends to each model server from the server's own
queue, read from its Prometheus ``/metrics``.

vLLM has no admission control: whatever it is sent, it either runs (up to ``max_num_seqs`` and the
KV cache) or queues. Too little in flight leaves the batch, and so the GPU, half empty; too much
builds a queue that only adds latency, makes timeouts likelier and strands pages on a server that
another server could have taken. The aim per server: *a full batch and a short queue*, i.e.
``waiting ≈ target_wait_fraction × running`` (at least ``min_wait``).

The controller (``next_limit``, pure) runs once per scrape (about every second) per server and moves
that server's limit — the requests this worker may keep open against it:

- **queue too long** (``waiting > target``): proportional decrease,
  ``limit -= gain × (waiting - target) × share``, where ``share`` is this worker's part of the
  server's load (``ours / (running + waiting)``), so that N workers sharing a server shed the excess
  once between them, not N times.
- **queue empty, limit in use** (``waiting == 0`` and ``ours >= limit × busy_fraction``): the server
  could take more; grow multiplicatively (``× slow_start_factor``) unless the KV cache is nearly full
  (``kv_usage >= kv_high``), where more requests would only be preempted.
- **short queue below target, limit in use**: proportional increase towards the target.
- **limit not in use** (fewer pages to send than the limit allows): hold; growing on no evidence
  would let the limit drift up to the maximum while idle and overrun the server on the next burst.

Every result is clamped to ``[min_in_flight, max_in_flight]``. A server without ``/metrics`` (404,
unparsable, or missing the gauges) keeps its static share of ``max_in_flight``.

``MetricsScraper`` does the I/O: it fetches ``/metrics`` of one server and parses the three gauges
(``vllm:num_requests_running``, ``vllm:num_requests_waiting`` and ``vllm:kv_cache_usage_perc`` or
the older ``vllm:gpu_cache_usage_perc``), summing over label sets (several engines behind one API
server report one series each).
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

import aiohttp

__all__ = ["ControllerConfig", "ServerLoad", "next_limit", "parse_vllm_metrics", "MetricsScraper"]

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")


@dataclass(frozen=True, slots=True)
class ServerLoad:
    """One scrape of a server's queue."""

    running: float
    waiting: float
    kv_usage: float | None = None
    """Fraction 0-1 of the KV cache in use; None when the server does not report it."""


@dataclass(frozen=True, slots=True)
class ControllerConfig:
    min_in_flight: int = 4
    max_in_flight: int = 256
    target_wait_fraction: float = 0.1
    min_wait: float = 2.0
    gain: float = 0.5
    slow_start_factor: float = 1.5
    busy_fraction: float = 0.9
    kv_high: float = 0.95

    def __post_init__(self) -> None:
        if not 1 <= self.min_in_flight <= self.max_in_flight:
            raise ValueError("need 1 <= min_in_flight <= max_in_flight")
        if self.gain <= 0 or self.slow_start_factor <= 1:
            raise ValueError("gain must be > 0 and slow_start_factor > 1")


def wait_target(load: ServerLoad, cfg: ControllerConfig) -> float:
    """The queue length the controller steers a server towards."""
    return max(cfg.min_wait, cfg.target_wait_fraction * load.running)


def next_limit(limit: int, load: ServerLoad, ours: int, cfg: ControllerConfig) -> int:
    """The next in-flight limit for one server (pure; see the module docstring for the rules).

    ``limit``: the current limit; ``load``: the latest scrape; ``ours``: requests this worker has open
    against the server now.
    """
    target = wait_target(load, cfg)
    total = load.running + load.waiting
    # The server's gauges lag ours by up to a scrape; never claim less than all of it when alone.
    share = min(1.0, ours / total) if total > 0 else 1.0
    new: float = limit
    if load.waiting > target:
        new = limit - max(1.0, cfg.gain * (load.waiting - target) * share)
    elif ours >= limit * cfg.busy_fraction:
        kv_full = load.kv_usage is not None and load.kv_usage >= cfg.kv_high
        if load.waiting <= 0 and not kv_full:
            new = max(limit + 1.0, limit * cfg.slow_start_factor)
        elif not kv_full:
            new = limit + max(1.0, cfg.gain * (target - load.waiting) * share)
    return int(min(cfg.max_in_flight, max(cfg.min_in_flight, math.floor(new))))


def parse_vllm_metrics(text: str) -> ServerLoad | None:
    """The queue gauges from Prometheus text; None when the server does not export them."""
    running = waiting = 0.0
    kv: float | None = None
    seen_running = seen_waiting = False
    for line in text.splitlines():
        if not line.startswith("vllm:"):
            continue
        brace, space = line.find("{"), line.find(" ")
        name_end = brace if 0 <= brace < space or (brace >= 0 and space < 0) else space
        if name_end < 0:
            continue
        name = line[:name_end]
        if name not in (RUNNING, WAITING) and name not in KV_USAGE:
            continue
        rest = line[line.rindex("}") + 1 :] if name_end == brace else line[name_end:]
        try:
            value = float(rest.split()[0])  # a timestamp may follow the value
        except (ValueError, IndexError):
            continue
        if math.isnan(value):
            continue
        if name == RUNNING:
            running += value
            seen_running = True
        elif name == WAITING:
            waiting += value
            seen_waiting = True
        else:
            # Several engines: the fullest cache is the one that preempts first.
            kv = value if kv is None else max(kv, value)
    if not (seen_running and seen_waiting):
        return None
    return ServerLoad(running=running, waiting=waiting, kv_usage=kv)


class MetricsScraper:
    """Fetches one server's ``/metrics``. ``scrape`` returns None when the server has no usable
    metrics (and ``supported`` turns False after a 404 or a page without the gauges)."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, *, timeout_s: float = 2.0, headers: dict[str, str] | None = None) -> None:
        self._session = session
        self.url = base_url.rstrip("/") + "/metrics"
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._headers = headers or {}
        self.supported: bool | None = None
        """None until the first answer; False when the server has no vLLM queue gauges."""

    async def scrape(self) -> ServerLoad | None:
        try:
            async with self._session.get(self.url, timeout=self._timeout, headers=self._headers) as resp:
                if resp.status == 404:
                    self.supported = False
                    return None
                if resp.status != 200:
                    return None
                text = await resp.text()
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            return None
        load = parse_vllm_metrics(text)
        self.supported = load is not None
        return load
