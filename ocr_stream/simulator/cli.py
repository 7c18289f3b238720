"""``ocr-stream simulate-vllm``: run the vLLM simulator on a port (or print its capacity)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any

from .batching import Timing, capacity_pages_per_s
from .faults import FAULT_MODES, FaultConfig
from .output import GROUNDING_PROMPT, MODES, TokenDistribution, prompt_tokens
from .config import DEFAULT_MODEL, SimulatorConfig
from .server import SimulatorServer

COMMAND = "simulate-vllm"
HELP = "Run an OpenAI-compatible vLLM simulator (DeepSeek-OCR output, H100 timing, fault modes) for tests and benchmarks."
DESCRIPTION = (
    HELP + " Prints 'listening on http://HOST:PORT' once it accepts requests. Endpoints: /v1/chat/completions "
    "(plain and streaming), /v1/models, /health, /metrics, and for tests GET/POST /admin/faults and GET /admin/state. "
    "Timing: one vLLM 0.26 engine on an H100 (continuous batching, max-num-seqs slots, FIFO queue), "
    "--speed times faster. See docs/simulator.md."
)


def configure(parser: argparse.ArgumentParser) -> None:
    d = SimulatorConfig()
    t = TokenDistribution()
    parser.add_argument("--host", default=d.host, help="address to listen on (default %(default)s)")
    parser.add_argument("--port", type=int, default=d.port, help="port; 0 picks a free one (default %(default)s)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="served model name; requests naming another get 404 (default %(default)s)")
    parser.add_argument("--max-num-seqs", type=int, default=d.max_num_seqs, help="running slots of the engine; more requests wait in FIFO (default %(default)s)")
    parser.add_argument("--max-model-len", type=int, default=d.max_model_len, help="context length: prompt + max_tokens limit (default %(default)s)")
    parser.add_argument("--speed", type=float, default=d.speed, help="time scale: 50 = 50x faster than the H100 model (default %(default)s)")
    parser.add_argument("--mode", default=d.default_mode, choices=[*MODES, "gundam"], help="image mode when a request sets none (default %(default)s)")
    parser.add_argument("--tokens-mean", type=float, default=t.median, help="median output tokens per page (default %(default)s)")
    parser.add_argument("--tokens-sigma", type=float, default=t.sigma, help="log-normal sigma of output tokens (default %(default)s)")
    parser.add_argument("--tokens-min", type=int, default=t.low, help="fewest output tokens of a normal page (default %(default)s)")
    parser.add_argument("--tokens-max", type=int, default=t.high, help="most output tokens of a normal page (default %(default)s)")
    parser.add_argument("--tokens-tail", type=float, default=t.tail, help="share of dense pages with tokens-max..tokens-tail-max tokens (default %(default)s)")
    parser.add_argument("--tokens-tail-max", type=int, default=t.tail_max, help="most output tokens of a dense page (default %(default)s)")
    parser.add_argument("--tokens-fixed", type=int, default=0, help="every page exactly this many output tokens (0: use the distribution)")
    parser.add_argument("--timing-scale", type=float, default=1.0, help="multiply every engine cost: 2 = an engine half as fast as the H100 (default 1)")
    parser.add_argument("--kv-cache-tokens", type=int, default=d.kv_cache_tokens, help="KV cache size for vllm:kv_cache_usage_perc (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="salt of the deterministic output: another seed, other pages (default 0)")
    parser.add_argument("--tick-ms", type=float, default=d.tick_s * 1000, help="shortest wall time between stream chunks (default %(default)s)")
    parser.add_argument("--chunk-tokens", type=int, default=d.chunk_tokens, help="tokens per stream chunk: 0 groups what a tick generated, 1 is vLLM's one chunk per token (default %(default)s)")
    parser.add_argument("--max-chunk-rate", type=float, default=d.max_chunk_rate, help="most stream chunks a second over all streams; more streams get fewer, larger chunks (default %(default)s)")
    parser.add_argument("--fault", default="none", choices=FAULT_MODES, help="fault mode at start (default none); switch at run time with POST /admin/faults")
    parser.add_argument("--fault-rate", type=float, default=1.0, help="probability a request is hit (default 1.0)")
    parser.add_argument("--fault-count", type=int, default=0, help="only the first N hits (0: no limit)")
    parser.add_argument("--fault-seed", type=int, default=None, help="seed of the fault dice, for reproducible runs")
    parser.add_argument("--retry-after", type=float, default=1.0, help="Retry-After seconds of the 429 fault (default 1)")
    parser.add_argument("--slow-delay", type=float, default=30.0, help="wall seconds the slow fault waits before answering (default 30)")
    parser.add_argument("--print-capacity", action="store_true", help="print the most pages/s this configuration serves (wall time) and exit")


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    """The :class:`SimulatorConfig` the command line describes (ValueError on a bad value)."""
    timing = Timing().scaled(args.timing_scale) if args.timing_scale != 1.0 else Timing()
    tokens = TokenDistribution(median=args.tokens_mean, sigma=args.tokens_sigma, low=args.tokens_min, high=args.tokens_max,
                               tail=args.tokens_tail, tail_max=args.tokens_tail_max, fixed=args.tokens_fixed)
    faults = FaultConfig(mode=args.fault, rate=args.fault_rate, count=args.fault_count, seed=args.fault_seed,
                         retry_after_s=args.retry_after, delay_s=args.slow_delay)
    return SimulatorConfig(
        host=args.host, port=args.port, model=args.model, max_num_seqs=args.max_num_seqs, max_model_len=args.max_model_len,
        speed=args.speed, timing=timing, tokens=tokens, default_mode=args.mode, kv_cache_tokens=args.kv_cache_tokens,
        seed=args.seed, faults=faults, tick_s=args.tick_ms / 1000.0, max_chunk_rate=args.max_chunk_rate, chunk_tokens=args.chunk_tokens,
    )


def capacity_report(config: SimulatorConfig) -> str:
    """A small table of the simulator's pages/s (wall time) for this configuration."""
    prompt = prompt_tokens(GROUNDING_PROMPT, (1024, 1325), config.default_mode)
    out_tokens = config.tokens.mean()
    lines = [
        f"simulated engine: max-num-seqs {config.max_num_seqs}, speed {config.speed:g}x, mode {config.default_mode} "
        f"({prompt} prompt tokens for a portrait page with the grounding prompt), mean output {out_tokens:.0f} tokens/page",
        "in flight   pages/s (n-gram off)   pages/s (n-gram on)",
    ]
    for n in sorted({8, 64, 128, config.max_num_seqs}):
        off = config.speed * capacity_pages_per_s(config.timing, in_flight=n, max_num_seqs=config.max_num_seqs,
                                                  output_tokens=out_tokens, prompt_tokens=prompt)
        on = config.speed * capacity_pages_per_s(config.timing, in_flight=n, max_num_seqs=config.max_num_seqs,
                                                 output_tokens=out_tokens, prompt_tokens=prompt, ngram_fraction=1.0)
        lines.append(f"{n:>9}   {off:>20.3f}   {on:>19.3f}")
    lines.append(f"capacity: {config.capacity():.3f} pages/s (n-gram off), {config.capacity(ngram_fraction=1.0):.3f} pages/s (n-gram on)")
    return "\n".join(lines)


async def serve(config: SimulatorConfig) -> None:
    """Serve until SIGINT or SIGTERM."""
    server = SimulatorServer(config)
    url = await server.start()
    print(f"listening on {url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread / not POSIX
            pass
    try:
        await stop.wait()
    finally:
        await server.close()


def run(args: argparse.Namespace, settings: Any) -> int:
    try:
        config = config_from_args(args)
    except ValueError as exc:
        print(f"ocr-stream simulate-vllm: {exc}", file=sys.stderr)
        return 2
    if args.print_capacity:
        print(capacity_report(config))
        return 0
    try:
        asyncio.run(serve(config))
    except OSError as exc:
        print(f"ocr-stream simulate-vllm: cannot listen on {config.host}:{config.port}: {exc}", file=sys.stderr)
        return 2
    return 0
