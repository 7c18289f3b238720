"""The simulator's settings: one frozen value object (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .batching import Timing, capacity_pages_per_s
from .faults import FaultConfig
from .output import GROUNDING_PROMPT, MODES, TokenDistribution, image_seed, image_size, page_output, prompt_tokens

DEFAULT_MODEL = "deepseek-ai/DeepSeek-OCR"


@dataclass(frozen=True)
class SimulatorConfig:
    """Everything the simulator can be told at start. All times are model seconds of the
    calibrated H100 except ``tick_s`` and the fault delays, which are wall seconds."""

    host: str = "127.0.0.1"
    port: int = 8000
    model: str = DEFAULT_MODEL
    max_num_seqs: int = 256
    max_model_len: int = 8192
    speed: float = 1.0
    timing: Timing = field(default_factory=Timing)
    tokens: TokenDistribution = field(default_factory=TokenDistribution)
    default_mode: str = "gundam"
    limit_images: int = 1
    kv_cache_tokens: int = 1_000_000
    seed: int = 0
    faults: FaultConfig = field(default_factory=FaultConfig)
    tick_s: float = 0.01
    """Shortest wall time between two chunks of one stream (at speed 1 a step is ~3-30 ms, so
    streams get one token a chunk, like vLLM; at high speed tokens are grouped)."""
    chunk_tokens: int = 0
    """Tokens per stream chunk: 0 sends whatever was generated since the last chunk as one; 1
    sends one chunk per token as vLLM does (faithful client CPU per page, costlier here)."""
    max_chunk_rate: float = 4000.0
    """Most stream chunks a second over all streams: with many streams the tick stretches so
    that the simulator's own CPU never becomes the bottleneck a benchmark measures."""

    def __post_init__(self) -> None:
        if self.speed <= 0:
            raise ValueError(f"speed must be positive, got {self.speed}")
        if self.chunk_tokens < 0:
            raise ValueError(f"chunk_tokens must be 0 (grouped) or more, got {self.chunk_tokens}")
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be at least 1, got {self.max_num_seqs}")
        if self.default_mode not in (*MODES, "gundam"):
            raise ValueError(f"unknown default mode {self.default_mode!r}")

    def page_cost(self, image: bytes, *, prompt: str = GROUNDING_PROMPT, mode: str | None = None) -> tuple[int, int]:
        """(prompt tokens, output tokens) this simulator charges for ``image`` sent with ``prompt``
        at temperature 0 without max_tokens: what a benchmark's workload costs, page by page."""
        grounding = "<|grounding|>" in prompt
        out = len(page_output(image_seed(image, self.seed), self.tokens, grounding).pieces)
        return prompt_tokens(prompt, image_size(image), mode or self.default_mode), out

    def capacity(
        self,
        *,
        ngram_fraction: float = 0.0,
        workload: Sequence[tuple[int, int]] | None = None,
        in_flight: int | None = None,
    ) -> float:
        """The most pages/s this simulator serves in steady state, in wall time (model x speed),
        with ``in_flight`` requests open (default and at most: ``max_num_seqs``). ``workload`` is
        the pages' (prompt, output) tokens (see :meth:`page_cost`); by default portrait pages with
        the grounding prompt and the token distribution's mean output. Benchmarks compare a
        client's pages/s against this."""
        if workload:
            prompt = sum(p for p, _ in workload) / len(workload)
            output = sum(o for _, o in workload) / len(workload)
        else:
            prompt = float(prompt_tokens(GROUNDING_PROMPT, (1024, 1325), self.default_mode))
            output = self.tokens.mean()
        return self.speed * capacity_pages_per_s(
            self.timing, in_flight=in_flight or self.max_num_seqs, max_num_seqs=self.max_num_seqs,
            output_tokens=output, prompt_tokens=prompt, ngram_fraction=ngram_fraction,
        )


def with_overrides(config: SimulatorConfig, **overrides: Any) -> SimulatorConfig:
    """A copy of ``config`` with fields replaced (``faults`` may be given as a dict)."""
    if isinstance(overrides.get("faults"), dict):
        overrides["faults"] = FaultConfig.from_json(overrides["faults"])
    return replace(config, **overrides)
