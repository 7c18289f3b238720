"""Settings: environment parsing, clear errors, Kafka pass-through, secrets kept out of output."""

from __future__ import annotations

from pathlib import Path

import pytest

from ocr_stream.cli import main
from ocr_stream.config import Settings, load_settings, settings_table
from ocr_stream.errors import ConfigError

README = Path(__file__).resolve().parents[2] / "README.md"


def test_defaults_validate() -> None:
    s = load_settings()
    assert s.topic("ocr.pages") == "ocr.pages"
    assert s.readable_buckets == {s.bucket}


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OCR_STREAM_VLLM_URLS", "http://a:8000/, http://b:8001")
    monkeypatch.setenv("OCR_STREAM_MAX_IN_FLIGHT", "64")
    monkeypatch.setenv("OCR_STREAM_ALLOWED_BUCKETS", "inbox,archive")
    monkeypatch.setenv("OCR_STREAM_TOPIC_PREFIX", "staging.")
    s = load_settings()
    assert s.vllm_urls == ["http://a:8000", "http://b:8001"]
    assert s.max_in_flight == 64
    assert s.readable_buckets == {"ocr-stream", "inbox", "archive"}
    assert s.topic("ocr.pages") == "staging.ocr.pages"


@pytest.mark.parametrize(
    ("var", "value", "named"),
    [
        ("OCR_STREAM_MAX_IN_FLIGHT", "lots", "OCR_STREAM_MAX_IN_FLIGHT"),
        ("OCR_STREAM_VLLM_URLS", "ftp://x", "OCR_STREAM_VLLM_URLS"),
        ("OCR_STREAM_MODE", "huge", "OCR_STREAM_MODE"),
        ("OCR_STREAM_STORAGE", "ftp", "OCR_STREAM_STORAGE"),
    ],
)
def test_bad_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch, var: str, value: str, named: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match=named):
        load_settings()


def test_bad_setting_exits_2_with_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("OCR_STREAM_MAX_IN_FLIGHT", "-3")
    assert main(["config"]) == 2
    err = capsys.readouterr().err
    assert "OCR_STREAM_MAX_IN_FLIGHT" in err and "Traceback" not in err


def test_kafka_options_pass_through_and_secrets_are_masked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    props = tmp_path / "client.properties"
    props.write_text("# comment\nsecurity.protocol=SASL_SSL\nsasl.mechanism=PLAIN\nssl.ca.location=/ca.pem\n")
    monkeypatch.setenv("OCR_STREAM_KAFKA_CONFIG_FILE", str(props))
    monkeypatch.setenv("OCR_STREAM_KAFKA_CONFIG", '{"sasl.username": "svc", "sasl.password": "hunter2", "sasl.mechanism": "SCRAM-SHA-512"}')
    monkeypatch.setenv("OCR_STREAM_S3_SECRET_KEY", "s3-very-secret")
    monkeypatch.setenv("OCR_STREAM_VLLM_API_KEY", "sk-vllm-secret")
    s = load_settings()
    conf = s.kafka_client_config()
    assert conf["security.protocol"] == "SASL_SSL"
    assert conf["sasl.mechanism"] == "SCRAM-SHA-512"  # JSON overrides the file
    assert conf["sasl.password"] == "hunter2"
    assert s.redacted_kafka_config()["sasl.password"] == "***"
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    for secret in ("hunter2", "s3-very-secret", "sk-vllm-secret"):
        assert secret not in out
    assert "SASL_SSL" in out


def test_readme_lists_every_setting_with_its_default() -> None:
    text = README.read_text()
    for line in settings_table().splitlines()[2:]:
        name = line.split("`")[1]
        assert name in text, f"README lacks {name}"
    assert len(Settings.model_fields) > 20
