"""The vLLM simulator over real HTTP on loopback: vLLM's shapes, streaming, validation, slots and
aborts, /metrics under load, the subprocess form."""

from __future__ import annotations

import base64
import io
import json
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from PIL import Image

from ocr_stream.simulator import DEFAULT_MODEL
from ocr_stream.simulator.output import TokenDistribution

from conftest import wait_until

pytestmark = pytest.mark.integration

PROMPT = "<|grounding|>Convert the document to markdown."


def jpeg(seed: int = 0, width: int = 1024, height: int = 1325) -> bytes:
    img = Image.new("RGB", (width, height), (255, 255 - seed % 200, 255))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def chat_body(image: bytes | None = None, **extra: Any) -> dict[str, Any]:
    url = "data:image/jpeg;base64," + base64.b64encode(image if image is not None else jpeg()).decode()
    return {
        "model": DEFAULT_MODEL,
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": PROMPT}]}],
        "temperature": 0, "skip_special_tokens": False, **extra,
    }


def sse_events(lines: list[str]) -> list[Any]:
    """Parse ``data:`` lines; ``[DONE]`` stays a string."""
    out: list[Any] = []
    for line in lines:
        if not line:
            continue
        assert line.startswith("data: "), line
        payload = line[len("data: "):]
        out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def metric(url: str, name: str, **labels: str) -> float:
    text = httpx.get(url + "/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} {labels} not in /metrics")


@pytest.fixture
def fast(simulator: Callable[..., Any]) -> Any:
    return simulator(speed=200)


def test_non_streaming_answer_has_vllms_shape(fast: Any) -> None:
    r = httpx.post(fast.url + "/v1/chat/completions", json=chat_body(), timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    d = r.json()
    assert re.fullmatch(r"chatcmpl-[0-9a-f]{32}", d["id"])
    assert d["object"] == "chat.completion" and d["model"] == DEFAULT_MODEL and isinstance(d["created"], int)
    (choice,) = d["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop" and choice["message"]["role"] == "assistant"
    content = choice["message"]["content"]
    assert content.startswith("<|ref|>title<|/ref|><|det|>[[")
    u = d["usage"]
    assert u["prompt_tokens"] == 914 and u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    assert 500 < u["completion_tokens"] < 5200
    # same image, same page; without skip_special_tokens=false the tags vanish
    again = httpx.post(fast.url + "/v1/chat/completions", json=chat_body(), timeout=30).json()
    assert again["choices"][0]["message"]["content"] == content and again["id"] != d["id"]
    skipped = httpx.post(fast.url + "/v1/chat/completions", json=chat_body(skip_special_tokens=True), timeout=30).json()
    assert "<|ref|>" not in skipped["choices"][0]["message"]["content"]


def test_streaming_chunks_parse_and_end_with_done(fast: Any) -> None:
    body = chat_body(stream=True, stream_options={"include_usage": True})
    with httpx.stream("POST", fast.url + "/v1/chat/completions", json=body, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(list(r.iter_lines()))
    assert events[-1] == "[DONE]"
    chunks, usage_chunk = events[:-2], events[-2]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert {c["id"] for c in chunks} == {usage_chunk["id"]} and all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    plain = httpx.post(fast.url + "/v1/chat/completions", json=chat_body(), timeout=30).json()
    assert text == plain["choices"][0]["message"]["content"]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {k: plain["usage"][k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")}


def test_stream_without_usage_has_no_usage_chunk(fast: Any) -> None:
    with httpx.stream("POST", fast.url + "/v1/chat/completions", json=chat_body(stream=True), timeout=30) as r:
        events = sse_events(list(r.iter_lines()))
    assert events[-1] == "[DONE]" and events[-2]["choices"][0]["finish_reason"] == "stop"
    assert not any("usage" in e for e in events[:-1])


def test_max_tokens_and_ignore_eos(fast: Any) -> None:
    r = httpx.post(fast.url + "/v1/chat/completions", json=chat_body(max_tokens=50), timeout=30).json()
    assert r["choices"][0]["finish_reason"] == "length" and r["usage"]["completion_tokens"] == 50
    r = httpx.post(fast.url + "/v1/chat/completions", json=chat_body(max_tokens=3000, ignore_eos=True), timeout=30).json()
    assert r["choices"][0]["finish_reason"] == "length" and r["usage"]["completion_tokens"] == 3000


def test_models_health_version(fast: Any) -> None:
    models = httpx.get(fast.url + "/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == DEFAULT_MODEL
    assert models["data"][0]["object"] == "model" and models["data"][0]["max_model_len"] == 8192
    assert httpx.get(fast.url + "/health").status_code == 200
    assert "version" in httpx.get(fast.url + "/version").json()


def test_model_name_is_configurable(simulator: Callable[..., Any]) -> None:
    sim = simulator(model="my-ocr", speed=200)
    assert httpx.get(sim.url + "/v1/models").json()["data"][0]["id"] == "my-ocr"
    r = httpx.post(sim.url + "/v1/chat/completions", json=chat_body(), timeout=30)
    assert r.status_code == 404 and r.json()["error"]["type"] == "NotFoundError"


def test_bad_image_is_400_with_a_clear_message(fast: Any) -> None:
    r = httpx.post(fast.url + "/v1/chat/completions", json=chat_body(b"\xff\xd8 not really a jpeg"), timeout=30)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "BadRequestError" and err["code"] == 400 and "cannot be decoded as an image" in err["message"]
    r = httpx.post(fast.url + "/v1/chat/completions", content=b"{not json", timeout=30)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]


def _stream_first_line(url: str, body: dict[str, Any], opened: threading.Event, release: threading.Event) -> None:
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        next(lines)
        opened.set()
        release.wait(30)
    # leaving the block closes the connection mid-stream


def test_closing_the_stream_aborts_the_request_and_frees_its_slot(simulator: Callable[..., Any]) -> None:
    sim = simulator(speed=1, max_num_seqs=1, tokens=TokenDistribution(fixed=4000))
    opened, release = threading.Event(), threading.Event()
    holder = threading.Thread(target=_stream_first_line, args=(sim.url, chat_body(jpeg(1), stream=True), opened, release))
    holder.start()
    try:
        assert opened.wait(30)
        with ThreadPoolExecutor(1) as pool:
            second = pool.submit(lambda: httpx.post(sim.url + "/v1/chat/completions", json=chat_body(jpeg(2), max_tokens=20), timeout=60))
            wait_until(lambda: metric(sim.url, "vllm:num_requests_waiting") == 1, 10, what="the second request to queue")
            assert metric(sim.url, "vllm:num_requests_running") == 1
            release.set()
            holder.join(10)
            # the 4,000-token stream would hold the only slot for ~11 s; the abort hands it over at once
            r = second.result(timeout=5)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 20
        assert metric(sim.url, "vllm:request_success_total", finished_reason="abort") == 1
        assert sim.state()["aborted"] == 1
    finally:
        release.set()
        holder.join(10)


def test_client_timeout_on_a_plain_request_aborts_it_too(simulator: Callable[..., Any]) -> None:
    sim = simulator(speed=1, tokens=TokenDistribution(fixed=4000))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(sim.url + "/v1/chat/completions", json=chat_body(), timeout=httpx.Timeout(5, read=0.5))
    wait_until(lambda: sim.state()["aborted"] == 1 and sim.state()["running"] == 0, 10, what="the abort")


def test_metrics_show_running_and_waiting_moving_under_load(simulator: Callable[..., Any]) -> None:
    sim = simulator(speed=1, max_num_seqs=4, tokens=TokenDistribution(fixed=300))
    n = 10
    seen: set[tuple[float, float]] = set()
    with ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(lambda i=i: httpx.post(sim.url + "/v1/chat/completions", json=chat_body(jpeg(i)), timeout=60))
                   for i in range(n)]

        def full() -> bool:
            seen.add((metric(sim.url, "vllm:num_requests_running"), metric(sim.url, "vllm:num_requests_waiting")))
            return (4.0, 6.0) in seen

        wait_until(full, 20, what="4 running and 6 waiting")
        assert metric(sim.url, "vllm:kv_cache_usage_perc") > 0
        results = [f.result(timeout=60) for f in futures]
    assert all(r.status_code == 200 for r in results)
    assert metric(sim.url, "vllm:num_requests_running") == 0 and metric(sim.url, "vllm:num_requests_waiting") == 0
    assert metric(sim.url, "vllm:request_success_total", finished_reason="stop") == n
    assert metric(sim.url, "vllm:generation_tokens_total") == n * 300
    assert metric(sim.url, "vllm:prompt_tokens_total") == n * 914
    assert metric(sim.url, "vllm:e2e_request_latency_seconds_count") == n
    assert metric(sim.url, "vllm:e2e_request_latency_seconds_bucket", le="+Inf") == n
    text = httpx.get(sim.url + "/metrics").text
    assert 'model_name="deepseek-ai/DeepSeek-OCR"' in text and "vllm:gpu_cache_usage_perc{" in text
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f.type for f in text_string_to_metric_families(text)}  # valid exposition text
    assert families["vllm:e2e_request_latency_seconds"] == "histogram"
    assert families["vllm:num_requests_running"] == "gauge" and families["vllm:prompt_tokens"] == "counter"


def test_ngram_requests_are_counted_as_such_by_the_engine(simulator: Callable[..., Any]) -> None:
    # The slowdown itself is tested on the pure model; here: vllm_xargs reaches it.
    sim = simulator(speed=1, tokens=TokenDistribution(fixed=4000))
    opened, release = threading.Event(), threading.Event()
    body = chat_body(stream=True, vllm_xargs={"ngram_size": 30, "window_size": 90, "whitelist_token_ids": [128821, 128822]})
    holder = threading.Thread(target=_stream_first_line, args=(sim.url, body, opened, release))
    holder.start()
    try:
        assert opened.wait(30)
        wait_until(lambda: sim.state()["ngram_running"] == 1, 10, what="an n-gram request in the batch")
    finally:
        release.set()
        holder.join(10)
    wait_until(lambda: sim.state()["running"] == 0, 10, what="the aborted request to leave")


def test_subprocess_form_prints_its_url_and_exits_0_on_sigterm(simulator: Callable[..., Any]) -> None:
    proc = simulator(subprocess=True, args=["--speed", "200", "--model", "sub-model"])
    assert proc.url.startswith("http://127.0.0.1:")
    r = httpx.post(proc.url + "/v1/chat/completions", json=chat_body() | {"model": "sub-model"}, timeout=30)
    assert r.status_code == 200 and r.json()["model"] == "sub-model"
    proc.set_faults("503")
    assert httpx.post(proc.url + "/v1/chat/completions", json=chat_body(), timeout=30).status_code == 503
    assert proc.stop() == 0


def test_closed_loop_streams_all_complete(simulator: Callable[..., Any]) -> None:
    """Requests finishing while another request is being submitted must still be told (a bug
    once left such streams open forever)."""
    import asyncio

    import aiohttp

    sim = simulator(speed=50, max_num_seqs=8, tokens=TokenDistribution(fixed=200))
    images = [jpeg(i) for i in range(6)]
    total, in_flight = 48, 12
    ends: list[str] = []

    async def run() -> None:
        sent = 0
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
            async def worker() -> None:
                nonlocal sent
                while sent < total:
                    sent += 1
                    body = chat_body(images[sent % len(images)], stream=True)
                    async with s.post(sim.url + "/v1/chat/completions", json=body) as r:
                        lines = [line.decode().strip() async for line in r.content]
                    ends.append([line for line in lines if line][-1])

            await asyncio.gather(*(worker() for _ in range(in_flight)))

    asyncio.run(run())
    assert ends == ["data: [DONE]"] * total
    state = sim.state()
    assert state["finished"] == total and state["running"] == 0 and state["aborted"] == 0


def test_page_cost_matches_what_the_server_charges(fast: Any) -> None:
    for i in range(3):
        image = jpeg(i, 1200 + 100 * i, 1600)
        usage = httpx.post(fast.url + "/v1/chat/completions", json=chat_body(image), timeout=30).json()["usage"]
        assert fast.config.page_cost(image) == (usage["prompt_tokens"], usage["completion_tokens"])


def test_one_chunk_per_token_like_vllm(simulator: Callable[..., Any]) -> None:
    sim = simulator(speed=200, chunk_tokens=1, tokens=TokenDistribution(fixed=300))
    body = chat_body(stream=True, stream_options={"include_usage": True})
    with httpx.stream("POST", sim.url + "/v1/chat/completions", json=body, timeout=30) as r:
        events = sse_events(list(r.iter_lines()))
    content = [e for e in events[1:-2]]
    assert len(content) == 300 == events[-2]["usage"]["completion_tokens"]
    assert content[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(c["choices"][0]["finish_reason"] is None for c in content[:-1])
    plain = httpx.post(sim.url + "/v1/chat/completions", json=chat_body(), timeout=30).json()
    assert "".join(c["choices"][0]["delta"]["content"] for c in content) == plain["choices"][0]["message"]["content"]


def test_a_stream_arrives_progressively(simulator: Callable[..., Any]) -> None:
    # speed 1: ~400 steps of ~2.7 ms; chunks at least every 10 ms, so dozens of them
    sim = simulator(speed=1, tokens=TokenDistribution(fixed=400))
    with httpx.stream("POST", sim.url + "/v1/chat/completions", json=chat_body(stream=True), timeout=30) as r:
        events = sse_events(list(r.iter_lines()))
    content = [e for e in events[1:-1] if e["choices"][0]["delta"].get("content")]
    assert len(content) > 10
