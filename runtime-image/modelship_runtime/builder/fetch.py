"""Fetch a source (https, s3, pvc, file) into the work folder, hashing it on the way.

The spec author chooses the source; where the builder may connect is the operator's choice
(:class:`~modelship.api.artifact.SourceAccess`). Unless internal addresses are allowed, every
address a host resolves to is checked before a connection is made to it, on the first request
and on every redirect (which must stay https), so a source cannot turn the builder against
loopback, the cloud's metadata endpoint or the cluster's own networks. URIs appear redacted in
every message (they may carry credentials).
"""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import os
import socket
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse, urlsplit

from modelship.api.artifact import SourceAccess, redact_uri
from modelship.api.v1alpha1 import S3Settings
from modelship_runtime.builder.errors import BuildError
from modelship_runtime.io_settings import IOSettings
from modelship_runtime.s3client import make_client, parse_s3_uri
from modelship_runtime.store import StoreError, local_path

_CHUNK = 1 << 20
_INTERNAL_HINT = (
    "builds do not fetch from loopback, link-local (cloud metadata) or cluster-internal "
    "addresses: publish the model where the cluster's egress reaches it, copy it into a "
    "PersistentVolumeClaim of this namespace (pvc://), or ask the cluster's administrators to "
    "allow internal sources (MODELSHIP_BUILD_INTERNAL_SOURCES, chart value "
    "build.internalSources)"
)


@dataclass(frozen=True)
class Fetched:
    """A source on local disk and the sha256 of its bytes."""

    path: Path
    sha256: str
    size: int


class _Sink:
    """Writes a stream to a file while hashing it and enforcing the size limit."""

    def __init__(self, dest: Path, limit: int, shown: str) -> None:
        self.dest, self.limit, self.shown = dest, limit, shown
        self.hash = hashlib.sha256()
        self.size = 0

    def copy(self, stream: IO[bytes] | Any) -> None:
        with self.dest.open("wb") as out:
            while chunk := stream.read(_CHUNK):
                self.size += len(chunk)
                if self.size > self.limit:
                    raise _too_big(self.shown, None, self.limit)
                self.hash.update(chunk)
                out.write(chunk)

    def result(self) -> Fetched:
        return Fetched(self.dest, self.hash.hexdigest(), self.size)


def _too_big(shown: str, size: int | None, limit: int) -> BuildError:
    what = f"is {size} bytes, larger than" if size is not None else "is larger than"
    return BuildError(
        f"{shown} {what} the {limit} byte limit; raise MODELSHIP_MAX_DOWNLOAD_BYTES (in a "
        "cluster: the operator's MODELSHIP_BUILD_DOWNLOAD_LIMIT, chart value "
        "build.downloadLimit) if the model really is that big",
        reason="FetchFailed",
    )


# --- where the builder may connect ---------------------------------------------------------


def _refusal(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, access: SourceAccess) -> str:
    """Why a source may not be at ``ip``, or "" when it may."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_multicast or (ip.is_reserved and not ip.is_loopback):
        return "not a unicast address"
    for cidr in access.denied_networks:
        network = ipaddress.ip_network(cidr)
        if ip.version != network.version or ip not in network:
            continue
        if ip.is_loopback:
            return "a loopback address"
        if ip.is_link_local:
            return "a link-local address (where cloud metadata endpoints answer)"
        if network.num_addresses == 1:
            return "a cloud metadata endpoint"
        return f"in the denied network {network} (the cluster's own)"
    return ""


def checked_addresses(
    host: str, port: int, access: SourceAccess, shown: str
) -> list[tuple[str, int]]:
    """The addresses ``host`` resolves to, every one of them allowed by ``access``."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise OSError(f"cannot resolve the host of {shown}: {e.strerror}") from e
    addresses = []
    for *_, sockaddr in infos:
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        why = "" if access.internal else _refusal(ip, access)
        if why:
            name = host.rsplit("@", 1)[-1]  # never a user:password@ part
            where = f"{ip} is" if name.strip("[]") == str(ip) else f"{name} is at {ip},"
            raise BuildError(f"{shown}: {where} {why}; {_INTERNAL_HINT}", reason="FetchFailed")
        addresses.append((str(sockaddr[0]), int(sockaddr[1])))
    return addresses


class _CheckedHTTPSConnection(http.client.HTTPSConnection):
    """Connects only to addresses the source access allows; TLS still checks the host name."""

    def __init__(self, host: str, *, access: SourceAccess, shown: str, **kwargs: Any) -> None:
        super().__init__(host, **kwargs)
        self._access, self._shown = access, shown
        self._create_connection = self._connect_checked

    def _connect_checked(
        self, address: tuple[str, int], timeout: Any = None, source_address: Any = None
    ) -> socket.socket:
        host, port = address
        error: OSError | None = None
        for resolved in checked_addresses(host, port, self._access, self._shown):
            try:
                return socket.create_connection(resolved, timeout, source_address)
            except OSError as e:
                error = e
        raise error or OSError(f"no address for {host}")


class _CheckedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, context: ssl.SSLContext, access: SourceAccess, shown: str) -> None:
        super().__init__(context=context)
        self._ssl, self._access, self._shown = context, access, shown

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        access, shown = self._access, self._shown

        def connection(host: str, **kwargs: Any) -> http.client.HTTPSConnection:
            return _CheckedHTTPSConnection(host, access=access, shown=shown, **kwargs)

        return self.do_open(connection, req, context=self._ssl)


class _HttpsOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Redirects are followed only to https URLs (a downgrade would drop TLS verification)."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        if urlsplit(newurl).scheme != "https":
            fp.close()
            raise BuildError(
                f"{redact_uri(req.full_url)} redirects to {redact_uri(newurl)}, which is not "
                "https; sources are fetched over https only: fix the server or use the final "
                "https URL",
                reason="FetchFailed",
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener(
    context: ssl.SSLContext, access: SourceAccess | None, shown: str
) -> urllib.request.OpenerDirector:
    if access is None or access.internal:
        return urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=context), _HttpsOnlyRedirects()
        )
    # No proxies from the environment either: the check must see the real destination.
    return urllib.request.build_opener(
        _CheckedHTTPSHandler(context, access, shown),
        _HttpsOnlyRedirects(),
        urllib.request.ProxyHandler({}),
    )


# --- the schemes ----------------------------------------------------------------------------


def _fetch_https(
    uri: str, dest: Path, io: IOSettings, access: SourceAccess | None, shown: str
) -> Fetched:
    context = ssl.create_default_context(cafile=str(io.ca_bundle) if io.ca_bundle else None)
    opener = _opener(context, access, shown)
    delay = io.http_backoff_s
    last = ""
    for attempt in range(1, io.http_attempts + 1):
        sink = _Sink(dest, io.max_download_bytes, shown)
        try:
            request = urllib.request.Request(uri, headers={"User-Agent": "modelship-builder"})
            with opener.open(request, timeout=io.http_timeout_s) as r:
                length = int(r.headers.get("Content-Length") or 0)
                if length > io.max_download_bytes:
                    raise _too_big(shown, length, io.max_download_bytes)
                sink.copy(r)
                if length and sink.size != length:
                    raise OSError(f"connection closed after {sink.size} of {length} bytes")
            return sink.result()
        except urllib.error.HTTPError as e:
            e.close()
            last = f"HTTP {e.code} {e.reason}"
            # Client errors (404, 403) will not change on retry; 429 and 5xx may.
            if e.code < 500 and e.code != 429:
                break
        except urllib.error.URLError as e:
            if isinstance(e.reason, ssl.SSLError):
                raise BuildError(
                    f"TLS verification of {shown} failed ({e.reason}); set MODELSHIP_CA_BUNDLE "
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
        f"could not download {shown}: {last} (after {attempt} attempt(s)); check the URL and "
        "that the server is reachable from the build pod",
        reason="FetchFailed",
    )


def _check_endpoint(s3: S3Settings | None, access: SourceAccess | None, shown: str) -> None:
    """An S3 endpoint named by the spec is held to the same rules as an https source."""
    endpoint = (s3.endpoint if s3 else None) or os.environ.get("AWS_ENDPOINT_URL")
    if access is None or access.internal or not endpoint:
        return  # no endpoint: AWS S3 itself
    parts = urlsplit(endpoint)
    port = parts.port or (80 if parts.scheme == "http" else 443)
    try:
        checked_addresses(parts.hostname or "", port, access, shown)
    except OSError as e:
        raise BuildError(f"could not download {shown}: {e}", reason="FetchFailed") from e


def _fetch_s3(
    uri: str,
    dest: Path,
    s3: S3Settings | None,
    io: IOSettings,
    access: SourceAccess | None,
    shown: str,
) -> Fetched:
    from botocore.exceptions import BotoCoreError, ClientError

    _check_endpoint(s3, access, shown)
    bucket, key = parse_s3_uri(uri)
    client = make_client(s3, io)
    try:
        obj = client.get_object(Bucket=bucket, Key=key)
        if obj["ContentLength"] > io.max_download_bytes:
            raise _too_big(shown, obj["ContentLength"], io.max_download_bytes)
        sink = _Sink(dest, io.max_download_bytes, shown)
        sink.copy(obj["Body"])
        return sink.result()
    except (BotoCoreError, ClientError) as e:
        raise BuildError(
            f"could not download {shown}: {e}; check the bucket, key, endpoint and credentials "
            "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY from the Secret named in spec.model.s3, "
            "in the ModelDeployment's namespace)",
            reason="FetchFailed",
        ) from e


def _fetch_local(uri: str, dest: Path, io: IOSettings, copy: bool, shown: str) -> Fetched:
    """Read a file:// or pvc:// source in place, or (``copy``) into ``dest``."""
    try:
        path = local_path(uri, io)
    except StoreError as e:
        raise BuildError(str(e), reason="FetchFailed") from e
    parsed = urlparse(uri)
    if parsed.scheme == "pvc":
        claim = (io.pvc_root / parsed.netloc).resolve()
        if not path.resolve().is_relative_to(claim):
            raise BuildError(
                f"{shown} leads outside its claim (a symbolic link to {path.resolve()}); "
                "point at a file inside the claim",
                reason="FetchFailed",
            )
    if not path.is_file():
        hint = " (is the claim mounted?)" if parsed.scheme == "pvc" else ""
        raise BuildError(f"{shown}: no file at {path}{hint}", reason="FetchFailed")
    if copy:
        sink = _Sink(dest, io.max_download_bytes, shown)
        with path.open("rb") as f:
            sink.copy(f)
        return sink.result()
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
    access: SourceAccess | None = None,
    copy_local: bool = False,
) -> Fetched:
    """Bring ``uri`` to local disk and verify its pin.

    ``access`` None connects anywhere (a person's own build); local files are read in place
    unless ``copy_local`` (the next build step cannot see the claim they are on).
    """
    io = io or IOSettings()
    shown = redact_uri(uri)
    scheme = urlparse(uri).scheme
    workdir.mkdir(parents=True, exist_ok=True)
    name = Path(urlparse(uri).path).name or "source"
    dest = workdir / f"download-{hashlib.sha256(uri.encode()).hexdigest()[:12]}-{name}"
    if scheme == "https":
        fetched = _fetch_https(uri, dest, io, access, shown)
    elif scheme == "s3":
        fetched = _fetch_s3(uri, dest, s3, io, access, shown)
    elif scheme in ("file", "pvc"):
        fetched = _fetch_local(uri, dest, io, copy_local, shown)
    else:
        raise BuildError(
            f"cannot fetch {shown!r}: use https://, s3://, pvc://claim/path or file:///path",
            reason="FetchFailed",
        )
    if sha256 and fetched.sha256 != sha256:
        if fetched.path == dest:
            dest.unlink(missing_ok=True)
        raise BuildError(
            f"sha256 of {shown} is {fetched.sha256}, but the spec pins {sha256}; the source "
            "changed or the pin is wrong: fix spec.model.sha256 (sha256sum <file>)",
            reason="SourceDigestMismatch",
        )
    return fetched
