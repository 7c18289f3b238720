# syntax=docker/dockerfile:1
# The ocr-stream image: worker, aggregator, splitter, topic creation and the CLI.
#
#   docker build -t ocr-stream .
#   docker run --rm ocr-stream --help
#
# Slim Python, pinned; runs as an unprivileged user; health from the service's own /healthz.
ARG PYTHON_IMAGE=python:3.12.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /app
# Dependencies first: a code change does not reinstall them.
COPY pyproject.toml README.md ./
COPY ocr_stream/__init__.py ocr_stream/__init__.py
RUN /opt/venv/bin/pip install . && /opt/venv/bin/pip uninstall -y ocr-stream
COPY ocr_stream ocr_stream
# Editable: the package stays at /app/ocr_stream with topics/ beside it, where it looks for them.
RUN /opt/venv/bin/pip install --no-deps -e .

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    OCR_STREAM_METRICS_PORT=9400
RUN groupadd --system --gid 10001 ocr \
 && useradd --system --uid 10001 --gid ocr --home-dir /app --no-create-home --shell /usr/sbin/nologin ocr
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY --from=build /app /app
COPY topics topics
COPY --chmod=0755 deploy/docker-entrypoint.sh /usr/local/bin/ocr-stream-entrypoint
USER 10001:10001
EXPOSE 9400
# 200 when the service's own checks pass (broker, storage, model servers as it sees them), else 503.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('OCR_STREAM_METRICS_PORT', '9400'), timeout=4)"]
# Waits for the command's dependencies (broker, topics, bucket, model server), then runs it.
ENTRYPOINT ["ocr-stream-entrypoint"]
CMD ["--help"]
