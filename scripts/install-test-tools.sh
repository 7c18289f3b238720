#!/usr/bin/env bash
# System tools the tests use, from Debian's packages and the Go module proxy. Idempotent: does
# nothing when everything is present. Kafka and MinIO themselves are fetched by tests/stack.py.
set -euo pipefail

need_apt=()
command -v kcat >/dev/null 2>&1 || need_apt+=(kcat)

if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  echo "[install-test-tools] apt-get install ${need_apt[*]}" >&2
  $SUDO apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# docker compose (validates docker-compose.yml) and promtool (checks and tests the alert rules):
# built or extracted once into the cache by the deployment's own script.
bash "$(dirname "$0")/../deploy/install-tools.sh" >/dev/null
