"""``ocr-stream submit``: documents on disk → page events on ``ocr.pages``.

stdout gets one line per document accepted, ``doc_id<TAB>pages<TAB>path``; stderr gets a progress
bar over pages and one line per document that failed, naming the file and the problem.
Exit codes: 0 every document went through, 1 some failed, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import glob
import logging
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from ..config import Settings
from ..contracts import Mode
from ..errors import BadInputError, ConfigError, OcrStreamError, TransientError
from .detect import looks_like_document
from .submit import SubmitOptions, Submitter

COMMAND = "submit"
HELP = "render documents (PDF, PNG, JPEG, TIFF, WebP) into page images and publish one event per page"
DESCRIPTION = (
    "Render each document page by page, store the page images and publish one page event per page on "
    "ocr.pages. PATH may be a file, a directory (searched recursively) or a glob. Prints "
    "'doc_id<TAB>pages<TAB>path' per document. Exit codes: 0 all documents went through, 1 some failed "
    "(each named on stderr), 2 usage or configuration error."
)

log = logging.getLogger(__name__)
_GLOB_CHARS = set("*?[")


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="PATH", help="files, directories (recursive) or globs (quote them: 'scans/**/*.tif')")
    p.add_argument("--doc-id", help="document id (only with a single document); default: derived from the content and options")
    p.add_argument("--mode", choices=[m.value for m in Mode], help="DeepSeek-OCR resolution mode (default: OCR_STREAM_MODE, gundam)")
    p.add_argument("--prompt", help="markdown, free, figure, or literal prompt text (default: OCR_STREAM_PROMPT, markdown)")
    p.add_argument("--engine", help="engine that should OCR the pages, e.g. deepseek or deepseek:canary (default: OCR_STREAM_ENGINE)")
    p.add_argument("--password", help="password of encrypted PDFs (visible to other users in the process list: prefer --password-file)")
    p.add_argument("--password-file", type=Path, help="file whose first line is the password of encrypted PDFs")
    p.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE", help="passed through to the results untouched; repeatable")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


@dataclass
class RunReport:
    documents_ok: int = 0
    documents_failed: int = 0
    pages: int = 0
    not_attempted: int = 0
    results: list[tuple[str, int, str]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 0 if self.documents_failed == 0 and self.not_attempted == 0 else 1


def parse_metadata(items: Iterable[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--metadata {item!r}: expected KEY=VALUE")
        out[key.strip()] = value
    return out


def expand_inputs(args: Iterable[str]) -> Iterator[tuple[str, Path | None, str | None]]:
    """(label, path, problem) for every document the arguments name, in order, once each.
    Directories are walked recursively (hidden entries and non-documents skipped); a glob is
    expanded; a name that matches nothing yields a problem."""
    seen: set[Path] = set()

    def emit(path: Path) -> Iterator[tuple[str, Path | None, str | None]]:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            yield str(path), path, None

    for arg in args:
        path = Path(arg)
        if path.is_dir():
            yield from _walk(path, emit)
        elif path.exists() or not (_GLOB_CHARS & set(arg)):
            yield from emit(path)  # a missing file is reported by validation, like any bad input
        else:
            matches = sorted(glob.glob(arg, recursive=True))
            if not matches:
                yield arg, None, "no files match this pattern"
            for m in matches:
                mp = Path(m)
                yield from (_walk(mp, emit) if mp.is_dir() else emit(mp))


def _walk(root: Path, emit: Any) -> Iterator[tuple[str, Path | None, str | None]]:
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).parts
        if any(part.startswith(".") for part in rel) or not p.is_file():
            continue
        if looks_like_document(p):
            yield from emit(p)


def submit_inputs(
    inputs: Iterable[tuple[str, Path | None, str | None]],
    options: SubmitOptions,
    submitter: Submitter,
    *,
    out: TextIO,
    err: TextIO,
    progress: bool = True,
) -> RunReport:
    """Submit every input, reporting on ``out``/``err``; used by ``submit`` and by local mode."""
    from tqdm import tqdm

    report = RunReport()
    items = list(inputs)
    bar = tqdm(total=0, unit="page", file=err, disable=None if progress else True, dynamic_ncols=True, leave=False)

    def fail(label: str, problem: str) -> None:
        report.documents_failed += 1
        tqdm.write(f"ocr-stream submit: {label}: {problem}", file=err)

    def on_open(_doc_id: str, pages: int) -> None:
        bar.total += pages
        bar.refresh()

    try:
        for index, (label, path, problem) in enumerate(items):
            if path is None:
                fail(label, problem or "not found")
                continue
            try:
                result = submitter.submit_file(path, replace(options, source=options.source or str(path)),
                                               on_open=on_open, on_page=lambda _n: bar.update(1))
            except BadInputError as exc:
                fail(label, str(exc))
                continue
            except TransientError as exc:
                # Storage or broker down after retries: the next documents would only wait as long.
                fail(label, str(exc))
                report.not_attempted = len(items) - index - 1
                if report.not_attempted:
                    tqdm.write(f"ocr-stream submit: stopped; {report.not_attempted} more document(s) not submitted", file=err)
                break
            except OcrStreamError as exc:
                fail(label, str(exc))
                continue
            except Exception as exc:  # noqa: BLE001 - one document's surprise must not end the run
                log.exception("unexpected error", extra={"source": label})
                fail(label, f"internal error: {type(exc).__name__}: {exc}")
                continue
            report.pages += result.page_count
            report.results.append((result.doc_id, result.page_count, label))
            if result.pages_dead_lettered:
                fail(label, f"pages {', '.join(map(str, result.pages_dead_lettered))} could not be rendered and were "
                     f"sent to the DLQ; doc_id {result.doc_id} will complete as partial")
            else:
                report.documents_ok += 1
            print(f"{result.doc_id}\t{result.page_count}\t{label}", file=out, flush=True)
    finally:
        bar.close()
    return report


def build_options(args: argparse.Namespace) -> SubmitOptions:
    password = args.password
    if args.password_file is not None:
        try:
            password = args.password_file.read_text().splitlines()[0] if args.password_file.stat().st_size else ""
        except OSError as exc:
            raise ConfigError(f"--password-file {args.password_file}: {exc.strerror}") from exc
    return SubmitOptions(
        doc_id=args.doc_id,
        mode=Mode(args.mode) if args.mode else None,
        prompt=args.prompt,
        engine=args.engine,
        password=password,
        metadata=parse_metadata(args.metadata),
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    from ..storage import open_store
    from ..transport.kafka import KafkaTransport

    options = build_options(args)
    inputs = list(expand_inputs(args.paths))
    if options.doc_id is not None and len(inputs) > 1:
        raise ConfigError(f"--doc-id names one document, but the paths name {len(inputs)}")
    store = open_store(settings)
    store.ensure_bucket()  # a missing bucket would otherwise fail every document the same way
    producer = KafkaTransport(settings.kafka_client_config(), client_id="ocr-stream-submit").producer(name="submit")
    with Submitter(settings, store=store, producer=producer) as submitter:
        try:
            submitter.resolve(options)
        except BadInputError as exc:
            raise ConfigError(str(exc)) from exc
        report = submit_inputs(inputs, options, submitter, out=sys.stdout, err=sys.stderr, progress=not args.no_progress)
    store.close()
    return report.exit_code
