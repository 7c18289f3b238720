"""The benchmark suite's pure parts: verdicts, ratios, tables, the steady-state window, the ideal
run, and the targets built from collected figures."""

from __future__ import annotations

import json
import math

import pytest

from bench.pipeline import ideal_completion_times
from bench.report import Target, clean_json, format_grid, format_table, quantile_span, ratio, steady_rate
from bench.suite import build_targets, scaling_rows
from ocr_stream.simulator.batching import Timing, simulate_closed_loop


def test_verdicts_follow_the_direction_and_missing_figures_are_not_met() -> None:
    assert Target("a", "a", 0.96, 0.95, "at_least", "%").met is True
    assert Target("a", "a", 0.94, 0.95, "at_least", "%").met is False
    assert Target("b", "b", 2.5, 2.0, "at_most", "ms").met is False
    assert Target("b", "b", 2.0, 2.0, "at_most", "ms").met is True
    missing = Target("c", "c", None, 1.0, "at_least", error="broker down")
    assert missing.met is None and missing.verdict == "not measured"
    assert Target("d", "d", math.nan, 1.0, "at_least").met is None
    assert Target("e", "e", 100.0, 300.0, "at_most", "MB", unmet_because="grows").met is False
    assert Target("f", "f", 0.9, 0.0, "info", "s").verdict == "(no target)"


def test_ratio_refuses_a_zero_denominator() -> None:
    assert ratio(10.0, 4.0) == 2.5
    assert math.isnan(ratio(1.0, 0.0))
    assert math.isnan(ratio(math.nan, 1.0))


def test_table_shows_value_target_verdict_and_what_was_compared() -> None:
    table = format_table([
        Target("p", "pipeline vs simulator", 0.971, 0.95, "at_least", "%", detail="A / B"),
        Target("w", "worker CPU per page", 2.5, 2.0, "at_most", "ms"),
        Target("m", "memory", None, 300.0, "at_most", "MB", error="producer crashed"),
    ])
    lines = table.splitlines()
    assert "97.1%" in lines[2] and ">= 95.0%" in lines[2] and lines[2].rstrip().endswith("met")
    assert "A / B" in lines[3]
    assert "2.5 ms" in lines[4] and "<= 2 ms" in lines[4] and "NOT MET" in lines[4]
    assert "not measured" in lines[5] and "producer crashed" in lines[6]


def test_grid_renders_missing_values_as_dashes() -> None:
    text = format_grid(["a", "bb"], [[1, 2.345], [None, math.nan]])
    assert text.splitlines() == ["a    bb", "1  2.35", "-     -"]


def test_clean_json_makes_strict_json() -> None:
    doc = clean_json({"x": math.nan, "y": [math.inf, 1.5], "z": {"k": (1, -math.inf)}})
    assert json.loads(json.dumps(doc, allow_nan=False)) == {"x": None, "y": [None, 1.5], "z": {"k": [1, None]}}


def test_quantile_span_leaves_out_ramp_and_tail() -> None:
    times = [float(i) for i in range(101)]  # one page a second
    pages, seconds = quantile_span(times)
    assert (pages, seconds) == (80, 80.0)
    assert steady_rate(times) == pytest.approx(1.0)
    assert steady_rate([5.0, 5.0, 5.0]) != steady_rate([5.0, 5.0, 5.0])  # NaN: no time spanned
    assert quantile_span([1.0]) == (0, quantile_span([1.0])[1])


def test_ideal_times_match_the_simulators_closed_loop() -> None:
    workload = [(916, 1000)] * 40 + [(916, 600)] * 24
    for in_flight in (8, 64):
        times = ideal_completion_times(Timing(), workload, max_num_seqs=32, in_flight=in_flight)
        assert len(times) == len(workload)
        expected = simulate_closed_loop(Timing(), in_flight=in_flight, workload=workload, max_num_seqs=32)
        assert len(times) / max(times) == pytest.approx(expected)


def _run(pps: float, *, cpu: float = 1.5, failed: int = 0, processes: int = 1, in_flight: int = 256) -> dict[str, object]:
    return {"spec": {"processes": processes, "in_flight": in_flight}, "pages": 100, "failed_pages": failed, "notes": [],
            "pages_per_s": pps, "efficiency": 0.93, "steady_efficiency": 0.97, "sim_best_pages_per_s": 21.0,
            "sim_best_at_in_flight_pages_per_s": 6.7, "engine_mean_batch": 230.0, "worker_cpu_s": cpu * 0.1,
            "worker_cpu_ms_per_page": cpu}


def test_targets_from_collected_figures() -> None:
    data = {
        "pipeline": {"ocr-stream": _run(20.0), "first-plan": _run(4.0, cpu=120.0, in_flight=8),
                     "per-token-chunks": _run(9.0, cpu=6.0)},
        "producer": {"jpeg": {"pages_per_cpu_s": 50.0, "pages": 200, "image_bytes_avg": 500_000},
                     "png": {"pages_per_cpu_s": 10.0, "pages": 100, "image_bytes_avg": 300_000}},
        "memory": {"small": {"peak_rss_mb": 150.0, "pages": 200}, "large": {"peak_rss_mb": 160.0, "pages": 2000}},
        "tesseract": {"seconds_per_page": 0.9, "cer": 0.01, "pages_per_s_1_threads": 1.1, "pages_per_s_2_threads": 2.0},
    }
    by_key = {t.key: t for t in build_targets(data, {})}
    assert by_key["pipeline_efficiency"].value == 0.97 and by_key["pipeline_efficiency"].met
    assert by_key["vs_first_plan"].value == 5.0 and by_key["vs_first_plan"].met
    assert by_key["producer_per_core"].met and "5.0x" in by_key["producer_per_core"].detail
    assert by_key["worker_cpu_grouped"].met and by_key["worker_cpu_per_token"].met is False
    assert by_key["memory"].met and "1.07x" in by_key["memory"].detail
    assert by_key["tesseract"].met is None and "1.82x" in by_key["tesseract"].detail


def test_targets_say_why_a_figure_is_missing() -> None:
    data = {"pipeline": {"ocr-stream": _run(20.0, failed=3) | {"notes": ["3 of 100 pages failed"]},
                         "first-plan": {"spec": {}, "error": "TimeoutError: slow"}}}
    by_key = {t.key: t for t in build_targets(data, {"producer": "RuntimeError: boom"})}
    assert by_key["pipeline_efficiency"].met is None and "3 of 100 pages failed" in str(by_key["pipeline_efficiency"].error)
    assert by_key["vs_first_plan"].met is None
    assert by_key["producer_per_core"].error == "RuntimeError: boom"
    assert by_key["memory"].met is None and by_key["tesseract"].met is None


def test_memory_that_grows_with_the_document_is_not_met_even_under_the_cap() -> None:
    data = {"memory": {"small": {"peak_rss_mb": 100.0, "pages": 200}, "large": {"peak_rss_mb": 250.0, "pages": 2000}}}
    mem = {t.key: t for t in build_targets(data, {})}["memory"]
    assert mem.value == 250.0 and mem.met is False and "NOT flat" in mem.detail


def test_scaling_rows_sorted_and_without_the_comparison_runs() -> None:
    pipe = {"ocr-stream": _run(20.0), "scale-1x8": _run(7.0, in_flight=8), "scale-2x128": _run(21.0, processes=2, in_flight=128),
            "first-plan": _run(4.0), "per-token-chunks": _run(9.0), "broken": {"spec": {}, "error": "x"}}
    rows = scaling_rows(pipe)
    assert [(r[0], r[1]) for r in rows] == [(1, 8), (1, 256), (2, 128)]
