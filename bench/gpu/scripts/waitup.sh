#!/bin/bash
# usage: waitup.sh MAXSECONDS -- wait until engines.sh says ALL UP (or FAILED)
source "$(dirname "$0")/env.sh"
for t in $(seq 1 $1); do
  grep -q 'ALL UP' $W/engines.log 2>/dev/null && { cat $W/engines.log; exit 0; }
  grep -q 'FAILED' $W/engines.log 2>/dev/null && { cat $W/engines.log; exit 1; }
  sleep 1
done
echo "not up after $1 s"; cat $W/engines.log; for f in $W/eng[0-9].log; do echo "== $f"; tail -15 $f; done; exit 2
