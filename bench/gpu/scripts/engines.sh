#!/bin/bash
# usage: engines.sh N UTIL [extra vllm serve args] -- start N engines one after another (ports 8001..)
source "$(dirname "$0")/env.sh"
N=$1; U=$2; shift 2
for i in $(seq 1 $N); do
  port=$((8000+i))
  echo "$(date -u +%T) starting engine $i on $port (util $U) $*"
  python3 -m vllm.entrypoints.cli.main serve $W/replica --load-format dummy \
    --served-model-name deepseek-ai/DeepSeek-OCR --port $port --gpu-memory-utilization $U \
    --logits_processors vllm.model_executor.models.deepseek_ocr:NGramPerReqLogitsProcessor \
    --no-enable-prefix-caching --mm-processor-cache-gb 0 "$@" > $W/eng$i.log 2>&1 &
  pid=$!
  ok=0
  for t in $(seq 1 540); do
    if health http://127.0.0.1:$port/health; then ok=1; break; fi
    kill -0 $pid 2>/dev/null || break
    sleep 1
  done
  if [ $ok = 1 ]; then echo "$(date -u +%T) engine $i up after ${t}s"; else echo "$(date -u +%T) engine $i FAILED"; tail -40 $W/eng$i.log; exit 1; fi
done
echo "$(date -u +%T) ALL UP"
wait
