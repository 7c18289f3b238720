"""The real broker: topics apply/check, produce/consume through the transport, kcat interop."""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

import pytest

from ocr_stream.cli import main
from ocr_stream.contracts import ObjectRef, PageEvent, RenderSettings, decode, encode
from ocr_stream.errors import SchemaViolationError
from ocr_stream.topics import PAGES, TopicAdmin, load_specs

pytestmark = pytest.mark.integration


def test_topics_apply_is_idempotent_and_check_catches_drift(settings: Any, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("OCR_STREAM_KAFKA_BOOTSTRAP_SERVERS", settings.kafka_bootstrap_servers)
    monkeypatch.setenv("OCR_STREAM_TOPIC_PREFIX", settings.topic_prefix)
    assert main(["topics", "check"]) == 1  # nothing exists yet
    assert "missing" in capsys.readouterr().out
    assert main(["topics", "apply"]) == 0
    assert "created" in capsys.readouterr().out
    assert main(["topics", "apply"]) == 0
    assert capsys.readouterr().out.strip() == "topics up to date"
    assert main(["topics", "check"]) == 0

    admin = TopicAdmin(settings.kafka_client_config(), prefix=settings.topic_prefix)
    specs = load_specs()
    pages = next(s for s in specs if s.name == PAGES)
    # Someone changes a config and the partition count behind our back.
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, NewPartitions, ResourceType

    name = settings.topic(PAGES)
    res = ConfigResource(ResourceType.TOPIC, name, incremental_configs=[
        ConfigEntry("retention.ms", "1000", incremental_operation=AlterConfigOpType.SET)])
    for f in admin.admin.incremental_alter_configs([res]).values():
        f.result(timeout=30)
    for f in admin.admin.create_partitions([NewPartitions(name, pages.partitions + 2)]).values():
        f.result(timeout=30)
    from conftest import wait_until

    # Admin changes reach the metadata a moment later.
    def both_seen() -> list[str] | None:
        drift = [str(d) for d in admin.check(specs)]
        ok = any("retention.ms=1000" in d for d in drift) and any(f"partitions {pages.partitions + 2}" in d for d in drift)
        return drift if ok else None

    wait_until(both_seen, 30, interval_s=0.3, what="check to see the changed config and partitions")
    assert main(["topics", "check"]) == 1
    out = capsys.readouterr().out
    assert "retention.ms" in out and "partitions" in out
    # apply repairs the config and reports the partitions it cannot remove.
    changes = admin.apply(specs)
    assert any("retention.ms" in c for c in changes)
    assert any("cannot shrink" in c for c in changes)


def test_produce_and_consume_page_events(topics: Any, transport: Any) -> None:
    name = topics.topic(PAGES)
    prod = transport.producer()
    acked: list[Any] = []
    events = [
        PageEvent(doc_id="doc-a", page_no=n, page_count=3, image=ObjectRef(bucket="ocr-stream", key=f"pages/doc-a/{n:05d}.jpg"),
                  image_width=100, image_height=100, image_bytes=10, render=RenderSettings(long_side=100))
        for n in (1, 2, 3)
    ]
    for ev in events:
        prod.produce(name, encode(ev), ev.key.encode(), on_delivery=lambda err, rec: acked.append((err, rec)))
    assert prod.flush(30) == 0
    assert len(acked) == 3 and all(err is None for err, _ in acked)

    cons = transport.consumer(f"{topics.topic_prefix}g")
    cons.subscribe([name])
    got: list[PageEvent] = []
    from conftest import wait_until

    def drain() -> bool:
        got.extend(decode(PageEvent, r.value) for r in cons.consume(100, 0.5))
        return len(got) >= 3

    wait_until(drain, 30, what="three page events")
    cons.close()
    assert sorted(e.page_no for e in got) == [1, 2, 3]
    assert {e.doc_id for e in got} == {"doc-a"}


@pytest.mark.skipif(shutil.which("kcat") is None, reason="kcat is installed by `make test` (apt)")
def test_hand_written_message_from_kcat(topics: Any, transport: Any) -> None:
    """An upstream system with nothing but kcat and the JSON Schema can publish page events."""
    name = topics.topic(PAGES)
    good = {
        "schema_version": 1, "doc_id": "kcat-doc", "page_no": 1, "page_count": 1,
        "image": {"bucket": "ocr-stream", "key": "pages/kcat-doc/00001.jpg"},
        "image_width": 1240, "image_height": 1754, "image_bytes": 183211,
        "render": {"dpi": 150, "long_side": 1754, "format": "jpeg", "quality": 95},
        "submitted_at": "2026-11-27T10:00:00Z", "metadata": {"source_system": "kcat"},
    }
    bad = dict(good, page_no="first")
    lines = f"kcat-doc/1|{json.dumps(good)}\nkcat-doc/1|{json.dumps(bad)}\n"
    subprocess.run(["kcat", "-P", "-b", topics.kafka_bootstrap_servers, "-t", name, "-K", "|", "-p", "0"],
                   input=lines.encode(), check=True, timeout=60)
    cons = transport.consumer(f"{topics.topic_prefix}kcat")
    cons.subscribe([name])
    recs: list[Any] = []
    from conftest import wait_until

    wait_until(lambda: recs.extend(cons.consume(10, 0.5)) or len(recs) >= 2, 30, what="kcat's two messages")
    cons.close()
    ev = decode(PageEvent, recs[0].value)
    assert ev.doc_id == "kcat-doc" and ev.metadata == {"source_system": "kcat"} and ev.mode.value == "gundam"
    assert recs[0].key == b"kcat-doc/1"
    with pytest.raises(SchemaViolationError, match="page_no"):
        decode(PageEvent, recs[1].value)
