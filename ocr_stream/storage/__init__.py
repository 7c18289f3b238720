"""Object storage: where page images and results live (DESIGN.md §5).

    pages/{doc_id}/{page_no:05d}.jpg
    results/{doc_id}/pages/{page_no:05d}.json
    results/{doc_id}/document.md
    results/{doc_id}/document.json

Writes are idempotent (same key, same content). Reads are confined to the configured buckets:
a message can name an object, never make a worker fetch anything else.
"""

from __future__ import annotations

from ..config import Settings
from .base import ObjectStore, document_json_key, document_md_key, page_image_key, page_result_key
from .local import LocalStore


def open_store(settings: Settings) -> ObjectStore:
    """The store the settings describe (S3 or a local folder)."""
    if settings.storage == "local":
        return LocalStore(settings.local_storage_path, bucket=settings.bucket, allowed_buckets=settings.readable_buckets)
    from .s3 import S3Store

    return S3Store.from_settings(settings)


__all__ = [
    "LocalStore",
    "ObjectStore",
    "document_json_key",
    "document_md_key",
    "open_store",
    "page_image_key",
    "page_result_key",
]
