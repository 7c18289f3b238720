"""``python -m ocr_stream.aggregator``: the same as ``ocr-stream aggregator``, without loading the
other subcommands."""

from __future__ import annotations

import argparse
import sys

from ..config import load_settings
from ..errors import ConfigError, OcrStreamError
from ..observability import configure_logging
from . import cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ocr-stream aggregator", description=cli.DESCRIPTION)
    cli.configure(parser)
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
        configure_logging(settings.log_level)
        return cli.run(args, settings)
    except ConfigError as exc:
        print(f"ocr-stream aggregator: {exc}", file=sys.stderr)
        return 2
    except OcrStreamError as exc:
        print(f"ocr-stream aggregator: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
