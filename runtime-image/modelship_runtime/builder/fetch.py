"""Fetch a source (https, s3, pvc, file) into the work folder, hashing it on the way."""

from __future__ import annotations

import hashlib
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse

from modelship.api.v1alpha1 import S3Settings
from modelship_runtime.builder.errors import BuildError
from modelship_runtime.io_settings import IOSettings
from modelship_runtime.s3client import make_client, parse_s3_uri
from modelship_runtime.store import StoreError, local_path

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Fetched:
    """A source on local disk and the sha256 of its bytes."""

    path: Path
    sha256: str
    size: int


class _Sink:
    """Writes a stream to a file while hashing it and enforcing the size limit."""

    def __init__(self, dest: Path, limit: int, uri: str) -> None:
        self.dest, self.limit, self.uri = dest, limit, uri
        self.hash = hashlib.sha256()
        self.size = 0

    def copy(self, stream: IO[bytes] | Any) -> None:
        with self.dest.open("wb") as out:
            while chunk := stream.read(_CHUNK):
                self.size += len(chunk)
                if self.size > self.limit:
                    raise BuildError(
                        f"{self.uri} is larger than the {self.limit} byte limit; raise "
                        "MODELSHIP_MAX_DOWNLOAD_BYTES if the model really is that big",
                        reason="FetchFailed",
                    )
                self.hash.update(chunk)
                out.write(chunk)

    def result(self) -> Fetched:
        return Fetched(self.dest, self.hash.hexdigest(), self.size)


def _too_big(uri: str, size: int, limit: int) -> BuildError:
    return BuildError(
        f"{uri} is {size} bytes, larger than the {limit} byte limit; raise "
        "MODELSHIP_MAX_DOWNLOAD_BYTES if the model really is that big",
        reason="FetchFailed",
    )


def _fetch_https(uri: str, dest: Path, io: IOSettings) -> Fetched:
    context = ssl.create_default_context(cafile=str(io.ca_bundle) if io.ca_bundle else None)
    delay = io.http_backoff_s
    last = ""
    for attempt in range(1, io.http_attempts + 1):
        sink = _Sink(dest, io.max_download_bytes, uri)
        try:
            request = urllib.request.Request(uri, headers={"User-Agent": "modelship-builder"})
            with urllib.request.urlopen(request, timeout=io.http_timeout_s, context=context) as r:
                length = int(r.headers.get("Content-Length") or 0)
                if length > io.max_download_bytes:
                    raise _too_big(uri, length, io.max_download_bytes)
                sink.copy(r)
                if length and sink.size != length:
                    raise OSError(f"connection closed after {sink.size} of {length} bytes")
            return sink.result()
        except urllib.error.HTTPError as e:
            last = f"HTTP {e.code} {e.reason}"
            # Client errors (404, 403) will not change on retry; 429 and 5xx may.
            if e.code < 500 and e.code != 429:
                break
        except urllib.error.URLError as e:
            if isinstance(e.reason, ssl.SSLError):
                raise BuildError(
                    f"TLS verification of {uri} failed ({e.reason}); set MODELSHIP_CA_BUNDLE "
                    "to a PEM file with the server's CA",
                    reason="FetchFailed",
                ) from e
            last = str(e.reason)
        except (OSError, TimeoutError) as e:
            last = str(e) or type(e).__name__
        if attempt < io.http_attempts:
            time.sleep(delay)  # back off before retrying a flaky server
            delay *= 2
    dest.unlink(missing_ok=True)
    raise BuildError(
        f"could not download {uri}: {last} (after {attempt} attempt(s)); check the URL and "
        "that the server is reachable from the build pod",
        reason="FetchFailed",
    )


def _fetch_s3(uri: str, dest: Path, s3: S3Settings | None, io: IOSettings) -> Fetched:
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = parse_s3_uri(uri)
    client = make_client(s3, io)
    try:
        obj = client.get_object(Bucket=bucket, Key=key)
        if obj["ContentLength"] > io.max_download_bytes:
            raise _too_big(uri, obj["ContentLength"], io.max_download_bytes)
        sink = _Sink(dest, io.max_download_bytes, uri)
        sink.copy(obj["Body"])
        return sink.result()
    except (BotoCoreError, ClientError) as e:
        raise BuildError(
            f"could not download {uri}: {e}; check the bucket, key, endpoint and credentials "
            "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY from the secret in spec.model.s3)",
            reason="FetchFailed",
        ) from e


def _fetch_local(uri: str, io: IOSettings) -> Fetched:
    try:
        path = local_path(uri, io)
    except StoreError as e:
        raise BuildError(str(e), reason="FetchFailed") from e
    if not path.is_file():
        hint = " (is the claim mounted?)" if uri.startswith("pvc://") else ""
        raise BuildError(f"{uri}: no file at {path}{hint}", reason="FetchFailed")
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return Fetched(path, h.hexdigest(), path.stat().st_size)


def fetch(
    uri: str,
    workdir: Path,
    *,
    s3: S3Settings | None = None,
    sha256: str | None = None,
    io: IOSettings | None = None,
) -> Fetched:
    """Bring ``uri`` to local disk (local files are read in place) and verify its pin."""
    io = io or IOSettings()
    scheme = urlparse(uri).scheme
    workdir.mkdir(parents=True, exist_ok=True)
    name = Path(urlparse(uri).path).name or "source"
    dest = workdir / f"download-{hashlib.sha256(uri.encode()).hexdigest()[:12]}-{name}"
    if scheme == "https":
        fetched = _fetch_https(uri, dest, io)
    elif scheme == "s3":
        fetched = _fetch_s3(uri, dest, s3, io)
    elif scheme in ("file", "pvc"):
        fetched = _fetch_local(uri, io)
    else:
        raise BuildError(
            f"cannot fetch {uri!r}: use https://, s3://, pvc://claim/path or file:///path",
            reason="FetchFailed",
        )
    if sha256 and fetched.sha256 != sha256:
        if fetched.path == dest:
            dest.unlink(missing_ok=True)
        raise BuildError(
            f"sha256 of {uri} is {fetched.sha256}, but the spec pins {sha256}; the source "
            "changed or the pin is wrong: fix spec.model.sha256 (sha256sum <file>)",
            reason="SourceDigestMismatch",
        )
    return fetched
