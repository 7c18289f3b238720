"""Helpers of the deployment tests: metric names in PromQL, the dashboard's metrics, and a
/metrics sampler that tells which series moved."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "ocr-stream.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"

# Prometheus' own series about each target (not exposed by any service).
PROMETHEUS_METRICS = {"up"}

_PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "by", "without", "rate", "irate", "increase", "deriv", "delta",
    "histogram_quantile", "and", "or", "unless", "absent", "clamp_min", "clamp_max", "le", "offset", "on",
    "ignoring", "group_left", "group_right", "topk", "bottomk", "time", "vector", "scalar", "bool",
}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (identifiers that are not functions, keywords, label
    names inside braces or by()/without() lists, or durations)."""
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)  # grouping labels
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r'"[^"]*"', "", expr)
    names = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr))
    return {n for n in names if n not in _PROMQL_WORDS}


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panel_exprs(d: dict[str, Any] | None = None) -> dict[str, list[str]]:
    """Panel title → its PromQL expressions (rows skipped)."""
    d = d if d is not None else dashboard()
    return {p["title"]: [t["expr"] for t in p["targets"]] for p in d["panels"] if p["type"] != "row"}


def dashboard_metrics() -> set[str]:
    return {n for exprs in panel_exprs().values() for e in exprs for n in metric_names(e)}


def scrape(url: str, timeout_s: float = 2.0) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """One /metrics page as {(sample name, sorted labels): value}."""
    with urllib.request.urlopen(url, timeout=timeout_s) as r:
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


class Sampler:
    """Scrapes several /metrics URLs every ``interval_s`` in a thread and remembers, per series,
    the values it saw. A series *moved* when it took two values, or appeared after the first scrape
    of its endpoint with a non-zero value (a labelled counter is born at its first increment)."""

    def __init__(self, urls: dict[str, str], interval_s: float = 0.1) -> None:
        self.urls = urls
        self.interval_s = interval_s
        self.first: dict[str, set[tuple[str, tuple[tuple[str, str], ...]]]] = {}
        self.values: dict[tuple[str, tuple[tuple[str, str], ...]], set[float]] = {}
        self.born: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
        self.scrapes: dict[str, int] = dict.fromkeys(urls, 0)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="metrics-sampler", daemon=True)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def sample_once(self) -> None:
        for name, url in self.urls.items():
            try:
                page = scrape(url)
            except OSError:
                continue  # not listening yet
            with self._lock:
                self.scrapes[name] += 1
                first = self.first.setdefault(name, set(page))
                for key, value in page.items():
                    if key[0].endswith("_created"):
                        continue  # a timestamp, not a measurement
                    self.values.setdefault(key, set()).add(value)
                    if key not in first and value != 0:
                        self.born.add(key)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample_once()
            self._stop.wait(self.interval_s)

    def seen(self, metric: str) -> bool:
        with self._lock:
            return any(k[0] == metric for k in self.values)

    def moved(self, metric: str) -> bool:
        with self._lock:
            return any(k[0] == metric and (len(v) > 1 or k in self.born) for k, v in self.values.items())

    def last(self, metric: str) -> dict[tuple[tuple[str, str], ...], set[float]]:
        with self._lock:
            return {k[1]: v for k, v in self.values.items() if k[0] == metric}


def wait_for_url(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            scrape(url)
            return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"{url} did not answer within {timeout_s:.0f}s: {exc}") from exc
            time.sleep(0.1)
