"""``ocr-stream config``: show the effective settings (secrets masked) or the settings table."""

from __future__ import annotations

import argparse
import json

from .config import Settings, settings_table

COMMAND = "config"
HELP = "show the effective settings (secrets masked), or every setting with its default"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--table", action="store_true", help="print the Markdown table of every OCR_STREAM_* setting and its default")


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.table:
        print(settings_table(), end="")
        return 0
    data = json.loads(settings.model_dump_json())
    data["kafka_config"] = {k: v for k, v in settings.redacted_kafka_config().items() if k != "bootstrap.servers"}
    print(json.dumps(data, indent=2, sort_keys=True))
    return 0
