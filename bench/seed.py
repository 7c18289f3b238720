"""The first plan's design, as an engine for the benchmark only (never part of the product):

- the page re-encoded as PNG for every request (decode the stored JPEG, encode PNG, base64);
- a new HTTP client (httpx) for every page: a TCP connection set up and torn down per request;
- one plain (non-streaming) JSON answer, read whole;
- the server-side n-gram repetition processor on every request (vLLM's recipe), not only on retry;
- 8 pages in flight (the worker's budget is set to 8 when this engine runs: ``python -m bench.seed``).

It is plugged into ocr-stream's own worker (Kafka, storage, offsets unchanged), so a benchmark that
compares the two measures the difference in how the model server is driven.

    python -m bench.seed [--max-in-flight 8]     # one worker process; settings from OCR_STREAM_*
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import sys
import time

import httpx

from ocr_stream.config import Settings, load_settings
from ocr_stream.contracts import Usage
from ocr_stream.engines.base import Engine, OcrOutput, OcrRequest
from ocr_stream.engines.deepseek import TD_TOKEN_IDS
from ocr_stream.engines.parsing import parse_output
from ocr_stream.errors import BadInputError, MalformedResponseError, ModelServerError

SEED_IN_FLIGHT = 8


def to_png(jpeg: bytes) -> bytes:
    """The first plan's per-request re-encoding: decode the image, encode it as PNG."""
    from PIL import Image

    with Image.open(io.BytesIO(jpeg)) as im:
        buf = io.BytesIO()
        im.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


class SeedEngine(Engine):
    """DeepSeek-OCR driven the first plan's way (see the module docstring)."""

    name = "seed"

    def __init__(self, url: str, *, model: str = "deepseek-ai/DeepSeek-OCR", max_tokens: int = 4096,
                 timeout_s: float = 600.0, ngram_size: int = 30, ngram_window: int = 90) -> None:
        self.url = url.rstrip("/")
        self.model = model
        self.max_tokens = max_tokens
        self.timeout_s = timeout_s
        self.ngram_size = ngram_size
        self.ngram_window = ngram_window

    @classmethod
    def from_settings(cls, settings: Settings) -> SeedEngine:
        # A fixed cap that fits DeepSeek-OCR's 8,192-token context with a portrait page's ~900 image tokens.
        return cls(settings.vllm_urls[0], model=settings.vllm_model or "deepseek-ai/DeepSeek-OCR",
                   max_tokens=min(4096, settings.max_tokens), timeout_s=settings.request_timeout_s)

    def body(self, request: OcrRequest, png: bytes) -> dict[str, object]:
        prompt = request.prompt.replace("<image>", "").lstrip("\n")
        return {
            "model": self.model,
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(png).decode()}},
                {"type": "text", "text": prompt},
            ]}],
            "temperature": 0.0,
            "max_tokens": min(request.max_tokens or self.max_tokens, self.max_tokens),
            "skip_special_tokens": False,
            "vllm_xargs": {"ngram_size": self.ngram_size, "window_size": self.ngram_window,
                           "whitelist_token_ids": list(TD_TOKEN_IDS)},
            **request.extra,
        }

    async def ocr(self, request: OcrRequest) -> OcrOutput:
        png = await asyncio.to_thread(to_png, request.image.data)
        t0 = time.perf_counter()
        try:
            async with httpx.AsyncClient(timeout=self.timeout_s) as client:
                resp = await client.post(f"{self.url}/v1/chat/completions", json=self.body(request, png))
        except httpx.HTTPError as exc:
            raise ModelServerError(f"{self.url}: {exc!r}") from exc
        if resp.status_code in (400, 422):
            raise BadInputError(f"{self.url} refused the page: {resp.text[:200]}")
        if resp.status_code != 200:
            raise ModelServerError(f"{self.url} answered {resp.status_code}: {resp.text[:200]}")
        try:
            data = resp.json()
            choice = data["choices"][0]
            text = choice["message"]["content"] or ""
            usage = Usage(**{k: data["usage"][k] for k in ("prompt_tokens", "completion_tokens")})
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise MalformedResponseError(f"unexpected answer from {self.url}: {resp.text[:200]}") from exc
        parsed = parse_output(text, request.image.width, request.image.height, page_no=request.page_no or 1)
        return OcrOutput(markdown=parsed.markdown, blocks=parsed.blocks, raw_text=text, usage=usage,
                         finish_reason=choice.get("finish_reason") or "stop", model=self.model,
                         latency_ms=(time.perf_counter() - t0) * 1000.0, malformed=parsed.malformed, server=self.url)


async def serve(settings: Settings) -> int:
    """One ocr-stream worker process whose engine is the seed engine (until SIGTERM/SIGINT)."""
    from ocr_stream.worker.cli import serve_engines

    return await serve_engines(settings, {settings.engine: SeedEngine.from_settings(settings)}, name="seed-worker",
                               client_id="ocr-stream-seed-worker")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.seed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-in-flight", type=int, default=SEED_IN_FLIGHT)
    args = parser.parse_args(argv)
    settings = load_settings(max_in_flight=args.max_in_flight, adaptive_in_flight=False)
    from ocr_stream.observability import configure_logging

    configure_logging(settings.log_level)
    return asyncio.run(serve(settings))


if __name__ == "__main__":
    sys.exit(main())
