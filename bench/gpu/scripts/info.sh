#!/bin/bash
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv
python3 -V; which python3 curl; nproc; free -g | head -2
python3 -m pip list 2>/dev/null | grep -iE '^(torch|transformers|tokenizers|aiohttp|numpy|pillow|prometheus.client|triton|pydantic|msgspec|opencv-python-headless|cloudpickle|numba|einops|tiktoken|sentencepiece|gguf|uvloop|regex|psutil|protobuf|requests|tqdm|scipy|pyyaml|huggingface.hub|safetensors|sympy|yarl|multidict|filelock|typing.extensions|fastapi|starlette|uvicorn|pyzmq|cbor2) '
env | grep -E 'NCCL|NVSHMEM|TORCH_SYMM' 
