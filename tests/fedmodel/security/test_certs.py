"""Certificates and node keys made by ``fedmodel.security.certs``: content, modes, refusals, a real handshake."""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from fedmodel.security.certs import (
    CertPaths,
    SecurityError,
    fingerprint,
    generate_node_keys,
    init_certs,
    subject_alt_names,
)

HOSTS = ["coordinator.example.org", "localhost", "127.0.0.1", "10.1.2.3", "::1"]
posix_only = pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertPaths:
    return init_certs(tmp_path_factory.mktemp("certs"), HOSTS, days=30)


def test_writes_the_four_files(certs: CertPaths) -> None:
    assert [p.name for p in (certs.ca_cert, certs.ca_key, certs.server_cert, certs.server_key)] == [
        "ca.crt", "ca.key", "server.pem", "server.key"]
    for key_path in (certs.ca_key, certs.server_key):
        assert key_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS8, unencrypted
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"


def test_server_certificate_verifies_against_the_ca(certs: CertPaths) -> None:
    ca, server = _cert(certs.ca_cert), _cert(certs.server_cert)
    server.verify_directly_issued_by(ca)
    ca.verify_directly_issued_by(ca)
    key = serialization.load_pem_private_key(certs.server_key.read_bytes(), password=None)
    assert key.public_key() == server.public_key()


def test_subject_alt_names_hold_exactly_the_hosts(certs: CertPaths) -> None:
    san = _cert(certs.server_cert).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["coordinator.example.org", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("10.1.2.3"), ipaddress.ip_address("::1")]
    assert len(list(san)) == len(HOSTS)
    assert subject_alt_names(certs.server_cert) == HOSTS
    cn = _cert(certs.server_cert).subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    assert [a.value for a in cn] == ["coordinator.example.org"]


def test_ca_is_a_ca_and_the_server_is_not(certs: CertPaths) -> None:
    ca, server = _cert(certs.ca_cert), _cert(certs.server_cert)
    ca_bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert ca_bc.critical and ca_bc.value.ca
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and usage.digital_signature
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = server.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert server.signature_hash_algorithm is not None and server.signature_hash_algorithm.name == "sha256"


@posix_only
def test_private_keys_are_owner_only(certs: CertPaths) -> None:
    assert _mode(certs.ca_key) == 0o600
    assert _mode(certs.server_key) == 0o600
    assert _mode(certs.ca_cert) == 0o644
    assert _mode(certs.server_cert) == 0o644


@posix_only
@pytest.mark.parametrize("umask", [0o000, 0o077])
def test_modes_do_not_depend_on_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        paths = init_certs(tmp_path, ["localhost"])
        keys = generate_node_keys(tmp_path, "site")
    finally:
        os.umask(old)
    assert (_mode(paths.ca_key), _mode(paths.server_key), _mode(keys.private)) == (0o600, 0o600, 0o600)
    assert (_mode(paths.ca_cert), _mode(paths.server_cert), _mode(keys.public)) == (0o644, 0o644, 0o644)


def test_refuses_to_overwrite_and_leaves_the_files_alone(tmp_path: Path) -> None:
    paths = init_certs(tmp_path, ["localhost"])
    before = paths.ca_key.read_bytes()
    with pytest.raises(SecurityError, match="refusing to overwrite") as info:
        init_certs(tmp_path, ["localhost"])
    assert info.value.exit_code == 2
    assert paths.ca_key.read_bytes() == before


def test_one_existing_file_blocks_all_of_them(tmp_path: Path) -> None:
    (tmp_path / "server.key").write_text("keep me")
    with pytest.raises(SecurityError, match="server.key"):
        init_certs(tmp_path, ["localhost"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["server.key"]
    assert (tmp_path / "server.key").read_text() == "keep me"


@posix_only
def test_overwrite_replaces_with_a_new_ca_and_private_modes(tmp_path: Path) -> None:
    first = init_certs(tmp_path, ["localhost"])
    old_ca = first.ca_cert.read_bytes()
    first.server_key.chmod(0o644)
    second = init_certs(tmp_path, ["localhost", "127.0.0.1"], overwrite=True)
    assert second.ca_cert.read_bytes() != old_ca
    assert _mode(second.server_key) == 0o600
    _cert(second.server_cert).verify_directly_issued_by(_cert(second.ca_cert))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca.crt", "server.key", "server.pem"]


@pytest.mark.parametrize("bad", ["bad host!", "", "-lead.example", "a..b", "under_score.example", "10.0.0.256",
                                 "fe80::1%eth0", "x" * 64 + ".example"])
def test_bad_host_is_named(tmp_path: Path, bad: str) -> None:
    with pytest.raises(SecurityError) as info:
        init_certs(tmp_path, ["localhost", bad])
    assert repr(bad) in str(info.value)
    assert info.value.exit_code == 2
    assert list(tmp_path.iterdir()) == []


def test_no_hosts_and_bad_days_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SecurityError, match="at least one host"):
        init_certs(tmp_path, [])
    with pytest.raises(SecurityError, match="hosts must be a list"):
        init_certs(tmp_path, "localhost")
    with pytest.raises(SecurityError, match="days 0"):
        init_certs(tmp_path, ["localhost"], days=0)
    assert list(tmp_path.iterdir()) == []


def test_node_keys_load_the_way_flower_loads_them(tmp_path: Path) -> None:
    paths = generate_node_keys(tmp_path, "site-a")
    assert (paths.private.name, paths.public.name) == ("site-a.key", "site-a.pub")
    raw = paths.private.read_bytes()
    assert raw.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    private = serialization.load_ssh_private_key(raw, password=None)
    assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp384r1"
    line = paths.public.read_bytes()
    assert line.startswith(b"ecdsa-sha2-nistp384 ") and line.endswith(b"\n") and line.count(b"\n") == 1
    public = serialization.load_ssh_public_key(line)
    assert public == private.public_key()


@posix_only
def test_node_private_key_is_owner_only(tmp_path: Path) -> None:
    paths = generate_node_keys(tmp_path, "node")
    assert _mode(paths.private) == 0o600
    assert _mode(paths.public) == 0o644


def test_node_keys_refuse_overwrite(tmp_path: Path) -> None:
    paths = generate_node_keys(tmp_path, "node")
    before = paths.private.read_bytes()
    with pytest.raises(SecurityError, match="refusing to overwrite"):
        generate_node_keys(tmp_path, "node")
    assert paths.private.read_bytes() == before
    assert generate_node_keys(tmp_path, "node", overwrite=True).private.read_bytes() != before


@pytest.mark.parametrize("bad", ["", "a b", "../x", "x" * 65, "node.key", "ü"])
def test_bad_node_name_is_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(SecurityError, match="node name"):
        generate_node_keys(tmp_path, bad)
    assert list(tmp_path.iterdir()) == []


def test_fingerprint_is_stable_and_differs_between_keys(tmp_path: Path) -> None:
    a = generate_node_keys(tmp_path, "a").public.read_bytes()
    b = generate_node_keys(tmp_path, "b").public.read_bytes()
    fa = fingerprint(a)
    assert len(fa) == 64 and int(fa, 16) >= 0
    assert fingerprint(a) == fa == fingerprint(a.strip() + b" a comment\n")
    assert fingerprint(b) != fa
    with pytest.raises(SecurityError, match="not an OpenSSH public key"):
        fingerprint(b"-----BEGIN PUBLIC KEY-----\n")


# --- a real TLS handshake over loopback -------------------------------------------------------------------


@contextmanager
def _tls_server(certs: CertPaths) -> Iterator[tuple[str, int]]:
    """Serve one TLS connection on 127.0.0.1 in a thread; it answers ``ok`` after the handshake."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs.server_cert, certs.server_key)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.settimeout(5)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def serve() -> None:
        try:
            raw, _ = listener.accept()
        except OSError:
            return
        raw.settimeout(5)
        try:
            with context.wrap_socket(raw, server_side=True) as conn:
                conn.sendall(b"ok")
        except OSError:  # the client rejected the certificate: ssl.SSLError is an OSError
            pass
        finally:
            raw.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[:2]
    finally:
        listener.close()
        thread.join(timeout=10)
        assert not thread.is_alive(), "TLS server thread did not finish"


def _connect(address: tuple[str, int], cafile: Path, server_hostname: str) -> bytes:
    context = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection(address, timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=server_hostname) as conn:
            return conn.recv(2)


@pytest.fixture(scope="module")
def loopback_certs(tmp_path_factory: pytest.TempPathFactory) -> CertPaths:
    return init_certs(tmp_path_factory.mktemp("loopback"), ["localhost", "127.0.0.1"])


@pytest.mark.parametrize("server_hostname", ["localhost", "127.0.0.1"])
def test_tls_handshake_succeeds_with_our_ca(loopback_certs: CertPaths, server_hostname: str) -> None:
    with _tls_server(loopback_certs) as address:
        assert _connect(address, loopback_certs.ca_cert, server_hostname) == b"ok"


def test_tls_handshake_fails_with_another_ca(loopback_certs: CertPaths, tmp_path: Path) -> None:
    other = init_certs(tmp_path / "other", ["localhost", "127.0.0.1"])
    with _tls_server(loopback_certs) as address:
        with pytest.raises(ssl.SSLCertVerificationError):
            _connect(address, other.ca_cert, "localhost")


def test_tls_handshake_fails_for_a_name_not_in_the_certificate(loopback_certs: CertPaths) -> None:
    with _tls_server(loopback_certs) as address:
        with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch|doesn't match"):
            _connect(address, loopback_certs.ca_cert, "coordinator.example.org")


def test_the_coordinators_folder_holds_no_ca_key_and_its_superlink_needs_none(tmp_path: Path) -> None:
    from fedmodel.deployment.coordinator import superlink_command
    from fedmodel.security.certs import default_ca_dir

    paths = init_certs(tmp_path / "certs", ["localhost"])
    assert sorted(p.name for p in (tmp_path / "certs").iterdir()) == ["ca.crt", "server.key", "server.pem"]
    assert paths.ca_key == default_ca_dir(tmp_path / "certs") / "ca.key" == tmp_path / "certs-ca" / "ca.key"
    assert (tmp_path / "certs-ca" / "ca.crt").read_bytes() == paths.ca_cert.read_bytes()
    assert _mode(paths.ca_key) == 0o600 and _mode(tmp_path / "certs-ca") == 0o700
    cmd = superlink_command(tmp_path / "certs", tmp_path / "state", "127.0.0.1", 9091, insecure=False)
    assert not any("ca.key" in part or "certs-ca" in part for part in cmd)
    with pytest.raises(SecurityError, match="must not sit"):
        init_certs(tmp_path / "x", ["localhost"], ca_dir=tmp_path / "x")


def test_rotate_replaces_the_server_pair_signed_by_the_same_ca(tmp_path: Path) -> None:
    from fedmodel.security.certs import rotate_server_cert

    paths = init_certs(tmp_path / "certs", ["localhost", "127.0.0.1"], ca_dir=tmp_path / "offline")
    old_key, old_cert, ca = paths.server_key.read_bytes(), paths.server_cert.read_bytes(), paths.ca_cert.read_bytes()
    rotated = rotate_server_cert(tmp_path / "certs", ca_dir=tmp_path / "offline", days=10)
    assert rotated.server_key.read_bytes() != old_key and rotated.server_cert.read_bytes() != old_cert
    assert rotated.ca_cert.read_bytes() == ca and _mode(rotated.server_key) == 0o600
    new = _cert(rotated.server_cert)
    new.verify_directly_issued_by(_cert(rotated.ca_cert))
    key = serialization.load_pem_private_key(rotated.server_key.read_bytes(), password=None)
    assert key.public_key() == new.public_key()
    assert subject_alt_names(rotated.server_cert) == ["localhost", "127.0.0.1"]  # kept from the old certificate
    assert not list((tmp_path / "certs").glob(".*.tmp"))


def test_rotate_without_the_ca_key_or_with_another_ca_is_refused(tmp_path: Path) -> None:
    from fedmodel.security.certs import rotate_server_cert

    paths = init_certs(tmp_path / "certs", ["localhost"])
    before = paths.server_key.read_bytes()
    with pytest.raises(SecurityError, match="is missing"):
        rotate_server_cert(tmp_path / "certs", ca_dir=tmp_path / "nowhere")
    init_certs(tmp_path / "other", ["localhost"])
    with pytest.raises(SecurityError, match="is not the key of"):
        rotate_server_cert(tmp_path / "certs", ca_dir=tmp_path / "other-ca")
    assert paths.server_key.read_bytes() == before
