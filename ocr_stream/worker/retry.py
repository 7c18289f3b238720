"""What to do with a page after an attempt failed: retry (after how long, with which repetition
control) or give up (with which error code).

    BadInputError (bad image, not found, forbidden, over limits)  → give up at once
    RepetitionError / LengthError                                  → retry at once with the server's
                                                                     n-gram processor on (policy
                                                                     on_retry); already on, or policy
                                                                     off → give up, coded as raised
    TransientError, MalformedResponseError, InternalError, other  → retry after full-jitter
                                                                     exponential backoff (at least
                                                                     Retry-After), until max_attempts

Pure logic: no I/O; the random source is injected so tests are deterministic.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum

from ..config import RepetitionPolicy
from ..errors import (
    BadInputError,
    ErrorCode,
    LengthError,
    OcrStreamError,
    RateLimitedError,
    RepetitionError,
)


class Action(StrEnum):
    RETRY = "retry"
    GIVE_UP = "give_up"


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    code: ErrorCode
    """The error's code: the retry reason, or the terminal failure's reason."""
    delay_s: float = 0.0
    repetition_control: bool = False
    """Ask the engine for server-side repetition control on the next attempt."""
    exhausted: bool = False
    """Given up because attempts ran out (the error itself was retryable)."""

    @property
    def retry(self) -> bool:
        return self.action is Action.RETRY


def error_code(exc: BaseException) -> ErrorCode:
    return exc.code if isinstance(exc, OcrStreamError) else ErrorCode.INTERNAL


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    repetition_policy: RepetitionPolicy = RepetitionPolicy.ON_RETRY

    def initial_repetition_control(self) -> bool:
        return self.repetition_policy is RepetitionPolicy.ALWAYS

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Full jitter: uniform in [0, min(max, base * 2**(attempt-1))] (AWS architecture blog,
        "Exponential Backoff And Jitter"): spreads a burst of failures over the whole window."""
        cap = min(self.backoff_max_s, self.backoff_base_s * (2 ** max(0, attempt - 1)))
        return rng.uniform(0.0, cap)

    def decide(
        self,
        exc: BaseException,
        *,
        attempts: int,
        repetition_control: bool,
        rng: random.Random,
    ) -> Decision:
        """``attempts``: attempts made so far, including the one that raised ``exc``."""
        code = error_code(exc)
        if isinstance(exc, BadInputError):
            return Decision(Action.GIVE_UP, code)
        if isinstance(exc, (RepetitionError, LengthError)):
            if repetition_control or self.repetition_policy is RepetitionPolicy.OFF:
                return Decision(Action.GIVE_UP, code, repetition_control=repetition_control)
            if attempts >= self.max_attempts:
                return Decision(Action.GIVE_UP, code, exhausted=True)
            # Not the server's fault: no reason to wait before asking again, with the n-gram processor.
            return Decision(Action.RETRY, code, delay_s=0.0, repetition_control=True)
        if attempts >= self.max_attempts:
            return Decision(Action.GIVE_UP, code, repetition_control=repetition_control, exhausted=True)
        delay = self.backoff(attempts, rng)
        if isinstance(exc, RateLimitedError) and exc.retry_after_s is not None:
            # The server told us when; waiting less just earns another 429. Keep some jitter above it
            # so the pages it turned away do not all come back in the same instant. Capped at
            # backoff_max_s: a page holds back its partition's commit while it waits.
            delay = max(delay, exc.retry_after_s) + rng.uniform(0.0, min(1.0, self.backoff_base_s))
            delay = min(delay, self.backoff_max_s)
        return Decision(Action.RETRY, code, delay_s=delay, repetition_control=repetition_control)
