"""Message contracts: validation names the field, schemas are generated from the models."""

from __future__ import annotations

import json

import jsonschema
import pytest

from ocr_stream.contracts import (
    MESSAGE_MODELS,
    Block,
    DeadLetter,
    ErrorInfo,
    Mode,
    ObjectRef,
    PageEvent,
    PageResult,
    PageStatus,
    RenderSettings,
    decode,
    encode,
)
from ocr_stream.errors import ErrorCode, SchemaViolationError
from ocr_stream.topics import TOPICS_DIR, generated_schemas, load_specs, schema_drift


def page_event(**kw: object) -> PageEvent:
    base: dict[str, object] = dict(
        doc_id="doc-1", page_no=1, page_count=2, image=ObjectRef(bucket="ocr-stream", key="pages/doc-1/00001.jpg"),
        image_width=1200, image_height=1600, image_bytes=12345, render=RenderSettings(dpi=144, long_side=1600),
    )
    base.update(kw)
    return PageEvent.model_validate(base)


def test_page_event_round_trips() -> None:
    ev = page_event(metadata={"tenant": "acme", "nested": {"a": [1, 2]}})
    back = decode(PageEvent, encode(ev))
    assert back == ev
    assert back.metadata == {"tenant": "acme", "nested": {"a": [1, 2]}}
    assert back.key == "doc-1/1"


def test_page_result_round_trips_with_blocks() -> None:
    res = PageResult(doc_id="d", page_no=2, page_count=2, status=PageStatus.OK, markdown="# T",
                     blocks=[Block(label="title", text="T", box=(1, 2, 3, 4))], mode=Mode.BASE)
    assert decode(PageResult, encode(res)) == res


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"doc_id": "../etc"}, "doc_id"),
        ({"page_no": 0}, "page_no"),
        ({"page_no": 3}, "page_no"),  # beyond page_count
        ({"image": {"bucket": "ocr-stream", "key": "../../secret"}}, "image.key"),
        ({"image": {"bucket": "Not_A_Bucket", "key": "k"}}, "image.bucket"),
        ({"mode": "huge"}, "mode"),
        ({"image_width": -1}, "image_width"),
    ],
)
def test_bad_page_event_names_the_field(patch: dict[str, object], field: str) -> None:
    raw = json.loads(encode(page_event()))
    raw.update(patch)
    with pytest.raises(SchemaViolationError) as exc:
        decode(PageEvent, json.dumps(raw))
    assert field in str(exc.value)


def test_missing_field_and_garbage_are_schema_violations() -> None:
    raw = json.loads(encode(page_event()))
    del raw["image"]
    with pytest.raises(SchemaViolationError, match="image"):
        decode(PageEvent, json.dumps(raw))
    with pytest.raises(SchemaViolationError):
        decode(PageEvent, b"\xff not json")
    with pytest.raises(SchemaViolationError, match="tombstone"):
        decode(PageEvent, None)
    assert SchemaViolationError("x").code == ErrorCode.SCHEMA_VIOLATION


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    raw = json.loads(encode(page_event()))
    raw["added_in_v2"] = True
    assert decode(PageEvent, json.dumps(raw)).doc_id == "doc-1"


def test_checked_in_schemas_match_the_models() -> None:
    assert schema_drift() == [], "run `ocr-stream topics schemas` and commit topics/schemas/"


def test_schemas_validate_what_the_models_produce() -> None:
    schemas = generated_schemas()
    jsonschema.validate(json.loads(encode(page_event())), schemas["page_event.schema.json"])
    dl = DeadLetter(doc_id="d", page_no=1, error=ErrorInfo(code=ErrorCode.REPETITION, message="loop"), raw="x")
    jsonschema.validate(json.loads(encode(dl)), schemas["dead_letter.schema.json"])
    bad = json.loads(encode(page_event()))
    bad["page_no"] = "one"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schemas["page_event.schema.json"])


def test_every_topic_names_an_existing_schema() -> None:
    specs = load_specs()
    assert {s.name for s in specs} >= {"ocr.pages", "ocr.results", "ocr.pages.dlq", "ocr.documents", "ocr.documents.requests"}
    for spec in specs:
        assert (TOPICS_DIR / spec.value_schema).exists(), spec.name
        assert spec.configs["cleanup.policy"] in ("delete", "compact")
    by_name = {s.name: s for s in specs}
    assert by_name["ocr.documents"].configs["cleanup.policy"] == "compact"
    assert int(by_name["ocr.pages"].configs["retention.ms"]) >= 7 * 86400 * 1000
    # The aggregator's state is co-partitioned with the results it is built from.
    assert by_name["ocr.aggregator.changelog"].partitions == by_name["ocr.results"].partitions
    assert set(MESSAGE_MODELS) >= {"page_event", "page_result", "dead_letter", "document_event"}


def test_effective_replication_is_capped_by_brokers() -> None:
    spec = next(s for s in load_specs() if s.name == "ocr.pages")
    eff = spec.effective(brokers=1, prefix="x.")
    assert eff.name == "x.ocr.pages" and eff.replication_factor == 1
    assert eff.configs["min.insync.replicas"] == "1"
    assert spec.effective(brokers=5).replication_factor == spec.replication_factor
