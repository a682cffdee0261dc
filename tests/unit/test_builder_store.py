"""The directory store: atomic, idempotent publish; checked downloads; the request index."""

from __future__ import annotations

from pathlib import Path

import pytest

from builder_helpers import manifest_for as shared_manifest_for
from builder_helpers import run_all_at_once
from modelship.api.artifact import ArtifactStore, Manifest
from modelship.api.serving import REPLAY_FILE
from modelship_runtime.io_settings import IOSettings
from modelship_runtime.store import (
    DirectoryStore,
    IndexEntry,
    StoreError,
    digest_hex,
    local_path,
    open_store,
)

DIGEST = "sha256:" + "ab" * 32


def manifest_for(model: Path, variant: str = "fp32") -> Manifest:
    return shared_manifest_for(model, DIGEST, variant)


def _model(tmp_path: Path, content: bytes, name: str = "m.onnx") -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def test_publish_then_read_and_download(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "store")
    model = _model(tmp_path, b"model-bytes")
    assert not store.exists(DIGEST)
    assert store.get_manifest(DIGEST) is None

    uri = store.publish(DIGEST, model, manifest_for(model))

    assert uri == (tmp_path / "store" / ("ab" * 32)).as_uri()
    assert store.exists(DIGEST)
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["ab" * 32]
    got = store.download(DIGEST, tmp_path / "dest")
    assert got.variant == "fp32"
    assert (tmp_path / "dest" / "model.onnx").read_bytes() == b"model-bytes"
    assert Manifest.model_validate_json((tmp_path / "dest" / "manifest.json").read_bytes()) == got


def test_publish_is_idempotent_first_one_stands(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "store")
    first = _model(tmp_path, b"first", "a.onnx")
    second = _model(tmp_path, b"second", "b.onnx")
    store.publish(DIGEST, first, manifest_for(first))
    store.publish(DIGEST, second, manifest_for(second, "int8-dynamic"))
    manifest = store.get_manifest(DIGEST)
    assert manifest is not None
    assert manifest.variant == "fp32"
    assert (tmp_path / "store" / ("ab" * 32) / "model.onnx").read_bytes() == b"first"


def test_concurrent_publishes_leave_one_intact_artifact(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "store")
    models = [_model(tmp_path, f"bytes-{i}".encode() * 1000, f"{i}.onnx") for i in range(8)]
    run_all_at_once(lambda model: store.publish(DIGEST, model, manifest_for(model)), models)
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["ab" * 32]
    store.download(DIGEST, tmp_path / "dest")  # checks the bytes against model_sha256


def test_download_refuses_bytes_that_do_not_match(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "store")
    model = _model(tmp_path, b"good")
    store.publish(DIGEST, model, manifest_for(model))
    (tmp_path / "store" / ("ab" * 32) / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(StoreError, match=r"do not match manifest\.model_sha256"):
        store.download(DIGEST, tmp_path / "dest")
    assert not (tmp_path / "dest" / "model.onnx").exists()


def test_the_golden_set_travels_with_the_artifact_and_may_be_missing(tmp_path: Path) -> None:
    """Artifacts built before golden sets have none: they download (and serve) as before, and
    no golden set of another artifact is left behind in the folder."""
    store = DirectoryStore(tmp_path / "store")
    model = _model(tmp_path, b"model-bytes")
    golden = _model(tmp_path, b"golden-bytes", REPLAY_FILE)
    store.publish(DIGEST, model, manifest_for(model), golden)
    assert (tmp_path / "store" / ("ab" * 32) / REPLAY_FILE).read_bytes() == b"golden-bytes"
    dest = tmp_path / "dest"
    store.download(DIGEST, dest)
    assert (dest / REPLAY_FILE).read_bytes() == b"golden-bytes"
    older = "sha256:" + "cd" * 32
    store.publish(older, model, shared_manifest_for(model, older))
    store.download(older, dest)
    assert sorted(p.name for p in dest.iterdir()) == ["manifest.json", "model.onnx"]


def test_download_of_missing_artifact_says_so(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="is not in"):
        DirectoryStore(tmp_path).download(DIGEST, tmp_path / "dest")


def test_index_roundtrip(tmp_path: Path) -> None:
    store = DirectoryStore(tmp_path / "store")
    key = "12" * 32
    assert store.get_index(key) is None
    entry = IndexEntry(digest=DIGEST, source_sha256="cd" * 32, source_uri="https://x/m.onnx")
    store.put_index(key, entry)
    assert store.get_index(key) == entry
    assert (tmp_path / "store" / "index" / f"{key}.json").is_file()


@pytest.mark.parametrize("bad", ["sha256:../../etc", "md5:abc", "ab" * 32])
def test_bad_digests_never_become_paths(bad: str) -> None:
    with pytest.raises(StoreError, match="not an artifact digest"):
        digest_hex(bad)


def test_open_store_by_uri(tmp_path: Path) -> None:
    io = IOSettings(pvc_root=tmp_path / "mnt")
    store = open_store(ArtifactStore(uri="pvc://models/artifacts"), io)
    assert isinstance(store, DirectoryStore)
    assert store.root == tmp_path / "mnt" / "models" / "artifacts"
    assert local_path("file:///data/x") == Path("/data/x")
    with pytest.raises(StoreError, match=r"without '\.\.'"):
        local_path("pvc://models/../etc", io)
    with pytest.raises(StoreError, match="not supported"):
        open_store(ArtifactStore(uri="gs://bucket/x"))
