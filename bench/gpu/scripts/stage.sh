#!/bin/bash
# usage: stage.sh PARTDIR  -- keep a part of the vLLM site archive in /tmp/stage on the device
mkdir -p /tmp/stage && cp "$1"/* /tmp/stage/ && ls -la /tmp/stage
