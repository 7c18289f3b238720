#!/bin/bash
# usage: start.sh N UTIL [extra] -- stop engines we started before, start N new ones in their own session
source "$(dirname "$0")/env.sh"
mkdir -p $W
if [ -f $W/engines.pgid ]; then
  pg=$(cat $W/engines.pgid); kill -- -$pg 2>/dev/null; sleep 2; kill -9 -- -$pg 2>/dev/null
  for t in $(seq 1 60); do u=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1); [ "$u" -lt 2000 ] && break; sleep 1; done
  echo "stopped old engines (GPU memory used now ${u} MiB)"; rm -f $W/engines.pgid
fi
setsid bash "$(dirname "$0")/engines.sh" "$@" > $W/engines.log 2>&1 < /dev/null &
echo $! > $W/engines.pgid
echo "engines.sh pgid $(cat $W/engines.pgid)"
