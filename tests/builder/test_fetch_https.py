"""https sources against a real TLS server on loopback: CA bundle, pins, retries, limits."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from https_server import Site, https_site

from modelship.api.artifact import SourceAccess
from modelship.api.v1alpha1 import S3Settings
from modelship_runtime.builder.errors import BuildError
from modelship_runtime.builder.fetch import fetch
from modelship_runtime.io_settings import IOSettings

LOOPBACK_ALLOWED = SourceAccess(denied_networks=["127.0.0.2/32", "169.254.0.0/16"])
"""The test server's 127.0.0.1 is allowed; 127.0.0.2 (nothing listens there) stands for an
address inside the cluster, 169.254.0.0/16 for the metadata endpoint."""


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    with https_site(tmp_path) as s:
        yield s


def _io(site: Site, **kw: object) -> IOSettings:
    return IOSettings(ca_bundle=site.ca_bundle, http_attempts=3, http_backoff_s=0.01, **kw)


def test_fetch_with_ca_bundle_and_pin(site: Site, tmp_path: Path) -> None:
    site.files["/m/model.onnx"] = b"onnx-bytes"
    pin = hashlib.sha256(b"onnx-bytes").hexdigest()
    got = fetch(f"{site.base}/m/model.onnx", tmp_path / "w", sha256=pin, io=_io(site))
    assert got.path.read_bytes() == b"onnx-bytes"
    assert (got.sha256, got.size) == (pin, 10)


def test_untrusted_certificate_says_how_to_trust_it(site: Site, tmp_path: Path) -> None:
    site.files["/m.onnx"] = b"x"
    with pytest.raises(BuildError, match="MODELSHIP_CA_BUNDLE"):
        fetch(f"{site.base}/m.onnx", tmp_path / "w", io=IOSettings(http_attempts=1))


def test_server_errors_are_retried(site: Site, tmp_path: Path) -> None:
    site.files["/flaky.onnx"] = b"finally"
    site.failures["/flaky.onnx"] = 2
    got = fetch(f"{site.base}/flaky.onnx", tmp_path / "w", io=_io(site))
    assert got.path.read_bytes() == b"finally"
    assert site.requests.count("/flaky.onnx") == 3


def test_not_found_is_not_retried(site: Site, tmp_path: Path) -> None:
    with pytest.raises(BuildError, match="HTTP 404") as e:
        fetch(f"{site.base}/missing.onnx", tmp_path / "w", io=_io(site))
    assert e.value.reason == "FetchFailed"
    assert site.requests == ["/missing.onnx"]


def test_size_limit(site: Site, tmp_path: Path) -> None:
    site.files["/big.onnx"] = bytes(4096)
    with pytest.raises(BuildError, match="MODELSHIP_MAX_DOWNLOAD_BYTES"):
        fetch(f"{site.base}/big.onnx", tmp_path / "w", io=_io(site, max_download_bytes=1024))
    assert list((tmp_path / "w").iterdir()) == []


def test_unreachable_url(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port that nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(BuildError, match=r"could not download .* \(after 2 attempt") as e:
        fetch(
            f"https://127.0.0.1:{port}/m.onnx",
            tmp_path / "w",
            io=IOSettings(http_attempts=2, http_backoff_s=0.01),
        )
    assert "reachable" in str(e.value)


def test_sources_inside_the_cluster_are_refused_before_connecting(
    site: Site, tmp_path: Path
) -> None:
    site.files["/m.onnx"] = b"x"
    with pytest.raises(BuildError, match="loopback address") as e:
        fetch(f"{site.base}/m.onnx", tmp_path / "w", io=_io(site), access=SourceAccess())
    assert e.value.reason == "FetchFailed"
    assert "MODELSHIP_BUILD_INTERNAL_SOURCES" in e.value.message
    assert site.requests == [], "no request may reach a refused address"
    got = fetch(
        f"{site.base}/m.onnx", tmp_path / "w", io=_io(site), access=SourceAccess(internal=True)
    )
    assert got.path.read_bytes() == b"x"


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("169.254.169.254", "a link-local address (where cloud metadata"),
        ("10.96.0.1", "in the denied network 10.0.0.0/8 (the cluster's own)"),
        ("::ffff:127.0.0.1", "a loopback address"),
        ("fd00:ec2::254", "a cloud metadata endpoint"),
        ("fd12:3456::1", "in the denied network fc00::/7"),
    ],
)
def test_a_host_name_is_judged_by_every_address_it_resolves_to(
    address: str, why: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS is the spec author's to choose: a public-looking name may resolve anywhere, and a
    name with one good and one bad address is refused too."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET

    def resolve(host: str, port: int, *args: object, **kwargs: object) -> list[object]:
        assert host == "models.example.com"
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", port)),
            (family, socket.SOCK_STREAM, 6, "", (address, port)),
        ]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    with pytest.raises(BuildError, match=r"models\.example\.com is at ") as e:
        fetch("https://models.example.com/m.onnx", tmp_path / "w", access=SourceAccess())
    assert why in e.value.message


def test_a_redirect_to_a_refused_address_is_not_followed(site: Site, tmp_path: Path) -> None:
    port = site.base.rsplit(":", 1)[1]
    site.redirects["/m.onnx"] = f"https://127.0.0.2:{port}/m.onnx"
    with pytest.raises(BuildError, match=r"127\.0\.0\.2 is a loopback address"):
        fetch(f"{site.base}/m.onnx", tmp_path / "w", io=_io(site), access=LOOPBACK_ALLOWED)
    assert site.requests == ["/m.onnx"]


def test_redirects_must_stay_https(site: Site, tmp_path: Path) -> None:
    port = site.base.rsplit(":", 1)[1]
    site.redirects["/m.onnx"] = f"http://127.0.0.1:{port}/plain.onnx"
    for access in (LOOPBACK_ALLOWED, None):
        with pytest.raises(BuildError, match="which is not https") as e:
            fetch(f"{site.base}/m.onnx", tmp_path / "w", io=_io(site), access=access)
        assert e.value.reason == "FetchFailed"
    assert "/plain.onnx" not in site.requests


def test_https_redirects_are_followed(site: Site, tmp_path: Path) -> None:
    site.redirects["/old.onnx"] = f"{site.base}/new.onnx"
    site.files["/new.onnx"] = b"moved"
    got = fetch(f"{site.base}/old.onnx", tmp_path / "w", io=_io(site), access=LOOPBACK_ALLOWED)
    assert got.path.read_bytes() == b"moved"
    assert site.requests == ["/old.onnx", "/new.onnx"]


def test_an_s3_endpoint_inside_the_cluster_is_refused(tmp_path: Path) -> None:
    s3 = S3Settings(endpoint="http://127.0.0.1:9")  # the check comes before any connection
    with pytest.raises(BuildError, match="loopback address"):
        fetch("s3://bucket/m.onnx", tmp_path / "w", s3=s3, access=SourceAccess())


def test_credentials_in_a_uri_never_reach_a_message(site: Site, tmp_path: Path) -> None:
    uri = f"{site.base}/missing.onnx?X-Amz-Credential=AKIDSECRET&X-Amz-Signature=s1gnature"
    with pytest.raises(BuildError, match="HTTP 404") as e:
        fetch(uri, tmp_path / "w", io=_io(site), access=LOOPBACK_ALLOWED)
    assert "X-Amz-Signature=***" in e.value.message
    assert "AKIDSECRET" not in e.value.message
    assert "s1gnature" not in e.value.message
    big = f"{site.base}/big.onnx?token=t0ken"
    site.files["/big.onnx?token=t0ken"] = bytes(4096)
    with pytest.raises(BuildError, match="byte limit") as e:
        fetch(big, tmp_path / "w", io=_io(site, max_download_bytes=1024))
    assert "t0ken" not in e.value.message
