"""Every PDF of ../shared/corpus/pdf-samples yields exactly the page count its files.json lists
(skipped where ../shared is absent, as in a user's clone)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from conftest import CORPUS  # noqa: E402

from ocr_stream.config import load_settings  # noqa: E402
from ocr_stream.errors import CorruptDocumentError, EncryptedDocumentError  # noqa: E402
from ocr_stream.producer import page_count_of  # noqa: E402

# py-pdf/sample-files documents the password of its encrypted sample.
PASSWORDS = {"005-libreoffice-writer-password/libreoffice-writer-password.pdf": "openpassword"}

# The copy of this file in the corpus is damaged: bytes 1,695,609-2,817,775 (the page tree, object
# 172, and one of the four pages) are zeros. MuPDF and pypdf both find no page tree; files.json
# lists the original's 4 pages. The producer must refuse it clearly rather than publish 3 of 4.
DAMAGED = {"017-unreadable-meta-data/unreadablemetadata.pdf": b"\x00" * 1_000_000}


def _entries() -> list[dict[str, Any]]:
    files = CORPUS / "files.json"
    if not files.exists():
        return []
    data: list[dict[str, Any]] = json.loads(files.read_text())["data"]
    return data


ENTRIES = _entries()
SETTINGS = load_settings(storage="local")


@pytest.fixture(autouse=True)
def _corpus() -> None:
    from conftest import corpus_dir

    corpus_dir()  # skips cleanly without ../shared


def test_corpus_is_listed() -> None:
    assert len(ENTRIES) >= 25


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["path"] for e in ENTRIES])
def test_page_count_matches_files_json(entry: dict[str, Any]) -> None:
    path = CORPUS / entry["path"]
    rel = entry["path"]
    if rel in DAMAGED:
        assert DAMAGED[rel] in path.read_bytes(), f"{rel} is no longer damaged: drop it from DAMAGED"
        with pytest.raises(CorruptDocumentError, match="no pages.*damaged"):
            page_count_of(path, settings=SETTINGS)
        return
    if entry.get("encrypted"):
        with pytest.raises(EncryptedDocumentError, match="give its password"):
            page_count_of(path, settings=SETTINGS)
        with pytest.raises(EncryptedDocumentError, match="wrong"):
            page_count_of(path, settings=SETTINGS, password="not-it")
        assert page_count_of(path, settings=SETTINGS, password=PASSWORDS[rel]) == entry["pages"]
        return
    assert page_count_of(path, settings=SETTINGS) == entry["pages"]
