#!/bin/bash
# copy results and engine logs to $OUT (one archive) and print the summaries
source "$(dirname "$0")/env.sh"
mkdir -p $W/res
for f in $W/eng[0-9].log; do [ -f $f ] && cp $f $W/res/$(basename $f .log).${1:-x}.log; done
cp $W/engines.log $W/res/engines.${1:-x}.log 2>/dev/null
tar czf $OUT/res-${1:-x}.tgz -C $W res
ls -la $OUT
