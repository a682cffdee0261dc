"""Safe unpacking of tar and zip sources: no path traversal, no links, bounded size and count."""

from __future__ import annotations

import shutil
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import IO

from modelship_runtime.builder.errors import BuildError
from modelship_runtime.io_settings import IOSettings

# Small archives may legitimately compress very well (configs, zeros); the ratio check only
# starts to bite above this many unpacked bytes.
_RATIO_FLOOR_BYTES = 16 * 1024**2
_CHUNK = 1 << 20


def is_archive(path: Path) -> bool:
    with path.open("rb") as f:
        if f.read(4) == b"PK\x03\x04":
            return True
    return tarfile.is_tarfile(path)


class _Budget:
    def __init__(self, packed: int, io: IOSettings, name: str) -> None:
        by_ratio = max(int(packed * io.max_extract_ratio), _RATIO_FLOOR_BYTES)
        self.limit = min(io.max_extract_bytes, by_ratio)
        self.members_left = io.max_archive_members
        self.used = 0
        self.name = name
        self.failed = False

    def member(self) -> None:
        self.members_left -= 1
        if self.members_left < 0:
            raise BuildError(
                f"archive {self.name} has too many entries; raise MODELSHIP_MAX_ARCHIVE_MEMBERS "
                "if that is intended",
                reason="UnsafeArchive",
            )

    def add(self, n: int) -> None:
        self.used += n
        if self.used > self.limit:
            raise BuildError(
                f"archive {self.name} unpacks to more than {self.limit} bytes (an archive bomb, "
                "or a model bigger than allowed); raise MODELSHIP_MAX_EXTRACT_BYTES / "
                "MODELSHIP_MAX_EXTRACT_RATIO if the model really is that big",
                reason="UnsafeArchive",
            )


def _target(root: Path, name: str, archive: str) -> Path | None:
    """Where entry ``name`` goes under ``root``; None for the root itself."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
        raise BuildError(
            f"archive {archive} has entry {name!r} that points outside the extraction folder "
            "(path traversal); repack it with relative paths",
            reason="UnsafeArchive",
        )
    parts = tuple(p for p in parts if p not in ("", "."))
    return root.joinpath(*parts) if parts else None


def _link_error(archive: str, name: str) -> BuildError:
    return BuildError(
        f"archive {archive} has link {name!r}; links are not allowed because they can point "
        "outside the extraction folder: repack with plain files",
        reason="UnsafeArchive",
    )


def _write(stream: IO[bytes], dest: Path, budget: _Budget) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with dest.open("xb") as out:
        while chunk := stream.read(_CHUNK):
            budget.add(len(chunk))
            out.write(chunk)


def _extract_tar(path: Path, root: Path, budget: _Budget) -> None:
    with tarfile.open(path) as tar:
        for member in tar:
            budget.member()
            dest = _target(root, member.name, path.name)
            if member.issym() or member.islnk():
                raise _link_error(path.name, member.name)
            if dest is None or member.isdir():
                if dest is not None:
                    dest.mkdir(parents=True, exist_ok=True)
                continue
            if not member.isfile():
                raise BuildError(
                    f"archive {path.name} has special file {member.name!r} (device or fifo); "
                    "repack with plain files",
                    reason="UnsafeArchive",
                )
            stream = tar.extractfile(member)
            assert stream is not None  # regular files always have a stream
            _write(stream, dest, budget)


def _extract_zip(path: Path, root: Path, budget: _Budget) -> None:
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            budget.member()
            dest = _target(root, info.filename, path.name)
            if stat.S_ISLNK(info.external_attr >> 16):
                raise _link_error(path.name, info.filename)
            if dest is None or info.is_dir():
                if dest is not None:
                    dest.mkdir(parents=True, exist_ok=True)
                continue
            # Declared sizes can lie; _write counts the bytes actually inflated.
            with zf.open(info) as stream:
                _write(stream, dest, budget)


def extract(path: Path, root: Path, io: IOSettings | None = None) -> Path:
    """Unpack archive ``path`` into the new folder ``root``; on any violation nothing is kept."""
    io = io or IOSettings()
    root.mkdir(parents=True)
    budget = _Budget(path.stat().st_size, io, path.name)
    budget.failed = True
    try:
        if zipfile.is_zipfile(path):
            _extract_zip(path, root, budget)
        else:
            _extract_tar(path, root, budget)
        budget.failed = False
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as e:
        raise BuildError(
            f"archive {path.name} is damaged ({e}); upload it again", reason="InvalidModel"
        ) from e
    except FileExistsError as e:
        raise BuildError(
            f"archive {path.name} has the same entry twice ({e.filename}); repack it",
            reason="UnsafeArchive",
        ) from e
    finally:
        if budget.failed:
            shutil.rmtree(root, ignore_errors=True)
    return root
