"""Engine names → engines."""

from __future__ import annotations

import pytest

from ocr_stream.config import load_settings
from ocr_stream.engines.base import Engine
from ocr_stream.engines.registry import create_engine, parse_engine_name
from ocr_stream.errors import ConfigError


def test_parse_names() -> None:
    assert parse_engine_name("deepseek") == ("deepseek", None)
    assert parse_engine_name("deepseek:canary") == ("deepseek", "canary")
    assert parse_engine_name("Tesseract") == ("tesseract", None)


@pytest.mark.parametrize("bad", ["", "paddle", "tesseract:fast", "deepseek:", "deepseek:a:b"])
def test_unknown_names_fail_clearly(bad: str) -> None:
    with pytest.raises(ConfigError, match="engine"):
        parse_engine_name(bad)


def test_create_tesseract() -> None:
    engine = create_engine("tesseract", load_settings(max_in_flight=3))
    assert isinstance(engine, Engine) and engine.name == "tesseract"
    assert engine.suggested_in_flight() is not None and engine.suggested_in_flight() <= 3  # type: ignore[operator]


def test_create_deepseek_lazily() -> None:
    pytest.importorskip("ocr_stream.engines.deepseek", reason="the DeepSeek client is not in this checkout yet")
    engine = create_engine("deepseek:canary", load_settings(vllm_urls="http://127.0.0.1:9"))
    assert isinstance(engine, Engine)


def test_create_rapidocr_or_clear_error() -> None:
    try:
        import rapidocr  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="pip install"):
            create_engine("rapidocr", load_settings())
        return
    engine = create_engine("rapidocr", load_settings())
    assert engine.name == "rapidocr"


def test_deepseek_pools_get_their_own_servers() -> None:
    from ocr_stream.config import load_settings
    from ocr_stream.engines.registry import create_engine

    s = load_settings(vllm_urls=["http://main:8000"], engine_pools={"canary": ["http://canary:8000/", "http://canary:8001"]})
    assert create_engine("deepseek", s).urls == ["http://main:8000"]  # type: ignore[attr-defined]
    assert create_engine("deepseek:canary", s).urls == ["http://canary:8000", "http://canary:8001"]  # type: ignore[attr-defined]
    assert create_engine("deepseek:other", s).urls == ["http://main:8000"]  # type: ignore[attr-defined]


def test_bad_pool_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from ocr_stream.config import load_settings
    from ocr_stream.errors import ConfigError

    monkeypatch.setenv("OCR_STREAM_ENGINE_POOLS", '{"canary": ["ftp://x"]}')
    with pytest.raises(ConfigError, match="OCR_STREAM_ENGINE_POOLS"):
        load_settings()
