"""The broker's certificates: a local CA made on this gateway, the broker's TLS certificate, and
client certificates for devices (a Pebble proves who it is with one: its firmware sends no
username or password, docs/broker.md).

Keys are EC P-256 (what the Pebble's modem negotiates: ECDHE-ECDSA with TLS 1.2), made here and
never in an image: two gateways never share a CA. A user may supply the server certificate
instead (``w3gate broker cert server --cert F --key F``); then it is kept as given.
"""
from __future__ import annotations

import datetime
import ipaddress
import re
import socket
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.errors import W3gateError
from gateway.layout import BrokerFiles, ClientFiles
from gateway.storage import atomic_write, private_dir

CA_DAYS = 3650
LEAF_DAYS = 825  # what browsers and most TLS stacks still take for a leaf
CLIENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")  # an IMEI, "nrf-<IMEI>", a publisher name


class CertError(W3gateError):
    reason = "cert"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def ensure_ca(files: BrokerFiles) -> x509.Certificate:
    """The local CA, made once: a new CA would orphan every device certificate issued."""
    if files.ca_cert.exists() and files.ca_key.exists():
        return load_cert(files.ca_cert)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(f"w3gate local CA {socket.gethostname()[:40]}")
    now = _now()
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    private_dir(files.dir)
    atomic_write(files.ca_key, _key_pem(key), mode=0o600)
    atomic_write(files.ca_cert, _cert_pem(cert), mode=0o600)
    return cert


def _issue(files: BrokerFiles, common_name: str, usage, sans: list[x509.GeneralName] | None = None
           ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    ca = ensure_ca(files)
    ca_key = serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    builder = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(ca.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=LEAF_DAYS))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                              critical=False))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def host_names(extra: list[str]) -> list[str]:
    """What the server certificate names: the configured names, this host's name, localhost and
    the loopback addresses (a device connects by the name compiled into its firmware)."""
    names = [*extra, socket.gethostname(), "localhost", "127.0.0.1", "::1"]
    return list(dict.fromkeys(n for n in names if n))


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def issue_server(files: BrokerFiles, names: list[str], cert_path: Path | None = None,
                 key_path: Path | None = None) -> x509.Certificate:
    """A TLS server certificate from the local CA, naming ``names`` (DNS names or IP addresses):
    the broker's (by default), or another server's of ours at ``cert_path`` and ``key_path``."""
    key, cert = _issue(files, names[0], ExtendedKeyUsageOID.SERVER_AUTH, [_general_name(n) for n in names])
    atomic_write(key_path or files.server_key, _key_pem(key), mode=0o600)
    atomic_write(cert_path or files.server_cert, _cert_pem(cert), mode=0o600)
    return cert


def install_server(files: BrokerFiles, cert_path: Path, key_path: Path) -> x509.Certificate:
    """A server certificate the user supplies (from their own CA): checked, then kept as given."""
    try:
        cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
        key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise CertError(f"cannot use {cert_path} / {key_path}: {e}") from None
    if cert.public_key().public_numbers() != key.public_key().public_numbers():
        raise CertError(f"{key_path} is not the key of {cert_path}")
    private_dir(files.dir)
    atomic_write(files.server_key, Path(key_path).read_bytes(), mode=0o600)
    atomic_write(files.server_cert, Path(cert_path).read_bytes(), mode=0o600)
    return cert


def issue_client(files: BrokerFiles, name: str) -> ClientFiles:
    """A client certificate whose common name is the broker identity ``name`` (the listener
    takes it as the username and the client id), written with the CA as a bundle to provision."""
    if not CLIENT_NAME.fullmatch(name):
        raise CertError(f"{name!r} cannot name a broker identity (1-64 letters, digits, '_', '.', ':' or '-')")
    key, cert = _issue(files, name, ExtendedKeyUsageOID.CLIENT_AUTH)
    bundle = files.client(name)
    private_dir(files.clients)
    private_dir(bundle.dir)
    atomic_write(bundle.key, _key_pem(key), mode=0o600)
    atomic_write(bundle.cert, _cert_pem(cert), mode=0o600)
    atomic_write(bundle.ca, files.ca_cert.read_bytes(), mode=0o600)
    return bundle


def load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(Path(path).read_bytes())
    except (OSError, ValueError) as e:
        raise CertError(f"cannot read the certificate {path}: {e}") from None


def describe(cert: x509.Certificate) -> dict:
    """What `w3gate broker cert show` prints of a certificate."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(n.value) for n in sans]
    except x509.ExtensionNotFound:
        names = []
    return {"subject": cert.subject.rfc4514_string(), "issuer": cert.issuer.rfc4514_string(),
            "not_after": cert.not_valid_after_utc.isoformat(), "names": names,
            "sha256": cert.fingerprint(hashes.SHA256()).hex()}
