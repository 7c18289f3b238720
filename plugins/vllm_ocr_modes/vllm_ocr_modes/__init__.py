"""vLLM plugin: DeepSeek-OCR resolution modes per request (``mm_processor_kwargs: {"mode": ...}``).

vLLM calls ``register()`` in every process (API server and engine core) through the
``vllm.general_plugins`` entry point. The pure logic lives in ``vllm_ocr_modes.modes`` (importable
without vLLM); the patch of vLLM's classes in ``vllm_ocr_modes.patch``.
"""

from __future__ import annotations

from .modes import MODES, ModeError, Sizes, num_image_tokens, resolve_sizes

__all__ = ["MODES", "ModeError", "Sizes", "num_image_tokens", "register", "resolve_sizes"]


def register() -> None:
    """Entry point of the ``vllm.general_plugins`` group. Idempotent; never raises."""
    from .patch import apply

    apply()
