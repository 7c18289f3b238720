"""A local folder as object storage: ``root/{bucket}/{key}`` (embedded mode and tests)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..contracts import ObjectRef
from ..errors import NotFoundError
from .base import ObjectStore


class LocalStore(ObjectStore):
    def __init__(self, root: Path | str, *, bucket: str = "ocr-stream", allowed_buckets: Iterable[str] = ()) -> None:
        super().__init__(bucket=bucket, allowed_buckets=allowed_buckets)
        self.root = Path(root)

    def _path(self, bucket: str, key: str) -> Path:
        # ObjectRef already refuses '..' and absolute keys; this is the belt to those braces.
        path = (self.root / bucket / key).resolve()
        if not path.is_relative_to((self.root / bucket).resolve()):
            raise NotFoundError(f"{bucket}/{key} is outside the store")
        return path

    def ensure_bucket(self) -> None:
        (self.root / self.bucket).mkdir(parents=True, exist_ok=True)

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> ObjectRef:
        ref = self.ref(key)
        path = self._path(self.bucket, ref.key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename, so a reader never sees half an object.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return ref

    def get(self, ref: ObjectRef) -> bytes:
        self.check_readable(ref)
        try:
            return self._path(ref.bucket, ref.key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise NotFoundError(f"no object at {ref}") from exc

    def size(self, ref: ObjectRef) -> int:
        self.check_readable(ref)
        try:
            return self._path(ref.bucket, ref.key).stat().st_size
        except FileNotFoundError as exc:
            raise NotFoundError(f"no object at {ref}") from exc

    def exists(self, key: str) -> bool:
        return self._path(self.bucket, key).is_file()

    def delete(self, key: str) -> None:
        self._path(self.bucket, key).unlink(missing_ok=True)

    def list(self, prefix: str) -> Iterator[str]:
        base = (self.root / self.bucket).resolve()
        if not base.exists():
            return iter(())
        keys = (p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file() and not p.name.startswith(".tmp-"))
        return iter(sorted(k for k in keys if k.startswith(prefix)))

    def ping(self) -> bool:
        return self.root.exists() or self.root.parent.exists()

    async def aget(self, ref: ObjectRef) -> bytes:
        # Local reads are fast enough to do inline; a thread hop would cost more than the read.
        return self.get(ref)

    async def aput(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> ObjectRef:
        return self.put(key, data, content_type)
