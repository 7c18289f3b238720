"""``ocr-stream simulate-vllm``'s flags, capacity report and the config value object (no server)."""

from __future__ import annotations

import argparse
import io

import pytest
from PIL import Image

from ocr_stream.simulator import cli
from ocr_stream.simulator.batching import H100, capacity_pages_per_s
from ocr_stream.simulator.config import SimulatorConfig, with_overrides
from ocr_stream.simulator.output import TokenDistribution


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.configure(parser)
    return parser.parse_args(argv)


def test_defaults_are_the_h100_engine() -> None:
    cfg = cli.config_from_args(parse())
    assert cfg == SimulatorConfig()
    assert cfg.port == 8000 and cfg.max_num_seqs == 256 and cfg.model == "deepseek-ai/DeepSeek-OCR"


def test_flags_reach_the_config() -> None:
    cfg = cli.config_from_args(parse(
        "--port", "0", "--speed", "50", "--max-num-seqs", "64", "--tokens-fixed", "1000", "--timing-scale", "2",
        "--fault", "429", "--fault-rate", "0.5", "--fault-count", "3", "--fault-seed", "9", "--retry-after", "2",
        "--model", "m", "--mode", "small", "--seed", "4",
    ))
    assert (cfg.port, cfg.speed, cfg.max_num_seqs, cfg.model, cfg.default_mode, cfg.seed) == (0, 50, 64, "m", "small", 4)
    assert cfg.tokens.fixed == 1000 and cfg.timing == H100.scaled(2)
    f = cfg.faults
    assert (f.mode, f.rate, f.count, f.seed, f.retry_after_s) == ("429", 0.5, 3, 9, 2)


def test_print_capacity(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.run(parse("--print-capacity", "--tokens-fixed", "1000", "--speed", "10"), None) == 0
    out = capsys.readouterr().out
    expected = 10 * capacity_pages_per_s(H100, in_flight=256, output_tokens=1000, prompt_tokens=914)
    assert f"capacity: {expected:.3f} pages/s (n-gram off)" in out
    assert "in flight" in out and "n-gram on" in out


def test_bad_values_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.run(parse("--speed", "0"), None) == 2
    assert "speed must be positive" in capsys.readouterr().err
    assert cli.run(parse("--fault-rate", "2"), None) == 2


def test_capacity_scales_with_speed_and_saturates() -> None:
    base = SimulatorConfig(tokens=TokenDistribution(fixed=1000))
    fast = with_overrides(base, speed=50)
    assert fast.capacity() == pytest.approx(50 * base.capacity())
    assert base.capacity(ngram_fraction=1.0) < base.capacity()
    assert base.capacity(in_flight=8) < base.capacity() == base.capacity(in_flight=10_000)
    assert base.capacity() == pytest.approx(capacity_pages_per_s(H100, in_flight=256, output_tokens=1000, prompt_tokens=914))


def test_page_cost_is_what_a_page_will_be_charged() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (1024, 1325), "white").save(buf, "JPEG")
    cfg = SimulatorConfig(tokens=TokenDistribution(fixed=1234))
    assert cfg.page_cost(buf.getvalue()) == (914, 1234)
    assert cfg.page_cost(buf.getvalue(), mode="tiny")[0] == 914 - 903 + 73
    workload = [cfg.page_cost(buf.getvalue())] * 3
    assert cfg.capacity(workload=workload) == pytest.approx(
        capacity_pages_per_s(H100, in_flight=256, output_tokens=1234, prompt_tokens=914))
