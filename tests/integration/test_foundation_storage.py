"""Object storage: the real S3 server and the local folder pass the same tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ocr_stream.contracts import ObjectRef
from ocr_stream.errors import ForbiddenLocationError, NotFoundError, StorageUnavailableError
from ocr_stream.storage import LocalStore, page_image_key

pytestmark = pytest.mark.integration


@pytest.fixture(params=["s3", "local"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "local":
        st = LocalStore(tmp_path, bucket="ocr-stream")
        st.ensure_bucket()
        return st
    return request.getfixturevalue("store")


def test_put_get_list_delete(any_store: Any) -> None:
    key = page_image_key("doc-1", 7)
    assert key == "pages/doc-1/00007.jpg"
    ref = any_store.put(key, b"\xff\xd8jpeg-bytes", "image/jpeg")
    assert ref == ObjectRef(bucket=any_store.bucket, key=key)
    assert any_store.get(ref) == b"\xff\xd8jpeg-bytes"
    assert any_store.size(ref) == len(b"\xff\xd8jpeg-bytes")
    any_store.put(key, b"\xff\xd8jpeg-bytes", "image/jpeg")  # idempotent overwrite
    any_store.put("pages/doc-1/00008.jpg", b"x")
    assert list(any_store.list("pages/doc-1/")) == ["pages/doc-1/00007.jpg", "pages/doc-1/00008.jpg"]
    assert any_store.exists(key)
    any_store.delete(key)
    assert not any_store.exists(key)
    with pytest.raises(NotFoundError):
        any_store.get(ref)


async def test_async_access(any_store: Any) -> None:
    ref = await any_store.aput("results/d/pages/00001.json", b"{}", "application/json")
    assert await any_store.aget(ref) == b"{}"


def test_reads_outside_the_allowed_buckets_are_refused(any_store: Any) -> None:
    with pytest.raises(ForbiddenLocationError, match="other-bucket"):
        any_store.get(ObjectRef(bucket="other-bucket", key="pages/x.jpg"))


def test_unreachable_s3_is_transient(make_settings: Any) -> None:
    from ocr_stream.storage import open_store

    s = make_settings(s3_endpoint="127.0.0.1:9")  # discard port: nothing listens
    st = open_store(s)
    with pytest.raises(StorageUnavailableError):
        st.put("k", b"v")
    assert st.ping() is False
