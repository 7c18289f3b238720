"""The storage interface and the key layout."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator

from ..contracts import ObjectRef
from ..errors import ConfigError, ForbiddenLocationError


def page_image_key(doc_id: str, page_no: int, ext: str = "jpg") -> str:
    return f"pages/{doc_id}/{page_no:05d}.{ext}"


def page_result_key(doc_id: str, page_no: int) -> str:
    return f"results/{doc_id}/pages/{page_no:05d}.json"


def document_md_key(doc_id: str) -> str:
    return f"results/{doc_id}/document.md"


def document_json_key(doc_id: str) -> str:
    return f"results/{doc_id}/document.json"


class ObjectStore(ABC):
    """A bucket to write to, and an allow-list of buckets to read from.

    Errors: NotFoundError (no such object), ForbiddenLocationError (bucket not allowed),
    StorageUnavailableError (the server cannot be reached: transient)."""

    def __init__(self, *, bucket: str, allowed_buckets: Iterable[str] = ()) -> None:
        self.bucket = bucket
        self.allowed_buckets = frozenset([bucket, *allowed_buckets])

    def ref(self, key: str) -> ObjectRef:
        return ObjectRef(bucket=self.bucket, key=key)

    def check_readable(self, ref: ObjectRef) -> None:
        if ref.bucket not in self.allowed_buckets:
            raise ForbiddenLocationError(f"bucket {ref.bucket!r} is not one this service may read ({ref})")

    @abstractmethod
    def ensure_bucket(self) -> None: ...

    @abstractmethod
    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> ObjectRef:
        """Write ``data`` at ``key`` in the write bucket (overwriting: writes are idempotent)."""

    @abstractmethod
    def get(self, ref: ObjectRef) -> bytes:
        """Read an object from an allowed bucket."""

    @abstractmethod
    def size(self, ref: ObjectRef) -> int:
        """Size in bytes of an object in an allowed bucket (NotFoundError if absent)."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def list(self, prefix: str) -> Iterator[str]:
        """Keys under ``prefix`` in the write bucket, sorted."""

    @abstractmethod
    def ping(self) -> bool:
        """True when the storage answers (for /healthz)."""

    def get_key(self, key: str) -> bytes:
        return self.get(self.ref(key))

    async def aget(self, ref: ObjectRef) -> bytes:
        self.check_readable(ref)
        return await asyncio.to_thread(self.get, ref)

    async def aput(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> ObjectRef:
        return await asyncio.to_thread(self.put, key, data, content_type)

    async def aget_head(self, ref: ObjectRef, length: int) -> bytes:
        """The first ``length`` bytes of an object (all of it when it is shorter)."""
        return (await self.aget(ref))[:length]

    def presign_get(self, ref: ObjectRef, expires_s: int) -> str:
        """A URL that lets its holder read this one object for ``expires_s`` seconds."""
        raise ConfigError(f"{type(self).__name__} cannot hand out object URLs: OCR_STREAM_IMAGE_TRANSPORT=url needs S3 storage")

    def close(self) -> None:
        """Release connections."""
