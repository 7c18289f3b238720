#!/bin/bash
# unpack the staged vLLM site archive into /tmp/site and copy the replica/plugin to /tmp/w
REPO=$PWD
cd /tmp/stage && ls -la
[ "$(cat site.tar.xz.part* | sha256sum | cut -d' ' -f1)" = "$(cut -d' ' -f1 site.sha256)" ] && echo "checksum OK" || { echo "CHECKSUM MISMATCH"; exit 1; }
t0=$(date +%s); cat site.tar.xz.part* | xz -d -T0 | tar x -C /tmp || exit 1; echo "unpacked in $(( $(date +%s)-t0 )) s"; du -sh /tmp/site
cd $REPO; source .gpu/env.sh; mkdir -p $W/res; cp -r .gpu/replica .gpu/plugin $W/
python3 -c "import vllm, msgspec, pydantic, pydantic_settings, aiohttp, ocr_stream.engines.deepseek; print('vllm', vllm.__version__, vllm.__file__)"
