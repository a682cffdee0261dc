"""https sources against a real TLS server on loopback: CA bundle, pins, retries, limits."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from https_server import Site, https_site

from modelship_runtime.builder.errors import BuildError
from modelship_runtime.builder.fetch import fetch
from modelship_runtime.io_settings import IOSettings


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
