"""Smoke test of the benchmark suite (`python -m bench --quick`): every part runs against the real
broker and object store and the simulator, the JSON is written and the table names every target.
Tiny sizes: it checks that the suite works, not how fast anything is (speed targets live in the
benchmark's own output, never in tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_quick_suite_writes_results_and_a_table(services: dict[str, str], tmp_path: Path) -> None:
    env = {**os.environ, "BENCH_QUICK": "1", "OCR_STREAM_TEST_KAFKA_BOOTSTRAP": services["kafka"],
           "OCR_STREAM_TEST_S3_ENDPOINT": services["s3"], "OCR_STREAM_TEST_S3_ACCESS_KEY": services["s3_access_key"],
           "OCR_STREAM_TEST_S3_SECRET_KEY": services["s3_secret_key"]}
    res = subprocess.run([sys.executable, "-m", "bench", "--out", str(tmp_path)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=280)
    assert res.returncode == 0, res.stderr[-3000:]

    (path,) = tmp_path.glob("*-quick.json")
    doc: dict[str, Any] = json.loads(path.read_text())
    assert doc["quick"] is True and doc["errors"] == {}
    keys = [t["key"] for t in doc["targets"]]
    assert keys == ["pipeline_efficiency", "vs_first_plan", "producer_per_core", "worker_cpu_grouped",
                    "worker_cpu_per_token", "worker_cpu_image_url", "memory", "tesseract"]
    # Every target was measured (met or not is the benchmark's business, not this test's).
    for t in doc["targets"]:
        assert t["value"] is not None and t["error"] is None, t
    runs = doc["data"]["pipeline"]
    for name in ("ocr-stream", "first-plan", "per-token-chunks", "image-url"):
        assert runs[name]["failed_pages"] == 0 and runs[name]["pages"] == runs[name]["spec"]["pages"], runs[name]
        assert runs[name]["completion_tokens_per_page"] == runs[name]["spec"]["tokens"]
    for line in ("pipeline vs the simulator", "first plan", "producer", "worker CPU", "peak RSS", "Tesseract"):
        assert line in res.stdout
    assert str(path) in res.stdout
