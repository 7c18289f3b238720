"""The vLLM simulator's HTTP server: vLLM's OpenAI-compatible API on aiohttp, timed by
:mod:`.batching`, answering with :mod:`.output`, misbehaving on demand through :mod:`.faults`.

Endpoints: ``POST /v1/chat/completions`` (plain and ``stream: true``), ``GET /v1/models``,
``GET /health``, ``GET /metrics`` (vLLM's metric names), ``GET /version``; for tests
``GET|POST /admin/faults`` and ``GET /admin/state``.

Use it in-process (``SimulatorServer(SimulatorConfig()).start_in_thread()`` returns its URL) or as
``ocr-stream simulate-vllm``. Model time runs ``speed`` times faster than the calibrated H100.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
import threading
import time
import uuid
from typing import Any

from aiohttp import web

from .batching import BatchModel, SimRequest
from .config import DEFAULT_MODEL, SimulatorConfig, with_overrides
from .faults import FaultConfig, FaultInjector, coerce_faults
from .output import detokenize, extend_pieces, image_seed, page_output, repeating_pieces
from .protocol import ApiError, ParsedRequest, bad_request, dumps, image_urls, parse_chat_request

__all__ = ["DEFAULT_MODEL", "ApiError", "Engine", "SimulatorConfig", "SimulatorServer", "parse_chat_request", "with_overrides"]

log = logging.getLogger(__name__)

VLLM_VERSION = "0.26.0"
# vLLM's buckets for vllm:e2e_request_latency_seconds.
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
MAX_BODY_BYTES = 64 * 1024 * 1024
IMAGE_FETCH_TIMEOUT_S = 5.0  # vLLM: VLLM_IMAGE_FETCH_TIMEOUT


class _Watch:
    """A request's link between the engine ticker and its HTTP handler."""

    __slots__ = ("req", "stream", "event", "done", "t_wall")

    def __init__(self, req: SimRequest, stream: bool, t_wall: float) -> None:
        self.req = req
        self.stream = stream
        self.event = asyncio.Event()
        self.done = False
        self.t_wall = t_wall


class Engine:
    """:class:`BatchModel` run against the event loop's clock, ``speed`` times faster than model
    time. One ticker task advances the model to 'now' and wakes the handlers whose requests
    progressed: streaming ones every tick, the others when they finish."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.model = BatchModel(timing=config.timing, max_num_seqs=config.max_num_seqs)
        self._loop = asyncio.get_running_loop()
        self._t0 = self._loop.time()
        self._watches: dict[str, _Watch] = {}
        self._wake = asyncio.Event()
        self._task = self._loop.create_task(self._run())
        self.success: dict[str, int] = {"stop": 0, "length": 0, "abort": 0}
        self.e2e_counts = [0] * (len(E2E_BUCKETS) + 1)
        self.e2e_sum = 0.0

    def now(self) -> float:
        """Model seconds since start."""
        return (self._loop.time() - self._t0) * self.config.speed

    def submit(self, req: SimRequest, *, stream: bool) -> _Watch:
        watch = _Watch(req, stream, self._loop.time())
        self._watches[req.req_id] = watch
        self.model.submit(req, self.now())
        self._deliver()
        self._wake.set()
        return watch

    def sync(self) -> BatchModel:
        """The model advanced to now (for /metrics and /admin/state)."""
        self.model.advance(self.now())
        self._deliver()
        return self.model

    def _deliver(self) -> None:
        # Whoever advanced the model, the handlers of finished requests must hear of it.
        for fin in self.model.take_finished():
            watch = self._watches.pop(fin.request.req_id, None)
            if watch is not None:
                watch.done = True
                watch.event.set()

    def abort(self, watch: _Watch) -> None:
        """Free the request's slot at once (client went away)."""
        if watch.done:
            return
        watch.done = True
        self._watches.pop(watch.req.req_id, None)
        if self.model.abort(watch.req, self.now()) is not None:  # None: it had just finished
            self.success["abort"] += 1
        self._deliver()
        self._wake.set()

    def finish_reason_counted(self, reason: str, watch: _Watch) -> None:
        self.success[reason] = self.success.get(reason, 0) + 1
        elapsed = self._loop.time() - watch.t_wall
        self.e2e_sum += elapsed
        for i, bound in enumerate(E2E_BUCKETS):
            if elapsed <= bound:
                self.e2e_counts[i] += 1
                break
        else:
            self.e2e_counts[-1] += 1

    async def close(self) -> None:
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass

    async def _run(self) -> None:
        while True:
            try:
                await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here would wedge every request: say so loudly, keep going
                log.exception("simulator engine tick failed")
                await asyncio.sleep(0.01)

    async def _tick(self) -> None:
        speed = self.config.speed
        self.model.advance(self.now())
        self._deliver()
        streaming = 0
        for watch in self._watches.values():
            if watch.stream:
                streaming += 1
                watch.event.set()
        nxt = self.model.next_event_time()
        self._wake.clear()
        if nxt is None:
            await self._wake.wait()
            return
        delay = max(0.0, (nxt - self.now()) / speed)
        if streaming:
            tick = max(self.config.tick_s, streaming / self.config.max_chunk_rate, self.model.step_time() / speed)
            delay = min(delay, tick)
        try:
            await asyncio.wait_for(self._wake.wait(), timeout=delay + 1e-4)
        except TimeoutError:
            pass


class SimulatorServer:
    """The simulator as an object: ``await start()`` / ``await close()`` inside a running loop, or
    ``start_in_thread()`` / ``stop()`` from synchronous code (tests)."""

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config or SimulatorConfig()
        self.faults = FaultInjector(self.config.faults)
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._engine: Engine | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._created = int(time.time())
        self._http: Any = None  # aiohttp.ClientSession for image URLs, made on first use
        self.images_fetched = 0
        """Images fetched from http(s) URLs (OCR_STREAM_IMAGE_TRANSPORT=url)."""

    # --- lifecycle -----------------------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("the simulator is not started")
        return self._engine

    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        app.router.add_get("/ping", self._health)
        app.router.add_get("/version", self._version)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/admin/faults", self._get_faults)
        app.router.add_post("/admin/faults", self._post_faults)
        app.router.add_get("/admin/state", self._state)
        return app

    async def start(self) -> str:
        """Listen (port 0: a free one) and return the base URL, e.g. ``http://127.0.0.1:8000``."""
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._engine = Engine(self.config)
        # handler_cancellation: a client that disconnects cancels its handler, which aborts the
        # request and frees its slot, as vLLM does.
        self._runner = web.AppRunner(self.build_app(), handler_cancellation=True, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port)
        await site.start()
        port = self.config.port
        sockets = getattr(site._server, "sockets", None)  # port 0: ask the socket which one we got
        if sockets:
            port = int(sockets[0].getsockname()[1])
        host = self.config.host if ":" not in self.config.host else f"[{self.config.host}]"
        self.url = f"http://{host}:{port}"
        return self.url

    async def close(self) -> None:
        if self._stopping is not None:
            self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._engine is not None:
            await self._engine.close()
        if self._http is not None:
            await self._http.close()
            self._http = None

    def start_in_thread(self, timeout_s: float = 10.0) -> str:
        """Run the server on its own event loop in a daemon thread; return its URL when ready."""
        ready = threading.Event()
        errors: list[BaseException] = []

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
                errors.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self.close())
                loop.close()

        self._thread = threading.Thread(target=main, name="vllm-simulator", daemon=True)
        self._thread.start()
        if not ready.wait(timeout_s):
            raise RuntimeError("the simulator did not start in time")
        if errors:
            raise errors[0]
        return self.url

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop a server started with :meth:`start_in_thread`."""
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout_s)
        self._thread = None

    def set_faults(self, mode: str | FaultConfig | dict[str, Any] = "none", **settings: Any) -> dict[str, Any]:
        """Switch the fault mode now (thread-safe), e.g. ``set_faults("429", retry_after_s=0.2)``;
        same as ``POST /admin/faults``. Returns the new fault state."""
        self.faults.set(coerce_faults(mode, **settings))
        return self.faults.state.to_json()

    def state(self) -> dict[str, Any]:
        """Engine counters as of now, as ``GET /admin/state`` gives them. From another thread
        (a server started with :meth:`start_in_thread`) this runs on the server's loop."""
        loop = self._loop
        if loop is not None and loop.is_running():
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is not loop:
                return asyncio.run_coroutine_threadsafe(self._synced_state(), loop).result(10)
        if self._engine is not None:
            self._engine.sync()
        return self._state_dict()

    async def _synced_state(self) -> dict[str, Any]:
        if self._engine is not None:
            self._engine.sync()
        return self._state_dict()

    # --- handlers ------------------------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": VLLM_VERSION})

    async def _models(self, request: web.Request) -> web.Response:
        m = self.config.model
        card = {
            "id": m, "object": "model", "created": self._created, "owned_by": "vllm", "root": m, "parent": None,
            "max_model_len": self.config.max_model_len,
            "permission": [{
                "id": f"modelperm-{uuid.uuid4().hex}", "object": "model_permission", "created": self._created,
                "allow_create_engine": False, "allow_sampling": True, "allow_logprobs": True, "allow_search_indices": False,
                "allow_view": True, "allow_fine_tuning": False, "organization": "*", "group": None, "is_blocking": False,
            }],
        }
        return web.json_response({"object": "list", "data": [card]})

    async def _get_faults(self, request: web.Request) -> web.Response:
        return web.json_response(self.faults.state.to_json())

    async def _post_faults(self, request: web.Request) -> web.Response:
        try:
            cfg = FaultConfig.from_json(await request.json())
        except (ValueError, json.JSONDecodeError) as exc:
            return _error_response(ApiError(400, f"bad fault settings: {exc}"))
        self.faults.set(cfg)
        log.info("fault mode set", extra={"fault": cfg.mode, "rate": cfg.rate, "count": cfg.count})
        return web.json_response(self.faults.state.to_json())

    def _state_dict(self) -> dict[str, Any]:
        eng = self._engine
        model = eng.model if eng else None
        return {
            "model": self.config.model,
            "speed": self.config.speed,
            "max_num_seqs": self.config.max_num_seqs,
            "running": model.num_running if model else 0,
            "waiting": model.num_waiting if model else 0,
            "ngram_running": model.num_ngram_running if model else 0,
            "finished": model.finished_total if model else 0,
            "images_fetched": self.images_fetched,
            "model_time_s": model.clock if model else 0.0,
            "running_seconds": model.running_seconds if model else 0.0,
            "aborted": model.aborted_total if model else 0,
            "prompt_tokens": model.prompt_tokens_total if model else 0,
            "generation_tokens": model.generation_tokens() if model else 0,
            "capacity_pages_per_s": self.config.capacity(),
            "capacity_pages_per_s_ngram": self.config.capacity(ngram_fraction=1.0),
            "faults": self.faults.state.to_json(),
        }

    async def _state(self, request: web.Request) -> web.Response:
        return web.json_response(await self._synced_state())

    async def _metrics(self, request: web.Request) -> web.Response:
        eng = self.engine
        model = eng.sync()
        lbl = f'model_name="{self.config.model}"'
        eng_lbl = f'engine="0",{lbl}'
        kv = min(1.0, model.running_tokens() / max(1, self.config.kv_cache_tokens))
        lines = [
            "# HELP vllm:num_requests_running Number of requests in model execution batches.",
            "# TYPE vllm:num_requests_running gauge",
            f"vllm:num_requests_running{{{eng_lbl}}} {model.num_running}.0",
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
            "# TYPE vllm:num_requests_waiting gauge",
            f"vllm:num_requests_waiting{{{eng_lbl}}} {model.num_waiting}.0",
            "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.",
            "# TYPE vllm:kv_cache_usage_perc gauge",
            f"vllm:kv_cache_usage_perc{{{eng_lbl}}} {kv}",
            "# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage (deprecated alias).",
            "# TYPE vllm:gpu_cache_usage_perc gauge",
            f"vllm:gpu_cache_usage_perc{{{eng_lbl}}} {kv}",
            "# HELP vllm:num_preemptions_total Cumulative number of preemption from the engine.",
            "# TYPE vllm:num_preemptions_total counter",
            f"vllm:num_preemptions_total{{{eng_lbl}}} 0.0",
            "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.",
            "# TYPE vllm:prompt_tokens_total counter",
            f"vllm:prompt_tokens_total{{{eng_lbl}}} {float(model.prompt_tokens_total)}",
            "# HELP vllm:generation_tokens_total Number of generation tokens processed.",
            "# TYPE vllm:generation_tokens_total counter",
            f"vllm:generation_tokens_total{{{eng_lbl}}} {float(model.generation_tokens())}",
            "# HELP vllm:request_success_total Count of successfully processed requests.",
            "# TYPE vllm:request_success_total counter",
        ]
        for reason, count in sorted(eng.success.items()):
            lines.append(f'vllm:request_success_total{{{eng_lbl},finished_reason="{reason}"}} {float(count)}')
        lines += [
            "# HELP vllm:e2e_request_latency_seconds Histogram of e2e request latency in seconds.",
            "# TYPE vllm:e2e_request_latency_seconds histogram",
        ]
        cum = 0
        for bound, count in zip(E2E_BUCKETS, eng.e2e_counts):
            cum += count
            lines.append(f'vllm:e2e_request_latency_seconds_bucket{{{eng_lbl},le="{bound}"}} {float(cum)}')
        total = sum(eng.e2e_counts)
        lines.append(f'vllm:e2e_request_latency_seconds_bucket{{{eng_lbl},le="+Inf"}} {float(total)}')
        lines.append(f"vllm:e2e_request_latency_seconds_count{{{eng_lbl}}} {float(total)}")
        lines.append(f"vllm:e2e_request_latency_seconds_sum{{{eng_lbl}}} {eng.e2e_sum}")
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain", charset="utf-8",
                            headers={"X-Simulator": "ocr-stream"})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            raw = await request.read()
            try:
                body = json.loads(raw)
            except ValueError as exc:
                raise bad_request(f"the request body is not valid JSON: {exc}") from exc
            xargs = body.get("vllm_xargs") if isinstance(body, dict) else None
            fault = self.faults.decide(ngram=isinstance(xargs, dict) and "ngram_size" in xargs)
            stream = isinstance(body, dict) and body.get("stream") is True
            early = await self._early_fault(request, fault, stream=stream)
            if early is not None:
                return early
            fetched = {url: await self._fetch_image(url) for url in image_urls(body)[: self.config.limit_images]}
            parsed = parse_chat_request(body, self.config, fetched)
        except ApiError as err:
            return _error_response(err)
        return await self._complete(request, parsed, fault)

    async def _fetch_image(self, url: str) -> bytes:
        """GET an http(s) image URL, as vLLM's media connector does (its default fetch timeout is
        5 s); a failure is a 400 naming the URL's host, never its query (it may carry a signature)."""
        import aiohttp

        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=IMAGE_FETCH_TIMEOUT_S))
        where = url.split("?", 1)[0]
        try:
            async with self._http.get(url) as resp:
                if resp.status != 200:
                    raise bad_request(f"Failed to fetch image from {where}: HTTP {resp.status}", "messages")
                parts: list[bytes] = []
                size = 0
                async for chunk in resp.content.iter_any():
                    parts.append(chunk)
                    size += len(chunk)
                    if size > MAX_BODY_BYTES:
                        break
                data = b"".join(parts)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise bad_request(f"Failed to fetch image from {where}: {type(exc).__name__}", "messages") from exc
        if len(data) > MAX_BODY_BYTES:
            raise bad_request(f"Failed to fetch image from {where}: larger than {MAX_BODY_BYTES} bytes", "messages")
        self.images_fetched += 1
        return data

    async def _early_fault(self, request: web.Request, fault: str, *, stream: bool) -> web.StreamResponse | None:
        cfg = self.faults.state.config
        if fault == "503":
            return _error_response(ApiError(503, "Service Unavailable (simulated fault)", "ServiceUnavailableError"))
        if fault == "429":
            return _error_response(ApiError(429, "Too Many Requests (simulated fault)", "TooManyRequestsError"),
                                   headers={"Retry-After": _retry_after(cfg.retry_after_s)})
        if fault == "dead":
            # A wedged engine behind a live API server: a stream gets its 200 and headers (they
            # come before any output, as in vLLM), then nothing; a plain request gets nothing.
            assert self._stopping is not None
            resp = await self._open_stream(request) if stream else None
            await self._stopping.wait()  # until the client gives up (its handler is cancelled) or shutdown
            return resp or _error_response(ApiError(503, "engine dead (simulated fault)", "ServiceUnavailableError"))
        if fault == "slow":
            await asyncio.sleep(cfg.delay_s)
        return None

    def _pieces(self, p: ParsedRequest, fault: str) -> tuple[list[str], str]:
        """The tokens this request will generate and its finish reason."""
        cfg = self.config
        if p.image is not None:
            seed = image_seed(p.image, cfg.seed, digest=p.image_digest)
        else:
            seed = image_seed(p.prompt_text.encode(), cfg.seed)
        if p.temperature > 0:
            # Sampling: a different page each time unless the request fixes its seed.
            seed ^= p.seed if p.seed is not None else uuid.uuid4().int & (2**63 - 1)
        grounding = "<|grounding|>" in p.prompt_text
        room = cfg.max_model_len - p.prompt_tokens
        limit = min(p.max_tokens, room) if p.max_tokens is not None else room
        if fault == "repeat":
            return repeating_pieces(seed, limit, grounding=grounding), "length"
        natural = page_output(seed, cfg.tokens, grounding).pieces
        if p.ignore_eos:
            return extend_pieces(seed, natural, limit, grounding=grounding), "length"
        if len(natural) > limit:
            return list(natural[:limit]), "length"
        return list(natural), "stop"

    async def _complete(self, request: web.Request, p: ParsedRequest, fault: str) -> web.StreamResponse:
        pieces, finish = self._pieces(p, fault)
        req_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if fault == "garbage":
            return await self._garbage(request, p, req_id, created)
        eng = self.engine
        sim = SimRequest(req_id, p.prompt_tokens, len(pieces), p.ngram)
        watch = eng.submit(sim, stream=p.stream)
        try:
            if p.stream:
                return await self._stream(request, p, watch, pieces, finish, created, reset=fault == "reset")
            while not watch.done:
                await watch.event.wait()
                watch.event.clear()
            eng.finish_reason_counted(finish, watch)
            text = detokenize(pieces, skip_special_tokens=p.skip_special_tokens)
            body = dumps(self._completion(req_id, created, text, finish, p.prompt_tokens, len(pieces))).encode()
            if fault == "reset":
                return await self._reset(request, body, "application/json")
            return web.Response(body=body, content_type="application/json")
        finally:
            eng.abort(watch)  # no-op once finished; frees the slot when the client went away

    def _completion(self, req_id: str, created: int, text: str, finish: str, prompt: int, completion: int) -> dict[str, Any]:
        return {
            "id": req_id, "object": "chat.completion", "created": created, "model": self.config.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None, "annotations": None, "audio": None,
                            "function_call": None, "tool_calls": [], "reasoning_content": None},
                "logprobs": None, "finish_reason": finish, "stop_reason": None,
            }],
            "service_tier": None, "system_fingerprint": None,
            "usage": {"prompt_tokens": prompt, "total_tokens": prompt + completion, "completion_tokens": completion,
                      "prompt_tokens_details": None},
            "prompt_logprobs": None, "kv_transfer_params": None,
        }

    def _chunk(self, req_id: str, created: int, delta: dict[str, Any], finish: str | None) -> bytes:
        choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        if finish is not None:
            choice["stop_reason"] = None
        obj = {"id": req_id, "object": "chat.completion.chunk", "created": created, "model": self.config.model, "choices": [choice]}
        return b"data: " + dumps(obj).encode() + b"\n\n"

    async def _open_stream(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        return resp

    def _content_events(self, req_id: str, created: int, pieces: list[str], *, skip: bool, finish: str | None) -> bytes:
        """SSE events carrying ``pieces``: one event, or one per ``chunk_tokens`` tokens (vLLM
        sends one per token); ``finish`` goes on the last."""
        n = self.config.chunk_tokens
        groups = [pieces] if n <= 0 or len(pieces) <= n else [pieces[k : k + n] for k in range(0, len(pieces), n)]
        out = []
        for k, group in enumerate(groups):
            last = k == len(groups) - 1
            out.append(self._chunk(req_id, created, {"content": detokenize(group, skip_special_tokens=skip)}, finish if last else None))
        return b"".join(out)

    async def _stream(self, request: web.Request, p: ParsedRequest, watch: _Watch, pieces: list[str], finish: str,
                      created: int, *, reset: bool) -> web.StreamResponse:
        eng = self.engine
        req_id = watch.req.req_id
        skip = p.skip_special_tokens
        # As vLLM (Starlette) does: status and headers at once, the first chunk only with the
        # first token, after queueing and prefill.
        resp = await self._open_stream(request)
        while not watch.done and eng.model.generated(watch.req) < 1:
            watch.event.clear()
            await watch.event.wait()
        await resp.write(self._chunk(req_id, created, {"role": "assistant", "content": ""}, None))
        sent = 0
        total = len(pieces)
        reset_at = max(1, total // 2) if reset else None
        while True:
            done = watch.done
            upto = total if done else eng.model.generated(watch.req)
            if reset_at is not None and upto >= reset_at:
                await resp.write(self._content_events(req_id, created, pieces[sent:reset_at], skip=skip, finish=None))
                self._abort_transport(request)
                return resp
            if upto > sent or done:
                await resp.write(self._content_events(req_id, created, pieces[sent:upto], skip=skip, finish=finish if done else None))
                sent = upto
            if done:
                break
            # Check-then-wait with the event cleared first: a finish signalled while we were
            # writing is seen on the next pass, never slept through.
            watch.event.clear()
            if not watch.done and eng.model.generated(watch.req) <= sent:
                await watch.event.wait()
        eng.finish_reason_counted(finish, watch)
        if p.include_usage:
            usage = {"prompt_tokens": p.prompt_tokens, "total_tokens": p.prompt_tokens + total, "completion_tokens": total}
            obj = {"id": req_id, "object": "chat.completion.chunk", "created": created, "model": self.config.model,
                   "choices": [], "usage": usage}
            await resp.write(b"data: " + dumps(obj).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def _garbage(self, request: web.Request, p: ParsedRequest, req_id: str, created: int) -> web.StreamResponse:
        if not p.stream:
            body = ('{"id":"' + req_id + '","object":"chat.completion","created":' + str(created)
                    + ',"choices":[{"index":0,"message":{"role":"assistant","content":"<|ref|>te')
            return web.Response(body=body.encode(), content_type="application/json")
        resp = await self._open_stream(request)
        await resp.write(self._chunk(req_id, created, {"role": "assistant", "content": ""}, None))
        await resp.write(b'data: {"id":"' + req_id.encode() + b'","object":"chat.completion.chunk","choices":[{"delta":{"cont\n\n')
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def _reset(self, request: web.Request, body: bytes, content_type: str) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, headers={"Content-Type": content_type})
        resp.content_length = len(body)
        await resp.prepare(request)
        await resp.write(body[: len(body) // 2])
        self._abort_transport(request)
        return resp

    @staticmethod
    def _abort_transport(request: web.Request) -> None:
        transport = request.transport
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Linger 0: close() sends a RST, as a crashed server or a proxy cutting the line would.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()  # RST, not FIN: the client sees a connection reset mid-body


def _error_response(err: ApiError, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(err.body(), status=err.status, headers=headers)


def _retry_after(seconds: float) -> str:
    # HTTP wants whole seconds; fractions are kept so fast tests can ask for 0.2 s.
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


