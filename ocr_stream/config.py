"""One settings object for every service, read from ``OCR_STREAM_*`` environment variables (and an
optional ``.env`` file), validated at start-up, and passed explicitly. No module-level clients.

``python -m ocr_stream.config`` prints the settings table that the README carries.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .contracts import Mode, describe_validation_error
from .errors import ConfigError

# Keys of librdkafka properties whose values are secrets (never logged).
_SECRET_HINTS = ("password", "secret", "sasl.oauthbearer.config", "ssl.key.pem", "ssl_key")


class RepetitionPolicy(StrEnum):
    """When the server-side n-gram repetition processor is asked for (it costs 35-50% throughput)."""

    ALWAYS = "always"  # on every request (vLLM's recipe)
    ON_RETRY = "on_retry"  # only when a page is retried after a detected loop or finish_reason=length
    OFF = "off"  # never; loops are still detected client-side and the page fails as `repetition`


def _split_list(value: Any) -> Any:
    if isinstance(value, str):
        value = value.strip()
        if value.startswith("["):
            return json.loads(value)
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


class Settings(BaseSettings):
    """Every setting of ocr-stream. Environment variable: ``OCR_STREAM_<NAME>`` (upper case)."""

    model_config = SettingsConfigDict(
        env_prefix="OCR_STREAM_", env_file=".env", env_file_encoding="utf-8", extra="ignore", validate_default=True
    )

    # --- Kafka -------------------------------------------------------------------------------
    kafka_bootstrap_servers: str = Field(default="127.0.0.1:9092", description="Kafka bootstrap servers, comma-separated.")
    kafka_config: dict[str, str] = Field(
        default_factory=dict,
        description='Extra librdkafka properties as JSON, passed through untouched (SASL, SSL, ...), e.g. '
        '`{"security.protocol":"SASL_SSL","sasl.mechanism":"SCRAM-SHA-512","sasl.username":"u","sasl.password":"p"}`.',
    )
    kafka_config_file: Path | None = Field(default=None, description="A librdkafka properties file (key=value lines), merged under kafka_config.")
    topic_prefix: str = Field(default="", pattern=r"^[A-Za-z0-9._-]*$", description="Prefix for every topic name (e.g. `staging.`).")
    consumer_group_worker: str = Field(default="ocr-stream-workers", description="Consumer group of the OCR workers.")
    consumer_group_aggregator: str = Field(default="ocr-stream-aggregator", description="Consumer group (and transactional id prefix) of the aggregator.")
    consumer_group_splitter: str = Field(default="ocr-stream-splitter", description="Consumer group of the splitter.")

    # --- Object storage ----------------------------------------------------------------------
    storage: Literal["s3", "local"] = Field(default="s3", description="`s3` (MinIO or any S3 server) or `local` (a folder).")
    s3_endpoint: str = Field(default="127.0.0.1:9000", description="S3 endpoint as host:port.")
    s3_access_key: SecretStr = Field(default=SecretStr("minioadmin"), description="S3 access key.")
    s3_secret_key: SecretStr = Field(default=SecretStr("minioadmin"), description="S3 secret key.")
    s3_secure: bool = Field(default=False, description="Use TLS to reach the S3 endpoint.")
    s3_ca_file: Path | None = Field(default=None, description="CA bundle to verify the S3 endpoint's certificate.")
    s3_region: str | None = Field(default=None, description="S3 region, if the server needs one.")
    bucket: str = Field(default="ocr-stream", description="Bucket for page images and results.")
    allowed_buckets: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Buckets workers may read page images from (comma-separated); `bucket` is always allowed.",
    )
    local_storage_path: Path = Field(default=Path("./ocr-stream-data"), description="Root folder when storage=local.")

    # --- Model servers -----------------------------------------------------------------------
    engine: str = Field(default="deepseek", description="Default engine written into page events (`deepseek`, `tesseract`, `rapidocr`, or `deepseek:POOL`).")
    vllm_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["http://127.0.0.1:8000"],
        description="Base URLs of the OpenAI-compatible servers (comma-separated), one per engine.",
    )
    engine_pools: dict[str, list[str]] = Field(
        default_factory=dict,
        description='Server lists of named DeepSeek pools, as JSON: `{"canary": ["http://canary:8000"]}`. Pages whose '
        "`engine` is `deepseek:canary` go to those servers (gradual rollout of a new model); other pools use `vllm_urls`.",
    )
    vllm_api_key: SecretStr | None = Field(default=None, description="Bearer token for the model servers.")
    vllm_model: str | None = Field(default=None, description="Model name; discovered from /v1/models when unset.")
    mode: Mode = Field(default=Mode.GUNDAM, description="Default DeepSeek-OCR resolution mode (`tiny`, `small`, `base`, `large`, `gundam`).")
    prompt: str = Field(default="markdown", description="Default prompt: `markdown`, `free`, `figure`, or literal prompt text.")
    max_tokens: int = Field(default=8192, gt=0, description="Output token cap per page.")
    repetition_policy: RepetitionPolicy = Field(default=RepetitionPolicy.ON_RETRY, description="`always`, `on_retry` or `off`: when to ask the server for n-gram repetition control.")
    ngram_size: int = Field(default=30, gt=0, description="n-gram size for the server-side repetition processor.")
    ngram_window: int = Field(default=90, gt=0, description="Window for the server-side repetition processor.")
    stream_responses: bool = Field(
        default=True,
        description="Stream model output so runaway repetition is caught and aborted early. Costs worker CPU per "
        "streamed chunk: run vLLM with `--stream-interval 32` (the compose stack does), or turn this off.",
    )
    loop_min_period: int = Field(default=8, gt=0, description="Client-side loop detector: shortest repeating unit (characters).")
    loop_min_repeats: int = Field(default=10, gt=1, description="Client-side loop detector: repeats of a unit that count as a loop.")

    # --- Worker ------------------------------------------------------------------------------
    max_in_flight: int = Field(default=256, gt=0, le=100_000, description="Upper bound of requests in flight per worker process.")
    adaptive_in_flight: bool = Field(default=True, description="Size in-flight from the servers' /metrics (running and waiting requests).")
    request_timeout_s: float = Field(default=600.0, gt=0, description="Whole-request timeout against a model server.")
    connect_timeout_s: float = Field(default=5.0, gt=0, description="TCP connect timeout to a model server.")
    max_attempts: int = Field(default=5, ge=1, description="Attempts per page before it goes to the DLQ as a failed page.")
    backoff_base_s: float = Field(default=1.0, gt=0, description="First retry delay; doubles each attempt (with full jitter).")
    backoff_max_s: float = Field(default=60.0, gt=0, description="Longest retry delay.")
    shutdown_grace_s: float = Field(default=30.0, ge=0, description="Time to finish in-flight pages on SIGTERM or partition revocation.")
    health_probe_interval_s: float = Field(default=5.0, gt=0, description="How often an ejected model server is probed.")
    image_transport: Literal["inline", "url"] = Field(
        default="inline",
        description="How a page image reaches the model server: `inline` (the worker reads it and sends its bytes, base64) "
        "or `url` (the worker checks its header and sends a presigned S3 URL that the server fetches; S3 storage only).",
    )
    image_url_endpoint: str | None = Field(
        default=None,
        description="With `url` transport: the S3 endpoint as the model servers reach it (`http(s)://host:port`); "
        "default: the worker's own endpoint.",
    )
    image_url_expiry_s: int = Field(default=900, ge=60, le=86_400, description="With `url` transport: how long a presigned image URL stays valid.")
    inline_text_limit: int = Field(default=256 * 1024, ge=0, description="Results larger than this (bytes) travel by reference only.")

    # --- Producer ----------------------------------------------------------------------------
    max_file_bytes: int = Field(default=512 * 1024 * 1024, gt=0, description="Largest accepted input file.")
    max_pages: int = Field(default=5000, gt=0, description="Most pages accepted in one document.")
    max_page_pixels: int = Field(default=100_000_000, gt=0, description="Most pixels in one input image or rendered page (decompression bombs).")
    long_side: int = Field(default=1600, gt=0, description="Long side in pixels pages are rendered to for `gundam`/`large`/`base`.")
    jpeg_quality: int = Field(default=95, ge=1, le=100, description="JPEG quality of stored page images.")

    # --- Aggregator --------------------------------------------------------------------------
    stuck_after_s: float = Field(default=900.0, gt=0, description="A document missing pages this long is reported as stuck.")
    close_partial_after_s: float = Field(default=6 * 3600.0, gt=0, description="A document missing pages this long is closed as partial.")
    forget_after_s: float = Field(
        default=7 * 86400.0, gt=0,
        description="The aggregator forgets a published document this long after publishing it (a tombstone on its "
        "changelog); a result arriving later would start the document afresh. Keep it >= the retention of ocr.results.",
    )
    aggregator_instance_id: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9._-]{1,100}$",
        description="Stable id of this aggregator instance (e.g. a StatefulSet pod name), part of its transactional id: "
        "a restarted instance with the same id aborts its predecessor's open transaction at once. Unset: a random id "
        "per process (a crashed instance's open transaction then holds up its partitions until the transaction timeout, 60 s).",
    )

    # --- Observability -----------------------------------------------------------------------
    metrics_port: int = Field(default=9400, ge=0, le=65535, description="Port of /metrics and /healthz (0: off).")
    metrics_host: str = Field(default="0.0.0.0", description="Address /metrics and /healthz bind to.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="WARNING", description="Log level; logs are one JSON object per line.")
    startup_deadline_s: float = Field(default=300.0, gt=0, description="How long a service waits at start-up for the broker, storage and model servers before it exits 1.")

    @field_validator("allowed_buckets", "vllm_urls", mode="before")
    @classmethod
    def _lists(cls, v: Any) -> Any:
        return _split_list(v)

    @field_validator("vllm_urls")
    @classmethod
    def _urls(cls, v: list[str]) -> list[str]:
        for url in v:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"{url!r} is not an http(s) URL")
        return [u.rstrip("/") for u in v]

    @field_validator("engine_pools")
    @classmethod
    def _pools(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for pool, urls in v.items():
            if not urls:
                raise ValueError(f"pool {pool!r} lists no servers")
            for url in urls:
                if not url.startswith(("http://", "https://")):
                    raise ValueError(f"pool {pool!r}: {url!r} is not an http(s) URL")
        return {pool.lower(): [u.rstrip("/") for u in urls] for pool, urls in v.items()}

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.backoff_max_s < self.backoff_base_s:
            raise ValueError("backoff_max_s must be >= backoff_base_s")
        if self.close_partial_after_s < self.stuck_after_s:
            raise ValueError("close_partial_after_s must be >= stuck_after_s")
        return self

    # --- derived -----------------------------------------------------------------------------

    def topic(self, name: str) -> str:
        """The real topic name for a logical one (``ocr.pages`` → ``{prefix}ocr.pages``)."""
        return f"{self.topic_prefix}{name}"

    @property
    def readable_buckets(self) -> frozenset[str]:
        return frozenset([self.bucket, *self.allowed_buckets])

    def kafka_client_config(self) -> dict[str, str]:
        """librdkafka properties: bootstrap servers, then the config file, then ``kafka_config``."""
        conf: dict[str, str] = {"bootstrap.servers": self.kafka_bootstrap_servers}
        if self.kafka_config_file is not None:
            conf.update(read_properties(self.kafka_config_file))
        conf.update(self.kafka_config)
        return conf

    def redacted_kafka_config(self) -> dict[str, str]:
        return {k: ("***" if any(h in k for h in _SECRET_HINTS) else v) for k, v in self.kafka_client_config().items()}


def read_properties(path: Path) -> dict[str, str]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read Kafka config file {path}: {exc.strerror}") from exc
    out: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(("#", "!")):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ConfigError(f"{path}:{lineno}: expected key=value")
        out[key.strip()] = value.strip()
    return out


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment plus explicit overrides, or a ConfigError naming the bad variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        msgs = []
        for err in exc.errors()[:5]:
            field = ".".join(str(p) for p in err["loc"])
            msgs.append(f"OCR_STREAM_{field.upper()}: {err['msg']}" if field else err["msg"])
        raise ConfigError("invalid settings: " + "; ".join(msgs)) from exc
    except (json.JSONDecodeError, ValueError) as exc:  # a list/dict variable that is not valid JSON
        raise ConfigError(f"invalid settings: {exc}") from exc


def settings_table() -> str:
    """The Markdown table of every setting with its default, for the README."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default: Any = field.get_default(call_default_factory=True)
        if isinstance(default, SecretStr):
            default = "(secret)"
        elif isinstance(default, StrEnum):
            default = default.value
        elif isinstance(default, list):
            default = ",".join(map(str, default))
        elif isinstance(default, dict):
            default = json.dumps(default)
        shown = "" if default is None else str(default)
        desc = (field.description or "").replace("|", "\\|")
        rows.append(f"| `OCR_STREAM_{name.upper()}` | `{shown}` | {desc} |")
    return "\n".join(rows) + "\n"


__all__ = ["RepetitionPolicy", "Settings", "load_settings", "settings_table", "describe_validation_error"]

if __name__ == "__main__":
    print(settings_table(), end="")
