"""Worker CPU per page and pages/s against a model server (the simulator or a real vLLM).

    python -m ocr_stream.worker.benchmark --pages 600 --max-in-flight 128 [--vllm-url URL | --instant]

Settings (Kafka, S3) come from OCR_STREAM_* as usual; the run uses a topic prefix, a consumer
group and a bucket of its own and removes the topics afterwards. ``--instant`` swaps the model for
an engine that answers at once, which isolates the worker's own pipeline (Kafka, storage, JSON,
image checks) from the HTTP client. CPU is this process's (every thread, librdkafka's included);
the model server runs elsewhere. ``measure()`` is the same as a function, for ``make bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import random
import resource
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from ..config import Settings, load_settings
from ..contracts import Block, ObjectRef, PageEvent, RenderSettings, Usage, encode
from ..engines.base import Engine, OcrOutput, OcrRequest
from ..storage import open_store
from ..storage.base import ObjectStore, page_image_key
from ..topics import PAGES, TopicAdmin, load_specs
from ..transport.kafka import KafkaTransport
from .service import Worker


class InstantEngine(Engine):
    """Answers at once with ~1,000 tokens' worth of markdown (no HTTP, no model)."""

    name = "instant"

    def __init__(self) -> None:
        self.text = "\n\n".join(f"Paragraph {i}: " + "lorem ipsum dolor sit amet " * 12 for i in range(12))

    async def ocr(self, request: OcrRequest) -> OcrOutput:
        blocks = [Block(label="text", text=p, box=(10, 20 * i, 900, 20 * i + 18)) for i, p in enumerate(self.text.split("\n\n"))]
        return OcrOutput(markdown=self.text, blocks=blocks, raw_text=self.text, usage=Usage(prompt_tokens=916, completion_tokens=1000),
                         finish_reason="stop", model="instant")


def page_jpeg(width: int = 1024, height: int = 1325, seed: int = 0) -> bytes:
    """A text-like page (lines of dark strokes on white), JPEG q90: realistic size and entropy."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    img = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(img)
    y = 60
    while y < height - 60:
        x = 60
        while x < width - 80:
            w = rng.randint(15, 70)
            draw.rectangle((x, y, x + w, y + 12), fill=rng.randint(0, 80))
            x += w + rng.randint(6, 14)
        y += 22
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@dataclass
class Result:
    engine: str
    pages: int
    max_in_flight: int
    wall_s: float
    cpu_s: float
    pages_per_s: float
    cpu_ms_per_page: float
    max_model_in_flight: int
    image_bytes: int


def submit_pages(settings: Settings, transport: KafkaTransport, store: ObjectStore, pages: int, image: bytes) -> None:
    producer = transport.producer(name="bench-submit")
    per_doc = 50
    for i in range(pages):
        doc_id, page_no = f"bench-{i // per_doc}", i % per_doc + 1
        key = page_image_key(doc_id, page_no)
        store.put(key, image, "image/jpeg")
        ev = PageEvent(doc_id=doc_id, page_no=page_no, page_count=per_doc, image=ObjectRef(bucket=store.bucket, key=key),
                       image_width=1024, image_height=1325, image_bytes=len(image),
                       render=RenderSettings(long_side=1325, format="jpeg", quality=90))
        producer.produce(settings.topic(PAGES), encode(ev), ev.key.encode())
    producer.flush(60)


def measure(settings: Settings, engine: Engine, *, pages: int, engine_name: str) -> Result:
    """Submit ``pages`` pages, run one burst worker over them, return wall time and CPU."""
    transport = KafkaTransport(settings.kafka_client_config())
    admin = TopicAdmin(settings.kafka_client_config(), prefix=settings.topic_prefix)
    admin.apply(load_specs())
    store = open_store(settings)
    store.ensure_bucket()
    image = page_jpeg()
    try:
        submit_pages(settings, transport, store, pages, image)
        worker = Worker(settings, transport=transport, store=store, engines={settings.engine: engine}, burst=True, burst_idle_s=0.5)

        async def main() -> None:
            await worker.run()

        # Count only the run's own CPU: not submitting, not the burst's idle tail (near zero anyway).
        cpu0, t0 = _cpu(), time.perf_counter()
        asyncio.run(main())
        cpu, wall = _cpu() - cpu0, time.perf_counter() - t0
        if worker.pages_done < pages:
            raise RuntimeError(f"only {worker.pages_done} of {pages} pages were processed")
        active_wall = wall - 0.5  # the burst waits this long idle before it exits
        return Result(engine=engine_name, pages=pages, max_in_flight=settings.max_in_flight, wall_s=round(wall, 2), cpu_s=round(cpu, 3),
                      pages_per_s=round(pages / active_wall, 1), cpu_ms_per_page=round(cpu * 1000 / pages, 3),
                      max_model_in_flight=worker.max_model_in_flight, image_bytes=len(image))
    finally:
        admin.delete([settings.topic(s.name) for s in load_specs()])
        for key in list(store.list("")):
            store.delete(key)


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ocr_stream.worker.benchmark", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=600)
    parser.add_argument("--max-in-flight", type=int, default=128)
    parser.add_argument("--vllm-url", action="append", default=None)
    parser.add_argument("--instant", action="store_true", help="an engine that answers at once (worker pipeline alone)")
    parser.add_argument("--no-stream", action="store_true", help="DeepSeek engine without streaming (no client-side loop detection)")
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = dict(topic_prefix=f"bench{uuid.uuid4().hex[:6]}.", consumer_group_worker=f"bench-{uuid.uuid4().hex[:6]}",
                                     bucket=f"bench-{uuid.uuid4().hex[:6]}", max_in_flight=args.max_in_flight, adaptive_in_flight=False,
                                     metrics_port=0)
    if args.vllm_url:
        overrides["vllm_urls"] = args.vllm_url
    settings = load_settings(**overrides)
    engine: Engine
    if args.instant:
        engine, name = InstantEngine(), "instant"
    else:
        from ..engines.deepseek import DeepSeekEngine

        if args.no_stream:
            engine, name = DeepSeekEngine.from_settings(settings, stream=False), "deepseek-no-stream"
        else:
            engine, name = DeepSeekEngine.from_settings(settings), "deepseek"
    result = measure(settings, engine, pages=args.pages, engine_name=name)
    print(json.dumps(asdict(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
