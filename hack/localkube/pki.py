"""Certificates and keys for the local control plane.

One cluster CA signs the API server's serving certificate and the client certificates of the
admin and the controller-manager; a separate front-proxy CA serves API aggregation; an RSA key
pair signs service-account tokens. Everything lives in the cluster's own directory and dies with it.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = datetime.timedelta(days=365)


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path


def _name(common_name: str, organizations: tuple[str, ...] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    attrs += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
    return x509.Name(attrs)


def _write_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _write_cert(cert: x509.Certificate, path: Path) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


class CertificateAuthority:
    """A CA that issues serving and client certificates."""

    def __init__(self, pair: KeyPair, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate):
        self.pair = pair
        self._key = key
        self._cert = cert

    @classmethod
    def create(cls, directory: Path, name: str) -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        subject = _name(f"modelship-local-{name}")
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        pair = KeyPair(directory / f"{name}.crt", directory / f"{name}.key")
        _write_key(key, pair.key)
        _write_cert(cert, pair.cert)
        return cls(pair, key, cert)

    @classmethod
    def load(cls, directory: Path, name: str) -> CertificateAuthority:
        pair = KeyPair(directory / f"{name}.crt", directory / f"{name}.key")
        key = serialization.load_pem_private_key(pair.key.read_bytes(), None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise TypeError(f"{pair.key} is not an EC key made by localkube")
        return cls(pair, key, x509.load_pem_x509_certificate(pair.cert.read_bytes()))

    def issue(
        self,
        path_stem: Path,
        common_name: str,
        *,
        organizations: tuple[str, ...] = (),
        server_names: tuple[str, ...] = (),
        client: bool = False,
    ) -> KeyPair:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name, organizations))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if server_names:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
            alt: list[x509.GeneralName] = []
            for name in server_names:
                try:
                    alt.append(x509.IPAddress(ipaddress.ip_address(name)))
                except ValueError:
                    alt.append(x509.DNSName(name))
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        pair = KeyPair(path_stem.with_suffix(".crt"), path_stem.with_suffix(".key"))
        _write_key(key, pair.key)
        _write_cert(cert, pair.cert)
        return pair


@dataclass(frozen=True)
class ClusterPKI:
    ca: KeyPair
    apiserver: KeyPair
    admin: KeyPair
    controller_manager: KeyPair
    scheduler: KeyPair
    apiserver_kubelet_client: KeyPair
    front_proxy_ca: KeyPair
    front_proxy_client: KeyPair
    service_account: KeyPair
    """``cert`` holds the public key, ``key`` the private key that signs tokens."""


def create_pki(directory: Path, server_names: tuple[str, ...]) -> ClusterPKI:
    directory.mkdir(parents=True, exist_ok=True)
    ca = CertificateAuthority.create(directory, "ca")
    front = CertificateAuthority.create(directory, "front-proxy-ca")
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    sa = KeyPair(directory / "sa.pub", directory / "sa.key")
    _write_key(sa_key, sa.key)
    sa.cert.write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return ClusterPKI(
        ca=ca.pair,
        apiserver=ca.issue(directory / "apiserver", "kube-apiserver", server_names=server_names),
        admin=ca.issue(
            directory / "admin", "admin", organizations=("system:masters",), client=True
        ),
        controller_manager=ca.issue(
            directory / "controller-manager", "system:kube-controller-manager", client=True
        ),
        scheduler=ca.issue(directory / "scheduler", "system:kube-scheduler", client=True),
        apiserver_kubelet_client=ca.issue(
            directory / "apiserver-kubelet-client",
            "kube-apiserver-kubelet-client",
            organizations=("system:masters",),
            client=True,
        ),
        front_proxy_ca=front.pair,
        front_proxy_client=front.issue(
            directory / "front-proxy-client", "front-proxy-client", client=True
        ),
        service_account=sa,
    )


def issue_client(directory: Path, user: str, groups: tuple[str, ...] = ()) -> KeyPair:
    """A client certificate for ``user`` from the cluster CA (for tests of RBAC roles)."""
    ca = CertificateAuthority.load(directory, "ca")
    stem = directory / f"user-{user.replace(':', '-')}"
    return ca.issue(stem, user, organizations=groups, client=True)
