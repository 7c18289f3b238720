"""The benchmark suite behind ``make bench`` (``python -m bench``): every DESIGN.md §6 target that
a CPU can measure, each as a ratio of figures measured side by side in the same run.

    python -m bench [--quick] [--parts producer,pipeline,tesseract] [--out bench/results]

Needs the real Kafka broker and S3 server (``tests/stack.py run`` exports OCR_STREAM_TEST_*).
Writes ``<out>/<UTC date>.json`` and prints the table on stdout; progress goes to stderr.
``--quick`` (or BENCH_QUICK=1) runs tiny sizes: a smoke test of the suite, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .docs import make_mixed_pdf
from .pipeline import Corpus, RunResult, RunSpec, Services, log, prepare_corpus, run_pipeline
from .report import Target, clean_json, format_grid, format_table, ratio

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PARTS = ("producer", "pipeline", "tesseract")


@dataclass(frozen=True)
class Sizes:
    """How big each part is. ``full`` fits in ~8 minutes on the 2-core dev box."""

    producer_pages: int = 200
    producer_png_pages: int = 100
    memory_pages: int = 2000
    speed: float = 4.0
    """Simulator speed: its maximum is ~21.7 pages/s (1,000 tokens a page, 256 in flight)."""
    tokens: int = 1000
    max_num_seqs: int = 256
    main_pages: int = 768
    main_in_flight: int = 256
    seed_pages: int = 96
    per_token_pages: int = 160
    per_token_in_flight: int = 64
    per_token_speed: float = 2.0
    scaling: tuple[tuple[int, int, int], ...] = ((1, 8, 96), (1, 32, 192), (1, 128, 384), (2, 128, 512))
    """(processes, in-flight per process, pages); (1, main_in_flight) comes from the main run."""
    tesseract_pages: int = 6
    tesseract_threads: tuple[int, ...] = (1, 2)

    @classmethod
    def quick(cls) -> Sizes:
        return cls(producer_pages=20, producer_png_pages=10, memory_pages=60, max_num_seqs=32, main_pages=96, main_in_flight=32,
                   seed_pages=16, per_token_pages=32, per_token_in_flight=16, scaling=(), tesseract_pages=1,
                   tesseract_threads=(1,))


class Suite:
    def __init__(self, sizes: Sizes, services: Services | None, *, quick: bool) -> None:
        self.sizes = sizes
        self.services = services
        self.quick = quick
        self.data: dict[str, Any] = {}
        self.errors: dict[str, str] = {}
        self.tmp = Path(tempfile.mkdtemp(prefix="ocr-stream-bench-"))

    def part(self, name: str, fn: Callable[[], Any]) -> Any:
        """Run one part; a failure is recorded (and its targets reported as not measured), the
        other parts still run."""
        t0 = time.monotonic()
        log(f"part {name}: start")
        try:
            out = fn()
        except Exception as exc:  # noqa: BLE001 - one broken part must not hide the others' numbers
            self.errors[name] = f"{type(exc).__name__}: {exc}"
            log(f"part {name}: FAILED: {self.errors[name]}\n{traceback.format_exc()}")
            return None
        log(f"part {name}: done in {time.monotonic() - t0:.0f} s")
        return out

    # ------------------------------------------------------------------ producer (3, 5)

    def producer(self) -> None:
        from ocr_stream.producer.bench import measure_in_subprocess

        s = self.sizes
        pdf = make_mixed_pdf(self.tmp / f"mixed-{s.producer_pages}.pdf", s.producer_pages)
        png_pdf = make_mixed_pdf(self.tmp / f"mixed-{s.producer_png_pages}.pdf", s.producer_png_pages)
        log(f"producer: {s.producer_pages} pages as JPEG q95, {s.producer_png_pages} as PNG, 1,600 px")
        jpeg = measure_in_subprocess(pdf, fmt="jpeg")
        png = measure_in_subprocess(png_pdf, fmt="png")
        self.data["producer"] = {"jpeg": asdict(jpeg), "png": asdict(png)}
        big = make_mixed_pdf(self.tmp / f"mixed-{s.memory_pages}.pdf", s.memory_pages)
        log(f"producer: peak memory on a {s.memory_pages}-page PDF ({big.stat().st_size / 1e6:.0f} MB)")
        large = measure_in_subprocess(big, fmt="jpeg")
        self.data["memory"] = {"small": asdict(jpeg), "large": asdict(large)}

    # ------------------------------------------------------------------ pipeline (1, 2, 4, 6)

    def pipeline(self) -> None:
        if self.services is None:
            raise RuntimeError("no Kafka/S3: set OCR_STREAM_TEST_KAFKA_BOOTSTRAP and OCR_STREAM_TEST_S3_* (make bench does)")
        from ocr_stream.storage import open_store

        s = self.sizes
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        runs: dict[str, dict[str, Any]] = {}
        self.data["pipeline"] = runs
        try:
            pdf = make_mixed_pdf(self.tmp / "corpus.pdf", 64)
            log("pipeline: rendering the corpus (64 mixed pages) with the producer into S3")
            corpus = prepare_corpus(self.services, bucket, pdf, tokens=s.tokens)
            specs = [
                RunSpec("ocr-stream", pages=s.main_pages, in_flight=s.main_in_flight, speed=s.speed, tokens=s.tokens,
                        max_num_seqs=s.max_num_seqs),
                RunSpec("first-plan", pages=s.seed_pages, in_flight=8, speed=s.speed, tokens=s.tokens, seed_engine=True),
                RunSpec("image-url", pages=s.main_pages, in_flight=s.main_in_flight, speed=s.speed, tokens=s.tokens,
                        max_num_seqs=s.max_num_seqs, image_transport="url"),
                RunSpec("per-token-chunks", pages=s.per_token_pages, in_flight=s.per_token_in_flight,
                        speed=s.per_token_speed, tokens=s.tokens, chunk_tokens=1),
                *[RunSpec(f"scale-{p}x{n}", pages=pages, in_flight=n, processes=p, speed=s.speed, tokens=s.tokens)
                  for p, n, pages in s.scaling],
            ]
            for spec in specs:
                self._run(spec, corpus, bucket, runs)
            self.data["worker_instant"] = self._instant(200 if self.quick else 600)
        finally:
            try:
                store = open_store(self.services.settings(bucket=bucket))
                for key in list(store.list("")):
                    store.delete(key)
                store.client.remove_bucket(bucket)  # type: ignore[attr-defined]
            except Exception as exc:  # noqa: BLE001 - cleanup only
                log(f"could not remove bucket {bucket}: {exc}")

    def _run(self, spec: RunSpec, corpus: Corpus, bucket: str, runs: dict[str, dict[str, Any]]) -> None:
        assert self.services is not None
        try:
            result: RunResult = run_pipeline(spec, corpus, self.services, bucket, timeout_s=max(90.0, 6 * spec.pages / spec.speed))
        except Exception as exc:  # noqa: BLE001 - the other runs still count
            runs[spec.name] = {"spec": asdict(spec), "error": f"{type(exc).__name__}: {exc}"}
            log(f"pipeline {spec.name}: FAILED: {exc}")
            return
        runs[spec.name] = result.as_dict()
        steady = "" if math.isnan(result.steady_efficiency) else f"; steady state {result.steady_efficiency:.1%}"
        log(f"pipeline {spec.name}: {result.pages_per_s:.2f} pages/s ({result.efficiency:.1%} of the simulator's best "
            f"{result.sim_best_pages_per_s:.2f}{steady}); worker {result.worker_cpu_ms_per_page:.2f} ms CPU/page")

    def _instant(self, pages: int) -> dict[str, Any] | None:
        """The worker's own path alone (Kafka, S3, JSON; an engine that answers at once):
        ``python -m ocr_stream.worker.benchmark --instant`` in a subprocess."""
        assert self.services is not None
        s = self.services.settings()
        env = {**os.environ, "OCR_STREAM_KAFKA_BOOTSTRAP_SERVERS": s.kafka_bootstrap_servers,
               "OCR_STREAM_S3_ENDPOINT": s.s3_endpoint, "OCR_STREAM_S3_ACCESS_KEY": s.s3_access_key.get_secret_value(),
               "OCR_STREAM_S3_SECRET_KEY": s.s3_secret_key.get_secret_value(), "OCR_STREAM_STORAGE": "s3",
               "OCR_STREAM_LOG_LEVEL": "WARNING"}
        log(f"worker alone: {pages} pages with an engine that answers at once")
        try:
            out = subprocess.run([sys.executable, "-m", "ocr_stream.worker.benchmark", "--pages", str(pages), "--instant"],
                                 env=env, capture_output=True, text=True, timeout=180, check=True)
            result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
            return result
        except (subprocess.SubprocessError, ValueError, IndexError) as exc:
            log(f"worker alone: failed: {exc}")
            return None

    # ------------------------------------------------------------------ tesseract (7)

    def tesseract(self) -> None:
        from . import tesseract_pages

        self.data["tesseract"] = tesseract_pages.run(self.sizes.tesseract_pages, self.sizes.tesseract_threads)

    # ------------------------------------------------------------------ verdicts

    def targets(self) -> list[Target]:
        return build_targets(self.data, self.errors)

    def scaling_rows(self) -> list[list[Any]]:
        return scaling_rows(self.data.get("pipeline", {}))


def _ok(run: dict[str, Any] | None) -> bool:
    return run is not None and "error" not in run and not run.get("failed_pages")


def _why(run: dict[str, Any] | None, part_error: str | None) -> str:
    if part_error:
        return part_error
    if not run:
        return "run did not happen"
    if "error" in run:
        return str(run["error"])
    return "; ".join(run.get("notes") or ["pages failed"])


def build_targets(data: dict[str, Any], errors: dict[str, str]) -> list[Target]:
    """The table's lines from the collected figures (pure; a missing figure gives 'not measured')."""
    pipe = data.get("pipeline", {})
    main, seed, per_token = pipe.get("ocr-stream"), pipe.get("first-plan"), pipe.get("per-token-chunks")
    by_url = pipe.get("image-url")
    out: list[Target] = []

    if _ok(main):
        assert main is not None
        out.append(Target(
            "pipeline_efficiency", "pipeline vs the simulator's own max (steady state)", main["steady_efficiency"], 0.95,
            "at_least", "%",
            f"time for 10%->90% of {main['pages']} pages: simulator alone / through Kafka+S3+worker+aggregator; "
            f"whole run incl. start and tail {main['efficiency']:.1%} ({main['pages_per_s']:.2f} of "
            f"{main['sim_best_pages_per_s']:.2f} pages/s); engine mean batch {main['engine_mean_batch']}"))
    else:
        out.append(Target("pipeline_efficiency", "pipeline vs the simulator's own max (steady state)", None, 0.95, "at_least",
                          "%", error=_why(main, errors.get("pipeline"))))

    if _ok(main) and _ok(seed):
        assert main is not None and seed is not None
        out.append(Target(
            "vs_first_plan", "vs the first plan's design, same simulator", ratio(main["pages_per_s"], seed["pages_per_s"]), 5.0,
            "at_least", "x",
            f"{main['pages_per_s']:.2f} vs {seed['pages_per_s']:.2f} pages/s (8 in flight, PNG, a client per page, n-gram "
            f"always; its ceiling here {seed['sim_best_at_in_flight_pages_per_s']:.2f}); DESIGN asks >= 10x on the GPU"))
    else:
        out.append(Target("vs_first_plan", "vs the first plan's design, same simulator", None, 5.0, "at_least",
                          error=_why(seed if _ok(main) else main, errors.get("pipeline"))))

    prod = data.get("producer")
    if prod:
        j, p = prod["jpeg"], prod["png"]
        out.append(Target(
            "producer_per_core", "producer render+encode+store per core, 1,600 px", j["pages_per_cpu_s"], 40.0, "at_least",
            "pages/s",
            f"JPEG q95 {j['pages_per_cpu_s']:.1f} vs PNG {p['pages_per_cpu_s']:.1f} pages per CPU-second in the same run: "
            f"{ratio(j['pages_per_cpu_s'], p['pages_per_cpu_s']):.1f}x ({j['pages']} and {p['pages']} pages; "
            f"{j['image_bytes_avg'] // 1024} KB vs {p['image_bytes_avg'] // 1024} KB a page)"))
    else:
        out.append(Target("producer_per_core", "producer render+encode+store per core, 1,600 px", None, 40.0, "at_least",
                          "pages/s", error=errors.get("producer", "not run")))

    instant = data.get("worker_instant")
    for key, what, run, other, other_name in (
        ("worker_cpu_grouped", "worker CPU per page, chunks of 16 tokens (--stream-interval 16)", main, per_token, "one token"),
        ("worker_cpu_per_token", "worker CPU per page, one chunk per token (vLLM default)", per_token, main, "16 tokens"),
        ("worker_cpu_image_url", "worker CPU per page, images by URL (OCR_STREAM_IMAGE_TRANSPORT=url)", by_url, main,
         "16 tokens, images inline"),
    ):
        if _ok(run):
            assert run is not None
            detail = (f"{run['worker_cpu_s']:.2f} CPU-s of the worker process(es) / {run['pages']} pages (model time is the "
                      f"simulator's)")
            if _ok(other):
                assert other is not None
                detail += f"; {other['worker_cpu_ms_per_page']:.2f} ms with chunks of {other_name}"
            if instant and key == "worker_cpu_grouped":
                detail += (f"; {instant['cpu_ms_per_page']:.2f} ms of it is Kafka+S3+JSON (the same worker with an engine "
                           "that answers at once), the rest the model client")
            out.append(Target(key, what, run["worker_cpu_ms_per_page"], 2.0, "at_most", "ms", detail))
        else:
            out.append(Target(key, what, None, 2.0, "at_most", "ms", error=_why(run, errors.get("pipeline"))))

    mem = data.get("memory")
    if mem:
        small, large = mem["small"], mem["large"]
        growth = ratio(large["peak_rss_mb"], small["peak_rss_mb"])
        flat = growth <= 1.25
        out.append(Target(
            "memory", f"producer peak RSS, {large['pages']}-page PDF", large["peak_rss_mb"], 300.0, "at_most", "MB",
            f"{large['peak_rss_mb']:.0f} MB vs {small['peak_rss_mb']:.0f} MB for {small['pages']} pages: {growth:.2f}x, "
            f"{(large['peak_rss_mb'] - small['peak_rss_mb']) * 1024 / max(1, large['pages'] - small['pages']):.0f} KB more "
            f"per extra page ({'flat' if flat else 'NOT flat: grows with the document'}; flat = at most 1.25x)",
            unmet_because=None if flat else "memory grows with the document", extra={"growth": growth}))
    else:
        out.append(Target("memory", "producer peak RSS, 2,000-page PDF", None, 300.0, "at_most", "MB",
                          error=errors.get("producer", "not run")))

    tess = data.get("tesseract")
    if tess:
        threads = sorted(int(k.split("_")[3]) for k in tess if k.startswith("pages_per_s_"))
        detail = f"character error rate {tess.get('cer')}"
        if len(threads) > 1:
            detail += (f"; {threads[-1]} threads {ratio(tess[f'pages_per_s_{threads[-1]}_threads'], tess['pages_per_s_1_threads']):.2f}x "
                       "the pages/s of 1")
        out.append(Target("tesseract", "embedded Tesseract, seconds per page (1 thread)", tess["seconds_per_page"], 0.0,
                          "info", "s", detail))
    else:
        out.append(Target("tesseract", "embedded Tesseract, seconds per page (1 thread)", None, 0.0, "info", "s",
                          error=errors.get("tesseract", "not run")))
    return out


SCALING_HEADERS = ["processes", "in flight/proc", "pages", "pages/s", "of sim max", "ideal client, same in-flight",
                   "of ideal", "worker ms CPU/page"]


def scaling_rows(pipe: dict[str, Any]) -> list[list[Any]]:
    """One row per pipeline run of ocr-stream's worker with grouped chunks, by processes then in-flight."""
    rows = []
    for name, run in pipe.items():
        if name in ("first-plan", "per-token-chunks", "image-url") or not _ok(run):
            continue
        spec = run["spec"]
        ideal = run["sim_best_at_in_flight_pages_per_s"]
        rows.append([spec["processes"], spec["in_flight"], run["pages"], run["pages_per_s"], f"{run['efficiency']:.0%}",
                     ideal, f"{ratio(run['pages_per_s'], ideal):.0%}", run["worker_cpu_ms_per_page"]])
    return sorted(rows, key=lambda r: (r[0], r[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", default=os.environ.get("BENCH_QUICK") == "1",
                        help="tiny sizes (a smoke test of the suite; also BENCH_QUICK=1)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for <date>.json (default bench/results)")
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}: choose from {', '.join(PARTS)}")

    started = datetime.now(timezone.utc)
    t0 = time.monotonic()
    services = Services.from_env() if "pipeline" in parts else None
    sizes = Sizes.quick() if args.quick else Sizes()
    suite = Suite(sizes, services, quick=args.quick)
    load0 = os.getloadavg()
    try:
        for name in parts:
            suite.part(name, getattr(suite, name))
    finally:
        shutil.rmtree(suite.tmp, ignore_errors=True)  # the generated PDFs (a 2,000-page one is ~20 MB)
    targets = suite.targets()
    rows = suite.scaling_rows()
    doc = {
        "format": "ocr-stream.bench", "version": 1,
        "started_at": started.isoformat(timespec="seconds"), "duration_s": round(time.monotonic() - t0, 1),
        "quick": args.quick, "parts": parts,
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine(),
                 "loadavg_start": [round(x, 2) for x in load0], "loadavg_end": [round(x, 2) for x in os.getloadavg()]},
        "sizes": asdict(sizes),
        "targets": [t.as_dict() for t in targets],
        "scaling": {"headers": SCALING_HEADERS, "rows": rows},
        "data": suite.data, "errors": suite.errors,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{started.date().isoformat()}{'-quick' if args.quick else ''}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(clean_json(doc), indent=1, default=str) + "\n")
    tmp.replace(path)

    print(f"ocr-stream bench, {started:%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs (load {load0[0]:.1f} at start)"
          f"{', QUICK sizes: not a measurement' if args.quick else ''}")
    print(format_table(targets), end="")
    if rows:
        print("\nthroughput by worker processes and in-flight, pages/s (whole run, start and tail included; the simulator's "
              f"max is {_capacity(suite.data):.2f} at {sizes.max_num_seqs} in flight):")
        print(format_grid(SCALING_HEADERS, rows), end="")
    print(f"\nwritten to {path} in {time.monotonic() - t0:.0f} s")
    return 0 if not suite.errors else 1


def _capacity(data: dict[str, Any]) -> float:
    main = data.get("pipeline", {}).get("ocr-stream") or {}
    return float(main.get("sim_capacity_pages_per_s") or math.nan)


if __name__ == "__main__":
    sys.exit(main())
