"""Request validation as vLLM does it, and the fault dice (pure: no server)."""

from __future__ import annotations

import base64
import io
from typing import Any

import pytest
from PIL import Image

from ocr_stream.simulator.faults import FaultConfig, FaultInjector, coerce_faults
from ocr_stream.simulator.config import DEFAULT_MODEL, SimulatorConfig
from ocr_stream.simulator.protocol import ApiError, parse_chat_request

CFG = SimulatorConfig()


def jpeg(width: int = 1024, height: int = 1325) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), "white").save(buf, "JPEG", quality=80)
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/jpeg") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def body(url: str | None = None, text: str = "<|grounding|>Convert the document to markdown.", **extra: Any) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": url or data_url(jpeg())}}, {"type": "text", "text": text}]
    return {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": parts}], **extra}


def reject(payload: Any, status: int = 400) -> ApiError:
    with pytest.raises(ApiError) as info:
        parse_chat_request(payload, CFG)
    assert info.value.status == status
    err = info.value.body()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == status
    return info.value


def test_a_worker_request_is_accepted_with_everything_it_asks_for() -> None:
    p = parse_chat_request(body(
        temperature=0, max_tokens=4096, skip_special_tokens=False, stream=True, stream_options={"include_usage": True},
        vllm_xargs={"ngram_size": 30, "window_size": 90, "whitelist_token_ids": [128821, 128822]},
        some_future_field={"x": 1},
    ), CFG)
    assert p.stream and p.include_usage and p.ngram and not p.skip_special_tokens
    assert p.max_tokens == 4096 and p.temperature == 0.0
    assert p.image_size == (1024, 1325)
    assert p.prompt_tokens == 1 + 903 + 1 + 9  # BOS, image, <|grounding|>, 33 characters of text


def test_defaults_are_vllms() -> None:
    p = parse_chat_request(body(), CFG)
    assert p.skip_special_tokens is True and p.stream is False and p.ngram is False and p.max_tokens is None
    assert parse_chat_request({"messages": [{"role": "user", "content": "hi"}]}, CFG).image is None  # model optional


def test_mode_changes_image_tokens() -> None:
    tiny = parse_chat_request(body(mm_processor_kwargs={"mode": "tiny"}), CFG)
    gundam = parse_chat_request(body(mm_processor_kwargs={"mode": "gundam"}), CFG)
    assert gundam.prompt_tokens - tiny.prompt_tokens == 903 - 73
    reject(body(mm_processor_kwargs={"mode": "huge"}))


def test_another_model_is_a_404_like_vllm() -> None:
    err = reject(body() | {"model": "gpt-4"}, 404)
    assert err.err_type == "NotFoundError" and "The model `gpt-4` does not exist." == err.message


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        ([], "JSON object"),
        ({"model": DEFAULT_MODEL}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": ["hi"]}, "role"),
        ({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}, "unsupported content part type"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}]}, "text must be a string"),
    ],
)
def test_malformed_requests_are_400_naming_the_problem(payload: Any, needle: str) -> None:
    assert needle in reject(payload).message


def test_bad_images_are_400() -> None:
    assert "not fetched" in reject(body("https://example.com/page.jpg")).message  # the server fetches first
    assert "data:image" in reject(body("ftp://example.com/page.jpg")).message
    assert "data:image" in reject(body("file:///etc/passwd")).message
    assert "not valid base64" in reject(body("data:image/jpeg;base64,!!!not-base64!!!")).message
    assert "cannot be decoded as an image" in reject(body(data_url(b"this is not an image at all"))).message
    truncated = jpeg()[:2000]
    assert "cannot be decoded" in reject(body(data_url(truncated))).message
    assert "empty" in reject(body("data:image/jpeg;base64,")).message


def test_more_images_than_the_limit_are_refused() -> None:
    b = body()
    b["messages"][0]["content"].append({"type": "image_url", "image_url": {"url": data_url(jpeg(100, 100))}})
    assert "At most 1 image(s)" in reject(b).message


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"max_tokens": 0}, "max_tokens must be at least 1"),
        ({"max_tokens": "many"}, "max_tokens must be an integer"),
        ({"max_tokens": 8000}, "maximum context length is 8192"),
        ({"temperature": -1}, "temperature"),
        ({"n": 2}, "n=1"),
        ({"stream_options": {"include_usage": True}}, "stream=True"),
        ({"vllm_xargs": {"ngram_size": "30"}}, "ngram_size"),
        ({"vllm_xargs": {"whitelist_token_ids": "128821"}}, "whitelist_token_ids"),
        ({"stream": "yes"}, "stream must be a boolean"),
    ],
)
def test_bad_parameters_are_400(extra: dict[str, Any], needle: str) -> None:
    assert needle in reject(body(**extra)).message


# --- faults -------------------------------------------------------------------------------------


def test_fault_config_is_validated() -> None:
    with pytest.raises(ValueError, match="unknown fault mode"):
        FaultConfig(mode="explode")
    with pytest.raises(ValueError, match="rate"):
        FaultConfig(mode="503", rate=1.5)
    with pytest.raises(ValueError, match="unknown fault setting"):
        FaultConfig.from_json({"mode": "503", "probability": 1})
    with pytest.raises(ValueError, match="JSON object"):
        FaultConfig.from_json(["503"])
    assert coerce_faults("429", retry_after_s=2).retry_after_s == 2
    assert coerce_faults({"mode": "slow"}, delay_s=1).delay_s == 1


def test_no_fault_by_default() -> None:
    inj = FaultInjector()
    assert {inj.decide() for _ in range(100)} == {"none"}


def test_rate_is_a_probability_and_reproducible_with_a_seed() -> None:
    def run() -> list[str]:
        inj = FaultInjector(FaultConfig(mode="503", rate=0.3, seed=7))
        return [inj.decide() for _ in range(1000)]

    first = run()
    assert first == run()
    assert 0.25 < first.count("503") / 1000 < 0.35


def test_count_limits_the_fault_to_the_first_hits() -> None:
    inj = FaultInjector(FaultConfig(mode="reset", count=3))
    assert [inj.decide() for _ in range(6)] == ["reset"] * 3 + ["none"] * 3
    assert inj.state.hits == 3 and inj.state.seen == 6
    inj.set(FaultConfig(mode="garbage"))
    assert inj.decide() == "garbage" and inj.state.hits == 1


def test_repeat_spares_requests_with_the_ngram_processor_unless_told() -> None:
    inj = FaultInjector(FaultConfig(mode="repeat"))
    assert inj.decide(ngram=True) == "none"
    assert inj.decide(ngram=False) == "repeat"
    inj.set(FaultConfig(mode="repeat", ngram_cures=False))
    assert inj.decide(ngram=True) == "repeat"
