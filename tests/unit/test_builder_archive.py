"""Safe unpacking: traversal, links, bombs and entry counts are refused; good archives unpack."""

from __future__ import annotations

import gzip
import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from modelship_runtime.builder.archive import extract, is_archive
from modelship_runtime.builder.errors import BuildError
from modelship_runtime.io_settings import IOSettings


def _tar(path: Path, entries: list[tarfile.TarInfo], data: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info in entries:
            payload = data.get(info.name)
            if payload is not None:
                info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return path


def test_good_tar_and_zip_unpack(tmp_path: Path) -> None:
    tgz = _tar(tmp_path / "m.tar.gz", [tarfile.TarInfo("m/model.onnx")], {"m/model.onnx": b"x"})
    assert is_archive(tgz)
    assert (extract(tgz, tmp_path / "a") / "m" / "model.onnx").read_bytes() == b"x"
    zpath = tmp_path / "m.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("dir/", "")
        zf.writestr("dir/model.onnx", b"y")
    assert (extract(zpath, tmp_path / "b") / "dir" / "model.onnx").read_bytes() == b"y"


def test_plain_file_is_not_an_archive(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x08\x07\x12\x04test")
    assert not is_archive(path)


@pytest.mark.parametrize("name", ["../evil.onnx", "/etc/evil.onnx", "a/../../evil.onnx"])
def test_zip_slip_is_refused_and_nothing_is_left(tmp_path: Path, name: str) -> None:
    zpath = tmp_path / "slip.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("ok.txt", b"fine")
        zf.writestr(name, b"evil")
    with pytest.raises(BuildError, match="outside the extraction folder") as e:
        extract(zpath, tmp_path / "out" / "x")
    assert e.value.reason == "UnsafeArchive"
    assert not (tmp_path / "out" / "x").exists()
    assert not (tmp_path / "evil.onnx").exists()


def test_tar_traversal_is_refused(tmp_path: Path) -> None:
    tgz = _tar(tmp_path / "t.tgz", [tarfile.TarInfo("../../evil")], {"../../evil": b"e"})
    with pytest.raises(BuildError, match="outside the extraction folder"):
        extract(tgz, tmp_path / "out")


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_tar_links_are_refused(tmp_path: Path, kind: bytes) -> None:
    link = tarfile.TarInfo("model.onnx")
    link.type = kind
    link.linkname = "/etc/passwd"
    with pytest.raises(BuildError, match="links are not allowed"):
        extract(_tar(tmp_path / "l.tgz", [link], {}), tmp_path / "out")


def test_zip_symlink_is_refused(tmp_path: Path) -> None:
    zpath = tmp_path / "link.zip"
    info = zipfile.ZipInfo("model.onnx")
    info.external_attr = (0o120777 << 16) | 0
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(BuildError, match="links are not allowed"):
        extract(zpath, tmp_path / "out")


def test_gzip_tar_bomb_is_refused(tmp_path: Path) -> None:
    # 64 MiB of zeros packs into ~64 KiB: far beyond the ratio limit once past the floor.
    path = tmp_path / "bomb.tar.gz"
    size = 64 * 1024**2
    with gzip.open(path, "wb", compresslevel=1) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        info = tarfile.TarInfo("model.onnx")
        info.size = size
        tar.addfile(info, io.BytesIO(bytes(size)))
    assert path.stat().st_size < 1024**2
    with pytest.raises(BuildError, match="archive bomb") as e:
        extract(path, tmp_path / "out")
    assert e.value.reason == "UnsafeArchive"
    assert not (tmp_path / "out").exists()


def test_zip_bomb_with_lying_header_is_refused(tmp_path: Path) -> None:
    zpath = tmp_path / "bomb.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("model.onnx", bytes(4 * 1024**2))
    with pytest.raises(BuildError, match="archive bomb"):
        extract(zpath, tmp_path / "out", IOSettings(max_extract_bytes=1024**2))


def test_too_many_entries_are_refused(tmp_path: Path) -> None:
    zpath = tmp_path / "many.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for i in range(20):
            zf.writestr(f"f{i}", b"")
    with pytest.raises(BuildError, match="too many entries"):
        extract(zpath, tmp_path / "out", IOSettings(max_archive_members=10))
