#!/usr/bin/env bash
# `make run`: a virtualenv, the project installed, the sample document OCR'd end to end on this
# machine (no Kafka, no S3, no GPU: Tesseract), then where the Markdown is and how close it is to the
# sample's known text. Network is used only by pip.
#
# Environment: PYTHON (interpreter for the venv, default python3), VENV (default .venv),
# OUT (default out), SAMPLE (default samples/sample.pdf), REFERENCE (default samples/sample.txt).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
OUT="${OUT:-out}"
SAMPLE="${SAMPLE:-samples/sample.pdf}"
REFERENCE="${REFERENCE:-samples/sample.txt}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi
# The Makefile's venv target installs the project and leaves a stamp; run standalone, install here.
if [ ! -x "$VENV/bin/ocr-stream" ] || [ ! -f "$VENV/.installed-stamp" ] || [ pyproject.toml -nt "$VENV/.installed-stamp" ]; then
  echo "==> installing ocr-stream into $VENV"
  "$VENV/bin/python" -m pip install --quiet -e .
fi

echo "==> ocr-stream run $SAMPLE -o $OUT/"
status=0
"$VENV/bin/ocr-stream" run "$SAMPLE" -o "$OUT/" || status=$?

name="$(basename "${SAMPLE%.*}")"
md="$OUT/$name/document.md"
if [ ! -f "$md" ]; then
  echo "make run: no $md was written (ocr-stream exited with $status)" >&2
  exit 1
fi
echo
echo "Markdown: $md"
echo "JSON:     $OUT/$name/document.json"
echo "Pages:    $OUT/$name/pages/"
if [ -f "$REFERENCE" ]; then
  "$VENV/bin/python" - "$md" "$REFERENCE" <<'PY'
import sys
from pathlib import Path
from ocr_stream.local import character_error_rate_of
cer = character_error_rate_of(Path(sys.argv[1]), Path(sys.argv[2]))
print(f"Character error rate against {sys.argv[2]}: {cer:.2%}")
PY
fi
exit "$status"
