#!/usr/bin/env bash
# Start ENGINES_PER_GPU vLLM engines on every GPU (group) this container sees, one after another,
# each with its share of GPU memory and its own port, and keep them running.
#
#   start-engines.sh            start all engines, write Prometheus targets, wait; exit when one dies
#   start-engines.sh health     exit 0 when every engine answers GET /health (the compose health check)
#   start-engines.sh plan       print the engines that would start (GPU, port, memory share) and exit
#
# Why one after another: two engines started together on one GPU each profile free memory at the same
# time, both count the same free bytes, and the second one's allocation kills the first
# (../shared/gpu/README.md). Each engine starts once the previous one answers /health.
#
# Why several engines per GPU: one vLLM engine keeps an H100 only 25-42% busy on DeepSeek-OCR; two
# gave 1.56x the pages/s and 84% GPU use (../shared/gpu/measured-2026-11-27.md). Default 2.
#
# Environment (defaults in brackets):
#   VLLM_MODEL [deepseek-ai/DeepSeek-OCR]     model to serve
#   ENGINES_PER_GPU [2]                       engines per GPU (per tensor-parallel group)
#   VLLM_GPU_MEMORY_TOTAL [0.88]              share of each GPU's memory for all its engines together
#   TENSOR_PARALLEL [1]                       GPUs per engine (--tensor-parallel-size); for larger models
#   VLLM_BASE_PORT [8000]                     first engine's port; engine i listens on BASE+i
#   VLLM_ENGINE_START_TIMEOUT_S [1800]        how long one engine may take to become healthy
#   VLLM_HEALTH_POLL_S [5]                    how often a starting engine's /health is asked
#   VLLM_STREAM_INTERVAL [32]                 tokens per streamed chunk (--stream-interval; 0: leave vLLM's default of 1).
#                                             One event per token costs the worker ~25 us of CPU each (25 ms a page);
#                                             32 keeps loop detection prompt and the worker under 2 ms a page.
#   VLLM_EXTRA_ARGS []                        appended to every `vllm serve` (e.g. "--max-num-seqs 256")
#   VLLM_TARGETS_FILE [/etc/prometheus-targets/vllm.json]  Prometheus file_sd targets, one per engine
#   VLLM_HOSTNAME [$(hostname)]               host name Prometheus reaches the engines by
#   VLLM_DRY_RUN [0]                          1: print the commands instead of running them (tests)
set -euo pipefail

MODEL="${VLLM_MODEL:-deepseek-ai/DeepSeek-OCR}"
PER_GPU="${ENGINES_PER_GPU:-2}"
MEM_TOTAL="${VLLM_GPU_MEMORY_TOTAL:-0.88}"
TP="${TENSOR_PARALLEL:-1}"
BASE_PORT="${VLLM_BASE_PORT:-8000}"
START_TIMEOUT="${VLLM_ENGINE_START_TIMEOUT_S:-1800}"
POLL="${VLLM_HEALTH_POLL_S:-5}"
TARGETS_FILE="${VLLM_TARGETS_FILE:-/etc/prometheus-targets/vllm.json}"
HOST="${VLLM_HOSTNAME:-$(hostname)}"
DRY_RUN="${VLLM_DRY_RUN:-0}"
STREAM_INTERVAL="${VLLM_STREAM_INTERVAL:-32}"

say() { printf '[start-engines] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

is_uint() { [[ "$1" =~ ^[1-9][0-9]*$ ]]; }
is_uint "$PER_GPU" || die "ENGINES_PER_GPU must be a positive integer, got '$PER_GPU'"
is_uint "$TP" || die "TENSOR_PARALLEL must be a positive integer, got '$TP'"
is_uint "$BASE_PORT" || die "VLLM_BASE_PORT must be a positive integer, got '$BASE_PORT'"
[[ "$MEM_TOTAL" =~ ^0?\.[0-9]+$|^1(\.0+)?$ ]] || die "VLLM_GPU_MEMORY_TOTAL must be a fraction in (0, 1], got '$MEM_TOTAL'"

# GPUs visible in this container: CUDA_VISIBLE_DEVICES if set, else what nvidia-smi lists,
# else VLLM_GPUS (a comma-separated list, for tests on a machine without GPUs).
gpus() {
    if [[ -n "${VLLM_GPUS:-}" ]]; then
        tr ',' '\n' <<<"$VLLM_GPUS"
    elif [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
        tr ',' '\n' <<<"$CUDA_VISIBLE_DEVICES"
    else
        nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null | tr -d ' '
    fi
}

mapfile -t GPU_LIST < <(gpus | sed '/^$/d')
((${#GPU_LIST[@]} > 0)) || die "no GPU visible (is the NVIDIA container toolkit installed and a GPU reserved?)"
((${#GPU_LIST[@]} % TP == 0)) || die "${#GPU_LIST[@]} GPUs cannot be split into tensor-parallel groups of $TP"

# Memory share of one engine: the GPU's budget divided among the engines on it (awk: bash has no floats).
SHARE="$(awk -v t="$MEM_TOTAL" -v n="$PER_GPU" 'BEGIN { printf "%.3f", t / n }')"

# The plan: one line per engine, "GPUS PORT" (GPUS is comma-separated for tensor parallel).
plan() {
    local i=0 g group
    for ((g = 0; g < ${#GPU_LIST[@]}; g += TP)); do
        group="$(IFS=,; echo "${GPU_LIST[*]:g:TP}")"
        for ((e = 0; e < PER_GPU; e++)); do
            echo "$group $((BASE_PORT + i))"
            i=$((i + 1))
        done
    done
}

healthy() {  # port → 0 when the engine answers /health with 200
    python3 - "$1" <<'PY'
import sys, urllib.request
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/health", timeout=5) as r:
        sys.exit(0 if r.status == 200 else 1)
except Exception:
    sys.exit(1)
PY
}

write_targets() {
    local ports=() line
    while read -r _ port; do ports+=("\"$HOST:$port\""); done < <(plan)
    line="[{\"targets\": [$(IFS=,; echo "${ports[*]}")], \"labels\": {\"job\": \"vllm\", \"model\": \"$MODEL\"}}]"
    if [[ "$DRY_RUN" == 1 ]]; then echo "targets: $line"; return; fi
    mkdir -p "$(dirname "$TARGETS_FILE")"
    # Written whole then renamed, so Prometheus never reads half a file.
    printf '%s\n' "$line" >"$TARGETS_FILE.tmp" && mv "$TARGETS_FILE.tmp" "$TARGETS_FILE"
}

case "${1:-start}" in
plan)
    while read -r group port; do echo "gpu=$group port=$port gpu_memory_utilization=$SHARE"; done < <(plan)
    exit 0
    ;;
health)
    bad=0
    while read -r _ port; do healthy "$port" || { say "engine on port $port is not healthy"; bad=1; }; done < <(plan)
    exit "$bad"
    ;;
start) ;;
*) die "unknown command '$1' (start, health, plan)" ;;
esac

PIDS=()
stop_all() {
    say "stopping ${#PIDS[@]} engine(s)"
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait || true
}
trap 'stop_all; exit 143' TERM INT

write_targets
n=0
while read -r group port; do
    n=$((n + 1))
    # DESIGN.md §4: the n-gram logits processor is loaded so a retry can ask for it per request;
    # prefix caching and the multimodal processor cache do not help one-off page images.
    cmd=(vllm serve "$MODEL"
        --host 0.0.0.0 --port "$port"
        --gpu-memory-utilization "$SHARE"
        --tensor-parallel-size "$TP"
        --logits_processors vllm.model_executor.models.deepseek_ocr:NGramPerReqLogitsProcessor
        --no-enable-prefix-caching
        --mm-processor-cache-gb 0)
    [[ "$STREAM_INTERVAL" != 0 ]] && cmd+=(--stream-interval "$STREAM_INTERVAL")
    # shellcheck disable=SC2206 # word splitting of the extra arguments is the point
    [[ -n "${VLLM_EXTRA_ARGS:-}" ]] && cmd+=(${VLLM_EXTRA_ARGS})
    if [[ "$DRY_RUN" == 1 ]]; then
        echo "CUDA_VISIBLE_DEVICES=$group ${cmd[*]}"
        continue
    fi
    say "engine $n: GPU $group, port $port, gpu-memory-utilization $SHARE: starting"
    CUDA_VISIBLE_DEVICES="$group" "${cmd[@]}" </dev/null &
    PIDS+=($!)
    deadline=$((SECONDS + START_TIMEOUT))
    until healthy "$port"; do
        kill -0 "${PIDS[-1]}" 2>/dev/null || { say "engine $n (port $port) exited while starting"; stop_all; exit 1; }
        ((SECONDS < deadline)) || { say "engine $n (port $port) not healthy after ${START_TIMEOUT}s"; stop_all; exit 1; }
        sleep "$POLL"
    done
    say "engine $n: GPU $group, port $port: healthy"
done < <(plan)
[[ "$DRY_RUN" == 1 ]] && exit 0

say "all $n engine(s) healthy"
# One engine dying takes the container down, so the restart policy brings back a consistent set
# (and the model-server-down alert fires meanwhile).
set +e
wait -n "${PIDS[@]}"
rc=$?
say "an engine exited with status $rc; stopping the others"
stop_all
exit "$rc"
