"""The deployment files, checked by the real tools: `docker compose config` (Compose v2 built from
source by deploy/install-tools.sh; no Docker engine needed), `promtool check rules|config` and
`promtool test rules` (Debian's promtool), and `make -n` on deploy/Makefile.inc."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import ROOT  # noqa: E402

pytestmark = pytest.mark.integration

SECRETS = {"MINIO_ROOT_PASSWORD": "test-minio-secret", "GRAFANA_ADMIN_PASSWORD": "test-grafana-secret"}
LONG_RUNNING = {"kafka", "minio", "vllm", "worker", "aggregator", "splitter", "prometheus", "grafana"}
OCR_STREAM_SERVICES = {"topics", "worker", "aggregator", "splitter"}


@pytest.fixture(scope="module")
def tools() -> dict[str, str]:
    """Paths of docker-compose and promtool (installed and cached by deploy/install-tools.sh; quick
    when `make test` already ran it)."""
    res = subprocess.run(["bash", str(ROOT / "deploy" / "install-tools.sh")], capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, f"deploy/install-tools.sh failed:\n{res.stderr[-3000:]}"
    found = dict(line.split("=", 1) for line in res.stdout.splitlines() if "=" in line)
    assert Path(found["DOCKER_COMPOSE"]).is_file() and Path(found["PROMTOOL"]).is_file()
    return found


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any deployment variable a developer may have exported, plus ``extra``.
    Compose would also read a .env file in the project folder: tests pass --env-file /dev/null."""
    drop = re.compile(r"^(OCR_STREAM_|MINIO_|GRAFANA_|GPUS$|ENGINES_PER_GPU$|TENSOR_PARALLEL$|WORKERS$|VLLM_|HOST_BIND$|KAFKA_|HF_)")
    env = {k: v for k, v in os.environ.items() if not drop.match(k)}
    env.update(extra)
    return env


def compose(tools: dict[str, str], *args: str, files: tuple[str, ...] = ("docker-compose.yml",), **env: str) -> subprocess.CompletedProcess[str]:
    cmd = [tools["DOCKER_COMPOSE"], "--project-directory", str(ROOT), "--env-file", "/dev/null"]
    for f in files:
        cmd += ["-f", str(ROOT / f)]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120, env=clean_env(**env), cwd=ROOT)


def config(tools: dict[str, str], files: tuple[str, ...] = ("docker-compose.yml",), **env: str) -> dict[str, Any]:
    res = compose(tools, "config", "--format", "json", files=files, **{**SECRETS, **env})
    assert res.returncode == 0, res.stderr
    loaded: dict[str, Any] = json.loads(res.stdout)
    return loaded


# ----------------------------------------------------------------------------- compose


def test_compose_file_is_valid_and_describes_the_whole_stack(tools: dict[str, str]) -> None:
    c = config(tools)
    s = c["services"]
    assert set(s) == {"kafka", "minio", "minio-init", "topics", "vllm", "worker", "aggregator", "splitter", "prometheus", "grafana"}

    # Every image is pinned to a version.
    for name, svc in s.items():
        image = svc["image"]
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest" and re.search(r"\d", tag), f"{name}: image {image!r} is not pinned"

    # Kafka: one KRaft node with its log on a volume; topics only from topics/.
    k = s["kafka"]
    assert k["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert k["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert {"type": "volume", "source": "kafka-data", "target": "/var/lib/kafka/data"}.items() <= k["volumes"][0].items()
    assert k["environment"]["KAFKA_LOG_DIRS"] == "/var/lib/kafka/data"

    # Bucket and topics are one-shot jobs the services wait for.
    assert "mc mb --ignore-existing" in " ".join(s["minio-init"]["entrypoint"])
    assert s["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"
    assert s["topics"]["command"] == ["topics", "apply"]
    for name in ("worker", "aggregator", "splitter"):
        deps = s[name]["depends_on"]
        assert deps["topics"]["condition"] == "service_completed_successfully", name
        assert deps["minio-init"]["condition"] == "service_completed_successfully", name
        assert deps["kafka"]["condition"] == "service_healthy", name
    assert s["worker"]["depends_on"]["vllm"]["condition"] == "service_healthy"

    # vLLM: a GPU, a health check, a model cache, 2 engines per GPU behind the workers.
    v = s["vllm"]
    (dev,) = v["deploy"]["resources"]["reservations"]["devices"]
    assert dev["driver"] == "nvidia" and dev["capabilities"] == ["gpu"] and dev["device_ids"] == ["0"]
    assert v["healthcheck"]["test"] == ["CMD", "/opt/ocr-stream/start-engines.sh", "health"]
    assert any(m["source"] == "model-cache" and m["target"] == "/root/.cache/huggingface" for m in v["volumes"])
    assert v["environment"]["ENGINES_PER_GPU"] == "2" and v["environment"]["VLLM_MODEL"] == "deepseek-ai/DeepSeek-OCR"
    assert v["build"]["dockerfile"].endswith("deploy/vllm/Dockerfile")
    assert s["worker"]["environment"]["OCR_STREAM_VLLM_URLS"] == "http://vllm:8000,http://vllm:8001"

    # ocr-stream services share one configuration, pointing at the compose services.
    for name in OCR_STREAM_SERVICES:
        env = s[name]["environment"]
        assert env["OCR_STREAM_KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092" and env["OCR_STREAM_S3_ENDPOINT"] == "minio:9000", name
        assert env["OCR_STREAM_S3_SECRET_KEY"] == SECRETS["MINIO_ROOT_PASSWORD"], name
    assert s["worker"]["deploy"]["replicas"] == 2

    # Health checks: compose's own, or the ocr-stream image's HEALTHCHECK (asked on /healthz).
    dockerfile = (ROOT / "Dockerfile").read_text()
    for name in LONG_RUNNING:
        has_own = "healthcheck" in s[name] and not s[name]["healthcheck"].get("disable")
        assert has_own or (name in OCR_STREAM_SERVICES and "HEALTHCHECK" in dockerfile), f"{name} has no health check"

    # Observability: Prometheus gets its config, rules and the engines' target list; Grafana its provisioning.
    prom = {m["target"]: m["source"] for m in s["prometheus"]["volumes"]}
    assert prom["/etc/prometheus/prometheus.yml"].endswith("deploy/prometheus/prometheus.yml")
    assert prom["/etc/prometheus/alerts.yml"].endswith("deploy/prometheus/alerts.yml")
    assert prom["/etc/prometheus/targets"] == "vllm-targets"
    assert any(m["source"] == "vllm-targets" and m["target"] == "/etc/prometheus-targets" for m in v["volumes"])
    graf = {m["target"]: m["source"] for m in s["grafana"]["volumes"]}
    assert graf["/etc/grafana/provisioning"].endswith("deploy/grafana/provisioning")
    assert graf["/etc/grafana/dashboards"].endswith("deploy/grafana/dashboards")

    # Host ports are loopback-only unless asked otherwise.
    for name, svc in s.items():
        for p in svc.get("ports", []):
            assert p["host_ip"] == "127.0.0.1", f"{name} publishes {p} beyond loopback"


@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_compose_refuses_to_start_without_secrets(tools: dict[str, str], missing: str) -> None:
    # One secret missing at a time: with several missing, compose names whichever it meets first,
    # and its order is not fixed.
    res = compose(tools, "config", "--quiet", **{k: v for k, v in SECRETS.items() if k != missing})
    assert res.returncode != 0
    assert f"{missing} is not set" in res.stderr


def test_engines_and_workers_are_configurable(tools: dict[str, str]) -> None:
    c = config(tools, ENGINES_PER_GPU="3", WORKERS="5", VLLM_GPU="1", OCR_STREAM_VLLM_URLS="http://vllm:8000,http://vllm:8001,http://vllm:8002")
    assert c["services"]["vllm"]["environment"]["ENGINES_PER_GPU"] == "3"
    assert c["services"]["vllm"]["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] == ["1"]
    assert c["services"]["worker"]["deploy"]["replicas"] == 5
    assert c["services"]["worker"]["environment"]["OCR_STREAM_VLLM_URLS"].count("http://vllm:") == 3


def test_several_gpus_override(tools: dict[str, str]) -> None:
    files = ("docker-compose.yml", "deploy/compose.gpus.yml")
    urls = ",".join(f"http://vllm:{8000 + i}" for i in range(4))
    c = config(tools, files=files, GPUS="2", OCR_STREAM_VLLM_URLS=urls)
    (dev,) = c["services"]["vllm"]["deploy"]["resources"]["reservations"]["devices"]
    assert dev["count"] == 2 and "device_ids" not in dev and dev["driver"] == "nvidia"
    assert c["services"]["worker"]["environment"]["OCR_STREAM_VLLM_URLS"] == urls
    res = compose(tools, "config", "--quiet", files=files, GPUS="2", **SECRETS)
    assert res.returncode != 0 and "OCR_STREAM_VLLM_URLS is not set" in res.stderr


def make(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["make", "--no-print-directory", "-f", "deploy/Makefile.inc", *args], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, env=clean_env())


def test_make_up_matches_the_engine_numbering(tools: dict[str, str]) -> None:
    one = make("-n", "up")
    assert one.returncode == 0, one.stderr
    assert "OCR_STREAM_VLLM_URLS=http://vllm:8000,http://vllm:8001 " in one.stdout
    assert "docker compose -f docker-compose.yml up -d --build --scale worker=2" in one.stdout

    many = make("-n", "up", "GPUS=2", "ENGINES_PER_GPU=3", "WORKERS=6")
    urls = ",".join(f"http://vllm:{8000 + i}" for i in range(6))
    assert f"OCR_STREAM_VLLM_URLS={urls} " in many.stdout
    assert "-f docker-compose.yml -f deploy/compose.gpus.yml up -d --build --scale worker=6" in many.stdout

    tp = make("-n", "up", "GPUS=4", "TENSOR_PARALLEL=2")
    assert "OCR_STREAM_VLLM_URLS=" + ",".join(f"http://vllm:{8000 + i}" for i in range(4)) + " " in tp.stdout

    # The same plan as start-engines.sh makes for that host.
    plan = subprocess.run(["bash", "deploy/vllm/start-engines.sh", "plan"], cwd=ROOT, capture_output=True, text=True, timeout=30,
                          env=clean_env(VLLM_GPUS="0,1", ENGINES_PER_GPU="3"))
    assert [line.split()[1] for line in plan.stdout.splitlines()] == [f"port={8000 + i}" for i in range(6)]

    bad = make("deploy-check-args", "GPUS=3", "TENSOR_PARALLEL=2")
    assert bad.returncode != 0 and "must be a positive multiple of TENSOR_PARALLEL" in bad.stderr


# ----------------------------------------------------------------------------- Prometheus


def promtool(tools: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tools["PROMTOOL"], *args], capture_output=True, text=True, timeout=120, cwd=ROOT / "deploy" / "prometheus")


def test_promtool_checks_the_alert_rules(tools: dict[str, str]) -> None:
    res = promtool(tools, "check", "rules", "alerts.yml")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS: 10 rules found" in res.stdout


def test_alert_rules_fire_on_their_situations(tools: dict[str, str]) -> None:
    res = promtool(tools, "test", "rules", "alerts.test.yml")
    assert res.returncode == 0, res.stdout + res.stderr


def test_promtool_checks_the_prometheus_config(tools: dict[str, str]) -> None:
    res = promtool(tools, "check", "config", "prometheus.yml")
    assert res.returncode == 0, res.stdout + res.stderr


# ----------------------------------------------------------------------------- images


def test_images_are_slim_pinned_and_unprivileged() -> None:
    df = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.1[12]\.\d+-slim-\w+$", df, re.M), "the base image must be a pinned slim Python"
    users = re.findall(r"^USER (\S+)", df, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert "/healthz" in df and "HEALTHCHECK" in df
    assert re.search(r"^COPY topics topics$", df, re.M)
    # The entrypoint waits for the command's dependencies before running it.
    assert 'ENTRYPOINT ["ocr-stream-entrypoint"]' in df and "deploy/docker-entrypoint.sh /usr/local/bin/ocr-stream-entrypoint" in df

    vdf = (ROOT / "deploy" / "vllm" / "Dockerfile").read_text()
    assert re.search(r"^ARG VLLM_IMAGE=vllm/vllm-openai:v0\.(\d+)\.\d+$", vdf, re.M)
    assert int(re.search(r"vllm-openai:v0\.(\d+)", vdf).group(1)) >= 12  # type: ignore[union-attr]  # DeepSeek-OCR needs >= 0.11.1
    assert "pip install --no-cache-dir --no-deps /opt/ocr-stream/plugins/vllm_ocr_modes" in vdf
    assert 'ENTRYPOINT ["/opt/ocr-stream/start-engines.sh"]' in vdf


def test_docker_build_context_keeps_what_the_images_copy() -> None:
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")]
    copied = ["pyproject.toml", "README.md", "ocr_stream", "topics", "plugins/vllm_ocr_modes", "deploy/vllm/start-engines.sh",
              "deploy/docker-entrypoint.sh"]
    for path in copied:
        top = path.split("/")[0]
        assert top not in ignored and path not in ignored, f".dockerignore drops {path}, which a Dockerfile copies"


def test_first_make_writes_secrets_once_and_the_stack_validates(tools: dict[str, str], tmp_path: Path) -> None:
    import shutil
    import stat

    for rel in ("docker-compose.yml", "deploy/Makefile.inc", "deploy/compose.gpus.yml"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, tmp_path / rel)

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(["make", "--no-print-directory", "-f", "deploy/Makefile.inc", "deploy-config", f"COMPOSE={tools['DOCKER_COMPOSE']}"],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path, env=clean_env())

    first = run()
    assert first.returncode == 0, first.stdout + first.stderr
    assert "compose files valid" in first.stdout
    env_file = tmp_path / ".env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    secrets = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line and not line.startswith("#"))
    assert set(secrets) == {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD", "GRAFANA_ADMIN_PASSWORD"}
    assert len(secrets["MINIO_ROOT_PASSWORD"]) >= 24 and len(secrets["GRAFANA_ADMIN_PASSWORD"]) >= 16

    again = run()  # kept: a second run must not change the secrets MinIO was started with
    assert again.returncode == 0 and env_file.read_text().count("MINIO_ROOT_PASSWORD") == 1
    assert dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line and not line.startswith("#")) == secrets
