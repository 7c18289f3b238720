"""The error tree. Whether an error is retried is decided by its type, never by its message.

    OcrStreamError
    ├── BadInputError            permanent: the input is wrong; never retried (page → DLQ at once)
    │   ├── UnsupportedTypeError     content is not a PDF / PNG / JPEG / TIFF / WebP
    │   ├── CorruptDocumentError     unreadable, truncated, zero pages, undecodable image
    │   ├── EncryptedDocumentError   password missing or wrong
    │   ├── LimitExceededError       file size, page count, pixels, message size
    │   ├── SchemaViolationError     a message that does not follow topics/ schemas
    │   ├── ForbiddenLocationError   an object outside the configured buckets
    │   └── ConfigError              settings that do not validate
    ├── TransientError           retried with exponential backoff and jitter
    │   ├── ModelServerError         connection refused/reset, 5xx, timeout, dead engine
    │   ├── RateLimitedError         429; carries Retry-After
    │   ├── BrokerUnavailableError
    │   └── StorageUnavailableError
    ├── ModelOutputError         the model answered, badly: retried with stronger repetition control
    │   ├── RepetitionError          runaway repetition seen in the stream
    │   ├── LengthError              finish_reason == "length"
    │   └── MalformedResponseError   empty body, garbage JSON, no choices
    └── InternalError            a bug: logged loudly, the page is retried like a transient error

Every error has a stable ``code`` (see ``ErrorCode``) that travels in page results and dead letters.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Stable, machine-readable reasons carried in results, dead letters and metrics labels."""

    UNSUPPORTED_TYPE = "unsupported_type"
    CORRUPT = "corrupt"
    ENCRYPTED = "encrypted"
    LIMIT_EXCEEDED = "limit_exceeded"
    BAD_IMAGE = "bad_image"
    SCHEMA_VIOLATION = "schema_violation"
    FORBIDDEN_LOCATION = "forbidden_location"
    NOT_FOUND = "not_found"
    CONFIG = "config"
    SERVER_ERROR = "server_error"
    CONNECTION = "connection"
    TIMEOUT = "timeout"
    RATE_LIMITED = "rate_limited"
    BROKER_UNAVAILABLE = "broker_unavailable"
    STORAGE_UNAVAILABLE = "storage_unavailable"
    REPETITION = "repetition"
    LENGTH = "length"
    MALFORMED_RESPONSE = "malformed_response"
    ATTEMPTS_EXHAUSTED = "attempts_exhausted"
    DEADLINE = "deadline"
    INTERNAL = "internal"


class OcrStreamError(Exception):
    """Base of every error ocr-stream raises on purpose."""

    code: ErrorCode = ErrorCode.INTERNAL
    transient: bool = False

    def __init__(self, message: str, *, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self)


class BadInputError(OcrStreamError):
    """The input is wrong; retrying cannot help."""

    code = ErrorCode.BAD_IMAGE


class UnsupportedTypeError(BadInputError):
    code = ErrorCode.UNSUPPORTED_TYPE


class CorruptDocumentError(BadInputError):
    code = ErrorCode.CORRUPT


class EncryptedDocumentError(BadInputError):
    code = ErrorCode.ENCRYPTED


class LimitExceededError(BadInputError):
    code = ErrorCode.LIMIT_EXCEEDED


class SchemaViolationError(BadInputError):
    code = ErrorCode.SCHEMA_VIOLATION


class ForbiddenLocationError(BadInputError):
    code = ErrorCode.FORBIDDEN_LOCATION


class NotFoundError(BadInputError):
    """An object named by a message does not exist."""

    code = ErrorCode.NOT_FOUND


class ConfigError(BadInputError):
    code = ErrorCode.CONFIG


class TransientError(OcrStreamError):
    """Worth retrying later: the world may be different then."""

    code = ErrorCode.SERVER_ERROR
    transient = True


class ModelServerError(TransientError):
    code = ErrorCode.SERVER_ERROR


class RateLimitedError(TransientError):
    code = ErrorCode.RATE_LIMITED

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class BrokerUnavailableError(TransientError):
    code = ErrorCode.BROKER_UNAVAILABLE


class StorageUnavailableError(TransientError):
    code = ErrorCode.STORAGE_UNAVAILABLE


class ModelOutputError(OcrStreamError):
    """The model answered but the answer is unusable; retried with stronger repetition control."""

    code = ErrorCode.MALFORMED_RESPONSE
    transient = True


class RepetitionError(ModelOutputError):
    code = ErrorCode.REPETITION


class LengthError(ModelOutputError):
    code = ErrorCode.LENGTH


class MalformedResponseError(ModelOutputError):
    code = ErrorCode.MALFORMED_RESPONSE


class InternalError(OcrStreamError):
    code = ErrorCode.INTERNAL
    transient = True


class ClientWedgedError(InternalError):
    """A Kafka client call did not return long after its own timeout (a client library bug, e.g.
    librdkafka #5456/#5511 after a broker restart). The client cannot be used any more: the
    process must start over (new clients fence the wedged ones and abort their transaction)."""

    transient = False

