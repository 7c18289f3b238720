"""DeepSeekEngine against the vLLM simulator (real HTTP on loopback): success, every fault mapped to
its error type, client-side loop abort freeing the server's slot, pool ejection, load sharing,
model discovery, API key, adaptive in-flight scraping."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from PIL import Image, ImageDraw

from ocr_stream.contracts import Mode
from ocr_stream.engines.base import OcrRequest, PageImage
from ocr_stream.engines.deepseek import DeepSeekEngine
from ocr_stream.errors import (
    BadInputError,
    ErrorCode,
    LengthError,
    MalformedResponseError,
    ModelServerError,
    RateLimitedError,
    RepetitionError,
)
from ocr_stream.simulator import SimulatorConfig, SimulatorServer

pytestmark = pytest.mark.integration

SPEED = 100.0


def jpeg(seed: int = 0, size: tuple[int, int] = (640, 828)) -> PageImage:
    im = Image.new("RGB", size, "white")
    ImageDraw.Draw(im).text((20, 20 + seed % 500), f"page {seed}", fill="black")
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    return PageImage(buf.getvalue(), size[0], size[1])


def request(seed: int = 0, **kw: Any) -> OcrRequest:
    kw.setdefault("max_tokens", 6000)  # dense simulated pages reach 5,000 tokens
    return OcrRequest(image=jpeg(seed), doc_id="doc", page_no=seed + 1, **kw)


def run(coro_fn: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(coro_fn())  # type: ignore[arg-type]


def engine(*urls: str, **kw: Any) -> DeepSeekEngine:
    kw.setdefault("request_timeout_s", 20.0)
    kw.setdefault("health_probe_interval_s", 60.0)  # tests drive probes through check_once()
    return DeepSeekEngine(list(urls), **kw)


async def wait_for(cond: Callable[[], Any], timeout_s: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.02)


# --- success ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False])
def test_page_with_blocks_boxes_and_usage(simulator: Any, stream: bool) -> None:
    sim = simulator(speed=SPEED)

    async def go() -> None:
        eng = engine(sim.url, stream=stream)
        try:
            out = await eng.ocr(request(1))
            again = await eng.ocr(request(1))
        finally:
            await eng.aclose()
        assert out.finish_reason == "stop"
        assert out.model == sim.config.model  # discovered from /v1/models
        assert out.server == sim.url
        assert out.usage.completion_tokens > 100 and out.usage.prompt_tokens > 273
        assert out.latency_ms > 0
        assert out.blocks and all(b.box is not None for b in out.blocks)
        for b in out.blocks:
            assert b.box is not None
            x1, y1, x2, y2 = b.box
            assert 0 <= x1 <= x2 <= 640 and 0 <= y1 <= y2 <= 828
        assert "<|ref|>" not in out.markdown and "<|det|>" in out.raw_text
        assert out.markdown.strip() and not out.malformed
        assert again.raw_text == out.raw_text  # temperature 0: deterministic

    run(go)


def test_request_extras_only_when_asked(simulator: Any) -> None:
    """mm_processor_kwargs only for non-gundam modes; vllm_xargs only with repetition control; both accepted."""
    sim = simulator(speed=SPEED)

    async def go() -> None:
        eng = engine(sim.url)
        try:
            plain = json.loads(eng.build_body(request(), "m"))
            assert "mm_processor_kwargs" not in plain and "vllm_xargs" not in plain
            assert plain["skip_special_tokens"] is False and plain["temperature"] == 0
            assert plain["stream"] is True and plain["stream_options"] == {"include_usage": True}
            content = plain["messages"][0]["content"]
            assert content[0]["image_url"]["url"].startswith("data:image/jpeg;base64,/9j/")
            assert content[1]["text"] == "<|grounding|>Convert the document to markdown."  # no second <image>
            url = 'http://minio:9000/b/pages/d/1.jpg?X-Amz-Credential=k%2F2026&X-Amz-Signature=ab"\\'
            by_url = request()
            by_url = dataclasses.replace(by_url, image=dataclasses.replace(by_url.image, data=b"", url=url))
            assert json.loads(eng.build_body(by_url, "m"))["messages"][0]["content"][0]["image_url"]["url"] == url
            extra = json.loads(eng.build_body(request(mode=Mode.BASE, repetition_control=True), "m"))
            assert extra["mm_processor_kwargs"] == {"mode": "base"}
            assert extra["vllm_xargs"] == {"ngram_size": 30, "window_size": 90, "whitelist_token_ids": [128821, 128822]}
            base = await eng.ocr(request(2, mode=Mode.BASE, repetition_control=True))
            gundam = await eng.ocr(request(2))
        finally:
            await eng.aclose()
        assert base.usage.prompt_tokens < gundam.usage.prompt_tokens  # the simulator honoured the mode
        assert sim.state()["finished"] == 2

    run(go)


def test_max_tokens_fitted_to_context(simulator: Any) -> None:
    """max_tokens 8192 (the default) with 8192 tokens of context: vLLM would refuse every page; the
    engine fits the cap into the context, from /v1/models or from the server's 400."""
    sim = simulator(speed=SPEED, max_model_len=8192)

    async def go() -> None:
        discovered = engine(sim.url, max_tokens=8192)
        configured = engine(sim.url, max_tokens=8192, model=sim.config.model)  # no /v1/models call
        try:
            a = await discovered.ocr(request(3, max_tokens=None))
            b = await configured.ocr(request(3, max_tokens=None))
            assert configured.pool.servers[0].max_model_len == 8192  # learnt from the 400
        finally:
            await discovered.aclose()
            await configured.aclose()
        assert a.raw_text == b.raw_text

    run(go)


def test_from_settings(simulator: Any) -> None:
    from ocr_stream.config import load_settings

    sim = simulator(speed=SPEED)
    settings = load_settings(vllm_urls=sim.url, max_in_flight=32, request_timeout_s=30, connect_timeout_s=2, adaptive_in_flight=False)

    async def go() -> None:
        eng = DeepSeekEngine.from_settings(settings)
        try:
            assert eng.urls == [sim.url] and eng.max_in_flight == 32 and eng.request_timeout_s == 30
            out = await eng.ocr(request(5))
            assert out.finish_reason == "stop" and await eng.healthy()
            assert eng.suggested_in_flight() is None  # adaptive off
            connector = eng._session.connector  # type: ignore[union-attr]
            assert connector is not None and connector.limit >= 32 and connector.limit_per_host >= 32
        finally:
            await eng.aclose()

    run(go)


# --- errors ----------------------------------------------------------------------------------------


def test_bad_image_is_bad_input(simulator: Any) -> None:
    sim = simulator(speed=SPEED)

    async def go() -> None:
        eng = engine(sim.url)
        try:
            with pytest.raises(BadInputError) as err:
                await eng.ocr(OcrRequest(image=PageImage(b"not a jpeg at all", 100, 100), max_tokens=100))
            assert err.value.code is ErrorCode.BAD_IMAGE
            assert eng.pool.servers[0].healthy  # the page was bad, not the server
        finally:
            await eng.aclose()

    run(go)


def test_503_is_transient_and_ejects(simulator: Any) -> None:
    sim = simulator(speed=SPEED, faults={"mode": "503"})

    async def go() -> None:
        eng = engine(sim.url)
        try:
            with pytest.raises(ModelServerError) as err:
                await eng.ocr(request())
            assert err.value.transient and "503" in str(err.value)
            assert not eng.pool.servers[0].healthy
            assert not await eng.healthy()
            # The only server is out: pages still try it one at a time rather than fail in bulk.
            with pytest.raises(ModelServerError, match="503"):
                await eng.ocr(request())
            sim.set_faults({"mode": "none"})
            assert (await eng.ocr(request())).finish_reason == "stop"  # recovered before any probe
            assert not eng.pool.servers[0].healthy
            await eng.pool.check_once()  # /health answers 200: back in
            assert await eng.healthy()
        finally:
            await eng.aclose()

    run(go)


def test_429_carries_retry_after(simulator: Any) -> None:
    sim = simulator(speed=SPEED, faults={"mode": "429", "retry_after_s": 3})

    async def go() -> None:
        eng = engine(sim.url)
        try:
            with pytest.raises(RateLimitedError) as err:
                await eng.ocr(request())
            assert err.value.retry_after_s == 3.0 and err.value.transient
            assert eng.pool.servers[0].healthy  # rate limiting is not a failure of the server
        finally:
            await eng.aclose()

    run(go)


def test_slow_answer_times_out(simulator: Any) -> None:
    sim = simulator(speed=SPEED, faults={"mode": "slow", "delay_s": 30})

    async def go() -> None:
        eng = engine(sim.url, request_timeout_s=0.5)
        try:
            t0 = time.monotonic()
            with pytest.raises(ModelServerError) as err:
                await eng.ocr(request())
            assert err.value.code is ErrorCode.TIMEOUT
            assert time.monotonic() - t0 < 5
        finally:
            await eng.aclose()

    run(go)


@pytest.mark.parametrize("stream", [True, False])
def test_reset_mid_body_is_connection_error(simulator: Any, stream: bool) -> None:
    sim = simulator(speed=SPEED, faults={"mode": "reset"})

    async def go() -> None:
        eng = engine(sim.url, stream=stream)
        try:
            with pytest.raises(ModelServerError) as err:
                await eng.ocr(request())
            assert err.value.code is ErrorCode.CONNECTION
        finally:
            await eng.aclose()

    run(go)


@pytest.mark.parametrize("stream", [True, False])
def test_garbage_is_malformed(simulator: Any, stream: bool) -> None:
    sim = simulator(speed=SPEED, faults={"mode": "garbage"})

    async def go() -> None:
        eng = engine(sim.url, stream=stream)
        try:
            with pytest.raises(MalformedResponseError):
                await eng.ocr(request())
        finally:
            await eng.aclose()

    run(go)


def test_repetition_detected_fast_and_slot_freed(simulator: Any) -> None:
    max_tokens = 6000
    sim = simulator(speed=20.0, faults={"mode": "repeat"})

    async def go() -> None:
        eng = engine(sim.url, adaptive=False)
        try:
            with pytest.raises(RepetitionError) as err:
                await eng.ocr(request(max_tokens=max_tokens))
            # Aborted by the client long before max_tokens.
            assert "request aborted" in str(err.value)
            state = await wait_for(lambda: (s := sim.state())["aborted"] >= 1 and s["running"] == 0 and s, what="the aborted request to leave the batch")
            assert state["generation_tokens"] < max_tokens / 3
            # The server's own /metrics agree: nothing running any more.
            async with eng._session.get(sim.url + "/metrics") as resp:  # type: ignore[union-attr]
                metrics = await resp.text()
            assert 'vllm:num_requests_running{engine="0",model_name="' in metrics
            running = [ln for ln in metrics.splitlines() if ln.startswith("vllm:num_requests_running{")]
            assert running and float(running[0].rsplit(" ", 1)[1]) == 0.0
            assert 'finished_reason="abort"' in metrics
            # The n-gram processor (asked for on retry) cures it, as in vLLM.
            cured = await eng.ocr(request(max_tokens=max_tokens, repetition_control=True))
            assert cured.finish_reason == "stop"
        finally:
            await eng.aclose()

    run(go)


def test_repetition_without_streaming_ends_as_length(simulator: Any) -> None:
    sim = simulator(speed=SPEED, faults={"mode": "repeat"})

    async def go() -> None:
        eng = engine(sim.url, stream=False)
        try:
            with pytest.raises(LengthError):
                await eng.ocr(request(max_tokens=1500))
        finally:
            await eng.aclose()

    run(go)


def test_wrong_model_is_server_error(simulator: Any) -> None:
    sim = simulator(speed=SPEED)

    async def go() -> None:
        eng = engine(sim.url, model="no-such-model")
        try:
            with pytest.raises(ModelServerError) as err:
                await eng.ocr(request())
            assert "404" in str(err.value)
        finally:
            await eng.aclose()

    run(go)


# --- pool --------------------------------------------------------------------------------------------


def test_refused_server_ejected_and_others_used(simulator: Any) -> None:
    good = simulator(speed=SPEED)
    probe = SimulatorServer(SimulatorConfig(port=0))
    dead_url = probe.start_in_thread()
    probe.stop()  # its port now refuses connections

    async def go() -> None:
        eng = engine(dead_url, good.url)
        try:
            outcomes = []
            for i in range(6):
                try:
                    outcomes.append((await eng.ocr(request(i))).server)
                except ModelServerError as exc:
                    assert exc.code is ErrorCode.CONNECTION
                    outcomes.append("refused")
            assert outcomes.count("refused") <= 1  # once ejected, never picked again
            assert outcomes.count(good.url) >= 5
            bad = eng.pool.servers[0]
            assert not bad.healthy and bad.ejected_reason
            await eng.pool.check_once()
            assert not bad.healthy  # still refusing: stays out
        finally:
            await eng.aclose()

    run(go)


def test_dead_engine_ejected_and_hanging_requests_released(simulator: Any) -> None:
    """/health says 200 but requests hang: after consecutive timeouts while the other server answers,
    the server is ejected, and the rest of the load goes to the healthy one."""
    dead = simulator(speed=SPEED, faults={"mode": "dead"})
    good = simulator(speed=SPEED)

    async def go() -> None:
        eng = engine(dead.url, good.url, request_timeout_s=2.0, dead_after_timeouts=2, adaptive=False)
        try:
            results = await asyncio.gather(*(eng.ocr(request(i)) for i in range(24)), return_exceptions=True)
            timeouts = [r for r in results if isinstance(r, ModelServerError)]
            assert all(r.code is ErrorCode.TIMEOUT for r in timeouts)
            assert 0 < len(timeouts) < 24
            bad = eng.pool.servers[0]
            assert not bad.healthy and "dead engine" in bad.ejected_reason
            # Later pages all go to the good server.
            later = await asyncio.gather(*(eng.ocr(request(100 + i)) for i in range(8)))
            assert {o.server for o in later} == {good.url}
            # /health still says 200: the probe brings it back on probation (one request at a time).
            await eng.pool.check_once()
            assert bad.healthy and bad.probation
            results = await asyncio.gather(*(eng.ocr(request(200 + i)) for i in range(6)), return_exceptions=True)
            assert sum(isinstance(r, ModelServerError) for r in results) <= 1
            assert not bad.healthy  # failed probation: out again
        finally:
            await eng.aclose()

    run(go)


def test_stall_watchdog_ejects_silent_server_and_aborts_its_requests(simulator: Any) -> None:
    dead = simulator(speed=SPEED, faults={"mode": "dead"})
    good = simulator(speed=SPEED)

    async def go() -> None:
        eng = engine(dead.url, good.url, request_timeout_s=60.0, stall_after_s=0.3, adaptive=False)
        try:
            await eng.start()
            t0 = time.monotonic()
            tasks = [asyncio.create_task(eng.ocr(request(i))) for i in range(6)]
            bad = eng.pool.servers[0]
            await wait_for(lambda: bad.in_flight > 0 and good.state()["finished"] >= 1, what="both servers busy")
            await wait_for(lambda: time.monotonic() - bad.last_progress > 0.3, what="the dead server to stay silent past stall_after_s")
            await eng.pool.check_once()
            assert not bad.healthy and "no bytes" in bad.ejected_reason
            results = await asyncio.gather(*tasks, return_exceptions=True)
            assert time.monotonic() - t0 < 30  # not request_timeout_s
            errors = [r for r in results if isinstance(r, BaseException)]
            assert errors and all(isinstance(e, ModelServerError) and e.code is ErrorCode.TIMEOUT for e in errors)
            assert "found dead" in str(errors[0])
        finally:
            await eng.aclose()

    run(go)


def test_two_servers_share_load(simulator: Any) -> None:
    a = simulator(speed=SPEED)
    b = simulator(speed=SPEED)

    async def go() -> None:
        eng = engine(a.url, b.url, adaptive=False)
        try:
            outs = await asyncio.gather(*(eng.ocr(request(i)) for i in range(40)))
            stats = {st.url: st for st in eng.server_stats()}
            assert stats[a.url].requests + stats[b.url].requests == 40
            assert all(st.healthy and st.in_flight == 0 and st.failures == 0 for st in stats.values())
        finally:
            await eng.aclose()
        by_server = {a.url: 0, b.url: 0}
        for o in outs:
            by_server[o.server] += 1
        assert min(by_server.values()) >= 15, by_server
        assert a.state()["finished"] + b.state()["finished"] == 40

    run(go)


def test_routing_least_loaded_ties_round_robin() -> None:
    async def go() -> None:
        import aiohttp

        from ocr_stream.engines.pool import ServerPool

        async with aiohttp.ClientSession() as session:
            pool = ServerPool(["http://a", "http://b", "http://c"], session, max_in_flight=30, adaptive=False)
            a, b, c = pool.servers
            picked = [pool.pick().url for _ in range(6)]
            assert sorted(picked) == sorted(["http://a", "http://b", "http://c"] * 2)  # ties rotate
            a.in_flight, b.in_flight, c.in_flight = 5, 1, 3
            assert pool.pick() is b
            b.limit = 1  # adaptive limits weigh in: 1/1 is fuller than 3/10
            assert pool.pick() is c
            c.probation, c.in_flight = True, 1  # on probation: one request at a time
            a.healthy = False
            assert pool.pick() is b
            b.healthy = False
            a.in_flight = 0
            assert pool.pick() is a  # all out: the one out longest, if idle, still gets a try
            a.in_flight = b.in_flight = 1
            with pytest.raises(ModelServerError, match="no model server available"):
                pool.pick()

    run(go)


# --- API key -----------------------------------------------------------------------------------------


class KeyedSimulator(SimulatorServer):
    """The simulator behind vLLM's ``--api-key``: /v1 routes need ``Authorization: Bearer KEY``."""

    def __init__(self, key: str, config: SimulatorConfig) -> None:
        super().__init__(config)
        self.key = key
        self.seen: list[str | None] = []

    def build_app(self) -> web.Application:
        app = super().build_app()

        @web.middleware
        async def check(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
            if request.path.startswith("/v1/"):
                got = request.headers.get("Authorization")
                self.seen.append(got)
                if got != f"Bearer {self.key}":
                    return web.json_response({"error": {"message": "Unauthorized", "type": "Unauthorized", "code": 401}}, status=401)
            return await handler(request)

        app.middlewares.append(check)
        return app


def test_api_key_sent() -> None:
    sim = KeyedSimulator("s3cret", SimulatorConfig(port=0, speed=SPEED))
    url = sim.start_in_thread()

    async def go() -> None:
        good = engine(url, api_key="s3cret")
        bad = engine(url, model=sim.config.model)
        try:
            out = await good.ocr(request())
            assert out.finish_reason == "stop"
            with pytest.raises(ModelServerError) as err:
                await bad.ocr(request())
            assert "401" in str(err.value)
        finally:
            await good.aclose()
            await bad.aclose()

    try:
        run(go)
        assert sim.seen[:2] == ["Bearer s3cret", "Bearer s3cret"]  # /v1/models, then the page
    finally:
        sim.stop()


# --- adaptive in-flight --------------------------------------------------------------------------------


def test_adaptive_scrape_shrinks_an_overrun_server(simulator: Any) -> None:
    """A server with 8 slots sent 48 pages: /metrics shows a long queue, the limit comes down;
    an idle server keeps its share."""
    small = simulator(speed=5.0, max_num_seqs=8)

    async def go() -> None:
        eng = engine(small.url, max_in_flight=64, metrics_interval_s=3600)  # scrapes driven by the test
        try:
            await eng.start()
            server = eng.pool.servers[0]
            await eng.pool.scrape_once()
            assert eng.suggested_in_flight() == 64  # metrics supported; idle: limit held
            tasks = [asyncio.create_task(eng.ocr(request(i, max_tokens=2000))) for i in range(48)]
            await wait_for(lambda: small.state()["waiting"] >= 30, what="a queue on the server")
            await eng.pool.scrape_once()
            assert server.load is not None and server.load.running == 8 and server.load.waiting >= 30
            assert server.limit < 64
            first = server.limit
            await eng.pool.scrape_once()
            assert server.limit <= first
            suggested = eng.suggested_in_flight()
            assert suggested is not None and suggested < 64
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await eng.aclose()

    run(go)


def test_no_metrics_no_opinion() -> None:
    """A server without /metrics (404): the controller stays out of it."""

    async def go() -> None:
        app = web.Application()

        async def health(_: web.Request) -> web.Response:
            return web.Response()

        app.router.add_get("/health", health)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        eng = engine(f"http://127.0.0.1:{port}")
        try:
            await eng.start()
            await eng.pool.scrape_once()
            assert eng.suggested_in_flight() is None
            assert eng.pool.servers[0].scraper is not None and eng.pool.servers[0].scraper.supported is False
        finally:
            await eng.aclose()
            await runner.cleanup()

    run(go)


# --- the SSE reader against odd but valid (and invalid) streams --------------------------------------


def _chunk(content: str | None = None, finish: str | None = None, role: bool = False) -> bytes:
    delta: dict[str, Any] = {}
    if role:
        delta["role"] = "assistant"
    if content is not None:
        delta["content"] = content
    obj = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1, "model": "m",
           "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
    return json.dumps(obj).encode()


USAGE = json.dumps({"id": "chatcmpl-x", "object": "chat.completion.chunk", "choices": [],
                    "usage": {"prompt_tokens": 300, "completion_tokens": 3, "total_tokens": 303}}).encode()


async def scripted_server(body: bytes, *, piece: int = 0, status: int = 200) -> tuple[web.AppRunner, str]:
    """A server that answers every chat completion with ``body``, written ``piece`` bytes at a time."""

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "m", "object": "model"}]})

    async def chat(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(status=status, headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        step = piece or len(body) or 1
        for i in range(0, len(body), step):
            await resp.write(body[i : i + step])
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


async def answer(body: bytes, piece: int = 0) -> Any:
    runner, url = await scripted_server(body, piece=piece)
    eng = engine(url, adaptive=False)
    try:
        return await eng.ocr(request(max_tokens=100))
    finally:
        await eng.aclose()
        await runner.cleanup()


def sse(*payloads: bytes, sep: bytes = b"\n") -> bytes:
    return b"".join(b"data: " + p + sep + sep for p in payloads)


GOOD = [_chunk("", role=True), _chunk("<|ref|>title<|/ref|><|det|>[[0, 0, 999, 100]]<|/det|>\n# He"), _chunk("llo\n", "stop"), USAGE, b"[DONE]"]


@pytest.mark.parametrize("piece", [0, 1, 7])
def test_stream_split_anywhere_crlf_and_comments(piece: int) -> None:
    body = b": keep-alive comment\r\n\r\n" + sse(*GOOD, sep=b"\r\n")
    out = run(lambda: answer(body, piece))
    assert out.markdown.strip() == "# Hello" and out.blocks[0].label == "title"
    assert out.blocks[0].box == (0, 0, 640, 82)
    assert out.usage.prompt_tokens == 300 and out.usage.completion_tokens == 3


def test_blank_page_is_not_an_error() -> None:
    out = run(lambda: answer(sse(_chunk("", role=True), _chunk(None, "stop"), USAGE, b"[DONE]")))
    assert out.markdown == "" and out.blocks == [] and out.finish_reason == "stop"


@pytest.mark.parametrize(
    ("body", "error", "words"),
    [
        (b"", MalformedResponseError, "empty stream"),
        (sse(_chunk("", role=True), _chunk("text")), MalformedResponseError, "without a finish_reason"),
        (sse(_chunk("x"), b"[DONE]"), MalformedResponseError, "no finish_reason"),
        (sse(b'{"id": "x", "object": "chat.completion.chunk"}', b"[DONE]"), MalformedResponseError, "no choices"),
        (sse(b'{"choices": [{"delta": {"content": 5}}]}', b"[DONE]"), MalformedResponseError, "well-formed"),
        (sse(b"[1, 2]", b"[DONE]"), MalformedResponseError, "well-formed"),
        (sse(_chunk("x"), b'{"error": {"message": "engine died", "code": 500}}', b"[DONE]"), ModelServerError, "engine died"),
        (sse(_chunk("x"), b'{"object": "error", "message": "old shape"}', b"[DONE]"), ModelServerError, "old shape"),
        (sse(_chunk("x", "abort"), b"[DONE]"), MalformedResponseError, "abort"),
    ],
)
def test_bad_streams_are_typed(body: bytes, error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words):
        run(lambda: answer(body))


def test_error_messages_never_carry_the_query_of_a_url() -> None:
    """A server that could not fetch an image by URL may quote it; its query is a read credential."""
    from ocr_stream.engines.deepseek import _error_detail

    raw = b'{"error": {"message": "Failed to fetch http://minio:9000/b/p.jpg?X-Amz-Signature=deadbeef&X-Amz-Expires=900 (timeout)"}}'
    detail = _error_detail(raw)
    assert "deadbeef" not in detail and "X-Amz" not in detail
    assert "http://minio:9000/b/p.jpg?..." in detail and "(timeout)" in detail
