"""Document ids derived from content, so that submitting the same thing twice is absorbed downstream.

    doc_id = "sha256-" + first 20 hex digits of
             sha256(file_sha256 NUL mode NUL resolved_prompt NUL engine NUL long_side)

The file's bytes and every option that changes what the pages produce (resolution mode, the full
prompt text, the engine, the render size) go in; the password, metadata and submission time do
not. So a repeated submission writes the same objects and the same page events (only
``submitted_at`` differs, and the aggregator counts each page once), while the same file OCR'd in
another mode or with another prompt is another document with results of its own.

80 bits of the digest: a collision needs ~10^12 documents. Pure: no I/O except ``file_sha256``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import BinaryIO

from ..contracts import Mode, is_valid_doc_id
from ..errors import BadInputError

DOC_ID_PREFIX = "sha256-"
DIGEST_HEX_CHARS = 20
_CHUNK = 1024 * 1024


def derive_doc_id(content_sha256: str, *, mode: Mode, prompt: str, engine: str, long_side: int) -> str:
    """The content-derived id; ``prompt`` is the resolved prompt text (so a preset name and its text
    give the same id)."""
    material = "\x00".join([content_sha256, Mode(mode).value, prompt, engine, str(long_side)])
    return DOC_ID_PREFIX + hashlib.sha256(material.encode()).hexdigest()[:DIGEST_HEX_CHARS]


def check_doc_id(doc_id: str) -> str:
    """``doc_id`` if it can name objects and keys, else BadInputError saying what is allowed."""
    if not is_valid_doc_id(doc_id):
        raise BadInputError(
            f"invalid doc id {doc_id!r}: use 1-128 characters of letters, digits, '.', '_' and '-', "
            "starting with a letter or digit"
        )
    return doc_id


def stream_sha256(f: BinaryIO) -> str:
    """sha256 of a stream, read in 1 MiB chunks (never the whole file in memory)."""
    h = hashlib.sha256()
    while chunk := f.read(_CHUNK):
        h.update(chunk)
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return stream_sha256(f)
