"""RetryPolicy: what happens to a page after each kind of failure."""

from __future__ import annotations

import random

import pytest

from ocr_stream.config import RepetitionPolicy
from ocr_stream.errors import (
    CorruptDocumentError,
    ErrorCode,
    ForbiddenLocationError,
    InternalError,
    LengthError,
    MalformedResponseError,
    ModelServerError,
    NotFoundError,
    RateLimitedError,
    RepetitionError,
)
from ocr_stream.worker.retry import Action, RetryPolicy


def policy(**kw: object) -> RetryPolicy:
    base: dict[str, object] = dict(max_attempts=4, backoff_base_s=1.0, backoff_max_s=20.0, repetition_policy=RepetitionPolicy.ON_RETRY)
    base.update(kw)
    return RetryPolicy(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("exc,code", [
    (NotFoundError("x"), ErrorCode.NOT_FOUND),
    (ForbiddenLocationError("x"), ErrorCode.FORBIDDEN_LOCATION),
    (CorruptDocumentError("x"), ErrorCode.CORRUPT),
])
def test_bad_input_gives_up_at_once(exc: Exception, code: ErrorCode) -> None:
    d = policy().decide(exc, attempts=1, repetition_control=False, rng=random.Random(0))
    assert d.action is Action.GIVE_UP and d.code is code and not d.exhausted


@pytest.mark.parametrize("exc", [ModelServerError("503"), MalformedResponseError("garbage"), InternalError("bug"), RuntimeError("?")])
def test_transient_errors_retry_until_attempts_run_out(exc: Exception) -> None:
    p = policy()
    rng = random.Random(1)
    for attempt in range(1, 4):
        d = p.decide(exc, attempts=attempt, repetition_control=False, rng=rng)
        assert d.retry
        assert 0 <= d.delay_s <= min(20.0, 2 ** (attempt - 1))
    d = p.decide(exc, attempts=4, repetition_control=False, rng=rng)
    assert d.action is Action.GIVE_UP and d.exhausted


def test_unknown_exceptions_are_coded_internal() -> None:
    d = policy().decide(RuntimeError("?"), attempts=1, repetition_control=False, rng=random.Random(0))
    assert d.code is ErrorCode.INTERNAL


def test_backoff_is_full_jitter_and_capped() -> None:
    p = policy(backoff_base_s=0.5, backoff_max_s=4.0)
    rng = random.Random(3)
    delays = [p.backoff(10, rng) for _ in range(500)]
    assert max(delays) <= 4.0
    assert min(delays) < 0.5  # full jitter reaches near zero
    assert max(delays) > 3.0  # and the whole window


def test_retry_after_is_honoured_with_jitter_above_it() -> None:
    p = policy(backoff_base_s=0.1, backoff_max_s=30.0)
    rng = random.Random(5)
    for _ in range(50):
        d = p.decide(RateLimitedError("429", retry_after_s=7.0), attempts=1, repetition_control=False, rng=rng)
        assert d.retry and d.code is ErrorCode.RATE_LIMITED
        assert 7.0 <= d.delay_s <= 7.1 + 1e-9


def test_retry_after_is_capped_at_backoff_max() -> None:
    d = policy(backoff_max_s=5.0).decide(RateLimitedError("429", retry_after_s=3600), attempts=1, repetition_control=False, rng=random.Random(0))
    assert d.retry and d.delay_s <= 5.0


@pytest.mark.parametrize("exc,code", [(RepetitionError("loop"), ErrorCode.REPETITION), (LengthError("len"), ErrorCode.LENGTH)])
def test_model_output_errors_retry_once_with_repetition_control(exc: Exception, code: ErrorCode) -> None:
    p = policy()
    d = p.decide(exc, attempts=1, repetition_control=False, rng=random.Random(0))
    assert d.retry and d.repetition_control and d.delay_s == 0.0
    d = p.decide(exc, attempts=2, repetition_control=True, rng=random.Random(0))
    assert d.action is Action.GIVE_UP and d.code is code


def test_repetition_policy_off_gives_up_at_once() -> None:
    d = policy(repetition_policy=RepetitionPolicy.OFF).decide(RepetitionError("loop"), attempts=1, repetition_control=False, rng=random.Random(0))
    assert d.action is Action.GIVE_UP and d.code is ErrorCode.REPETITION


def test_repetition_policy_always_starts_with_control_on() -> None:
    assert policy(repetition_policy=RepetitionPolicy.ALWAYS).initial_repetition_control()
    assert not policy().initial_repetition_control()
    d = policy(repetition_policy=RepetitionPolicy.ALWAYS).decide(LengthError("len"), attempts=1, repetition_control=True, rng=random.Random(0))
    assert d.action is Action.GIVE_UP


def test_repetition_with_no_attempts_left_gives_up() -> None:
    d = policy(max_attempts=1).decide(RepetitionError("loop"), attempts=1, repetition_control=False, rng=random.Random(0))
    assert d.action is Action.GIVE_UP and d.code is ErrorCode.REPETITION


def test_repetition_control_is_kept_across_transient_retries() -> None:
    d = policy().decide(ModelServerError("503"), attempts=2, repetition_control=True, rng=random.Random(0))
    assert d.retry and d.repetition_control
