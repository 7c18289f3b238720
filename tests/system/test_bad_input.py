"""Bad input against the running pipeline: each gives a clear error (producer) or a dead letter with
its reason (worker), none crashes a service, and the good documents next to them are unaffected.

The producer's own bad-input cases (each file type, limit and password case, checked on offsets and
the bucket) are in tests/integration/test_producer_kafka_s3.py::test_each_bad_input_publishes_nothing
and tests/unit/test_producer_render.py; here they go through `ocr-stream submit` next to a good
document while the workers and the aggregator run."""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from harness import Pipeline
from PIL import Image

from ocr_stream.contracts import ObjectRef, PageEvent, RenderSettings, encode
from ocr_stream.producer.bench import make_encrypted_pdf, make_pdf, make_pdf_with_huge_image, png_with_header
from ocr_stream.storage.base import page_image_key
from ocr_stream.topics import PAGES

pytestmark = pytest.mark.system


def bad_files(folder: Path) -> dict[str, str]:
    """{file name: what the error line must say}."""
    folder.mkdir()
    good = make_pdf(folder / "source.pdf", 2).read_bytes()
    (folder / "corrupt.pdf").write_bytes(b"%PDF-1.7\n" + bytes(range(256)) * 40 + b"\n%%EOF\n")
    (folder / "truncated.pdf").write_bytes(good[: len(good) // 2])
    make_encrypted_pdf(folder / "encrypted.pdf", "s3cret-pdf-password")
    (folder / "zero-pages.pdf").write_bytes(
        b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\n"
        b"trailer<</Root 1 0 R/Size 3>>\n%%EOF\n")
    make_pdf(folder / "enormous.pdf", 30, lines=1)  # over OCR_STREAM_MAX_PAGES=20 (set below)
    (folder / "bomb.png").write_bytes(png_with_header(100_000, 100_000))
    make_pdf_with_huge_image(folder / "bomb-inside.pdf")
    gif = io.BytesIO()
    Image.new("RGB", (10, 10)).save(gif, "GIF")
    (folder / "really-a-gif.pdf").write_bytes(gif.getvalue())
    (folder / "really-text.pdf").write_text("hello, I am not a PDF\n")
    (folder / "source.pdf").unlink()
    return {
        "corrupt.pdf": "corrupt", "truncated.pdf": "truncated", "encrypted.pdf": "encrypted",
        "zero-pages.pdf": "no pages", "enormous.pdf": "30 pages", "bomb.png": "decompression bomb",
        "bomb-inside.pdf": "60000x60000", "really-a-gif.pdf": "GIF", "really-text.pdf": "unsupported type",
    }


def test_bad_files_are_refused_clearly_and_good_ones_go_through(make_pipeline: Any) -> None:
    p: Pipeline = make_pipeline(max_pages=20).start(workers=1)
    expected = bad_files(p.workdir / "bad")
    good = p.make_pdfs(1, 2)[0]
    docs, proc = p.submit([p.workdir / "bad", good], expect_rc=1)
    assert len(docs) == 1, proc.stdout
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("ocr-stream submit:")]
    for name, words in expected.items():
        line = next((ln for ln in lines if f"{name}:" in ln), None)
        assert line is not None, f"no error line for {name}:\n{proc.stderr}"
        assert words.lower() in line.lower(), line
    assert "s3cret-pdf-password" not in proc.stderr + proc.stdout
    p.check(docs, fault="bad input files (corrupt, truncated, encrypted, zero-page, enormous, bombs, wrong type)")


def _event(bucket: str, doc_id: str, key: str | None = None, page_no: int = 1, page_count: int = 1, **kw: Any) -> PageEvent:
    fields: dict[str, Any] = dict(
        doc_id=doc_id, page_no=page_no, page_count=page_count,
        image=ObjectRef(bucket=bucket, key=key or page_image_key(doc_id, page_no)),
        image_width=300, image_height=400, image_bytes=1000, render=RenderSettings(long_side=400),
    )
    fields.update(kw)
    return PageEvent(**fields)


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (300, 400), "white").save(buf, "JPEG")
    return buf.getvalue()


def test_bad_page_events_go_to_the_dlq_with_their_reason(make_pipeline: Any, make_settings: Any) -> None:
    p: Pipeline = make_pipeline().start(workers=1)
    s, store = p.settings, p.store
    # Another bucket on the same server, with a perfectly good image the worker must never read.
    other = make_settings(bucket=f"other-{uuid.uuid4().hex[:8]}")
    from ocr_stream.storage import open_store

    other_store = open_store(other)
    other_store.ensure_bucket()
    other_store.put("secret/page.jpg", _jpeg(), "image/jpeg")

    tag = uuid.uuid4().hex[:6]
    outside = _event(other.bucket, f"outside-{tag}", key="secret/page.jpg")
    missing = _event(s.bucket, f"missing-{tag}")
    bomb = _event(s.bucket, f"bomb-{tag}")
    store.put(page_image_key(bomb.doc_id, 1), png_with_header(100_000, 100_000), "image/png")
    junk = _event(s.bucket, f"junk-{tag}")
    store.put(page_image_key(junk.doc_id, 1), b"\x00garbage, not an image" * 50, "image/jpeg")
    gif = io.BytesIO()
    Image.new("RGB", (10, 10)).save(gif, "GIF")
    wrong = _event(s.bucket, f"gif-{tag}")
    store.put(page_image_key(wrong.doc_id, 1), gif.getvalue(), "image/gif")
    # A big but legal event (800 KB of metadata, passed through to its result).
    big = _event(s.bucket, f"big-{tag}", metadata={"blob": "x" * 800_000})
    store.put(page_image_key(big.doc_id, 1), _jpeg(), "image/jpeg")
    events = [outside, missing, bomb, junk, wrong, big]

    good_event = _event(s.bucket, f"good-{tag}", page_count=2)
    store.put(page_image_key(good_event.doc_id, 1), _jpeg(), "image/jpeg")
    good_2 = _event(s.bucket, good_event.doc_id, page_no=2, page_count=2)
    store.put(page_image_key(good_event.doc_id, 2), _jpeg(), "image/jpeg")

    valid = json.loads(encode(missing))
    raw_bad = [
        b"\xff\xfe not json at all",
        json.dumps({**valid, "doc_id": f"schema-{tag}", "page_no": 0}).encode(),  # page_no must be >= 1
        json.dumps({**valid, "doc_id": f"traversal-{tag}", "image": {"bucket": s.bucket, "key": "../../etc/passwd"}}).encode(),
        json.dumps({"doc_id": f"nothing-{tag}"}).encode(),
        json.dumps({**valid, "doc_id": f"url-{tag}", "image": {"url": "http://169.254.169.254/latest/meta-data/"}}).encode(),
    ]
    producer = p.transport.producer(name="bad-events")
    for ev in [*events, good_event, good_2]:
        producer.produce(s.topic(PAGES), encode(ev), ev.key.encode())
    for i, raw in enumerate(raw_bad):
        producer.produce(s.topic(PAGES), raw, f"raw-{i}".encode())
    assert producer.flush(30) == 0
    # An event over the broker's message limit is refused at the producer, clearly.
    huge = _event(s.bucket, f"huge-{tag}", metadata={"blob": "y" * 3_000_000})
    with pytest.raises(Exception, match="(?i)message size too large"):
        producer.produce(s.topic(PAGES), encode(huge), huge.key.encode())
        assert producer.flush(30) == 0

    docs = {ev.doc_id: 1 for ev in events} | {good_event.doc_id: 2}
    out = p.check(docs, fault="bad page events (schema, missing object, outside bucket, bomb, junk, wrong type, oversized)",
                  expect_failed={outside.doc_id: {1: "forbidden_location"}, missing.doc_id: {1: "not_found"},
                                 bomb.doc_id: {1: "limit_exceeded"}, junk.doc_id: {1: None}, wrong.doc_id: {1: "unsupported_type"}})
    assert out.events[good_event.doc_id].status.value == "complete"
    assert out.events[big.doc_id].status.value == "complete"

    letters = p.dead_letters()
    by_doc = {d.doc_id: d for d in letters if d.page is not None}
    for ev in (outside, missing, bomb, junk, wrong):
        assert ev.doc_id in by_doc, f"no dead letter for {ev.doc_id}"
        assert by_doc[ev.doc_id].error.message, by_doc[ev.doc_id]
    assert other.bucket in by_doc[outside.doc_id].error.message or "bucket" in by_doc[outside.doc_id].error.message
    unparsed = [d for d in letters if d.page is None]
    assert len(unparsed) >= len(raw_bad), [d.error for d in unparsed]
    assert all(d.error.code.value == "schema_violation" and d.raw for d in unparsed)
    assert any("page_no" in d.error.message for d in unparsed)
    # The outside-bucket image was never OCR'd: the model server saw exactly the readable pages.
    assert int(p.sims[0].state()["finished"]) == 3, p.sims[0].state()
    assert all(svc.alive for svc in p.services()), "a service crashed on bad input"
