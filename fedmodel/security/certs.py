"""Make the coordinator's TLS certificates and the sites' authentication keys with ``cryptography``.

The files are exactly what Flower 1.41 reads: ``flower-superlink --ssl-ca-certfile ca.crt --ssl-certfile
server.pem --ssl-keyfile server.key`` and ``root-certificates = ca.crt`` on the ``flwr`` side; an OpenSSH EC
private key for ``flower-supernode --auth-supernode-private-key`` and its one-line OpenSSH public key for
``flwr supernode register``. Private keys are created owner-only (0o600) from the first byte; existing files
are never replaced unless asked.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedmodel.errors import FedModelError
from fedmodel.fsio import atomic_write, create_new

__all__ = [
    "CertPaths", "NodeKeyPaths", "SecurityError", "default_ca_dir", "fingerprint", "generate_node_keys",
    "init_certs", "rotate_server_cert", "subject_alt_names",
]

PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644
MAX_DAYS = 3650
_DNS_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS_NAME = re.compile(rf"{_DNS_LABEL}(?:\.{_DNS_LABEL})*")
_NODE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CLOCK_SKEW = dt.timedelta(minutes=5)
_CERTS_HINT = "pass --force (overwrite=True) to replace them"
_NODE_HINT = "choose another name or folder (a site whose key changes must be allowed again)"


class SecurityError(FedModelError):
    """A certificate or key cannot be made or read; the message names the host, file or key."""

    exit_code = 2


@dataclass(frozen=True)
class CertPaths:
    """Where :func:`init_certs` wrote the CA and the coordinator's server certificate."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


@dataclass(frozen=True)
class NodeKeyPaths:
    """Where :func:`generate_node_keys` wrote a site's key pair."""

    private: Path
    public: Path


def default_ca_dir(out_dir: Path) -> Path:
    """Where :func:`init_certs` puts the CA's key by default: ``<out>-ca`` beside the coordinator's folder.

    The online coordinator reads only ``ca.crt``, ``server.pem`` and ``server.key`` from ``out_dir``; the
    CA key signs new server certificates (:func:`rotate_server_cert`) and belongs offline, so it is
    never in the folder the SuperLink is given.
    """
    out_dir = Path(out_dir).expanduser().absolute()
    return out_dir.with_name(out_dir.name + "-ca")


def init_certs(out_dir: Path, hosts: Sequence[str], *, days: int = 365, overwrite: bool = False,
               ca_dir: Path | None = None) -> CertPaths:
    """Make a private CA and a server certificate for the coordinator, signed by it.

    Parameters
    ----------
    out_dir : Path
        Folder of ``ca.crt``, ``server.pem`` and ``server.key`` (what ``fedmodel coordinator start`` reads);
        created (0o700) if missing.
    hosts : Sequence[str]
        Every name and IP address the sites and the ``flwr`` CLI use to reach the coordinator. The first is
        the certificate's common name; all of them are subject alternative names.
    days : int, optional
        Validity of both certificates, 1 to 3650 days (default 365).
    overwrite : bool, optional
        Replace existing files (default False: refuse).
    ca_dir : Path, optional
        Folder of the CA's private key ``ca.key`` and a copy of ``ca.crt``, apart from ``out_dir`` (default
        :func:`default_ca_dir`); created (0o700) if missing. Move it offline after this.

    Returns
    -------
    CertPaths
        The four paths written.

    Raises
    ------
    SecurityError
        No host, an invalid host (named), ``days`` out of range, a file already exists, or a write fails.
    """
    names = _validate_hosts(hosts)
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_DAYS:
        raise SecurityError(f"days {days!r}: expected a whole number from 1 to {MAX_DAYS}")
    out_dir = Path(out_dir)
    ca_dir = Path(ca_dir) if ca_dir is not None else default_ca_dir(out_dir)
    if ca_dir.expanduser().absolute() == out_dir.expanduser().absolute():
        raise SecurityError(f"--ca-dir {ca_dir}: the CA key must not sit in the coordinator's folder {out_dir}")
    paths = CertPaths(out_dir / "ca.crt", ca_dir / "ca.key", out_dir / "server.pem", out_dir / "server.key")
    _check_free([paths.ca_cert, paths.ca_key, ca_dir / "ca.crt", paths.server_cert, paths.server_key], overwrite,
                _CERTS_HINT)

    now = dt.datetime.now(dt.UTC)
    not_before, not_after = now - _CLOCK_SKEW, now + dt.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _make_ca(ca_key, not_before, not_after)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _make_server_cert(server_key, ca_key, ca_cert, names, not_before, not_after)

    _ensure_dir(out_dir)
    _ensure_dir(ca_dir)
    pem = serialization.Encoding.PEM
    _write_all([
        (paths.ca_key, _pkcs8(ca_key), PRIVATE_MODE),
        (ca_dir / "ca.crt", ca_cert.public_bytes(pem), PUBLIC_MODE),
        (paths.server_key, _pkcs8(server_key), PRIVATE_MODE),
        (paths.ca_cert, ca_cert.public_bytes(pem), PUBLIC_MODE),
        (paths.server_cert, server_cert.public_bytes(pem), PUBLIC_MODE),
    ], overwrite)
    return paths


def rotate_server_cert(out_dir: Path, *, ca_dir: Path | None = None, hosts: Sequence[str] | None = None,
                       days: int = 365) -> CertPaths:
    """Replace the coordinator's server key and certificate with new ones signed by the CA key.

    Parameters
    ----------
    out_dir : Path
        The coordinator's folder (``ca.crt``, ``server.pem``, ``server.key``).
    ca_dir : Path, optional
        Folder of ``ca.key`` and ``ca.crt`` (default :func:`default_ca_dir`).
    hosts : Sequence[str], optional
        The new certificate's names (default: those of the current ``server.pem``).
    days : int, optional
        Validity, 1 to 3650 days.

    Returns
    -------
    CertPaths
        The paths; ``server.key`` and ``server.pem`` are new, each replaced by an atomic rename (key first:
        a crash in between leaves a mismatched pair that the SuperLink refuses; run the command again).
        A running SuperLink keeps the old pair until it is restarted.

    Raises
    ------
    SecurityError
        No CA key, a CA certificate in ``out_dir`` that the CA key did not make, bad hosts or days.
    """
    out_dir = Path(out_dir)
    ca_dir = Path(ca_dir) if ca_dir is not None else default_ca_dir(out_dir)
    paths = CertPaths(out_dir / "ca.crt", ca_dir / "ca.key", out_dir / "server.pem", out_dir / "server.key")
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_DAYS:
        raise SecurityError(f"days {days!r}: expected a whole number from 1 to {MAX_DAYS}")
    try:
        ca_key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
        ca_cert = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    except FileNotFoundError as exc:
        raise SecurityError(f"cannot rotate: {exc.filename} is missing (the CA key lives in --ca-dir, made by "
                            "fedmodel certs init)") from None
    except (OSError, ValueError, TypeError) as exc:
        raise SecurityError(f"cannot read the CA key {paths.ca_key} or certificate {paths.ca_cert}: {exc}") from None
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey) or ca_key.public_key() != ca_cert.public_key():
        raise SecurityError(f"{paths.ca_key} is not the key of {paths.ca_cert}: the sites trust that CA certificate")
    names = _validate_hosts(list(hosts) if hosts else subject_alt_names(paths.server_cert))
    now = dt.datetime.now(dt.UTC)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _make_server_cert(server_key, ca_key, ca_cert, names, now - _CLOCK_SKEW, now + dt.timedelta(days=days))
    _write(paths.server_key, _pkcs8(server_key), PRIVATE_MODE, True)
    _write(paths.server_cert, server_cert.public_bytes(serialization.Encoding.PEM), PUBLIC_MODE, True)
    return paths


def subject_alt_names(cert_path: Path) -> list[str]:
    """The DNS names and IP addresses in a PEM certificate's subject alternative names, in order.

    Parameters
    ----------
    cert_path : Path
        A PEM certificate, such as ``server.pem``.

    Returns
    -------
    list[str]
        Each name or address as text; empty if the certificate has no SAN extension.

    Raises
    ------
    SecurityError
        The file cannot be read or is not a PEM certificate.
    """
    try:
        cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    except (OSError, ValueError) as exc:
        raise SecurityError(f"cannot read certificate {cert_path}: {exc}") from exc
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(entry.value) for entry in san if isinstance(entry, (x509.DNSName, x509.IPAddress))]


def generate_node_keys(out_dir: Path, name: str, *, overwrite: bool = False) -> NodeKeyPaths:
    """Make a site's SuperNode authentication key pair (EC P-384, OpenSSH formats).

    Parameters
    ----------
    out_dir : Path
        Folder of ``<name>.key`` (private, 0o600) and ``<name>.pub`` (0o644); created (0o700) if missing.
    name : str
        File stem: letters, digits, ``-`` and ``_``, 1 to 64 characters.
    overwrite : bool, optional
        Replace existing files (default False: refuse).

    Returns
    -------
    NodeKeyPaths
        The private key (for ``flower-supernode --auth-supernode-private-key``) and the public key line
        (for ``flwr supernode register``).

    Raises
    ------
    SecurityError
        An invalid name, a file already exists, or a write fails.
    """
    if not isinstance(name, str) or not _NODE_NAME.fullmatch(name):
        raise SecurityError(f"node name {name!r}: use 1 to 64 letters, digits, '-' or '_'")
    out_dir = Path(out_dir)
    paths = NodeKeyPaths(out_dir / f"{name}.key", out_dir / f"{name}.pub")
    _check_free([paths.private, paths.public], overwrite, _NODE_HINT)
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    _ensure_dir(out_dir)
    _write_all([(paths.private, private, PRIVATE_MODE), (paths.public, public + b"\n", PUBLIC_MODE)], overwrite)
    return paths


def fingerprint(public_key_line: bytes) -> str:
    """SHA-256 of an OpenSSH public key's wire bytes, as 64 hex digits, for people to compare.

    The bytes hashed are the base64-decoded key blob of the line (what ``ssh-keygen -l`` hashes), so the
    comment and surrounding whitespace do not change the result.

    Parameters
    ----------
    public_key_line : bytes
        One OpenSSH public key line, such as the content of a ``.pub`` file.

    Returns
    -------
    str
        Lower-case hex digest.

    Raises
    ------
    SecurityError
        The line is not an OpenSSH public key.
    """
    try:
        key = serialization.load_ssh_public_key(public_key_line.strip())
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise SecurityError(f"not an OpenSSH public key line: {exc}") from exc
    canonical = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return hashlib.sha256(base64.b64decode(canonical.split()[1])).hexdigest()


def _validate_hosts(hosts: Sequence[str]) -> list[str]:
    if isinstance(hosts, (str, bytes)):
        raise SecurityError("hosts must be a list of names or IP addresses, not one string")
    names: list[str] = []
    for host in hosts:
        text = host.strip() if isinstance(host, str) else host
        if not isinstance(text, str) or not _valid_host(text):
            raise SecurityError(
                f"host {host!r}: expected an IP address or a DNS name (letters, digits, '-' and dots)"
            )
        if text not in names:
            names.append(text)
    if not names:
        raise SecurityError("give at least one host name or IP address of the coordinator")
    if len(names[0]) > 64:
        raise SecurityError(f"host {names[0]!r}: the first host is the common name, at most 64 characters")
    return names


def _valid_host(text: str) -> bool:
    if "%" in text:  # scoped IPv6 addresses cannot go into a certificate
        return False
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        pass
    if len(text) > 253 or not _DNS_NAME.fullmatch(text):
        return False
    return not text.rsplit(".", 1)[-1].isdigit()  # "10.0.0.256" is a mistyped address, not a name


def _host_entry(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _make_ca(key: ec.EllipticCurvePrivateKey, not_before: dt.datetime, not_after: dt.datetime) -> x509.Certificate:
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedmodel"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"fedmodel CA {secrets.token_hex(4)}"),
    ])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _make_server_cert(
    key: ec.EllipticCurvePrivateKey, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
    hosts: list[str], not_before: dt.datetime, not_after: dt.datetime,
) -> x509.Certificate:
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([_host_entry(h) for h in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )


def _pkcs8(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _check_free(paths: list[Path], overwrite: bool, hint: str) -> None:
    taken = [str(p) for p in paths if p.exists() or p.is_symlink()]
    if taken and not overwrite:
        raise SecurityError(f"refusing to overwrite {', '.join(taken)}; {hint}")
    for path in paths:
        if path.is_dir():
            raise SecurityError(f"{path} is a folder, expected a file")


def _ensure_dir(out_dir: Path) -> None:
    try:
        out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise SecurityError(f"cannot create folder {out_dir}: {exc.strerror or exc}") from exc
    if not out_dir.is_dir():
        raise SecurityError(f"{out_dir} is not a folder")


def _write_all(files: list[tuple[Path, bytes, int]], overwrite: bool) -> None:
    """Write every file or, when a new file fails, remove the new ones already written."""
    written: list[Path] = []
    try:
        for path, data, mode in files:
            _write(path, data, mode, overwrite)
            written.append(path)
    except SecurityError:
        if not overwrite:
            for path in written:
                path.unlink(missing_ok=True)
        raise


def _write(path: Path, data: bytes, mode: int, overwrite: bool) -> None:
    """Write ``data`` to a file born with ``mode``, through :mod:`fedmodel.fsio`.

    A private key is never readable by others, not even for an instant. A new file is created in place
    (:func:`~fedmodel.fsio.create_new`: ``O_EXCL`` refuses one that appeared meanwhile); an existing one is
    replaced by an atomic rename of a fresh temporary file (:func:`~fedmodel.fsio.atomic_write`), so it also
    gets the right mode whatever the old file had.
    """
    try:
        if overwrite:
            atomic_write(path, data, mode=mode)
        else:
            create_new(path, data, mode=mode)
    except FileExistsError as exc:
        raise SecurityError(f"refusing to overwrite {path}: it appeared while the files were written") from exc
    except OSError as exc:
        raise SecurityError(f"cannot write {path}: {exc.strerror or exc}") from exc
