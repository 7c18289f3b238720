"""The Grafana dashboard and the alert rules name only metrics that exist: the services' own
registries (worker, aggregator, splitter) and vLLM's documented names. Also the provisioning files
point Grafana at what compose mounts. Pure: no servers."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import ROOT  # noqa: E402
from deploy_support import ALERTS, PROMETHEUS_METRICS, dashboard, metric_names, panel_exprs  # noqa: E402

# vLLM's /metrics names this deployment relies on (vLLM >= 0.10, docs.vllm.ai "Production Metrics";
# the simulator serves the same names, which tests/integration/test_deploy_metrics.py checks).
VLLM_METRICS = {
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:request_success_total",
    "vllm:e2e_request_latency_seconds_bucket",
    "vllm:e2e_request_latency_seconds_sum",
    "vllm:e2e_request_latency_seconds_count",
}


def sample_names(registry: CollectorRegistry) -> set[str]:
    """Every series name a registry can expose (labelled metrics expose none until first used)."""
    names: set[str] = set()
    for fam in registry.collect():
        if fam.type == "counter":
            names |= {f"{fam.name}_total", f"{fam.name}_created"}
        elif fam.type == "histogram":
            names |= {f"{fam.name}{s}" for s in ("_bucket", "_sum", "_count", "_created")}
        elif fam.type == "summary":
            names |= {fam.name, f"{fam.name}_sum", f"{fam.name}_count"}
        else:
            names.add(fam.name)
    return names


def service_metric_names(tmp_path: Path) -> set[str]:
    from ocr_stream.aggregator.metrics import AggregatorMetrics
    from ocr_stream.config import load_settings
    from ocr_stream.producer.splitter import Splitter
    from ocr_stream.storage import LocalStore
    from ocr_stream.transport.memory import MemoryTransport
    from ocr_stream.worker.metrics import WorkerMetrics

    splitter = Splitter(load_settings(storage="local", local_storage_path=str(tmp_path)), transport=MemoryTransport(),
                        store=LocalStore(tmp_path, bucket="ocr-stream"))
    return sample_names(WorkerMetrics().registry) | sample_names(AggregatorMetrics().registry) | sample_names(splitter.registry)


def test_metric_name_extraction() -> None:
    e = 'histogram_quantile(0.95, sum by (le) (rate(ocr_stream_worker_page_seconds_bucket{job="worker"}[5m])))'
    assert metric_names(e) == {"ocr_stream_worker_page_seconds_bucket"}
    assert metric_names('sum by (instance) (vllm:num_requests_running) and absent(up{job="vllm"} == 1)') == {"vllm:num_requests_running", "up"}


def test_every_dashboard_metric_exists(tmp_path: Path) -> None:
    known = service_metric_names(tmp_path) | VLLM_METRICS | PROMETHEUS_METRICS
    used = {n for exprs in panel_exprs(dashboard()).values() for e in exprs for n in metric_names(e)}
    assert used, "no metric found on the dashboard"
    missing = sorted(used - known)
    assert not missing, f"dashboard metrics that no service exposes: {missing}"


def test_every_alert_metric_exists(tmp_path: Path) -> None:
    known = service_metric_names(tmp_path) | VLLM_METRICS | PROMETHEUS_METRICS
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    assert {r["alert"] for r in rules} >= {"OcrStreamConsumerLagGrowing", "OcrStreamDeadLetterRate", "OcrStreamModelServerDown", "OcrStreamNoProgress"}
    for r in rules:
        missing = metric_names(r["expr"]) - known
        assert not missing, f"alert {r['alert']} uses unknown metrics {sorted(missing)}"
        assert r["labels"]["severity"] in {"warning", "critical"}
        assert "docs/operations.md#" in r["annotations"]["description"] or "docs/operations.md#" in r["annotations"].get("summary", "")


def test_alerts_are_documented() -> None:
    ops = (ROOT / "docs" / "operations.md").read_text()
    rules = [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    for r in rules:
        anchor = re.search(r"docs/operations.md#([a-z0-9-]+)", r["annotations"]["description"])
        assert anchor, r["alert"]
        # GitHub's anchor of a heading "### OcrStreamNoProgress" is "ocrstreamnoprogress".
        headings = {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-") for h in re.findall(r"^#+ (.+)$", ops, re.M)}
        assert anchor.group(1) in headings, f"{r['alert']} links to #{anchor.group(1)}, which docs/operations.md lacks"
        assert r["alert"] in ops, f"{r['alert']} is not explained in docs/operations.md"


@pytest.mark.parametrize(
    ("what", "metric"),
    [
        ("pages/s", "ocr_stream_worker_pages_total"),
        ("tokens/s", "ocr_stream_worker_tokens_total"),
        ("in-flight", "ocr_stream_worker_in_flight"),
        ("vLLM running", "vllm:num_requests_running"),
        ("vLLM waiting", "vllm:num_requests_waiting"),
        ("KV-cache use", "vllm:kv_cache_usage_perc"),
        ("page latency", "ocr_stream_worker_page_seconds_bucket"),
        ("errors by reason", "ocr_stream_worker_page_failures_total"),
        ("consumer lag", "ocr_stream_worker_consumer_lag"),
    ],
)
def test_the_dashboard_shows(what: str, metric: str) -> None:
    exprs = [e for es in panel_exprs(dashboard()).values() for e in es]
    assert any(metric in metric_names(e) for e in exprs), f"no panel shows {what} ({metric})"


def test_latency_panel_has_p50_and_p95_and_errors_are_by_reason() -> None:
    panels = panel_exprs(dashboard())
    lat = " ".join(panels["Page latency p50 / p95"])
    assert "histogram_quantile(0.5," in lat and "histogram_quantile(0.95," in lat
    assert any("by (reason)" in e for e in panels["Errors by reason"])
    assert any("rate(ocr_stream_worker_page_failures_total" in e for e in panels["DLQ rate"])


def test_dashboard_shape() -> None:
    d = dashboard()
    assert d["uid"] == "ocr-stream" and d["title"] == "ocr-stream"
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in d["panels"]:
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "prometheus"}, p["title"]
        assert p["targets"] and all(t["expr"].strip() for t in p["targets"])
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
    # Panels do not overlap.
    cells: set[tuple[int, int]] = set()
    for p in d["panels"]:
        g = p["gridPos"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not (mine & cells), f"panel {p['title']!r} overlaps another"
        cells |= mine


def test_provisioning_matches_the_compose_mounts() -> None:
    ds = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    (source,) = ds["datasources"]
    assert source["uid"] == "prometheus" and source["url"] == "http://prometheus:9090"
    prov = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/ocr-stream.yml").read_text())
    (provider,) = prov["providers"]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./deploy/grafana/dashboards:{provider['options']['path']}:ro" in mounts
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in mounts
