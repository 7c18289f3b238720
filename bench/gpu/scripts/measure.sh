#!/bin/bash
# usage: measure.sh NAME PAGESDIR NENG LEVEL PAGES [more bench args] -- one level through ocr-stream's engine stack
source "$(dirname "$0")/env.sh"
NAME=$1; PD=$2; NENG=$3; LEVEL=$4; PAGES=$5; shift 5
R=$W/res; mkdir -p $R
urls=""; for i in $(seq 1 $NENG); do urls="$urls --vllm-url http://127.0.0.1:$((8000+i))"; done
declare -A start; for i in $(seq 1 $NENG); do start[$i]=$(wc -l < $W/eng$i.log); done
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader,nounits -lms 500 > $R/$NAME.smi &
smi=$!
t0=$(date +%s.%N)
timeout ${BENCH_TIMEOUT:-420} python3 .gpu/bench.py .gpu/$PD $urls --in-flight $LEVEL --pages $PAGES --max-tokens 1000 --ignore-eos --json $R/$NAME.json "$@" > $R/$NAME.out 2>&1
rc=$?
kill $smi; wait $smi 2>/dev/null
for i in $(seq 1 $NENG); do tail -n +$((start[$i]+1)) $W/eng$i.log | grep -E 'throughput|Running' > $R/$NAME.eng$i; done
python3 - "$NAME" "$R" "$NENG" "$rc" "$*" <<'PY'
import json, re, sys, statistics as st
name, R, neng, rc, extra = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
try:
    lv = json.load(open(f"{R}/{name}.json"))["levels"][0]
except Exception as e:
    print(f"RESULT {name}: no result (rc {rc}, {e})"); print(open(f"{R}/{name}.out").read()[-3000:]); sys.exit()
u = []
for line in open(f"{R}/{name}.smi"):
    p = [x.strip() for x in line.split(",")]
    try: u.append(float(p[1]))
    except Exception: pass
# drop the first and last 10% of samples (ramp up/down)
k = len(u) // 10
mid = u[k:len(u)-k] if len(u) > 10 else u
gen = []
for i in range(1, neng + 1):
    g = [float(m.group(1)) for m in re.finditer(r"generation throughput: ([\d.]+)", open(f"{R}/{name}.eng{i}").read())]
    g = [x for x in g if x > 0]
    gen.append(round(st.fmean(g)) if g else 0)
print(f"RESULT {name}: engines={neng} in_flight={lv['in_flight']} pages={lv['pages']} failed={lv['failed']} "
      f"s={lv['seconds']} pages/s={lv['pages_per_s']} out_tok/s={lv['output_tokens_per_s']} "
      f"p50={lv['latency_p50_s']} p95={lv['latency_p95_s']} running={lv['server_running_mean']} waiting={lv['server_waiting_mean']} "
      f"kv_max={lv['kv_cache_max']} gpu_util_mean={st.fmean(u) if u else 0:.1f} gpu_util_mid={st.fmean(mid) if mid else 0:.1f} "
      f"engine_gen_tok/s={gen} errors={lv['errors']} extra='{extra}'")
PY
