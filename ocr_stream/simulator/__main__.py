"""``python -m ocr_stream.simulator [flags]``: the same as ``ocr-stream simulate-vllm``, without
loading the other subcommands (what test fixtures start as a subprocess)."""

import argparse
import sys

from ..observability import configure_logging
from . import cli

parser = argparse.ArgumentParser(prog="python -m ocr_stream.simulator", description=cli.DESCRIPTION)
cli.configure(parser)
parser.add_argument("--log-level", default="WARNING", help="log level (default %(default)s)")
args = parser.parse_args()
configure_logging(args.log_level.upper())
sys.exit(cli.run(args, None))
