"""Drive an OpenAI-compatible server (a real ``vllm serve`` or the simulator) through the same
engine stack the workers use — aiohttp client, server pool, streaming with loop detection, output
parsing — at a list of in-flight levels, and report what it sustains.

Closed loop: at each level, ``in_flight`` pages are always outstanding until ``pages`` have finished.
The servers' own figures (running and waiting requests, KV-cache use) are scraped from /metrics
once a second during each level.
"""

from __future__ import annotations

import asyncio
import io
import random
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from ..contracts import Mode
from ..engines.base import OcrRequest, PageImage
from ..errors import OcrStreamError

_WORDS = ("invoice total amount revenue quarter growth report method result table figure analysis "
          "market customer service product order price rate value number data system model page").split()


def synthetic_pages(count: int = 8, *, width: int = 1024, height: int = 1325, seed: int = 0) -> list[PageImage]:
    """Text pages like a scanned report (JPEG q95), different enough that no cache can help."""
    import pymupdf as _pymupdf

    pymupdf: Any = _pymupdf  # untyped library
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        doc = pymupdf.open()
        page = doc.new_page(width=width * 72 / 150, height=height * 72 / 150)
        y = 40.0
        page.insert_text((40, y), " ".join(rng.choices(_WORDS, k=5)).title(), fontsize=16)
        y += 30
        while y < page.rect.height - 40:
            page.insert_text((40, y), " ".join(rng.choices(_WORDS, k=12)), fontsize=9)
            y += 13
        pix = page.get_pixmap(dpi=150)
        data = pix.tobytes("jpeg", jpg_quality=95)
        out.append(PageImage(data=data, width=pix.width, height=pix.height, content_type="image/jpeg"))
        doc.close()
    return out


@dataclass
class ServerSample:
    running: float = 0.0
    waiting: float = 0.0
    kv_cache: float | None = None


@dataclass
class LevelResult:
    in_flight: int
    pages: int
    failed: int
    seconds: float
    pages_per_s: float
    output_tokens_per_s: float
    latency_p50_s: float
    latency_p95_s: float
    latency_p99_s: float
    server_running_mean: float | None
    server_waiting_mean: float | None
    kv_cache_max: float | None
    cost_per_1000_pages: float | None
    errors: dict[str, int] = field(default_factory=dict)
    output_tokens: int = 0
    """Completion tokens of the finished pages, as the server reported them (usage)."""
    output_tokens_per_page_min: int = 0
    output_tokens_per_page_max: int = 0


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    idx = min(len(values) - 1, max(0, round(q * (len(values) - 1))))
    return values[idx]


def parse_vllm_metrics(text: str) -> ServerSample:
    sample = ServerSample()
    for fam in text_string_to_metric_families(text):
        total = sum(s.value for s in fam.samples if s.name == fam.name or s.name == fam.name + "_total")
        if fam.name == "vllm:num_requests_running":
            sample.running = total
        elif fam.name == "vllm:num_requests_waiting":
            sample.waiting = total
        elif fam.name in ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc") and sample.kv_cache is None:
            sample.kv_cache = total
    return sample


async def _scrape(session: aiohttp.ClientSession, urls: list[str], out: list[ServerSample], stop: asyncio.Event) -> None:
    while not stop.is_set():
        merged = ServerSample()
        got = False
        for url in urls:
            try:
                async with session.get(f"{url}/metrics", timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    if resp.status == 200:
                        s = parse_vllm_metrics(await resp.text())
                        merged.running += s.running
                        merged.waiting += s.waiting
                        if s.kv_cache is not None:
                            merged.kv_cache = max(merged.kv_cache or 0.0, s.kv_cache)
                        got = True
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                continue
        if got:
            out.append(merged)
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except asyncio.TimeoutError:
            pass


async def run_level(
    engine: Any,
    images: list[PageImage],
    *,
    in_flight: int,
    pages: int,
    mode: Mode,
    prompt: str,
    max_tokens: int | None,
    ignore_eos: bool,
    repetition_control: bool,
    urls: list[str],
    gpu_price_per_hour: float | None,
) -> LevelResult:
    latencies: list[float] = []
    per_page: list[int] = []
    errors: dict[str, int] = {}
    extra: dict[str, object] = {"ignore_eos": True} if ignore_eos else {}
    next_page = 0
    lock = asyncio.Lock()

    async def one(i: int) -> None:
        req = OcrRequest(image=images[i % len(images)], mode=mode, prompt=prompt, max_tokens=max_tokens,
                         repetition_control=repetition_control, extra=extra, doc_id="bench", page_no=i + 1)
        t0 = time.perf_counter()
        try:
            out = await engine.ocr(req)
        except OcrStreamError as exc:
            errors[exc.code.value] = errors.get(exc.code.value, 0) + 1
            return
        latencies.append(time.perf_counter() - t0)
        per_page.append(out.usage.completion_tokens)

    async def lane() -> None:
        nonlocal next_page
        while True:
            async with lock:
                if next_page >= pages:
                    return
                i = next_page
                next_page += 1
            await one(i)

    samples: list[ServerSample] = []
    stop = asyncio.Event()
    async with aiohttp.ClientSession() as session:
        scraper = asyncio.create_task(_scrape(session, urls, samples, stop))
        t0 = time.perf_counter()
        await asyncio.gather(*(lane() for _ in range(min(in_flight, pages))))
        seconds = time.perf_counter() - t0
        stop.set()
        await scraper
    done = len(latencies)
    tokens = sum(per_page)
    pps = done / seconds if seconds > 0 else 0.0
    return LevelResult(
        in_flight=in_flight,
        pages=done,
        failed=pages - done,
        seconds=round(seconds, 3),
        pages_per_s=round(pps, 3),
        output_tokens_per_s=round(tokens / seconds, 1) if seconds > 0 else 0.0,
        latency_p50_s=round(_percentile(latencies, 0.50), 3),
        latency_p95_s=round(_percentile(latencies, 0.95), 3),
        latency_p99_s=round(_percentile(latencies, 0.99), 3),
        server_running_mean=round(statistics.fmean(s.running for s in samples), 1) if samples else None,
        server_waiting_mean=round(statistics.fmean(s.waiting for s in samples), 1) if samples else None,
        kv_cache_max=max((s.kv_cache for s in samples if s.kv_cache is not None), default=None),
        cost_per_1000_pages=round(gpu_price_per_hour / (pps * 3600) * 1000, 4) if gpu_price_per_hour and pps > 0 else None,
        errors=errors,
        output_tokens=tokens,
        output_tokens_per_page_min=min(per_page, default=0),
        output_tokens_per_page_max=max(per_page, default=0),
    )


def format_table(results: list[LevelResult]) -> str:
    head = ("in flight", "pages", "failed", "pages/s", "out tok/s", "p50 s", "p95 s", "p99 s",
            "running", "waiting", "KV max", "$/1k pages")
    rows = [head]
    for r in results:
        rows.append((str(r.in_flight), str(r.pages), str(r.failed), f"{r.pages_per_s:.2f}", f"{r.output_tokens_per_s:.0f}",
                     f"{r.latency_p50_s:.2f}", f"{r.latency_p95_s:.2f}", f"{r.latency_p99_s:.2f}",
                     "-" if r.server_running_mean is None else f"{r.server_running_mean:.0f}",
                     "-" if r.server_waiting_mean is None else f"{r.server_waiting_mean:.0f}",
                     "-" if r.kv_cache_max is None else f"{r.kv_cache_max:.0%}",
                     "-" if r.cost_per_1000_pages is None else f"{r.cost_per_1000_pages:.3f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    buf = io.StringIO()
    for row in rows:
        buf.write("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)).rstrip() + "\n")
    return buf.getvalue()


def as_dict(results: list[LevelResult]) -> list[dict[str, Any]]:
    return [asdict(r) for r in results]
