"""Topic definitions (topics/*.json) and their JSON Schemas (topics/schemas/), generated from the
contracts; ``apply`` creates or updates topics idempotently, ``check`` reports drift.

Replication: a spec states the production replication factor; on a smaller cluster the effective
factor is capped at the number of brokers (and ``min.insync.replicas`` at that factor), so the same
files serve a laptop and a three-broker cluster.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .contracts import MESSAGE_MODELS
from .errors import BrokerUnavailableError, ConfigError

TOPICS_DIR = Path(__file__).resolve().parent.parent / "topics"

# Logical names, used everywhere in code; the real name is settings.topic(NAME).
PAGES = "ocr.pages"
RESULTS = "ocr.results"
DLQ = "ocr.pages.dlq"
DOCUMENTS = "ocr.documents"
REQUESTS = "ocr.documents.requests"
CHANGELOG = "ocr.aggregator.changelog"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int
    configs: dict[str, str] = field(default_factory=dict)
    key: str = ""
    value_schema: str = ""
    description: str = ""

    @classmethod
    def load(cls, path: Path) -> TopicSpec:
        try:
            raw = json.loads(path.read_text())
            return cls(
                name=raw["name"],
                partitions=int(raw["partitions"]),
                replication_factor=int(raw["replication_factor"]),
                configs={k: str(v) for k, v in raw.get("configs", {}).items()},
                key=raw.get("key", ""),
                value_schema=raw.get("value_schema", ""),
                description=raw.get("description", ""),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"bad topic file {path}: {exc}") from exc

    def effective(self, brokers: int, prefix: str = "") -> TopicSpec:
        rf = max(1, min(self.replication_factor, brokers))
        configs = dict(self.configs)
        if "min.insync.replicas" in configs:
            configs["min.insync.replicas"] = str(min(int(configs["min.insync.replicas"]), rf))
        return TopicSpec(f"{prefix}{self.name}", self.partitions, rf, configs, self.key, self.value_schema, self.description)


def load_specs(directory: Path = TOPICS_DIR) -> list[TopicSpec]:
    specs = [TopicSpec.load(p) for p in sorted(directory.glob("*.json"))]
    if not specs:
        raise ConfigError(f"no topic files in {directory}")
    return specs


def generated_schemas() -> dict[str, dict[str, Any]]:
    """File name → JSON Schema, for every message model."""
    out = {}
    for name, model in MESSAGE_MODELS.items():
        schema = model.model_json_schema(mode="validation")
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"https://ocr-stream.dev/schemas/{name}.schema.json"
        out[f"{name}.schema.json"] = schema
    return out


def render_schema(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def write_schemas(directory: Path = TOPICS_DIR / "schemas") -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for fname, schema in generated_schemas().items():
        path = directory / fname
        path.write_text(render_schema(schema))
        written.append(path)
    return written


def schema_drift(directory: Path = TOPICS_DIR / "schemas") -> list[str]:
    """Names of schema files that differ from the models (empty when in sync)."""
    drift = []
    for fname, schema in generated_schemas().items():
        path = directory / fname
        if not path.exists() or path.read_text() != render_schema(schema):
            drift.append(fname)
    return drift


# ----------------------------------------------------------------------------- admin


@dataclass
class Drift:
    topic: str
    problem: str

    def __str__(self) -> str:
        return f"{self.topic}: {self.problem}"


class TopicAdmin:
    """Creates, updates and checks topics against their specs with Kafka's AdminClient."""

    def __init__(self, conf: dict[str, str], *, prefix: str = "", timeout_s: float = 30.0) -> None:
        from confluent_kafka.admin import AdminClient

        self.admin = AdminClient(dict[str, Any](conf))
        self.prefix = prefix
        self.timeout_s = timeout_s

    def _brokers_and_topics(self) -> tuple[int, dict[str, int]]:
        from confluent_kafka import KafkaException

        try:
            md = self.admin.list_topics(timeout=self.timeout_s)
        except KafkaException as exc:
            raise BrokerUnavailableError(f"cannot reach Kafka: {exc.args[0]}") from exc
        return len(md.brokers), {name: len(t.partitions) for name, t in md.topics.items()}

    def _configs(self, names: list[str]) -> dict[str, dict[str, str]]:
        from confluent_kafka.admin import ConfigResource, ResourceType

        if not names:
            return {}
        resources = [ConfigResource(ResourceType.TOPIC, n) for n in names]
        futures = self.admin.describe_configs(resources, request_timeout=self.timeout_s)
        out = {}
        for res, fut in futures.items():
            entries = fut.result(timeout=self.timeout_s)
            out[res.name] = {k: v.value for k, v in entries.items()}
        return out

    def check(self, specs: list[TopicSpec]) -> list[Drift]:
        brokers, existing = self._brokers_and_topics()
        wanted = [s.effective(brokers, self.prefix) for s in specs]
        drift: list[Drift] = []
        present = [s.name for s in wanted if s.name in existing]
        configs = self._configs(present)
        for spec in wanted:
            if spec.name not in existing:
                drift.append(Drift(spec.name, "missing"))
                continue
            if existing[spec.name] != spec.partitions:
                drift.append(Drift(spec.name, f"partitions {existing[spec.name]}, expected {spec.partitions}"))
            for key, value in spec.configs.items():
                actual = configs[spec.name].get(key)
                if actual != value:
                    drift.append(Drift(spec.name, f"config {key}={actual}, expected {value}"))
        return drift

    def apply(self, specs: list[TopicSpec]) -> list[str]:
        """Bring the cluster in line with the specs; returns what was changed (empty: nothing to do).
        Partitions are only ever added (Kafka cannot remove them): fewer wanted is reported, not done."""
        from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, NewPartitions, NewTopic, ResourceType

        brokers, existing = self._brokers_and_topics()
        wanted = [s.effective(brokers, self.prefix) for s in specs]
        changes: list[str] = []
        new = [s for s in wanted if s.name not in existing]
        if new:
            futures = self.admin.create_topics(
                [NewTopic(s.name, num_partitions=s.partitions, replication_factor=s.replication_factor, config=s.configs) for s in new],
                request_timeout=self.timeout_s,
            )
            for name, fut in futures.items():
                try:
                    fut.result(timeout=self.timeout_s)
                    changes.append(f"{name}: created")
                except Exception as exc:  # noqa: BLE001 - TOPIC_ALREADY_EXISTS from a concurrent apply is fine
                    if "TOPIC_ALREADY_EXISTS" not in str(exc):
                        raise BrokerUnavailableError(f"cannot create topic {name}: {exc}") from exc
        old = [s for s in wanted if s.name in existing]
        grow = [s for s in old if s.partitions > existing[s.name]]
        if grow:
            futures = self.admin.create_partitions([NewPartitions(s.name, s.partitions) for s in grow], request_timeout=self.timeout_s)
            for name, fut in futures.items():
                fut.result(timeout=self.timeout_s)
                changes.append(f"{name}: partitions {existing[name]} -> {next(s.partitions for s in grow if s.name == name)}")
        for s in old:
            if s.partitions < existing[s.name]:
                changes.append(f"{s.name}: has {existing[s.name]} partitions, spec says {s.partitions} (cannot shrink; left as is)")
        configs = self._configs([s.name for s in old])
        for s in old:
            diff = {k: v for k, v in s.configs.items() if configs[s.name].get(k) != v}
            if not diff:
                continue
            res = ConfigResource(
                ResourceType.TOPIC, s.name,
                incremental_configs=[ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in diff.items()],
            )
            for fut in self.admin.incremental_alter_configs([res]).values():
                fut.result(timeout=self.timeout_s)
            changes.append(f"{s.name}: set " + ", ".join(f"{k}={v}" for k, v in sorted(diff.items())))
        return changes

    def delete(self, names: list[str]) -> None:
        if names:
            for fut in self.admin.delete_topics(names, operation_timeout=self.timeout_s).values():
                try:
                    fut.result(timeout=self.timeout_s)
                except Exception:  # noqa: BLE001 - already gone
                    pass
