#!/bin/sh
# Entrypoint of the ocr-stream image: wait for what the command needs (saying what it waits for,
# giving up after OCR_STREAM_STARTUP_DEADLINE_S with exit 1), then become the command.
#
#   worker                  Kafka, its topics, the bucket, a model server
#   aggregator, splitter    Kafka, the topics, the bucket
#   topics                  Kafka
#   anything else           nothing (e.g. --help, status, submit)
#
# OCR_STREAM_WAIT_FOR overrides the list (space-separated; "none" skips the wait).
set -e
case "${1:-}" in
    worker) deps="kafka topics storage model" ;;
    aggregator | splitter) deps="kafka topics storage" ;;
    topics) deps="kafka" ;;
    *) deps="" ;;
esac
deps="${OCR_STREAM_WAIT_FOR:-$deps}"
if [ -n "$deps" ] && [ "$deps" != none ]; then
    # shellcheck disable=SC2086 # one argument per dependency
    python -m ocr_stream.wait $deps
fi
exec ocr-stream "$@"
