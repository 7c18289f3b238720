"""Logs and the /metrics + /healthz endpoint shared by every service.

Logs are one JSON object per line on stderr: ``{"ts":..., "level":..., "event":..., "doc_id":..., ...}``.
Pass fields with ``log.info("page done", extra={"doc_id": d, "page_no": n})``.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

_STD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for k, v in record.__dict__.items():
            if k not in _STD_ATTRS and not k.startswith("_"):
                out[k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(level: str = "WARNING") -> None:
    root = logging.getLogger()
    if any(getattr(h, "_ocr_stream", False) for h in root.handlers):
        root.setLevel(level)
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler._ocr_stream = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    # librdkafka and friends are chatty at INFO.
    for noisy in ("urllib3", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))


HealthCheck = Callable[[], dict[str, bool]]


class MetricsServer:
    """Serves ``/metrics`` (Prometheus text) and ``/healthz`` (200 when every check passes, else
    503, with the checks as JSON) from a daemon thread."""

    def __init__(self, registry: CollectorRegistry, health: HealthCheck, *, host: str = "0.0.0.0", port: int = 0) -> None:
        self.registry = registry
        self.health = health
        registry_ = registry
        health_ = health

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                if self.path.startswith("/metrics"):
                    body = generate_latest(registry_)
                    self._send(200, body, CONTENT_TYPE_LATEST)
                elif self.path.startswith("/healthz") or self.path.startswith("/readyz"):
                    try:
                        checks = health_()
                    except Exception as exc:  # noqa: BLE001
                        checks = {"error": False}
                        logging.getLogger(__name__).warning("health check raised: %s", exc)
                    ok = all(checks.values())
                    self._send(200 if ok else 503, json.dumps({"ok": ok, "checks": checks}).encode(), "application/json")
                elif self.path.startswith("/livez"):
                    self._send(200, b'{"ok": true}', "application/json")
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
