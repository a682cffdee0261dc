"""Protocol-neutral errors: each adapter maps an :class:`ErrorKind` to its own status code."""

from __future__ import annotations

import logging
import secrets
from enum import Enum

log = logging.getLogger("modelship_runtime.serve")


class ErrorKind(Enum):
    """What went wrong, independent of REST or gRPC. The value is the HTTP status."""

    INVALID_ARGUMENT = 400
    NOT_FOUND = 404
    TOO_LARGE = 413
    UNSUPPORTED_MEDIA = 415
    UNAVAILABLE = 503
    INTERNAL = 500


class InferenceError(Exception):
    """A request the server cannot answer; ``message`` says what is wrong and how to fix it."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def invalid(message: str) -> InferenceError:
    return InferenceError(ErrorKind.INVALID_ARGUMENT, message)


def not_found(message: str) -> InferenceError:
    return InferenceError(ErrorKind.NOT_FOUND, message)


def too_large(message: str) -> InferenceError:
    return InferenceError(ErrorKind.TOO_LARGE, message)


def internal_error(what: str, exc: BaseException) -> InferenceError:
    """A 500 whose message says what failed but never echoes the exception (file paths, tensor
    contents, library internals are not for clients); the log has the traceback under the
    reference the message names."""
    reference = secrets.token_hex(4)
    log.error("%s [ref %s]", what, reference, exc_info=exc)
    return InferenceError(
        ErrorKind.INTERNAL, f"{what}; the server log has the details [ref {reference}]"
    )
