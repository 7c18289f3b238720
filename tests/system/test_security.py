"""Security at system level: page events cannot make a worker read outside the configured storage
(also test_bad_input.py), secrets never appear in logs, error messages or dead letters, and Kafka
SASL/SSL and an S3 TLS endpoint are configurable end to end (docs/reliability.md)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import stack as stack_mod
from conftest import wait_until
from harness import Pipeline, settings_env

from ocr_stream.config import load_settings
from ocr_stream.contracts import ObjectRef, PageEvent, RenderSettings, encode
from ocr_stream.topics import PAGES

pytestmark = pytest.mark.system

TAG = uuid.uuid4().hex[:12]
S3_USER = f"AKTEST{TAG.upper()}"
S3_SECRET = f"s3-secret-{TAG}"
SASL_PASSWORD = f"kafka-sasl-pw-{TAG}"
API_KEY = f"sk-vllm-{TAG}"
PDF_PASSWORD = f"pdf-pw-{TAG}"
SECRETS = (S3_USER, S3_SECRET, SASL_PASSWORD, API_KEY, PDF_PASSWORD, TAG)


class OwnMinio:
    def __init__(self, workdir: Path, certs_dir: Path | None = None) -> None:
        self.proc, self.endpoint = stack_mod.start_minio(workdir, user=S3_USER, password=S3_SECRET, certs_dir=certs_dir)

    def stop(self) -> None:
        stack_mod.stop_process(self.proc)


@pytest.fixture
def secret_minio(tmp_path: Path) -> Iterator[OwnMinio]:
    m = OwnMinio(tmp_path / "minio")
    yield m
    m.stop()


@pytest.fixture
def tls_minio(tmp_path: Path) -> Iterator[tuple[OwnMinio, Path]]:
    certs = tmp_path / "certs"
    certs.mkdir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(certs / "private.key"),
                    "-out", str(certs / "public.crt"), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    m = OwnMinio(tmp_path / "minio-tls", certs_dir=certs)
    yield m, certs / "public.crt"
    m.stop()


def leaks(text: str) -> list[str]:
    return [s for s in SECRETS[:-1] if s in text]


def run_cli(p: Pipeline, *args: str, timeout_s: float = 60.0, **env: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ocr_stream", *args], env=p.env(**env), cwd=p.workdir,
                          capture_output=True, text=True, timeout=timeout_s)


def test_secrets_never_appear_in_logs_errors_or_dead_letters(secret_minio: OwnMinio, make_pipeline: Any) -> None:
    p: Pipeline = make_pipeline(
        log_level="DEBUG", s3_endpoint=secret_minio.endpoint, s3_access_key=S3_USER, s3_secret_key=S3_SECRET,
        vllm_api_key=API_KEY,
        # SASL properties travel to librdkafka with every client; against this PLAINTEXT broker they are unused.
        kafka_config={"sasl.username": "ocr", "sasl.password": SASL_PASSWORD},
    ).start(workers=1)
    p.sims[0].set_faults("503", rate=1.0, count=3)  # retries log their errors
    texts: list[str] = []
    docs, proc = p.submit(p.make_pdfs(2, 2))
    texts += [proc.stdout, proc.stderr]
    # An encrypted PDF submitted with its password (given on the command line: the worst place).
    from ocr_stream.producer.bench import make_encrypted_pdf

    enc = make_encrypted_pdf(p.workdir / "enc.pdf", PDF_PASSWORD)
    enc_docs, proc = p.submit([enc], "--password", PDF_PASSWORD)
    texts += [proc.stdout, proc.stderr]
    wrong, proc = p.submit([enc], "--password", "not-it", expect_rc=1)
    texts += [proc.stdout, proc.stderr]
    assert "password" in proc.stderr and not wrong
    # A page naming a missing object: an error message and a dead letter.
    missing = PageEvent(doc_id=f"missing-{TAG[:6]}", page_no=1, page_count=1, image=ObjectRef(bucket=p.settings.bucket, key="pages/nope.jpg"),
                        image_width=10, image_height=10, image_bytes=10, render=RenderSettings(long_side=10))
    producer = p.transport.producer(name="sec")
    producer.produce(p.settings.topic(PAGES), encode(missing), missing.key.encode())
    assert producer.flush(30) == 0
    out = p.check({**docs, **enc_docs, missing.doc_id: 1}, fault="secrets in logs (503s, missing object, bad password)",
                  expect_failed={missing.doc_id: {1: "not_found"}})
    # Wrong S3 credentials: the error says so, without either key.
    bad_s3 = run_cli(p, "submit", "--no-progress", str(p.make_pdfs(1, 1)[0]), s3_secret_key=f"{S3_SECRET}-wrong")
    texts += [bad_s3.stdout, bad_s3.stderr]
    assert bad_s3.returncode != 0 and "S3" in bad_s3.stderr, bad_s3.stderr
    # The effective settings, as an operator would print them.
    shown = run_cli(p, "config")
    assert shown.returncode == 0, shown.stderr
    texts += [shown.stdout, shown.stderr]
    texts += [svc.log_text() for svc in p.services()]
    texts += [json.dumps(d.model_dump(mode="json")) for d in p.dead_letters()]
    texts += [json.dumps(e.model_dump(mode="json")) for e in out.events.values()]
    texts += [json.dumps(d) for d in out.documents.values()]
    assert any('"levelname"' in t or "DEBUG" in t for t in texts), "no log output at all: nothing checked"
    assert p.sims[0].state()["faults"]["hits"] > 0
    found = {s: [i for i, t in enumerate(texts) if s in t] for s in SECRETS[:-1]}
    assert not any(found.values()), f"secrets leaked: {found}"


def test_kafka_sasl_settings_reach_librdkafka_without_echoing_the_password(services: dict[str, str], tmp_path: Path) -> None:
    """A SASL config reaches librdkafka (the broker here speaks PLAINTEXT, so authentication must fail)
    and the failure is clear without the password in it; the same for a service."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    conf = {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "ocr",
            "sasl.password": SASL_PASSWORD}
    # Not make_settings: its clean-up would talk to the broker with this config (and wait for it).
    settings = load_settings(kafka_bootstrap_servers=services["kafka"], kafka_config=conf, startup_deadline_s=3.0,
                             s3_endpoint=services["s3"], s3_access_key=services["s3_access_key"],
                             s3_secret_key=services["s3_secret_key"], topic_prefix=f"sasl{uuid.uuid4().hex[:8]}.")
    client_conf = settings.kafka_client_config()
    assert client_conf["security.protocol"] == "SASL_PLAINTEXT" and client_conf["sasl.password"] == SASL_PASSWORD
    assert settings.redacted_kafka_config()["sasl.password"] == "***"
    admin = AdminClient({**client_conf, "socket.timeout.ms": "3000"})
    with pytest.raises(KafkaException) as err:
        admin.list_topics(timeout=4)
    assert SASL_PASSWORD not in str(err.value)
    env = settings_env(settings, log_level="DEBUG", metrics_port=0)
    # Services wait for the broker at start-up and give up at the deadline, saying why, without the
    # password (DEBUG logs included).
    for argv in (["ocr_stream.aggregator"], ["ocr_stream", "worker"], ["ocr_stream.wait", "kafka", "--deadline", "3"]):
        proc = subprocess.run([sys.executable, "-m", *argv], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=90)
        assert proc.returncode == 1, proc.stderr[-2000:]
        assert SASL_PASSWORD not in proc.stdout + proc.stderr
        assert "kafka" in proc.stderr.lower(), proc.stderr[-2000:]
        assert "sasl" in proc.stderr.lower(), proc.stderr[-2000:]


def test_kafka_ssl_settings_reach_librdkafka(make_pipeline: Any) -> None:
    p: Pipeline = make_pipeline(kafka_config={"security.protocol": "SSL", "ssl.ca.location": "/nonexistent/ca.pem"},
                                startup_deadline_s=6.0)
    proc = subprocess.run([sys.executable, "-m", "ocr_stream", "worker"], env=settings_env(p.settings, metrics_port=0),
                          cwd=p.workdir, capture_output=True, text=True, timeout=90)
    assert proc.returncode != 0
    assert "ssl.ca.location" in proc.stderr or "ssl" in proc.stderr.lower(), proc.stderr[-2000:]


def test_s3_tls_endpoint_end_to_end(tls_minio: tuple[OwnMinio, Path], make_pipeline: Any) -> None:
    """Everything over TLS to the S3 server, verified against the CA file; without the CA the
    error says what is wrong."""
    minio, ca = tls_minio
    p: Pipeline = make_pipeline(s3_endpoint=minio.endpoint, s3_access_key=S3_USER, s3_secret_key=S3_SECRET,
                                s3_secure=True, s3_ca_file=ca).start(workers=1)
    docs = p.submit_new(2, 2, cli=True)
    p.check(docs, fault="S3 over TLS (CA file)")
    untrusted = run_cli(p, "submit", "--no-progress", str(p.make_pdfs(1, 1)[0]), s3_ca_file=None)
    assert untrusted.returncode != 0
    assert any(w in untrusted.stderr for w in ("SSL", "certificate", "TLS")), untrusted.stderr[-2000:]
    plain = run_cli(p, "submit", "--no-progress", str(p.make_pdfs(1, 1)[0]), s3_secure=False)
    assert plain.returncode != 0 and "S3" in plain.stderr, plain.stderr[-2000:]
    assert not leaks(untrusted.stderr + plain.stderr)
