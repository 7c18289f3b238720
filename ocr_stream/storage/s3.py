"""S3 storage through the MinIO SDK (any S3-compatible server)."""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from typing import Any

import urllib3
from minio import Minio
from minio.error import S3Error

from ..config import Settings
from ..contracts import ObjectRef
from ..errors import NotFoundError, StorageUnavailableError
from .base import ObjectStore

_NOT_FOUND = {"NoSuchKey", "NoSuchBucket", "NoSuchObject"}


class S3Store(ObjectStore):
    def __init__(
        self,
        client: Minio,
        *,
        bucket: str,
        allowed_buckets: Iterable[str] = (),
        endpoint: str = "",
    ) -> None:
        super().__init__(bucket=bucket, allowed_buckets=allowed_buckets)
        self.client = client
        self.endpoint = endpoint

    @classmethod
    def from_settings(cls, settings: Settings, *, pool_size: int = 64) -> S3Store:
        # Explicit timeouts and a pool as wide as the concurrency we use (STYLE.md 5).
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=5.0, read=60.0),
            maxsize=pool_size,
            retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
            cert_reqs="CERT_REQUIRED" if settings.s3_secure else "CERT_NONE",
            ca_certs=str(settings.s3_ca_file) if settings.s3_ca_file else None,
        )
        client = Minio(
            settings.s3_endpoint,
            access_key=settings.s3_access_key.get_secret_value(),
            secret_key=settings.s3_secret_key.get_secret_value(),
            secure=settings.s3_secure,
            region=settings.s3_region,
            http_client=http,
        )
        return cls(client, bucket=settings.bucket, allowed_buckets=settings.readable_buckets, endpoint=settings.s3_endpoint)

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except S3Error as exc:
            if exc.code in _NOT_FOUND:
                raise NotFoundError(f"{what}: {exc.code}") from exc
            raise StorageUnavailableError(f"{what}: S3 error {exc.code}") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise StorageUnavailableError(f"{what}: S3 server at {self.endpoint} unavailable ({type(exc).__name__})") from exc

    def ensure_bucket(self) -> None:
        if not self._call(f"bucket {self.bucket}", self.client.bucket_exists, self.bucket):
            try:
                self.client.make_bucket(self.bucket)
            except S3Error as exc:
                if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise StorageUnavailableError(f"cannot create bucket {self.bucket}: {exc.code}") from exc

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> ObjectRef:
        ref = self.ref(key)
        self._call(f"put {ref}", self.client.put_object, self.bucket, key, io.BytesIO(data), len(data), content_type=content_type)
        return ref

    def get(self, ref: ObjectRef) -> bytes:
        self.check_readable(ref)
        resp = self._call(f"get {ref}", self.client.get_object, ref.bucket, ref.key)
        try:
            return bytes(resp.read())
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise StorageUnavailableError(f"get {ref}: connection lost mid-body") from exc
        finally:
            resp.close()
            resp.release_conn()

    def size(self, ref: ObjectRef) -> int:
        self.check_readable(ref)
        stat = self._call(f"stat {ref}", self.client.stat_object, ref.bucket, ref.key)
        return int(stat.size or 0)

    def exists(self, key: str) -> bool:
        try:
            self.size(self.ref(key))
        except NotFoundError:
            return False
        return True

    def delete(self, key: str) -> None:
        self._call(f"delete {key}", self.client.remove_object, self.bucket, key)

    def list(self, prefix: str) -> Iterator[str]:
        objs = self._call(f"list {prefix}", lambda: list(self.client.list_objects(self.bucket, prefix=prefix, recursive=True)))
        return iter(sorted(o.object_name for o in objs if o.object_name))

    def ping(self) -> bool:
        try:
            self.client.bucket_exists(self.bucket)
        except Exception:  # noqa: BLE001 - health is a yes/no question
            return False
        return True
