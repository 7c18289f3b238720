"""``ocr-stream bench``: measure a model server through ocr-stream's engine stack, or build the
random-weight DeepSeek-OCR replica for GPU throughput runs. (`make bench` runs the CPU suite in bench/.)"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from ..config import Settings
from ..contracts import Mode

COMMAND = "bench"
HELP = "benchmark a model server at several in-flight levels (--vllm-url), or build the replica model (--build-replica)"
DESCRIPTION = (
    "Drive one or more OpenAI-compatible servers (a real `vllm serve`, or `ocr-stream simulate-vllm`) "
    "through the engine stack the workers use, at each in-flight level, and report pages/s, output "
    "tokens/s, p50/p95/p99 page latency, the servers' running/waiting requests and KV-cache use from "
    "their /metrics, and the cost per 1,000 pages at --gpu-price. With --build-replica DIR, write a "
    "random-weight DeepSeek-OCR replica to serve with `vllm serve DIR --load-format dummy`."
)


def _levels(text: str) -> list[int]:
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from exc
    if not levels or any(n < 1 for n in levels):
        raise argparse.ArgumentTypeError("in-flight levels must be positive integers")
    return levels


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vllm-url", action="append", default=None, metavar="URL",
                   help="server base URL (repeatable: several engines or GPUs); default: OCR_STREAM_VLLM_URLS")
    p.add_argument("--in-flight", type=_levels, default=[8, 64, 256], metavar="N,N,...", help="in-flight levels (default: 8,64,256)")
    p.add_argument("--pages", type=int, default=0, help="pages per level (default: 3x the level, at least 64)")
    p.add_argument("--max-tokens", type=int, default=None, help="output tokens per page (with --ignore-eos: exactly this many)")
    p.add_argument("--ignore-eos", action="store_true", help="force --max-tokens output tokens per page (random-weight replicas)")
    p.add_argument("--mode", choices=[m.value for m in Mode], default=Mode.GUNDAM.value, help="resolution mode (default: gundam)")
    p.add_argument("--prompt", default="markdown", help="prompt preset or text (default: markdown)")
    p.add_argument("--repetition-control", action="store_true", help="ask for the server-side n-gram processor on every request")
    p.add_argument("--no-stream", action="store_true", help="plain JSON responses instead of streaming")
    p.add_argument("--no-loop-detection", action="store_true",
                   help="keep streaming but never abort on a loop (a random-weight replica's output is repetitive by nature)")
    p.add_argument("--gpu-price", type=float, default=None, metavar="USD_PER_HOUR", help="GPU price per hour, for the cost per 1,000 pages")
    p.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the results as JSON")
    p.add_argument("--build-replica", type=Path, default=None, metavar="DIR", help="write the random-weight replica model directory and exit")
    p.add_argument("--overwrite", action="store_true", help="with --build-replica: replace a non-empty DIR")


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.build_replica is not None:
        from .replica import build_replica

        try:
            out = build_replica(args.build_replica, overwrite=args.overwrite)
        except FileExistsError as exc:
            print(f"ocr-stream bench: {exc}", file=sys.stderr)
            return 2
        print(f"replica written to {out}; serve it with: vllm serve {out} --load-format dummy "
              "--served-model-name deepseek-ai/DeepSeek-OCR --no-enable-prefix-caching --mm-processor-cache-gb 0")
        return 0
    return asyncio.run(_bench(args, settings))


async def _bench(args: argparse.Namespace, settings: Settings) -> int:
    from ..engines.deepseek import DeepSeekEngine
    from ..engines.prompts import resolve_prompt
    from .server import as_dict, format_table, run_level, synthetic_pages

    urls = [u.rstrip("/") for u in (args.vllm_url or settings.vllm_urls)]
    images = synthetic_pages()
    results = []
    for level in args.in_flight:
        engine = DeepSeekEngine.from_settings(
            settings.model_copy(update={"vllm_urls": urls}), max_in_flight=level, adaptive=False, stream=not args.no_stream,
            loop_detection=not args.no_loop_detection,
            max_tokens=args.max_tokens or settings.max_tokens,
        )
        await engine.start()
        try:
            pages = args.pages or max(64, 3 * level)
            res = await run_level(
                engine, images, in_flight=level, pages=pages, mode=Mode(args.mode), prompt=resolve_prompt(args.prompt),
                max_tokens=args.max_tokens, ignore_eos=args.ignore_eos, repetition_control=args.repetition_control,
                urls=urls, gpu_price_per_hour=args.gpu_price,
            )
        finally:
            await engine.aclose()
        results.append(res)
        print(f"in flight {level}: {res.pages_per_s:.2f} pages/s", file=sys.stderr)
    print(format_table(results), end="")
    if args.json:
        args.json.write_text(json.dumps({"servers": urls, "levels": as_dict(results)}, indent=2) + "\n")
    return 0 if all(r.pages > 0 for r in results) else 1
