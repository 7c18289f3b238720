#!/usr/bin/env bash
# The tools the deployment tests use, cached; idempotent (a second run only checks).
#
#   docker compose   (`docker compose config` validates docker-compose.yml): Docker Compose v2 built
#                    from its source through the Go module proxy (~2 min once on 2 cores), installed as
#                    the docker CLI plugin ~/.docker/cli-plugins/docker-compose. The docker CLI itself
#                    is not needed by the tests (they run the plugin binary directly), nor is an engine.
#   promtool         (`promtool check rules` / `test rules`): taken from Debian's `prometheus` package,
#                    extracted only (no daemon is installed or started).
#
# Prints `KEY=PATH` lines for what it provides; the tests find the same paths by themselves
# (tests/deploy_tools.py). Cache: $OCR_STREAM_CACHE (default ~/.cache/ocr-stream)/tools.
set -euo pipefail

COMPOSE_VERSION="v2.40.3"
CACHE="${OCR_STREAM_CACHE:-$HOME/.cache/ocr-stream}/tools"
COMPOSE_BIN="$CACHE/docker-compose-$COMPOSE_VERSION"
PROMTOOL_DIR="$CACHE/promtool"
PLUGIN_DIR="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"

say() { printf '[install-tools] %s\n' "$*" >&2; }
mkdir -p "$CACHE"

# ---------------------------------------------------------------- docker compose
if [[ ! -x "$COMPOSE_BIN" ]]; then
    command -v go >/dev/null || { say "go is needed to build docker compose (install golang)"; exit 1; }
    say "building docker compose $COMPOSE_VERSION from source (Go module proxy; a few minutes, once)"
    # The module's go.mod has exclude directives, so `go install pkg@version` refuses it: build it as
    # the main module from its own (read-only, checksummed) module cache directory instead.
    src="$(GOFLAGS=-mod=mod go mod download -json "github.com/docker/compose/v2@$COMPOSE_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
    [[ -d "$src" ]] || { say "could not download github.com/docker/compose/v2@$COMPOSE_VERSION"; exit 1; }
    (cd "$src" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath \
        -ldflags "-s -w -X github.com/docker/compose/v2/internal.Version=$COMPOSE_VERSION" \
        -o "$COMPOSE_BIN.tmp" ./cmd)
    mv "$COMPOSE_BIN.tmp" "$COMPOSE_BIN"
fi
mkdir -p "$PLUGIN_DIR"
if [[ "$(readlink "$PLUGIN_DIR/docker-compose" 2>/dev/null)" != "$COMPOSE_BIN" ]] && [[ ! -x "$PLUGIN_DIR/docker-compose" ]]; then
    ln -sf "$COMPOSE_BIN" "$PLUGIN_DIR/docker-compose"
fi
echo "DOCKER_COMPOSE=$COMPOSE_BIN"

# ---------------------------------------------------------------- promtool
if [[ ! -x "$PROMTOOL_DIR/promtool" ]]; then
    if command -v promtool >/dev/null; then
        mkdir -p "$PROMTOOL_DIR" && ln -sf "$(command -v promtool)" "$PROMTOOL_DIR/promtool"
    else
        command -v apt-get >/dev/null || { say "promtool: needs apt-get (Debian's prometheus package) or promtool on PATH"; exit 1; }
        say "fetching promtool from Debian's prometheus package"
        tmp="$(mktemp -d)"
        trap 'rm -rf "$tmp"' EXIT
        # `apt-get download` needs package lists; refresh them when the package is unknown.
        if ! (cd "$tmp" && apt-get download -q prometheus >/dev/null 2>&1); then
            if [[ "$(id -u)" == 0 ]]; then apt-get update -qq >/dev/null; else sudo apt-get update -qq >/dev/null; fi
            (cd "$tmp" && apt-get download -q prometheus >/dev/null)
        fi
        dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x"
        mkdir -p "$PROMTOOL_DIR"
        install -m 0755 "$tmp/x/usr/bin/promtool" "$PROMTOOL_DIR/promtool.tmp"
        mv "$PROMTOOL_DIR/promtool.tmp" "$PROMTOOL_DIR/promtool"
    fi
fi
echo "PROMTOOL=$PROMTOOL_DIR/promtool"
