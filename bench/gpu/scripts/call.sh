#!/bin/bash
# usage: call.sh STEP -- one device call's work, with a guard that keeps it inside the 600 s limit
cd "$(dirname "$0")/.."
source .gpu/env.sh
T0=$(date +%s); LIMIT=${LIMIT:-585}
left() { echo $(( LIMIT - ($(date +%s) - T0) )); }
m() { # m TIMEOUT NAME PAGESDIR NENG LEVEL PAGES [args] -- measure if time allows
  local to=$1; shift; local l=$(left)
  if [ $l -lt 60 ]; then echo "SKIP $1 (only ${l}s left)"; return; fi
  [ $to -gt $((l-25)) ] && to=$((l-25))
  BENCH_TIMEOUT=$to bash .gpu/measure.sh "$@"
}
SI="--stream-interval 16"
case $1 in
  c3) bash .gpu/stage.sh .whl/p2 >/dev/null && bash .gpu/setup.sh && bash .gpu/start.sh 2 0.44 $SI && bash .gpu/waitup.sh $(( $(left) - 15 ))
      bash .gpu/collect.sh c3 ;;
  c4) m 240 e2_full_256 pages_full 2 256 768
      m 300 e2_full_512 pages_full 2 512 1536
      m 150 e2_smallimg_512 pages_small 2 512 1024
      bash .gpu/collect.sh c4 ;;
  c5) m 200 e2_full_512_nostream pages_full 2 512 1024 --no-stream
      bash .gpu/start.sh 3 0.29 $SI && bash .gpu/waitup.sh $(( $(left) - 200 ))
      m 300 e3_full_512 pages_full 3 512 1536
      bash .gpu/collect.sh c5 ;;
  c6) bash .gpu/start.sh 1 0.88 $SI && bash .gpu/waitup.sh 300
      m 300 e1_full_256 pages_full 1 256 768
      bash .gpu/collect.sh c6 ;;
  up) bash .gpu/waitup.sh ${2:-300}; bash .gpu/collect.sh up ;;
  start) shift; bash .gpu/start.sh "$@" $SI && bash .gpu/waitup.sh $(( $(left) - 30 )); bash .gpu/collect.sh start ;;
  m) shift; to=$1; shift; m $to "$@"; bash .gpu/collect.sh m ;;
  *) echo "unknown step $1"; exit 2 ;;
esac
echo "call $1 done in $(( $(date +%s) - T0 )) s"
