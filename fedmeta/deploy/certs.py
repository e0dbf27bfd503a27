"""The credentials of a deployment: a CA, the SuperLink's TLS certificate, one key pair per hospital.

Layout of the output directory, one folder per destination::

    ca/ca.crt, ca/ca.key                 the CA; keep ca.key offline
    superlink/ca.crt, server.crt, server.key, superexec.secret
                                         the coordinator (SuperLink and its ServerApp executor)
    <hospital>/ca.crt, node.key, node.pub
                                         one hospital's SuperNode: what that site receives
    public-keys/<hospital>.pub           what the coordinator registers with ``flwr supernode register``

TLS keys and certificates are PEM; node keys are ECDSA P-384 in OpenSSH format, which is what
``flower-supernode --auth-supernode-private-key`` and ``flwr supernode register`` read. Private
keys and the shared secret are written 0600. Existing files are never overwritten unless asked.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedmeta.errors import FedMetaError

__all__ = ["DEFAULT_SANS", "Credentials", "create_credentials", "check_hospital_name", "check_san"]

DEFAULT_SANS = ("127.0.0.1", "localhost", "superlink")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_DNS_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_VALID_DAYS = 365


@dataclass(frozen=True)
class Credentials:
    """Paths of everything :func:`create_credentials` wrote."""

    root: Path
    hospitals: tuple[str, ...]

    @property
    def ca_cert(self) -> Path:
        return self.root / "superlink" / "ca.crt"

    @property
    def server_cert(self) -> Path:
        return self.root / "superlink" / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.root / "superlink" / "server.key"

    @property
    def superexec_secret(self) -> Path:
        return self.root / "superlink" / "superexec.secret"

    def node_key(self, hospital: str) -> Path:
        return self.root / hospital / "node.key"

    def public_key(self, hospital: str) -> Path:
        return self.root / "public-keys" / f"{hospital}.pub"


def _quoted(text: str, limit: int = 40) -> str:
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"


def check_hospital_name(name: str) -> str:
    if not _NAME.fullmatch(name) or name in ("ca", "superlink", "public-keys"):
        raise FedMetaError(f"--hospitals: {_quoted(name)} is not a usable hospital name (1 to 63 letters, "
                           "digits, '-', '_', '.', starting with a letter or digit; not ca, superlink or public-keys)")
    return name


def check_san(name: str) -> str:
    """A SAN must be an IP address or an ASCII DNS name: anything else fails deep in cryptography."""
    try:
        ipaddress.ip_address(name)
        return name
    except ValueError:
        pass
    labels = name.split(".")
    if len(name) > 253 or not name.isascii() or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        raise FedMetaError(f"--san: {_quoted(name)} is not an IP address or an ASCII DNS name "
                           "(give an internationalised name in its xn-- form)")
    return name


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _ca(now: dt.datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedmeta deployment CA")])
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    return key, cert


def _server_cert(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, sans: list[str],
                 now: dt.datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "superlink")]))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=_VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName([_san(s) for s in sans]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    return key, cert


def _node_keys(hospital: str) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, public + f" {hospital}\n".encode()


def _mkdirs(path: Path, created: list[Path]) -> None:
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for p in reversed(missing):
        p.mkdir()
        created.append(p)


def _write_all(out: Path, files: list[tuple[Path, bytes, bool]]) -> None:
    """Write every file or none: each goes to a temporary name first and replaces its target only
    once all are written; on failure what this call wrote is removed (old credentials stay)."""
    created: list[Path] = []
    temps: list[tuple[Path, Path]] = []
    placed: list[Path] = []
    try:
        for path, data, private in files:
            _mkdirs(path.parent, created)
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
            temps.append((tmp, path))
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
        for tmp, path in temps:
            existed = path.exists()
            os.replace(tmp, path)
            if not existed:
                placed.append(path)
    except BaseException as err:
        for p in [t for t, _ in temps] + placed:
            p.unlink(missing_ok=True)
        for d in reversed(created):  # emptied just above
            try:
                d.rmdir()
            except OSError:
                pass
        if isinstance(err, OSError):
            raise FedMetaError(f"{out}: cannot write the credentials there: {err.strerror or err}") from None
        raise


def create_credentials(out: Path, hospitals: list[str], extra_sans: list[str] | None = None, *,
                       force: bool = False) -> Credentials:
    """Create the CA, the SuperLink certificate (SANs 127.0.0.1, localhost, superlink and
    ``extra_sans``) and one node key pair per hospital under ``out``."""
    hospitals = [check_hospital_name(h) for h in hospitals]
    if not hospitals:
        raise FedMetaError("--hospitals: name at least one hospital")
    dupes = [h for i, h in enumerate(hospitals) if h in hospitals[:i]]
    if dupes:
        raise FedMetaError(f"--hospitals: duplicate names: {dupes[0]!r} is given more than once")
    sans = list(dict.fromkeys([*DEFAULT_SANS, *(check_san(s) for s in extra_sans or [])]))
    creds = Credentials(out, tuple(hospitals))
    now = dt.datetime.now(dt.timezone.utc)
    ca_key, ca_cert = _ca(now)
    server_key, server_cert = _server_cert(ca_key, ca_cert, sans, now)
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    files: list[tuple[Path, bytes, bool]] = [
        (out / "ca" / "ca.crt", ca_pem, False),
        (out / "ca" / "ca.key", _pem_key(ca_key), True),
        (creds.ca_cert, ca_pem, False),
        (creds.server_cert, server_cert.public_bytes(serialization.Encoding.PEM), False),
        (creds.server_key, _pem_key(server_key), True),
        (creds.superexec_secret, secrets.token_hex(32).encode(), True),
    ]
    for h in hospitals:
        private, public = _node_keys(h)
        files += [(out / h / "ca.crt", ca_pem, False), (creds.node_key(h), private, True),
                  (out / h / "node.pub", public, False), (creds.public_key(h), public, False)]
    existing = [str(p) for p, _, _ in files if p.exists()]
    if existing and not force:
        raise FedMetaError(f"{existing[0]}: already exists (and {len(existing) - 1} more); "
                           "pass --force to replace the credentials")
    _write_all(out, files)
    return creds
