"""DeepSeek-OCR over OpenAI-compatible servers (vLLM first): one page image + prompt → OcrOutput.

One request per page: ``POST {server}/v1/chat/completions`` with the page as a ``data:`` URL (the
JPEG bytes as stored, base64), the prompt text, ``temperature: 0``, ``max_tokens``,
``skip_special_tokens: false`` (the grounding tags are special tokens) and, by default,
``stream: true`` with ``stream_options: {include_usage: true}``. Two extras are sent only when
needed, so that an upstream ``vllm serve`` without our plugin keeps working:

- ``mm_processor_kwargs: {"mode": "<mode>"}`` when the mode is not ``gundam`` (the only mode upstream
  serves; the ocr-stream vLLM plugin reads this key);
- ``vllm_xargs: {ngram_size, window_size, whitelist_token_ids: [128821, 128822]}`` (the server-side
  n-gram repetition processor; 128821/128822 are ``<td>``/``</td>``) when the request asks for
  repetition control.

While the answer streams in, every delta goes to a ``LoopDetector``; on a loop the response is
closed at once — vLLM sees the disconnect and aborts the request, freeing its batch slot — and
``RepetitionError`` is raised.

Errors (ocr_stream.errors) by cause::

    400, 422 (the server refused the image / request)   BadInputError (LimitExceededError when the
                                                        prompt does not fit the model's context)
    429                                                 RateLimitedError(retry_after_s=Retry-After)
    503, 502, 504, connection refused                   ModelServerError(CONNECTION / SERVER_ERROR),
                                                        server ejected from the pool
    other 5xx, 401/403/404                              ModelServerError(SERVER_ERROR)
    request_timeout_s passed, dead engine aborted       ModelServerError(TIMEOUT)
    connection reset / closed mid-answer                ModelServerError(CONNECTION)
    loop seen in the stream                             RepetitionError
    finish_reason "length"                              LengthError
    no choices, bad JSON, broken SSE, no finish_reason  MalformedResponseError

An answer that stops normally with no text is a blank page (markdown ""), not an error.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
import msgspec
import pybase64

from ..config import Settings
from ..contracts import Mode, Usage
from ..errors import (
    BadInputError,
    ErrorCode,
    LengthError,
    LimitExceededError,
    MalformedResponseError,
    ModelOutputError,
    ModelServerError,
    OcrStreamError,
    RateLimitedError,
    RepetitionError,
)
from .adaptive import ControllerConfig
from .base import Engine, OcrOutput, OcrRequest
from .loops import LoopDetector
from .pool import Lease, Server, ServerPool, ServerStats

log = logging.getLogger(__name__)

__all__ = ["DeepSeekEngine", "TD_TOKEN_IDS"]

TD_TOKEN_IDS = (128821, 128822)
"""``<td>`` and ``</td>`` in DeepSeek-OCR's vocabulary: exempt from the n-gram processor (vLLM's recipe)."""

_IMAGE_PLACEHOLDER = "<image>"
_IMAGE_SLOT = "\x00ocr-stream-image\x00"
_MAX_ERROR_BODY = 2048


class DeepSeekEngine(Engine):
    """DeepSeek-OCR behind one or more OpenAI-compatible servers (see the module docstring).

    Call ``start`` once inside the event loop (``ocr`` starts it on first use too) and ``aclose``
    at the end. ``ocr`` may run concurrently up to ``max_in_flight``.
    """

    accepts_image_urls = True  # vLLM fetches http(s) image URLs itself

    name = "deepseek"

    def __init__(
        self,
        urls: list[str],
        *,
        api_key: str | None = None,
        model: str | None = None,
        max_tokens: int = 8192,
        max_in_flight: int = 256,
        connect_timeout_s: float = 5.0,
        request_timeout_s: float = 600.0,
        stream: bool = True,
        ngram_size: int = 30,
        ngram_window: int = 90,
        loop_min_period: int = 8,
        loop_min_repeats: int = 10,
        loop_window: int = 8192,
        health_probe_interval_s: float = 5.0,
        adaptive: bool = True,
        dead_after_timeouts: int = 3,
        stall_after_s: float = 120.0,
        metrics_interval_s: float = 1.0,
        loop_detection: bool = True,
    ) -> None:
        if not urls:
            raise ValueError("DeepSeekEngine needs at least one server URL")
        self.urls = [u.rstrip("/") for u in urls]
        self.model = model
        self.max_tokens = max_tokens
        self.max_in_flight = max_in_flight
        self.connect_timeout_s = connect_timeout_s
        self.request_timeout_s = request_timeout_s
        self.stream = stream
        self.ngram_size = ngram_size
        self.ngram_window = ngram_window
        self.loop_min_period = loop_min_period
        self.loop_min_repeats = loop_min_repeats
        self.loop_window = loop_window
        self.health_probe_interval_s = health_probe_interval_s
        self.adaptive = adaptive
        self.dead_after_timeouts = dead_after_timeouts
        self.stall_after_s = stall_after_s
        self.metrics_interval_s = metrics_interval_s
        self.loop_detection = loop_detection
        self._headers: dict[str, str] = {"Content-Type": "application/json", "Accept": "text/event-stream" if stream else "application/json"}
        self._probe_headers: dict[str, str] = {}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
            self._probe_headers["Authorization"] = f"Bearer {api_key}"
        self._session: aiohttp.ClientSession | None = None
        self._pool: ServerPool | None = None
        self._discovery: dict[str, asyncio.Future[str]] = {}
        self._start_lock: asyncio.Lock | None = None

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> DeepSeekEngine:
        """The engine the settings describe (``vllm_urls``, ``vllm_api_key``, timeouts, limits...)."""
        kwargs: dict[str, Any] = dict(
            api_key=settings.vllm_api_key.get_secret_value() if settings.vllm_api_key else None,
            model=settings.vllm_model,
            max_tokens=settings.max_tokens,
            max_in_flight=settings.max_in_flight,
            connect_timeout_s=settings.connect_timeout_s,
            request_timeout_s=settings.request_timeout_s,
            ngram_size=settings.ngram_size,
            ngram_window=settings.ngram_window,
            loop_min_period=settings.loop_min_period,
            loop_min_repeats=settings.loop_min_repeats,
            health_probe_interval_s=settings.health_probe_interval_s,
            adaptive=settings.adaptive_in_flight,
            stream=settings.stream_responses,
        )
        kwargs.update(overrides)
        return cls(list(settings.vllm_urls), **kwargs)

    # --- lifecycle -----------------------------------------------------------------------------

    @property
    def pool(self) -> ServerPool:
        if self._pool is None:
            raise RuntimeError("DeepSeekEngine.start() has not run")
        return self._pool

    async def start(self) -> None:
        """Open the HTTP client (one per engine, so one per worker process) and start the pool's
        health probes and metrics scrapes."""
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._session is not None:
                return
            n = len(self.urls)
            # The pool must never be the bottleneck: room for every request plus probes and scrapes.
            connector = aiohttp.TCPConnector(
                limit=self.max_in_flight + 4 * n,
                limit_per_host=self.max_in_flight + 4 * n,
                # vLLM's uvicorn drops idle keep-alive connections after 5 s; letting ours go first avoids
                # sending a page down a connection the server is closing.
                keepalive_timeout=4.0,
                enable_cleanup_closed=True,
            )
            timeout = aiohttp.ClientTimeout(total=None, connect=self.connect_timeout_s, sock_connect=self.connect_timeout_s)
            # The whole-request limit is an asyncio.timeout per request (see _exchange), so the pool can
            # expire the requests of an engine found dead.
            self._session = aiohttp.ClientSession(connector=connector, timeout=timeout, raise_for_status=False, auto_decompress=True)
            self._pool = ServerPool(
                self.urls,
                self._session,
                max_in_flight=self.max_in_flight,
                health_probe_interval_s=self.health_probe_interval_s,
                probe_timeout_s=max(self.connect_timeout_s, 2.0),
                dead_after_timeouts=self.dead_after_timeouts,
                stall_after_s=self.stall_after_s,
                adaptive=self.adaptive,
                controller=ControllerConfig(min_in_flight=min(4, self.max_in_flight), max_in_flight=self.max_in_flight),
                metrics_interval_s=self.metrics_interval_s,
                headers=self._probe_headers,
            )
            self._pool.start()

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()
        for task in self._discovery.values():
            task.cancel()
        if self._session is not None:
            await self._session.close()
        self._session = None
        self._pool = None
        self._discovery.clear()

    async def healthy(self) -> bool:
        return self._pool is not None and self._pool.healthy

    def suggested_in_flight(self) -> int | None:
        return None if self._pool is None else self._pool.suggested_in_flight()

    def server_stats(self) -> list[ServerStats]:
        """Per-server health, in-flight, adaptive limit, last /metrics scrape and counters (for metrics)."""
        return [] if self._pool is None else self._pool.stats()

    # --- model discovery -----------------------------------------------------------------------

    async def model_for(self, server: Server) -> str:
        """The configured model, or the first one ``GET /v1/models`` lists (cached per server)."""
        if self.model:
            return self.model
        if server.model:
            return server.model
        task = self._discovery.get(server.url)
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            # One lookup per server, shared by every page waiting for it, and not cancelled with any one of them.
            task = asyncio.ensure_future(self._discover(server))
            self._discovery[server.url] = task
        return await asyncio.shield(task)

    async def _discover(self, server: Server) -> str:
        assert self._session is not None
        url = server.url + "/v1/models"
        try:
            async with asyncio.timeout(max(self.connect_timeout_s * 2, 5.0)):
                async with self._session.get(url, headers=self._probe_headers) as resp:
                    body = await resp.read()
                    if resp.status != 200:
                        raise ModelServerError(f"{url} answered {resp.status}: {_snippet(body)}")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise ModelServerError(f"cannot list models at {url}: {_describe(exc)}", code=_conn_code(exc)) from exc
        try:
            data = json.loads(body)
            card = data["data"][0]
            model = card["id"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise MalformedResponseError(f"{url} did not list any model: {_snippet(body)}") from exc
        if not isinstance(model, str) or not model:
            raise MalformedResponseError(f"{url} listed a model without an id")
        max_len = card.get("max_model_len") if isinstance(card, dict) else None
        if isinstance(max_len, int) and max_len > 0:
            server.max_model_len = max_len
        log.info("model discovered", extra={"server": server.url, "model": model})
        server.model = model
        return model

    # --- requests ------------------------------------------------------------------------------

    def max_tokens_for(self, request: OcrRequest, server: Server | None = None) -> int:
        """The output cap to ask for: the request's (or the engine's) ``max_tokens``, lowered so that
        prompt + output fit the server's context (vLLM refuses a request that does not: DeepSeek-OCR
        has 8,192 tokens of context and a portrait page's image alone takes ~903)."""
        wanted = request.max_tokens or self.max_tokens
        if server is None or server.max_model_len is None:
            return wanted
        from .prompts import image_tokens

        w, h = request.image.width, request.image.height
        # Upstream vLLM serves gundam whatever mode is asked: reserve for the larger of the two.
        image = max(image_tokens(request.mode, w, h), image_tokens(Mode.GUNDAM, w, h))
        prompt = image + len(request.prompt) // 2 + _TEMPLATE_TOKENS
        return max(1, min(wanted, server.max_model_len - prompt))

    def build_body(self, request: OcrRequest, model: str, *, max_tokens: int | None = None) -> bytes:
        """The chat-completions request body as JSON bytes."""
        image = request.image
        text = request.prompt
        # vLLM's chat template inserts the image placeholder itself; a second one would not match the image count.
        if text.startswith(_IMAGE_PLACEHOLDER):
            text = text[len(_IMAGE_PLACEHOLDER) :].lstrip("\n")
        text = text.replace(_IMAGE_PLACEHOLDER, "")
        body: dict[str, Any] = {
            "model": model,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": _IMAGE_SLOT}},
                        {"type": "text", "text": text},
                    ],
                }
            ],
            "temperature": 0.0,
            "max_tokens": max_tokens or request.max_tokens or self.max_tokens,
            "skip_special_tokens": False,
            "stream": self.stream,
        }
        if self.stream:
            body["stream_options"] = {"include_usage": True}
        if request.mode is not Mode.GUNDAM:
            body["mm_processor_kwargs"] = {"mode": request.mode.value}
        if request.repetition_control:
            body["vllm_xargs"] = {
                "ngram_size": self.ngram_size,
                "window_size": self.ngram_window,
                "whitelist_token_ids": list(TD_TOKEN_IDS),
            }
        for key, value in request.extra.items():
            body.setdefault(key, value)
        # The base64 image is ASCII without quotes or backslashes: splice it in instead of making
        # json.dumps scan a few hundred kilobytes per page.
        head, tail = json.dumps(body, separators=(",", ":"), ensure_ascii=False).split(_IMAGE_SLOT_JSON, 1)
        if image.url is not None:  # the server fetches it (OCR_STREAM_IMAGE_TRANSPORT=url)
            return b"".join((head.encode(), json.dumps(image.url)[1:-1].encode(), tail.encode()))
        return b"".join((head.encode(), b"data:", image.content_type.encode(), b";base64,", pybase64.b64encode(image.data), tail.encode()))

    async def ocr(self, request: OcrRequest) -> OcrOutput:
        """OCR one page (see the module docstring for the errors)."""
        if self._session is None:
            await self.start()
        pool = self.pool
        with pool.lease() as lease:
            server = lease.server
            model = await self._model_or_eject(lease)
            max_tokens = self.max_tokens_for(request, server)
            t0 = time.perf_counter()
            try:
                text, finish, usage = await self._exchange(lease, self.build_body(request, model, max_tokens=max_tokens), request)
            except _ContextOverflow as over:
                # Our estimate of the prompt was short (or the context is unknown): the server said
                # exactly how much room there is; ask once more within it.
                server.max_model_len = over.max_model_len
                retry = over.max_model_len - over.prompt_tokens
                if retry < 1 or retry >= max_tokens:
                    raise LimitExceededError(str(over)) from over
                max_tokens = retry
                text, finish, usage = await self._exchange(lease, self.build_body(request, model, max_tokens=max_tokens), request)
            latency_ms = (time.perf_counter() - t0) * 1000.0
            lease.success()
        extra = {"doc_id": request.doc_id, "page_no": request.page_no, "server": server.url}
        if finish == "length" and not request.extra.get("ignore_eos"):  # benchmarks force the length
            log.info("answer hit max_tokens", extra=extra)
            raise LengthError(f"the answer reached max_tokens ({max_tokens}) without finishing (finish_reason=length)")
        if finish not in ("stop", "length"):
            raise MalformedResponseError(f"unexpected finish_reason {finish!r} from {server.url}")
        from .parsing import parse_output

        parsed = parse_output(text, request.image.width, request.image.height, page_no=request.page_no or 1)
        return OcrOutput(
            markdown=parsed.markdown,
            blocks=parsed.blocks,
            raw_text=text,
            usage=usage,
            finish_reason=finish,
            model=model,
            latency_ms=latency_ms,
            malformed=parsed.malformed,
            server=server.url,
        )

    async def _model_or_eject(self, lease: Lease) -> str:
        try:
            return await self.model_for(lease.server)
        except ModelServerError as exc:
            if exc.code is ErrorCode.CONNECTION:
                lease.connection_failed(str(exc))
            raise

    async def _exchange(self, lease: Lease, body: bytes, request: OcrRequest) -> tuple[str, str | None, Usage]:
        """Send one request and read the answer: (text, finish_reason, usage)."""
        assert self._session is not None
        url = lease.server.url + "/v1/chat/completions"
        try:
            async with asyncio.timeout(self.request_timeout_s) as deadline:
                lease.watch(deadline)
                async with self._session.post(url, data=body, headers=self._headers) as resp:
                    lease.progress()
                    if resp.status != 200:
                        await self._raise_for_status(resp, lease)
                    if self.stream:
                        return await self._read_stream(resp, lease, request)
                    return await self._read_json(resp)
        except (ModelOutputError, BadInputError):
            lease.success()  # the server is alive and answering; the page or the model's output is the problem
            raise
        except OcrStreamError:
            raise
        except TimeoutError as exc:
            if isinstance(exc, aiohttp.ConnectionTimeoutError):
                lease.connection_failed(f"connect timeout: {exc}")
                raise ModelServerError(f"cannot connect to {lease.server.url}: {_describe(exc)}", code=ErrorCode.CONNECTION) from exc
            dead = not lease.server.healthy and lease.server.probation
            lease.timed_out()
            why = "the server was found dead and its requests aborted" if dead else f"no complete answer within {self.request_timeout_s:g}s"
            raise ModelServerError(f"{lease.server.url}: {why}", code=ErrorCode.TIMEOUT) from exc
        except aiohttp.ClientConnectorError as exc:
            lease.connection_failed(_describe(exc))
            raise ModelServerError(f"cannot connect to {lease.server.url}: {_describe(exc)}", code=ErrorCode.CONNECTION) from exc
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, OSError) as exc:
            lease.server.failures += 1
            raise ModelServerError(f"connection to {lease.server.url} broke mid-answer: {_describe(exc)}", code=ErrorCode.CONNECTION) from exc
        except aiohttp.ClientError as exc:
            lease.server.failures += 1
            raise ModelServerError(f"{lease.server.url}: {_describe(exc)}", code=ErrorCode.SERVER_ERROR) from exc

    async def _raise_for_status(self, resp: aiohttp.ClientResponse, lease: Lease) -> None:
        status = resp.status
        try:
            raw = await resp.content.read(_MAX_ERROR_BODY)
        except (aiohttp.ClientError, OSError):
            raw = b""
        detail = _error_detail(raw)
        where = lease.server.url
        if status == 429:
            raise RateLimitedError(f"{where} is rate limiting (429): {detail}", retry_after_s=_retry_after(resp.headers))
        if status in (502, 503, 504):
            lease.connection_failed(f"HTTP {status}")
            raise ModelServerError(f"{where} is unavailable ({status}): {detail}", code=ErrorCode.SERVER_ERROR)
        if status >= 500:
            lease.server.failures += 1
            raise ModelServerError(f"{where} failed ({status}): {detail}", code=ErrorCode.SERVER_ERROR)
        if status == 408:
            raise ModelServerError(f"{where} timed the request out (408): {detail}", code=ErrorCode.TIMEOUT)
        if status in (400, 413, 422):
            m = _CONTEXT_RE.search(detail)
            if m:
                raise _ContextOverflow(f"{where}: {detail}", max_model_len=int(m.group(1)), prompt_tokens=int(m.group(2)))
            if status == 413 or "context length" in detail or "max_tokens" in detail or "too long" in detail:
                raise LimitExceededError(f"{where} refused the page as too large ({status}): {detail}")
            raise BadInputError(f"{where} refused the page image or request ({status}): {detail}")
        if status == 404 and not self.model:
            lease.server.model = None  # the server may have been restarted with another model
            self._discovery.pop(lease.server.url, None)
        raise ModelServerError(f"{where} answered {status}: {detail}", code=ErrorCode.SERVER_ERROR)

    async def _read_json(self, resp: aiohttp.ClientResponse) -> tuple[str, str | None, Usage]:
        raw = await resp.read()
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise MalformedResponseError(f"the answer is not JSON: {_snippet(raw)}") from exc
        if not isinstance(data, dict):
            raise MalformedResponseError(f"the answer is not a JSON object: {_snippet(raw)}")
        if "error" in data and not data.get("choices"):
            raise ModelServerError(f"the server reported an error: {_snippet(raw)}", code=ErrorCode.SERVER_ERROR)
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise MalformedResponseError(f"the answer has no choices: {_snippet(raw)}")
        message = choices[0].get("message") or {}
        content = message.get("content") if isinstance(message, dict) else None
        if content is not None and not isinstance(content, str):
            raise MalformedResponseError("the answer's content is not text")
        return content or "", choices[0].get("finish_reason"), _usage(data.get("usage"))

    async def _read_stream(self, resp: aiohttp.ClientResponse, lease: Lease, request: OcrRequest) -> tuple[str, str | None, Usage]:
        # This loop runs once per token of every page in flight (thousands of times a second): the
        # common case — one complete "data: {...}\n\n" event per read — skips the general SSE splitter.
        detector = LoopDetector(self.loop_min_period, self.loop_min_repeats, self.loop_window)
        parts: list[str] = []
        finish: str | None = None
        usage = Usage()
        done = False
        events = 0
        sse = _SSESplitter()
        server = lease.server
        decode = _CHUNK_DECODER.decode
        check_loops = self.loop_detection
        async for chunk in resp.content.iter_any():
            server.last_progress = time.monotonic()
            if not sse.pending and not sse.data and chunk.startswith(b"data: ") and chunk.endswith(b"\n\n") and chunk.find(b"\n", 6) == len(chunk) - 2:
                payloads: list[bytes] = [chunk[6:-2]]
            else:
                payloads = sse.feed(chunk)
            for payload in payloads:
                if done:
                    continue  # nothing counts after [DONE]; read on to the end so the connection is reused
                if payload == b"[DONE]":
                    done = True
                    continue
                events += 1
                try:
                    chunk_obj = decode(payload)
                except msgspec.DecodeError as exc:  # bad JSON, or a field of the wrong type
                    raise MalformedResponseError(f"a streamed event is not a well-formed chunk: {_snippet(payload)}") from exc
                choices = chunk_obj.choices
                if choices:
                    for choice in choices:
                        delta = choice.delta
                        content = delta.content if delta is not None else None
                        if content:
                            parts.append(content)
                            if check_loops and detector.feed(content):
                                resp.close()  # drops the connection: vLLM aborts the request, freeing its slot
                                raise self._repetition(detector, len(parts), request, server)
                        if choice.finish_reason:
                            finish = choice.finish_reason
                elif chunk_obj.error is not None or chunk_obj.object == "error":
                    raise ModelServerError(f"{server.url} reported an error mid-answer: {_snippet(payload)}", code=ErrorCode.SERVER_ERROR)
                elif choices is None and chunk_obj.usage is None:
                    raise MalformedResponseError(f"a streamed event has no choices: {_snippet(payload)}")
                if chunk_obj.usage is not None:
                    usage = Usage(prompt_tokens=max(0, chunk_obj.usage.prompt_tokens), completion_tokens=max(0, chunk_obj.usage.completion_tokens))
        if events == 0:
            raise MalformedResponseError(f"{server.url} sent an empty stream")
        if finish is None:
            if not done:
                raise MalformedResponseError(f"the stream from {server.url} ended without a finish_reason or [DONE]")
            raise MalformedResponseError(f"the stream from {server.url} has no finish_reason")
        return "".join(parts), finish, usage

    def _repetition(self, detector: LoopDetector, deltas: int, request: OcrRequest, server: Server) -> RepetitionError:
        info = detector.info
        assert info is not None
        log.info(
            "loop detected, request aborted",
            extra={"doc_id": request.doc_id, "page_no": request.page_no, "server": server.url, "period": info.period, "chars": info.chars_seen, "deltas": deltas},
        )
        return RepetitionError(
            f"runaway repetition after {info.chars_seen} characters ({deltas} deltas): "
            f"{info.unit[:80]!r} repeated over the last {info.span} characters ({info.unit_class.value}); request aborted"
        )


class _Delta(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    delta: _Delta | None = None
    finish_reason: str | None = None


class _ChunkUsage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _Chunk(msgspec.Struct):
    """The fields of a ``chat.completion.chunk`` the engine reads; the rest is skipped unparsed."""

    choices: list[_Choice] | None = None
    usage: _ChunkUsage | None = None
    error: Any = None
    object: str | None = None


# One typed decoder per process: ~0.5 us a chunk against ~2-3 us for json.loads into dicts (measured),
# and it runs once per streamed token of every page in flight.
_CHUNK_DECODER = msgspec.json.Decoder(_Chunk)


class _SSESplitter:
    """Server-sent events → the data of each event (``data:`` lines joined), across read boundaries."""

    __slots__ = ("pending", "data")

    def __init__(self) -> None:
        self.pending = b""
        self.data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        if self.pending:
            chunk = self.pending + chunk
        lines = chunk.split(b"\n")
        self.pending = lines.pop()
        out: list[bytes] = []
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if line:
                if line.startswith(b"data:"):
                    self.data.append(line[6:] if line[5:6] == b" " else line[5:])
                continue  # comments (":...") and other fields carry nothing we use
            if self.data:
                out.append(self.data[0] if len(self.data) == 1 else b"\n".join(self.data))
                self.data = []
        return out


_TEMPLATE_TOKENS = 32
# vLLM's message: "This model's maximum context length is 8192 tokens. However, you requested 9106
# tokens (914 in the messages, 8192 in the completion)."
_CONTEXT_RE = re.compile(r"maximum context length is (\d+) tokens.*?\((\d+) in the messages", re.DOTALL)


class _ContextOverflow(LimitExceededError):
    """The server refused prompt + max_tokens as longer than its context; carries its numbers."""

    def __init__(self, message: str, *, max_model_len: int, prompt_tokens: int) -> None:
        super().__init__(message)
        self.max_model_len = max_model_len
        self.prompt_tokens = prompt_tokens


_IMAGE_SLOT_JSON = json.dumps(_IMAGE_SLOT, ensure_ascii=False)[1:-1]


def _usage(raw: object) -> Usage:
    if not isinstance(raw, dict):
        return Usage()
    try:
        return Usage(prompt_tokens=int(raw.get("prompt_tokens") or 0), completion_tokens=int(raw.get("completion_tokens") or 0))
    except (TypeError, ValueError):
        return Usage()


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error_detail(raw: bytes) -> str:
    """The server's error message, with the query of any URL in it removed: a server that could
    not fetch an image by URL may quote the presigned URL, whose query is a read credential."""
    return _URL_QUERY_RE.sub(r"\1?...", _error_message(raw))


_URL_QUERY_RE = re.compile(r"(https?://[^\s?'\"<>]+)\?[^\s'\"<>]*")


def _error_message(raw: bytes) -> str:
    try:
        data = json.loads(raw)
    except ValueError:
        return _snippet(raw)
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict) and "message" in err:
            return str(err["message"])[:500]
        if "message" in data:
            return str(data["message"])[:500]
    return _snippet(raw)


def _snippet(raw: bytes, limit: int = 200) -> str:
    text = raw[:limit].decode("utf-8", "replace")
    return repr(text) + ("..." if len(raw) > limit else "")


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _conn_code(exc: BaseException) -> ErrorCode:
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
        return ErrorCode.CONNECTION
    if isinstance(exc, TimeoutError):
        return ErrorCode.TIMEOUT
    return ErrorCode.CONNECTION
