"""The content-addressed artifact store: a directory (a mounted PVC) or an S3 prefix.

Layout under the store root::

    <digest-hex>/model.onnx
    <digest-hex>/golden.npz           the golden set (optional: artifacts built before it lack it)
    <digest-hex>/manifest.json        written last: the commit marker, the only thing readers trust
    index/<request_key>.json          maps a build request (unpinned source) to its digest

Light on purpose (no onnxruntime, no onnx): the operator and the runtime server's S3 init mode
import it too. Use :func:`open_store` and the :class:`Store` protocol.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import random
import re
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, ValidationError

from modelship.api.artifact import MANIFEST_FILE, ArtifactStore, Manifest
from modelship.api.serving import REPLAY_FILE
from modelship_runtime.io_settings import IOSettings
from modelship_runtime.s3client import make_client, parse_s3_uri

_DIGEST = re.compile(r"^sha256:([a-f0-9]{64})$")
_REQUEST_KEY = re.compile(r"^[a-f0-9]{64}$")
_PUBLISH_ROUNDS = 12


class StoreError(Exception):
    """The store cannot be read or written as asked; the message says why and what to do."""


class IndexEntry(BaseModel):
    """``index/<request_key>.json``: which artifact a build request produced."""

    model_config = ConfigDict(extra="ignore")

    digest: str
    source_sha256: str
    source_uri: str
    created_at: str = ""


def digest_hex(digest: str) -> str:
    """The hex part of ``sha256:<hex>``, the artifact's folder name."""
    m = _DIGEST.match(digest)
    if not m:
        raise StoreError(f"{digest!r} is not an artifact digest; expected sha256:<64 hex>")
    return m.group(1)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def parse_manifest(data: bytes, digest: str, where: str) -> Manifest:
    """A stored manifest, refused unless it is valid and names the artifact it is stored as
    (its model_file is a plain file name, so no reader is led outside the artifact folder)."""
    try:
        manifest = Manifest.model_validate_json(data)
    except ValidationError as e:
        raise StoreError(f"{where}: the manifest is invalid ({e.error_count()} errors: "
                         f"{e.errors()[0]['msg']}); delete the artifact folder to rebuild it"
                         ) from None  # fmt: skip
    if manifest.digest != digest:
        raise StoreError(
            f"{where}: the manifest is the one of {manifest.digest}, not of {digest}; the store "
            "was modified by hand: delete the artifact folder to rebuild it"
        )
    return manifest


def _check_model(path: Path, manifest: Manifest, where: str) -> None:
    if manifest.model_sha256 and file_sha256(path) != manifest.model_sha256:
        raise StoreError(
            f"{where}: model bytes do not match manifest.model_sha256 (a concurrent publish may "
            "be in progress, or the store was modified by hand); retry, or delete the artifact "
            "folder so the next build republishes it"
        )


class Store(Protocol):
    """What the operator, the builder and the runtime need from an artifact store."""

    uri: str

    def artifact_uri(self, digest: str) -> str: ...
    def exists(self, digest: str) -> bool: ...
    def get_manifest(self, digest: str) -> Manifest | None: ...
    def download(self, digest: str, dest: Path) -> Manifest: ...
    def publish(
        self, digest: str, model: Path, manifest: Manifest, golden: Path | None = None
    ) -> str: ...
    def get_index(self, request_key: str) -> IndexEntry | None: ...
    def put_index(self, request_key: str, entry: IndexEntry) -> None: ...


def _index_name(request_key: str) -> str:
    if not _REQUEST_KEY.match(request_key):
        raise StoreError(f"{request_key!r} is not a request key; expected 64 hex characters")
    return f"{request_key}.json"


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (best effort: not every filesystem allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_local_atomically(dest: Path, data: bytes) -> None:
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, dest)


def _download_verified(
    store: Store,
    digest: str,
    fetch: Callable[[str, Path], object],
    dest: Path,
    fetch_golden: Callable[[Path], bool],
) -> Manifest:
    """Fetch the model (``fetch(model_file, to)``) next to ``dest``, check it against the
    manifest, then move both in, with the golden set when the artifact has one
    (``fetch_golden(to)`` says whether it had). A model that does not match never stays in
    ``dest``."""
    manifest = store.get_manifest(digest)
    if manifest is None:
        raise StoreError(f"artifact {digest} is not in {store.uri}; build it first")
    dest.mkdir(parents=True, exist_ok=True)
    tmp = dest / f".{manifest.model_file}.{uuid.uuid4().hex}.tmp"
    try:
        fetch(manifest.model_file, tmp)
        _check_model(tmp, manifest, store.artifact_uri(digest))
        os.replace(tmp, dest / manifest.model_file)
    finally:
        tmp.unlink(missing_ok=True)
    _download_golden(fetch_golden, dest)
    _write_local_atomically(dest / MANIFEST_FILE, manifest.model_dump_json(indent=2).encode())
    return manifest


def _download_golden(fetch: Callable[[Path], bool], dest: Path) -> None:
    """The golden set into ``dest``, or none there when the artifact has none. The manifest
    does not list it: the set only feeds replay, whose server checks it against the model's
    signature, and an artifact without one still serves."""
    tmp = dest / f".{REPLAY_FILE}.{uuid.uuid4().hex}.tmp"
    try:
        if fetch(tmp):
            os.replace(tmp, dest / REPLAY_FILE)
        else:
            (dest / REPLAY_FILE).unlink(missing_ok=True)
    finally:
        tmp.unlink(missing_ok=True)


class DirectoryStore:
    """A store in a local directory; publishing is a rename of a complete temp folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.uri = root.as_uri()

    def _dir(self, digest: str) -> Path:
        return self.root / digest_hex(digest)

    def artifact_uri(self, digest: str) -> str:
        return self._dir(digest).as_uri()

    def exists(self, digest: str) -> bool:
        return (self._dir(digest) / MANIFEST_FILE).is_file()

    def get_manifest(self, digest: str) -> Manifest | None:
        path = self._dir(digest) / MANIFEST_FILE
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        return parse_manifest(data, digest, str(path))

    def download(self, digest: str, dest: Path) -> Manifest:
        source = self._dir(digest)

        def fetch_golden(tmp: Path) -> bool:
            if not (source / REPLAY_FILE).is_file():
                return False
            shutil.copyfile(source / REPLAY_FILE, tmp)
            return True

        return _download_verified(
            self,
            digest,
            lambda name, tmp: shutil.copyfile(source / name, tmp),
            dest,
            fetch_golden,
        )

    def publish(
        self, digest: str, model: Path, manifest: Manifest, golden: Path | None = None
    ) -> str:
        final = self._dir(digest)
        if self.exists(digest):
            return self.artifact_uri(digest)
        self.root.mkdir(parents=True, exist_ok=True)
        # Same filesystem as the final folder, so the rename below is atomic.
        tmp = self.root / f".tmp-{digest_hex(digest)}-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            copies = [(model, manifest.model_file)]
            if golden is not None:
                copies.append((golden, REPLAY_FILE))
            for source, name in copies:
                shutil.copyfile(source, tmp / name)
                with (tmp / name).open("rb") as f:
                    os.fsync(f.fileno())
            _write_local_atomically(
                tmp / MANIFEST_FILE, manifest.model_dump_json(indent=2).encode()
            )
            try:
                os.rename(tmp, final)
            except OSError as e:
                # A concurrent build of the same digest got there first: theirs stands.
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not self.exists(digest):
                    raise
            _fsync_dir(self.root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return self.artifact_uri(digest)

    def get_index(self, request_key: str) -> IndexEntry | None:
        path = self.root / "index" / _index_name(request_key)
        try:
            return IndexEntry.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            return None

    def put_index(self, request_key: str, entry: IndexEntry) -> None:
        path = self.root / "index" / _index_name(request_key)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_local_atomically(path, entry.model_dump_json().encode())


class S3Store:
    """A store under an S3 prefix; the manifest is uploaded after the model and is the commit."""

    def __init__(self, uri: str, client: Any) -> None:
        self.uri = uri.rstrip("/")
        self.bucket, self.prefix = parse_s3_uri(self.uri)
        self.client = client

    def _key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def artifact_uri(self, digest: str) -> str:
        return f"s3://{self.bucket}/{self._key(digest_hex(digest))}"

    def _get(self, key: str) -> bytes | None:
        try:
            body: bytes = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return None
        except self.client.exceptions.NoSuchBucket as e:
            raise StoreError(
                f"bucket {self.bucket!r} of store {self.uri} does not exist; create it first"
            ) from e
        return body

    def exists(self, digest: str) -> bool:
        return self.get_manifest(digest) is not None

    def get_manifest(self, digest: str) -> Manifest | None:
        key = self._key(digest_hex(digest), MANIFEST_FILE)
        data = self._get(key)
        if data is None:
            return None
        return parse_manifest(data, digest, f"s3://{self.bucket}/{key}")

    def _stored_model_sha256(self, digest: str, model_file: str) -> str | None:
        try:
            head = self.client.head_object(
                Bucket=self.bucket, Key=self._key(digest_hex(digest), model_file)
            )
        except self.client.exceptions.ClientError:
            return None
        sha: str | None = head.get("Metadata", {}).get("sha256")
        return sha

    def download(self, digest: str, dest: Path) -> Manifest:
        def fetch(name: str, tmp: Path) -> None:
            self.client.download_file(self.bucket, self._key(digest_hex(digest), name), str(tmp))

        def fetch_golden(tmp: Path) -> bool:
            try:
                fetch(REPLAY_FILE, tmp)
            except self.client.exceptions.ClientError as e:
                if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return False  # built before artifacts had golden sets
                raise
            return True

        return _download_verified(self, digest, fetch, dest, fetch_golden)

    def publish(
        self, digest: str, model: Path, manifest: Manifest, golden: Path | None = None
    ) -> str:
        # S3 has no rename. Golden set and model first, manifest last; readers trust only a
        # manifest whose model_sha256 matches the stored model's. Concurrent builders of one
        # digest may hold different model bytes (auto selection is timing-based), so each
        # round either finds a consistent pair (anyone's) and stops, or completes the pair
        # with the fewest writes; jittered waits break the symmetry between writers so they
        # settle on one pair. Their golden sets are the same samples (the same source and
        # calibration data), so whichever is stored last is as good.
        if golden is not None:
            self.client.upload_file(
                str(golden), self.bucket, self._key(digest_hex(digest), REPLAY_FILE)
            )
        sha = manifest.model_sha256 or file_sha256(model)
        body = manifest.model_copy(update={"model_sha256": sha}).model_dump_json(indent=2)
        model_key = self._key(digest_hex(digest), manifest.model_file)
        manifest_key = self._key(digest_hex(digest), MANIFEST_FILE)

        def put_model() -> None:
            self.client.upload_file(
                str(model), self.bucket, model_key, ExtraArgs={"Metadata": {"sha256": sha}}
            )

        def put_manifest() -> None:
            self.client.put_object(
                Bucket=self.bucket,
                Key=manifest_key,
                Body=body.encode(),
                ContentType="application/json",
            )

        for attempt in range(_PUBLISH_ROUNDS):
            stored = self.get_manifest(digest)
            stored_sha = self._stored_model_sha256(digest, manifest.model_file)
            if (
                stored is not None
                and stored_sha is not None
                and stored.model_sha256 in (None, stored_sha)
            ):
                return self.artifact_uri(digest)
            if stored_sha == sha:
                put_manifest()
            elif stored is not None and stored.model_sha256 == sha:
                put_model()
            elif stored_sha is None or attempt >= _PUBLISH_ROUNDS // 2:
                # Nobody else is writing, or a writer died half-way: write our own pair.
                put_model()
                put_manifest()
            # else another writer is between its model and its manifest: give it time.
            time.sleep(random.uniform(0.02, 0.1) * (attempt + 1))
        raise StoreError(
            f"could not publish {digest} to {self.uri}: other writers kept replacing it; retry"
        )

    def get_index(self, request_key: str) -> IndexEntry | None:
        data = self._get(self._key("index", _index_name(request_key)))
        return IndexEntry.model_validate_json(data) if data is not None else None

    def put_index(self, request_key: str, entry: IndexEntry) -> None:
        self.client.put_object(
            Bucket=self.bucket,
            Key=self._key("index", _index_name(request_key)),
            Body=entry.model_dump_json().encode(),
            ContentType="application/json",
        )


def local_path(uri: str, io: IOSettings | None = None) -> Path:
    """The local path of a file:///path or pvc://claim/path URI (claims mount under pvc_root)."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise StoreError(f"{uri!r}: file URIs must be file:///absolute/path")
        return Path(parsed.path)
    if parsed.scheme == "pvc":
        io = io or IOSettings()
        rel = Path(parsed.path.lstrip("/"))
        if not parsed.netloc or ".." in rel.parts:
            raise StoreError(f"{uri!r}: write pvc URIs as pvc://<claim>/<path> without '..'")
        return io.pvc_root / parsed.netloc / rel
    raise StoreError(f"{uri!r} is not a file:// or pvc:// URI")


def open_store(store: ArtifactStore, io: IOSettings | None = None) -> Store:
    """The store for ``ArtifactStore.uri``: file:///path, pvc://claim/path or s3://bucket/prefix."""
    scheme = urlparse(store.uri).scheme
    if scheme in ("file", "pvc"):
        return DirectoryStore(local_path(store.uri, io))
    if scheme == "s3":
        return S3Store(store.uri, make_client(store.s3, io))
    raise StoreError(
        f"store uri {store.uri!r} is not supported; use file:///path, pvc://claim/path "
        "or s3://bucket/prefix"
    )
