"""``ocr-stream topics``: create/update topics from topics/, check for drift, regenerate schemas."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import Settings
from .topics import TOPICS_DIR, TopicAdmin, load_specs, schema_drift, write_schemas

COMMAND = "topics"
HELP = "create or update the topics from topics/ (apply), report drift (check), regenerate schemas"


def configure(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="topics_command", metavar="ACTION", required=True)
    for name, help_ in [
        ("apply", "create missing topics, add partitions, set configs; a second run changes nothing"),
        ("check", "report topics whose partitions or configs differ from topics/; exit 1 on drift"),
        ("schemas", "regenerate topics/schemas/*.json from the message models (--check: exit 1 if stale)"),
    ]:
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.add_argument("--dir", type=Path, default=TOPICS_DIR, help="folder of topic files (default: %(default)s)")
        if name == "schemas":
            sp.add_argument("--check", action="store_true", help="only report stale schema files")


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.topics_command == "schemas":
        if args.check:
            stale = schema_drift(args.dir / "schemas")
            for name in stale:
                print(f"stale: {name} (run `ocr-stream topics schemas`)", file=sys.stderr)
            return 1 if stale else 0
        for path in write_schemas(args.dir / "schemas"):
            print(path)
        return 0
    specs = load_specs(args.dir)
    admin = TopicAdmin(settings.kafka_client_config(), prefix=settings.topic_prefix)
    if args.topics_command == "apply":
        changes = admin.apply(specs)
        for line in changes:
            print(line)
        if not changes:
            print("topics up to date")
        return 0
    drift = admin.check(specs)
    for d in drift:
        print(f"drift: {d}")
    if not drift:
        print("topics match topics/")
    return 1 if drift else 0
