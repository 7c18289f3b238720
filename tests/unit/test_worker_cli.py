"""`ocr-stream worker` flags: overrides, validation, help."""

from __future__ import annotations

import argparse

import pytest

from ocr_stream.cli import build_parser
from ocr_stream.config import load_settings
from ocr_stream.errors import ConfigError
from ocr_stream.worker import cli


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["worker", *argv])


def test_flags_override_settings() -> None:
    args = parse("--max-in-flight", "64", "--vllm-url", "http://a:8000/", "--vllm-url", "http://b:8000", "--metrics-port", "9500",
                 "--engine", "deepseek", "--engine", "deepseek:canary", "--burst", "--processes", "3")
    s = cli.apply_overrides(load_settings(), args)
    assert s.max_in_flight == 64 and s.vllm_urls == ["http://a:8000", "http://b:8000"] and s.metrics_port == 9500
    assert args.engine == ["deepseek", "deepseek:canary"] and args.burst and args.processes == 3


def test_no_flags_keep_settings() -> None:
    base = load_settings(max_in_flight=7)
    assert cli.apply_overrides(base, parse()) is base


@pytest.mark.parametrize("argv,message", [
    (["--max-in-flight", "0"], "--max-in-flight"),
    (["--vllm-url", "ftp://x"], "not an http"),
    (["--metrics-port", "70000"], "--metrics-port"),
])
def test_bad_flags_are_config_errors(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        cli.apply_overrides(load_settings(), parse(*argv))


def test_zero_processes_is_refused() -> None:
    with pytest.raises(ConfigError, match="--processes"):
        cli.run(parse("--processes", "0"), load_settings())


def test_unknown_engine_is_refused() -> None:
    with pytest.raises(ConfigError):
        cli.build_engines(["no-such-engine"], load_settings())
