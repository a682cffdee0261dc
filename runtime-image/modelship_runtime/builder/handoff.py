"""What one build step hands to the next across the containers of a build pod.

A build Job runs three containers on shared emptyDir volumes (docs/builder.md, "Build pods"):
``fetch`` (the source's credentials) writes the sources and :data:`SOURCES_FILE`; ``convert``
(unpickling may run the file's code: no credentials, the sources read-only) writes the ONNX
model; ``publish`` (the store's credentials) reads both. What ``convert`` wrote is untrusted:
it is read through :func:`receive` only (a regular file, never a link, bounded in size) and
checked again; its failure report is passed on as a message, never as a result.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from modelship_runtime.builder.errors import REASONS, BuildError

SOURCES_FILE = "fetched.json"
FAILED_FILE = "failed.json"
ORIGINAL_FILE = "original.onnx"
_CHUNK = 1 << 20
_MAX_REPORT = 128 * 1024


class SourceFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: Path
    sha256: str = Field(pattern=r"^[a-f0-9]{64}$")
    size: int = Field(ge=0)


class Sources(BaseModel):
    """The fetched model (and calibration data), as the fetch step hashed them."""

    model_config = ConfigDict(extra="forbid")

    model: SourceFile
    calibration: SourceFile | None = None


class Failure(BaseModel):
    """A step that failed: what it said, for the last step to report."""

    model_config = ConfigDict(extra="forbid")

    error: str = Field(max_length=65536)
    reason: str = Field(max_length=64)


def write_sources(directory: Path, sources: Sources) -> None:
    (directory / SOURCES_FILE).write_text(sources.model_dump_json())


def read_sources(directory: Path) -> Sources:
    try:
        return Sources.model_validate_json((directory / SOURCES_FILE).read_bytes())
    except (OSError, ValidationError) as e:
        raise BuildError(
            f"the fetch step left no readable {SOURCES_FILE} in {directory} ({e}); see the "
            "fetch container's log",
            reason="BuildFailed",
        ) from e


def write_failure(directory: Path, error: BuildError) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    failure = Failure(error=error.message[:65536], reason=error.reason)
    (directory / FAILED_FILE).write_text(failure.model_dump_json())


def raise_failure(directory: Path, step: str) -> None:
    """Raise what a previous step reported, if it failed. Its reason is one of the builder's
    reasons or becomes BuildFailed: a step's words never become anything but a message."""
    try:
        fd = os.open(directory / FAILED_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return  # none (or a link, which is never followed)
    with os.fdopen(fd, "rb") as f:
        data = f.read(_MAX_REPORT) if stat.S_ISREG(os.fstat(f.fileno()).st_mode) else b""
    try:
        failure = Failure.model_validate_json(data)
    except ValidationError:
        raise BuildError(f"the {step} step failed; see its container's log") from None
    reason = failure.reason if failure.reason in REASONS else "BuildFailed"
    raise BuildError(failure.error, reason=reason)


def receive(src: Path, dest: Path, limit: int) -> None:
    """Copy the file an untrusted step wrote at ``src`` (its own directory is a mount point,
    so only the last component can be a link): a regular file of at most ``limit`` bytes."""
    try:
        fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise BuildError(
            f"the convert step wrote no model at {src}; see the convert container's log",
            reason="InvalidModel",
        ) from None
    except OSError as e:
        raise BuildError(
            f"the convert step's model {src} cannot be read safely ({e.strerror}: links are "
            "refused)",
            reason="InvalidModel",
        ) from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise BuildError(
                f"the convert step's model {src} is not a regular file", reason="InvalidModel"
            )
        copied = 0
        with dest.open("wb") as out:
            while chunk := f.read(_CHUNK):
                copied += len(chunk)
                if copied > limit:
                    raise BuildError(
                        f"the converted model is larger than the {limit} byte scratch limit; "
                        "raise MODELSHIP_BUILD_SCRATCH_LIMIT (chart value build.scratchLimit)",
                        reason="InvalidModel",
                    )
                out.write(chunk)
