"""Every command and subcommand answers --help."""

from __future__ import annotations

import argparse

import pytest

from ocr_stream.cli import build_parser


def _all_parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [path]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.extend(_all_parsers(sub, (*path, name)))
    return out


PATHS = _all_parsers(build_parser())


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "ocr-stream")
def test_help_everywhere(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([*path, "--help"])
    assert exc.value.code == 0
    assert "usage: ocr-stream" in capsys.readouterr().out


def test_core_commands_exist() -> None:
    names = {p[0] for p in PATHS if p}
    assert {"topics", "config"} <= names
