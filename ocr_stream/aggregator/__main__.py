"""``python -m ocr_stream.aggregator``: the same as ``ocr-stream aggregator``, without loading the
other subcommands."""

from __future__ import annotations

import sys

from ..cli import run_command
from . import cli


def main(argv: list[str] | None = None) -> int:
    return run_command(cli, argv, prog="ocr-stream aggregator", who="ocr-stream aggregator")


if __name__ == "__main__":
    sys.exit(main())
