# sourced: environment for vLLM engines and the bench on the device
export W=/tmp/w
export PYTHONPATH=/tmp/site:$W/plugin:$PWD/.gpu/src
export VLLM_USE_FLASHINFER_SAMPLER=0 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
health() { python3 - "$@" <<'PY'
import sys, urllib.request
try:
    urllib.request.urlopen(sys.argv[1], timeout=2); sys.exit(0)
except Exception:
    sys.exit(1)
PY
}
