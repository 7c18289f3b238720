"""The producer library and `submit` command over the in-memory transport and a local folder store
(the same code runs against Kafka and S3 in tests/integration/test_producer_kafka_s3.py)."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ocr_stream import topics
from ocr_stream.config import Settings, load_settings
from ocr_stream.contracts import DeadLetter, Mode, ObjectRef, PageEvent, decode
from ocr_stream.errors import BadInputError, BrokerUnavailableError, CorruptDocumentError, StorageUnavailableError
from ocr_stream.producer import SubmitOptions, Submitter
from ocr_stream.producer.bench import make_encrypted_pdf, make_image, make_pdf, make_tiff
from ocr_stream.producer.cli import expand_inputs, parse_metadata, submit_inputs
from ocr_stream.producer.render import PageSource, RenderedPage
from ocr_stream.storage import LocalStore
from ocr_stream.transport.base import Record
from ocr_stream.transport.memory import MemoryTransport


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, Any]]:
    settings = load_settings(storage="local", local_storage_path=tmp_path / "store", topic_prefix="t.",
                             backoff_base_s=0.001, backoff_max_s=0.002, max_attempts=3)
    store = LocalStore(tmp_path / "store", bucket=settings.bucket)
    store.ensure_bucket()
    transport = MemoryTransport()
    transport.ensure_topics({settings.topic(topics.PAGES): 24, settings.topic(topics.DLQ): 2})
    submitter = Submitter(settings, store=store, producer=transport.producer(name="test"))
    yield {"settings": settings, "store": store, "transport": transport, "submitter": submitter, "dir": tmp_path}
    submitter.close()


def read_all(transport: MemoryTransport, topic: str) -> list[Record]:
    total = sum(transport.end_offsets(topic))
    consumer = transport.consumer(f"reader-{topic}-{total}-{id(transport)}")
    consumer.subscribe([topic])
    out: list[Record] = []
    for _ in range(200):
        out.extend(consumer.consume(1000, 0.05))
        if len(out) >= total:
            break
    consumer.close()
    assert len(out) == total
    return out


def page_events(env: dict[str, Any]) -> list[PageEvent]:
    recs = read_all(env["transport"], env["settings"].topic(topics.PAGES))
    events = [decode(PageEvent, r.value) for r in recs]
    for r, e in zip(recs, events):
        assert r.key == f"{e.doc_id}/{e.page_no}".encode()
    return sorted(events, key=lambda e: (e.doc_id, e.page_no))


def published(env: dict[str, Any]) -> int:
    return sum(env["transport"].end_offsets(env["settings"].topic(topics.PAGES)))


def test_every_page_is_stored_then_announced_with_every_field(env: dict[str, Any]) -> None:
    pdf = make_pdf(env["dir"] / "report.pdf", 6)
    result = env["submitter"].submit_file(pdf, SubmitOptions(metadata={"tenant": "acme", "n": 3}, prompt="free", engine="deepseek:canary"))
    assert result.page_count == 6 and result.ok and result.doc_id.startswith("sha256-")
    events = page_events(env)
    assert [e.page_no for e in events] == [1, 2, 3, 4, 5, 6]
    store: LocalStore = env["store"]
    for e in events:
        assert e.doc_id == result.doc_id and e.page_count == 6
        assert e.image == ObjectRef(bucket=store.bucket, key=f"pages/{result.doc_id}/{e.page_no:05d}.jpg")
        data = store.get(e.image)
        assert e.image_bytes == len(data) and data[:3] == b"\xff\xd8\xff"
        assert max(e.image_width, e.image_height) == 1600 and e.render.long_side == 1600
        assert e.render.format == "jpeg" and e.render.quality == 95 and e.render.dpi
        assert e.mode is Mode.GUNDAM and e.prompt == "<image>\nFree OCR." and e.engine == "deepseek:canary"
        assert e.metadata == {"tenant": "acme", "n": 3} and e.source == str(pdf) and e.attempt == 0
    assert len({e.submitted_at for e in events}) == 1
    partitions = {r.partition for r in read_all(env["transport"], env["settings"].topic(topics.PAGES))}
    assert len(partitions) > 1, "one document's pages should spread over partitions"


def test_same_file_twice_gives_same_doc_id_and_same_events(env: dict[str, Any]) -> None:
    pdf = make_pdf(env["dir"] / "a.pdf", 3)
    copy = env["dir"] / "copy-of-a.pdf"
    copy.write_bytes(pdf.read_bytes())
    first = env["submitter"].submit_file(pdf)
    second = env["submitter"].submit_file(copy, SubmitOptions(source=str(pdf)))
    assert first.doc_id == second.doc_id
    events = page_events(env)
    assert len(events) == 6
    strip = lambda e: e.model_dump(exclude={"submitted_at"})  # noqa: E731
    assert [strip(e) for e in events[0::2]] == [strip(e) for e in events[1::2]]
    assert sorted(env["store"].list("pages/")) == [f"pages/{first.doc_id}/{n:05d}.jpg" for n in (1, 2, 3)]
    other_mode = env["submitter"].submit_file(pdf, SubmitOptions(mode=Mode.SMALL))
    assert other_mode.doc_id != first.doc_id


def test_given_doc_id_and_settings_defaults(env: dict[str, Any]) -> None:
    img = make_image(env["dir"] / "scan.webp", "WEBP", (1000, 700))
    result = env["submitter"].submit_file(img, SubmitOptions(doc_id="invoice-42"))
    (event,) = page_events(env)
    assert result.doc_id == event.doc_id == "invoice-42"
    assert event.engine == "deepseek" and event.prompt.endswith("Convert the document to markdown.")
    assert (event.image_width, event.image_height) == (1000, 700) and event.render.dpi is None


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("make", "password", "error"),
    [
        (lambda d: make_encrypted_pdf(d / "e.pdf", "pw"), None, "encrypted: give its password"),
        (lambda d: make_encrypted_pdf(d / "e.pdf", "pw"), "bad", "password given is wrong"),
        (lambda d: _write(d / "x.gif", b"GIF89a\x01\x00\x01\x00"), None, "GIF image"),
        (lambda d: _write(d / "t.pdf", make_pdf(d / "full.pdf", 4).read_bytes()[:3000]), None, "truncated"),
    ],
    ids=["no-password", "wrong-password", "unsupported", "truncated"],
)
def test_bad_input_publishes_and_stores_nothing(env: dict[str, Any], make: Callable[[Path], Path], password: str | None, error: str) -> None:
    with pytest.raises(BadInputError, match=error):
        env["submitter"].submit_file(make(env["dir"]), SubmitOptions(password=password))
    assert published(env) == 0
    assert list(env["store"].list("")) == []


def test_undecodable_single_image_publishes_nothing(env: dict[str, Any]) -> None:
    good = make_image(env["dir"] / "a.jpg", "JPEG", (900, 900)).read_bytes()
    (env["dir"] / "cut.jpg").write_bytes(good[: len(good) // 3])
    with pytest.raises(CorruptDocumentError, match="undecodable JPEG"):
        env["submitter"].submit_file(env["dir"] / "cut.jpg")
    assert published(env) == 0 and list(env["store"].list("")) == []


class _FailingPages(PageSource):
    """Wraps a source; pages in ``bad`` raise as damage found while drawing would."""

    def __init__(self, inner: PageSource, bad: set[int]) -> None:
        super().__init__(inner.spec)
        self.inner, self.bad = inner, bad
        self.kind, self.page_count = inner.kind, inner.page_count

    def render(self, page_no: int) -> RenderedPage:
        if page_no in self.bad:
            raise CorruptDocumentError(f"corrupt PDF: page {page_no} cannot be rendered (test)")
        return self.inner.render(page_no)

    def close(self) -> None:
        self.inner.close()


def _with_bad_pages(submitter: Submitter, bad: set[int]) -> None:
    real_open = submitter.open

    def open_(path: Path, options: SubmitOptions = SubmitOptions()) -> Any:
        source, doc_id, resolved = real_open(path, options)
        return _FailingPages(source, bad), doc_id, resolved

    submitter.open = open_  # type: ignore[method-assign]


def test_first_page_failing_to_render_rejects_the_whole_document(env: dict[str, Any]) -> None:
    _with_bad_pages(env["submitter"], {1})
    with pytest.raises(CorruptDocumentError, match="page 1"):
        env["submitter"].submit_file(make_pdf(env["dir"] / "a.pdf", 3))
    assert published(env) == 0 and list(env["store"].list("")) == []


def test_late_page_failing_to_render_is_dead_lettered_so_the_document_completes(env: dict[str, Any]) -> None:
    env["submitter"].max_pending = 1  # page 1's event is out before page 2 renders
    _with_bad_pages(env["submitter"], {2})
    result = env["submitter"].submit_file(make_pdf(env["dir"] / "a.pdf", 3))
    assert result.pages_dead_lettered == (2,) and not result.ok
    assert [e.page_no for e in page_events(env)] == [1, 3]
    (rec,) = read_all(env["transport"], env["settings"].topic(topics.DLQ))
    letter = decode(DeadLetter, rec.value)
    assert (letter.doc_id, letter.page_no, letter.page_count) == (result.doc_id, 2, 3)
    assert letter.error.code == "corrupt" and rec.key == f"{result.doc_id}/2".encode()


class _FlakyStore(LocalStore):
    def __init__(self, *a: Any, failures: int, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.failures = failures
        self.calls = 0

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> ObjectRef:
        self.calls += 1
        if self.failures > 0:
            self.failures -= 1
            raise StorageUnavailableError("S3 server at nowhere unavailable (test)")
        return super().put(key, data, content_type)


def test_storage_hiccups_are_retried(env: dict[str, Any]) -> None:
    store = _FlakyStore(env["dir"] / "store", bucket=env["settings"].bucket, failures=2)
    with Submitter(env["settings"], store=store, producer=env["transport"].producer(), upload_threads=1) as sub:
        result = sub.submit_file(make_pdf(env["dir"] / "a.pdf", 2))
    assert result.page_count == 2 and store.calls == 4
    assert len(page_events(env)) == 2


def test_storage_down_is_a_clear_error_after_bounded_retries(env: dict[str, Any]) -> None:
    store = _FlakyStore(env["dir"] / "store", bucket=env["settings"].bucket, failures=10**6)
    sleeps: list[float] = []
    with Submitter(env["settings"], store=store, producer=env["transport"].producer(), upload_threads=1, sleep=sleeps.append) as sub:
        with pytest.raises(StorageUnavailableError, match="still failing after 3 attempts"):
            sub.submit_file(make_pdf(env["dir"] / "a.pdf", 2))
    assert published(env) == 0
    assert store.calls <= 2 * 3 and len(sleeps) >= 2


def test_a_rerun_after_an_interruption_completes_the_document(env: dict[str, Any]) -> None:
    pdf = make_pdf(env["dir"] / "a.pdf", 5)
    store = _FlakyStore(env["dir"] / "store", bucket=env["settings"].bucket, failures=0)
    calls = {"n": 0}
    real_put = LocalStore.put

    def put_then_die(self: LocalStore, key: str, data: bytes, content_type: str = "") -> ObjectRef:
        calls["n"] += 1
        if calls["n"] > 2:
            raise StorageUnavailableError("gone (test)")
        return real_put(self, key, data, content_type)

    store.put = put_then_die.__get__(store)  # type: ignore[method-assign]
    with Submitter(env["settings"], store=store, producer=env["transport"].producer(), upload_threads=1, max_pending=1) as sub:
        with pytest.raises(StorageUnavailableError):
            sub.submit_file(pdf)
    first_run = {e.page_no for e in page_events(env)}
    assert 0 < len(first_run) < 5
    result = env["submitter"].submit_file(pdf)
    pages = {e.page_no for e in page_events(env) if e.doc_id == result.doc_id}
    assert pages == {1, 2, 3, 4, 5}


class _RejectingProducer:
    """A producer whose broker refuses everything (delivery callbacks report errors)."""

    def __init__(self) -> None:
        self.queued: list[Any] = []
        self.produced = 0

    def produce(self, topic: str, value: bytes | None, key: bytes | None = None, *, on_delivery: Any = None, headers: Any = ()) -> None:
        self.produced += 1
        self.queued.append(on_delivery)

    def poll(self, timeout_s: float = 0.0) -> int:
        return self.flush(timeout_s)

    def flush(self, timeout_s: float = 30.0) -> int:
        cbs, self.queued = self.queued, []
        for cb in cbs:
            cb(BrokerUnavailableError("delivery to t.ocr.pages failed: Local: Message timed out"), None)
        return 0


def test_broker_down_is_a_clear_error_after_bounded_retries(env: dict[str, Any]) -> None:
    producer = _RejectingProducer()
    with Submitter(env["settings"], store=env["store"], producer=producer, sleep=lambda s: None) as sub:  # type: ignore[arg-type]
        with pytest.raises(BrokerUnavailableError, match=r"did not accept 2 events of sha256-\w+ after 3 attempts: .*timed out"):
            sub.submit_file(make_pdf(env["dir"] / "a.pdf", 2))
    assert producer.produced == 6


def test_invalid_options_are_refused_before_any_work(env: dict[str, Any]) -> None:
    pdf = make_pdf(env["dir"] / "a.pdf", 1)
    for opts, msg in [
        (SubmitOptions(doc_id="a/b"), "invalid doc id"),
        (SubmitOptions(engine="Deep Seek"), "invalid engine"),
        (SubmitOptions(prompt="  "), "prompt is empty"),
        (SubmitOptions(metadata={"blob": "x" * 70_000}), "metadata is 70012 bytes"),
        (SubmitOptions(metadata={"when": object()}), "metadata must be JSON"),
    ]:
        with pytest.raises(BadInputError, match=msg):
            env["submitter"].submit_file(pdf, opts)
    assert published(env) == 0


# --------------------------------------------------------------------------- the command's logic


def test_inputs_expand_dirs_globs_and_report_missing(tmp_path: Path) -> None:
    (tmp_path / "d" / "sub").mkdir(parents=True)
    make_pdf(tmp_path / "d" / "b.pdf", 1)
    make_image(tmp_path / "d" / "sub" / "a.png", "PNG")
    (tmp_path / "d" / "notes.txt").write_text("not a document")
    (tmp_path / "d" / ".hidden.pdf").write_bytes(b"%PDF-")
    make_image(tmp_path / "d" / "sub" / "noext", "TIFF")
    (tmp_path / "d" / "broken.pdf").write_bytes(b"garbage")
    got = list(expand_inputs([str(tmp_path / "d"), str(tmp_path / "d" / "*.pdf"), str(tmp_path / "nothing*.pdf"), str(tmp_path / "gone.pdf")]))
    labels = [(Path(label).name, problem) for label, _p, problem in got]
    assert labels == [("b.pdf", None), ("broken.pdf", None), ("a.png", None), ("noext", None),
                      ("nothing*.pdf", "no files match this pattern"), ("gone.pdf", None)]


def test_metadata_parsing() -> None:
    assert parse_metadata(["a=1", "b=x=y", "c="]) == {"a": "1", "b": "x=y", "c": ""}
    with pytest.raises(BadInputError, match="KEY=VALUE"):
        parse_metadata(["novalue"])


def test_submit_inputs_reports_each_document_and_goes_on(env: dict[str, Any]) -> None:
    d: Path = env["dir"]
    (d / "in").mkdir()
    make_pdf(d / "in" / "a.pdf", 2)
    make_tiff(d / "in" / "b.tif", 3)
    make_encrypted_pdf(d / "in" / "c.pdf", "pw")
    (d / "in" / "d.pdf").write_bytes(b"%PDF-1.4 nothing else")
    out, err = io.StringIO(), io.StringIO()
    report = submit_inputs(expand_inputs([str(d / "in")]), SubmitOptions(), env["submitter"], out=out, err=err, progress=False)
    lines = [line.split("\t") for line in out.getvalue().splitlines()]
    assert [(int(n), Path(p).name) for _id, n, p in lines] == [(2, "a.pdf"), (3, "b.tif")]
    errors = err.getvalue().splitlines()
    assert len(errors) == 2 and report.exit_code == 1 and report.documents_ok == 2
    assert "c.pdf: PDF is encrypted: give its password" in errors[0]
    assert "d.pdf: truncated or corrupt PDF" in errors[1]
    assert published(env) == 5
