"""A vLLM simulator that speaks vLLM's OpenAI-compatible API with DeepSeek-OCR-shaped output,
H100-calibrated continuous-batching timing and switchable fault modes (docs/simulator.md).

    batching.py  pure timing model (BatchModel, Timing, capacity_pages_per_s)
    output.py    pure, deterministic page text and token counts from the image bytes
    faults.py    fault modes and the per-request dice
    config.py    SimulatorConfig (pure)
    protocol.py  request validation and vLLM shapes (pure)
    server.py    aiohttp server (SimulatorServer)
    process.py   the simulator as a subprocess (SimulatorProcess) and an admin client
    cli.py       ``ocr-stream simulate-vllm``
"""

from .batching import H100, BatchModel, SimRequest, Timing, capacity_pages_per_s
from .faults import FAULT_MODES, FaultConfig
from .output import TokenDistribution, image_tokens
from .process import SimulatorProcess, get_state, set_faults
from .config import DEFAULT_MODEL, SimulatorConfig
from .server import SimulatorServer

__all__ = [
    "DEFAULT_MODEL",
    "FAULT_MODES",
    "H100",
    "BatchModel",
    "FaultConfig",
    "SimRequest",
    "SimulatorConfig",
    "SimulatorProcess",
    "SimulatorServer",
    "Timing",
    "TokenDistribution",
    "capacity_pages_per_s",
    "get_state",
    "image_tokens",
    "set_faults",
]
