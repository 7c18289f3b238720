"""``ocr-stream``: the command line.

Each subcommand lives next to the code it drives and exports ``COMMAND`` (its name), ``HELP`` (one
line), ``configure(parser)`` and ``run(args, settings) -> int``. Exit codes: 0 success, 1 some work
failed (e.g. some documents were rejected), 2 usage or configuration error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable
from types import ModuleType
from typing import NoReturn

from . import __version__
from .config import Settings, load_settings
from .errors import ConfigError, OcrStreamError

# Order is the order in --help.
COMMAND_MODULES = [
    "ocr_stream.local",  # run
    "ocr_stream.producer.cli",  # submit
    "ocr_stream.producer.splitter",  # splitter
    "ocr_stream.worker.cli",  # worker
    "ocr_stream.aggregator.cli",  # aggregator
    "ocr_stream.status",  # status
    "ocr_stream.topics_cli",  # topics
    "ocr_stream.simulator.cli",  # simulate-vllm
    "ocr_stream.bench",  # bench
    "ocr_stream.config_cli",  # config
]


def _commands() -> list[ModuleType]:
    mods = []
    for name in COMMAND_MODULES:
        try:
            mods.append(importlib.import_module(name))
        except ModuleNotFoundError as exc:
            if exc.name != name:  # the module exists but one of its imports is missing: a real error
                raise
    return mods


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ocr-stream",
        description="Documents to Markdown and JSON with DeepSeek-OCR on vLLM, through Kafka. "
        "Settings come from OCR_STREAM_* environment variables (see `ocr-stream config`).",
    )
    parser.add_argument("--version", action="version", version=f"ocr-stream {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for mod in _commands():
        p = sub.add_parser(mod.COMMAND, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP))
        mod.configure(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return execute(args._run, args, who="ocr-stream")


def run_command(mod: ModuleType, argv: list[str] | None = None, *, prog: str, who: str) -> int:
    """One subcommand on its own (``python -m ocr_stream.aggregator``, ...), without loading the others."""
    parser = argparse.ArgumentParser(prog=prog, description=getattr(mod, "DESCRIPTION", mod.HELP))
    mod.configure(parser)
    return execute(mod.run, parser.parse_args(argv), who=who)


def execute(run: Callable[[argparse.Namespace, Settings], int], args: argparse.Namespace, *, who: str) -> int:
    """Settings, logging, then ``run``; errors become one line on stderr and the exit code."""
    try:
        settings = load_settings()
        from .observability import configure_logging

        configure_logging(settings.log_level)
        return int(run(args, settings))
    except KeyboardInterrupt:
        print(f"{who}: interrupted", file=sys.stderr)
        return 130
    except ConfigError as exc:
        print(f"{who}: {exc}", file=sys.stderr)
        return 2
    except OcrStreamError as exc:
        print(f"{who}: {exc}", file=sys.stderr)
        return 1


def restart_process() -> NoReturn:
    """Replace this process by a fresh run of the same command line (same pid, same arguments and
    environment): what a supervisor would do, without depending on one. Other threads end with it,
    including one blocked inside a C library."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, sys.orig_argv)


if __name__ == "__main__":
    sys.exit(main())
