"""Fault modes of the simulator, switched on at start (CLI flags) or at run time
(``POST /admin/faults``). Pure: the server asks :meth:`FaultInjector.decide` once per chat request.

==========  =====================================================================================
mode        what a chat request sees when the fault hits it
==========  =====================================================================================
none        nothing: normal service
503         ``503 Service Unavailable`` with vLLM's error body
429         ``429 Too Many Requests`` with ``Retry-After: <retry_after_s>``
slow        the response (headers included) starts only after ``delay_s`` seconds
reset       status and part of the body are sent, then the TCP connection is aborted
garbage     200 with a body that is not JSON (streaming: a broken ``data:`` line)
repeat      the output falls into an endless loop until max_tokens: finish_reason ``length``.
            A request that asks for the n-gram processor (vllm_xargs.ngram_size) is immune unless
            ``ngram_cures`` is false, as the real processor breaks such loops.
dead        /health still answers 200; chat requests hang until the client gives up
==========  =====================================================================================

``rate`` (0..1) is the chance a request is hit; ``count`` > 0 limits the fault to the first
``count`` hits (then service is normal again). With ``seed`` set the choice is reproducible.
"""

from __future__ import annotations

import random
import threading
from dataclasses import asdict, dataclass, field, replace
from typing import Any

FAULT_MODES = ("none", "503", "429", "slow", "reset", "garbage", "repeat", "dead")


@dataclass(frozen=True)
class FaultConfig:
    """One fault setting. ``FaultConfig()`` is normal service."""

    mode: str = "none"
    rate: float = 1.0
    count: int = 0
    retry_after_s: float = 1.0
    delay_s: float = 30.0
    ngram_cures: bool = True
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in FAULT_MODES:
            raise ValueError(f"unknown fault mode {self.mode!r}; expected one of {', '.join(FAULT_MODES)}")
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"fault rate must be between 0 and 1, got {self.rate}")
        if self.count < 0:
            raise ValueError(f"fault count must be 0 (no limit) or more, got {self.count}")
        if self.retry_after_s < 0 or self.delay_s < 0:
            raise ValueError("retry_after_s and delay_s must not be negative")

    @classmethod
    def from_json(cls, data: Any) -> FaultConfig:
        """Build from the admin endpoint's JSON; unknown keys and bad values raise ValueError."""
        if not isinstance(data, dict):
            raise ValueError("fault settings must be a JSON object such as {\"mode\": \"503\", \"rate\": 1.0}")
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown fault setting(s): {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
        kwargs = dict(data)
        if "mode" in kwargs:
            kwargs["mode"] = str(kwargs["mode"])
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise ValueError(str(exc)) from exc


def coerce_faults(mode: str | FaultConfig | dict[str, Any] = "none", **settings: Any) -> FaultConfig:
    """A :class:`FaultConfig` from ``"503", rate=0.5``, from a dict, or as is."""
    if isinstance(mode, FaultConfig):
        return replace(mode, **settings) if settings else mode
    if isinstance(mode, dict):
        return FaultConfig.from_json({**mode, **settings})
    return FaultConfig.from_json({"mode": mode, **settings})


@dataclass
class FaultState:
    """A fault config plus how often it has struck (``hits``) and been considered (``seen``)."""

    config: FaultConfig = field(default_factory=FaultConfig)
    hits: int = 0
    seen: int = 0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self.config), "hits": self.hits, "seen": self.seen}


class FaultInjector:
    """Decides, request by request, whether the current fault strikes. Thread-safe: tests switch
    faults from their own thread while the server's loop runs."""

    def __init__(self, config: FaultConfig | None = None) -> None:
        self._lock = threading.Lock()
        self._state = FaultState()
        self._rng = random.Random()
        self.set(config or FaultConfig())

    def set(self, config: FaultConfig) -> None:
        """Replace the fault setting and reset its counters."""
        with self._lock:
            self._state = FaultState(config)
            self._rng = random.Random(config.seed)

    @property
    def state(self) -> FaultState:
        with self._lock:
            return FaultState(self._state.config, self._state.hits, self._state.seen)

    def decide(self, *, ngram: bool = False) -> str:
        """The fault mode for the next chat request: ``"none"`` or one of :data:`FAULT_MODES`."""
        with self._lock:
            cfg = self._state.config
            if cfg.mode == "none":
                return "none"
            if cfg.mode == "repeat" and ngram and cfg.ngram_cures:
                return "none"
            self._state.seen += 1
            if cfg.count and self._state.hits >= cfg.count:
                return "none"
            if cfg.rate < 1.0 and self._rng.random() >= cfg.rate:
                return "none"
            self._state.hits += 1
            return cfg.mode
