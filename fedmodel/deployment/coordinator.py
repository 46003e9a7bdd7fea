"""The coordinator's side of a deployment: its SuperLink, its ``flwr`` connection and its admitted sites.

Flower 1.41 runs everything on one HTTPS port (``--host/--port``). With ``--enable-supernode-auth`` only
SuperNodes whose OpenSSH EC public key was registered (``flwr supernode register``) may join. Flower shows
neither names nor keys in ``flwr supernode list``, so fedmodel keeps its own registry, ``STATE/nodes.json``
(name, node id, fingerprint, key, status), and merges it with Flower's live view. The ``flwr`` CLI of a
coordinator uses its own Flower home, ``STATE/flwr_home``, whose ``config.toml`` names one connection,
``fedmodel``. The ``flwr`` CLI exits 0 even when a ``--format json`` command fails, so every answer's
``success`` is checked here.

The registry is also what the coordinator's ServerApp names owners by: ``coordinator start`` puts its
path in :data:`REGISTRY_ENV` on the SuperLink, whose SuperExec and ``flwr-serverapp`` processes
inherit it (``fedmodel.server.identity`` maps a reply's Flower node id, bound to the admitted key, to a name).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import tomli_w
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_public_key

from fedmodel.errors import DeploymentError
from fedmodel.fsio import atomic_write
from fedmodel.runs import tool as _tool
from fedmodel.security.certs import fingerprint

__all__ = [
    "CONNECTION", "DeploymentError", "NodeEntry", "allow_node", "flwr_env", "flwr_home", "join_address",
    "list_nodes", "read_nodes", "registry_path", "revoke_node", "split_address",
    "superlink_command", "write_connection", "REGISTRY_ENV", "read_registry", "superlink_env",
]

CONNECTION = "fedmodel"
CERT_FILES = ("ca.crt", "server.pem", "server.key")
REGISTRY_FILE = "nodes.json"
REGISTRY_ENV = "FEDMODEL_NODE_REGISTRY"
"""Environment variable of the SuperLink (inherited by its ServerApps): the absolute path of ``STATE/nodes.json``."""
FLWR_TIMEOUT_S = 60.0
KEY_FORMAT = "ecdsa-sha2-nistp384 AAAA... (one line, OpenSSH format)"
KEY_HINT = (f"expected an OpenSSH public key line `{KEY_FORMAT}`; the site makes its key pair with "
            "`fedmodel node keygen --out DIR --name NAME` and sends NAME.pub")
MAX_KEY_BYTES = 16_384
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CERTS_HINT = "make them with `fedmodel certs init --out DIR --host <coordinator name or IP>`"



@dataclass(frozen=True)
class NodeEntry:
    """One site in the coordinator's registry.

    Attributes
    ----------
    name : str
        The coordinator's name for the site (letters, digits, ``-``, ``_``).
    node_id : int
        The SuperNode ID Flower assigned at registration (uint64).
    fingerprint : str
        SHA-256 of the public key's wire bytes, as 64 hex digits.
    public_key : str
        The OpenSSH public key line.
    status : str
        ``allowed`` or ``revoked`` (the registry's view); ``external`` for a node Flower knows and the
        registry does not.
    live_status : str or None
        Flower's view (``online``, ``offline``, ``registered``, ``unregistered``; ``unknown`` when Flower
        does not list the node); None when not asked.
    """

    name: str
    node_id: int
    fingerprint: str
    public_key: str
    status: str
    live_status: str | None = None

    def to_record(self) -> dict[str, Any]:
        """The registry record: every field except the live status."""
        record = asdict(self)
        del record["live_status"]
        return record


# --- addresses and commands ------------------------------------------------------------------------


def split_address(address: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[IPv6]:PORT`` for IPv6) into host and port.

    Raises
    ------
    DeploymentError
        No host, no port, a port outside 1 to 65535, or whitespace.
    """
    text = address.strip() if isinstance(address, str) else ""
    host, sep, port = text.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    valid = (
        sep and host and port.isdigit() and 1 <= int(port) <= 65535
        and not any(c.isspace() for c in text) and (bracketed or ":" not in host)
    )
    if not valid:
        raise DeploymentError(
            f"address {address!r}: expected HOST:PORT such as 127.0.0.1:9091 or coordinator.example.org:9091 "
            "(port 1 to 65535; IPv6 as [ADDRESS]:PORT)"
        )
    return host, int(port)


def join_address(host: str, port: int) -> str:
    """``HOST:PORT``, with brackets around an IPv6 host."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def superlink_command(certs_dir: Path | None, state_dir: Path, host: str, port: int, *,
                      insecure: bool) -> list[str]:
    """The ``flower-superlink`` command of a coordinator.

    Parameters
    ----------
    certs_dir : Path or None
        Folder of ``ca.crt``, ``server.pem`` and ``server.key`` (``fedmodel certs init``); ignored when
        ``insecure``.
    state_dir : Path
        The coordinator's state folder; the SuperLink's database is ``STATE/superlink.db``.
    host, port : str, int
        Where the SuperLink listens (sites, the ``flwr`` CLI and ServerApps all use this one port).
    insecure : bool
        Plain HTTP and no SuperNode authentication: any node may join. For tests only.

    Returns
    -------
    list[str]
        The command line, with absolute paths.

    Raises
    ------
    DeploymentError
        Certificates not given or a file missing (named) while not ``insecure``; a bad host or port.
    """
    split_address(join_address(host, port))
    cmd = [_tool("flower-superlink")]
    if insecure:
        cmd.append("--insecure")
    else:
        ca, cert, key = _cert_files(certs_dir)
        cmd += ["--ssl-ca-certfile", str(ca), "--ssl-certfile", str(cert), "--ssl-keyfile", str(key),
                "--enable-supernode-auth"]
    database = Path(state_dir).absolute() / "superlink.db"
    return cmd + ["--database", str(database), "--host", host, "--port", str(port),
                  "--disable-runtime-dependency-installation"]


def _cert_files(certs_dir: Path | None) -> list[Path]:
    if certs_dir is None:
        raise DeploymentError(
            "no certificates given: pass --certs DIR holding ca.crt, server.pem and server.key "
            f"({_CERTS_HINT}), or --insecure for an unencrypted test set-up where any node may join"
        )
    folder = Path(certs_dir).absolute()
    if not folder.is_dir():
        raise DeploymentError(f"certificate folder {folder} does not exist; {_CERTS_HINT}")
    files = [folder / name for name in CERT_FILES]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise DeploymentError(f"missing certificate file {', '.join(missing)}; {_CERTS_HINT}")
    return files


# --- the flwr CLI's connection ---------------------------------------------------------------------


def flwr_home(state_dir: Path) -> Path:
    """The Flower home of a coordinator or site: ``STATE/flwr_home`` (absolute)."""
    return Path(state_dir).absolute() / "flwr_home"


def flwr_env(state_dir: Path) -> dict[str, str]:
    """The environment of every Flower process fedmodel starts for ``state_dir``.

    Returns
    -------
    dict[str, str]
        ``os.environ`` plus its own ``FLWR_HOME``, telemetry, update checks and per-run dependency
        installation turned off, and this interpreter's ``bin`` folder first on ``PATH``.
    """
    env = dict(os.environ)
    env.update({
        "FLWR_HOME": str(flwr_home(state_dir)),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "PATH": str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""),
    })
    return env


def superlink_env(state_dir: Path, *, insecure: bool) -> dict[str, str]:
    """The coordinator's SuperLink environment: :func:`flwr_env` plus :data:`REGISTRY_ENV` (not when ``insecure``).

    Flower starts ``flower-superexec`` and each ``flwr-serverapp`` with the SuperLink's environment,
    so fedmodel's ServerApp finds the registry there. Without node authentication (``insecure``) a
    node id is bound to no key, so no registry is named and owners stay self-declared.
    """
    env = flwr_env(state_dir)
    if not insecure:
        env[REGISTRY_ENV] = str(registry_path(state_dir))
    return env


def write_connection(state_dir: Path, address: str, ca_cert: Path | None) -> Path:
    """Write the ``fedmodel`` connection, the default one, into ``STATE/flwr_home/config.toml``.

    Other connections already in the file are kept.

    Parameters
    ----------
    state_dir : Path
        The coordinator's state folder.
    address : str
        ``HOST:PORT`` of the SuperLink; the host must be a name in the server certificate.
    ca_cert : Path or None
        The CA certificate, written as an absolute ``root-certificates`` path; None writes
        ``insecure = true`` (a SuperLink started with ``--insecure``).

    Returns
    -------
    Path
        The ``config.toml`` written.

    Raises
    ------
    DeploymentError
        A bad address, a missing CA file, or an unreadable existing ``config.toml``.
    """
    split_address(address)
    entry: dict[str, Any] = {"address": address}
    if ca_cert is None:
        entry["insecure"] = True
    else:
        ca = Path(ca_cert).resolve()
        if not ca.is_file():
            raise DeploymentError(f"CA certificate {ca} does not exist; {_CERTS_HINT}")
        entry["root-certificates"] = str(ca)
    path = flwr_home(state_dir) / "config.toml"
    config = _read_toml(path)
    section = config.get("superlink")
    section = section if isinstance(section, dict) else {}
    section.update({"default": CONNECTION, CONNECTION: entry})
    config["superlink"] = section
    _atomic_write(path, tomli_w.dumps(config).encode("utf-8"))
    return path


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise DeploymentError(f"cannot read {path}: {exc}; fix or remove it") from exc


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``path`` atomically (see :func:`fedmodel.fsio.atomic_write`) in an owner-only folder."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write(path, data)
    except OSError as exc:
        raise DeploymentError(f"cannot write {path}: {exc.strerror or exc}") from exc


# --- the registry of admitted sites ----------------------------------------------------------------


def registry_path(state_dir: Path) -> Path:
    """``STATE/nodes.json``."""
    return Path(state_dir).absolute() / REGISTRY_FILE


def read_nodes(state_dir: Path) -> list[NodeEntry]:
    """The registry's entries, without asking Flower (empty when there is no registry yet).

    Raises
    ------
    DeploymentError
        The registry file is unreadable or malformed (named).
    """
    return read_registry(registry_path(state_dir))


def read_registry(path: Path) -> list[NodeEntry]:
    """The entries of the registry file ``path`` (empty when it does not exist yet).

    Raises
    ------
    DeploymentError
        The file is unreadable or malformed (named).
    """
    if not path.exists():
        return []
    try:
        records = json.loads(path.read_text(encoding="utf-8"))["nodes"]
        return [NodeEntry(**{**r, "node_id": int(r["node_id"]), "live_status": None}) for r in records]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise DeploymentError(f"cannot read the node registry {path}: {exc!r}") from exc


def _write_nodes(state_dir: Path, nodes: Sequence[NodeEntry]) -> None:
    text = json.dumps({"nodes": [n.to_record() for n in nodes]}, indent=2) + "\n"
    _atomic_write(registry_path(state_dir), text.encode("utf-8"))


def allow_node(state_dir: Path, public_key_file: Path, name: str | None = None) -> NodeEntry:
    """Admit a site: register its public key with the running SuperLink and record it.

    Parameters
    ----------
    state_dir : Path
        The coordinator's state folder (its SuperLink must be running).
    public_key_file : Path
        The site's OpenSSH EC public key line (``fedmodel node keygen`` writes ``NAME.pub``).
    name : str or None, optional
        The site's name in the registry; default the key file's stem.

    Returns
    -------
    NodeEntry
        The new entry, status ``allowed``, with the node ID Flower assigned.

    Raises
    ------
    DeploymentError
        The file is not an OpenSSH EC public key; the name is invalid or taken; the key is already
        registered (or was revoked: a revoked key can never be registered again); Flower refused.
    """
    path = Path(public_key_file).absolute()
    line = _read_public_key(path)
    name = path.stem if name is None else name
    _check_name(name, path)
    digest = fingerprint(line)
    nodes = read_nodes(state_dir)
    _check_new(nodes, name, digest)
    answer = _flwr(state_dir, ["supernode", "register", str(path), CONNECTION, "--name", name])
    entry = NodeEntry(name, int(answer["node-id"]), digest, line.decode("utf-8", "replace"), "allowed")
    _write_nodes(state_dir, [*nodes, entry])
    return entry


def list_nodes(state_dir: Path) -> list[NodeEntry]:
    """The registry merged with Flower's live view (``flwr supernode list``).

    Returns
    -------
    list[NodeEntry]
        Every registry entry with its ``live_status``; nodes Flower knows and the registry does not
        come last, with status ``external``.

    Raises
    ------
    DeploymentError
        The registry is unreadable, or the SuperLink cannot be asked (is it running?).
    """
    nodes = read_nodes(state_dir)
    answer = _flwr(state_dir, ["supernode", "list", CONNECTION])
    live = {int(n["node-id"]): str(n.get("status", "unknown")) for n in answer.get("nodes", [])}
    merged = [replace(n, live_status=live.get(n.node_id, "unknown")) for n in nodes]
    known = {n.node_id for n in nodes}
    merged += [NodeEntry(f"node-{i}", i, "", "", "external", s) for i, s in live.items() if i not in known]
    return merged


def revoke_node(state_dir: Path, name: str) -> NodeEntry:
    """Unregister a site's node: a running SuperNode of it exits within seconds.

    The key is burned: Flower never registers an unregistered public key again, so a site that is to
    be admitted again needs a new key pair.

    Returns
    -------
    NodeEntry
        The entry, now with status ``revoked``.

    Raises
    ------
    DeploymentError
        No allowed site has that name, or Flower refused.
    """
    nodes = read_nodes(state_dir)
    index = _find_allowed(nodes, name)
    _flwr(state_dir, ["supernode", "unregister", str(nodes[index].node_id), CONNECTION])
    nodes[index] = replace(nodes[index], status="revoked")
    _write_nodes(state_dir, nodes)
    return nodes[index]


def _read_public_key(path: Path) -> bytes:
    try:
        if path.stat().st_size > MAX_KEY_BYTES:
            raise DeploymentError(f"{path} is too large for a public key: {KEY_HINT}")
        data = path.read_bytes()
    except FileNotFoundError:
        raise DeploymentError(f"public key file {path} does not exist") from None
    except OSError as exc:
        raise DeploymentError(f"cannot read public key file {path}: {exc.strerror or exc}") from exc
    line = data.strip()
    if line.startswith(b"-----BEGIN"):
        raise DeploymentError(f"{path} is a PEM file, not an OpenSSH public key line: {KEY_HINT}")
    if not line or b"\n" in line:
        raise DeploymentError(f"{path} is not an OpenSSH public key (not one line): {KEY_HINT}")
    try:
        key = load_ssh_public_key(line)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise DeploymentError(f"{path} is not an OpenSSH public key ({exc}): {KEY_HINT}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise DeploymentError(f"{path} holds a {line.split()[0].decode('ascii', 'replace')} key; Flower's "
                              f"SuperNode authentication needs an EC (NIST curve) key: {KEY_HINT}")
    return line


def _check_name(name: str, key_file: Path) -> None:
    if not _NAME.fullmatch(name):
        raise DeploymentError(f"node name {name!r} (from {key_file.name if name == key_file.stem else '--name'}): "
                              "use 1 to 64 letters, digits, '-' or '_'; choose one with --name")


def _check_new(nodes: Sequence[NodeEntry], name: str, digest: str) -> None:
    for node in nodes:
        if node.fingerprint == digest:
            burned = " and was revoked: a revoked key can never be registered again, the site must make a " \
                     "new key pair with `fedmodel node keygen`" if node.status == "revoked" else ""
            raise DeploymentError(f"this key (SHA256 {digest}) is already registered as {node.name!r} "
                                  f"(node {node.node_id}){burned}")
        if node.name == name and node.status != "revoked":
            raise DeploymentError(f"a site named {name!r} is already allowed (node {node.node_id}); "
                                  "choose another --name, or revoke it first")


def _find_allowed(nodes: Sequence[NodeEntry], name: str) -> int:
    for index, node in enumerate(nodes):
        if node.name == name and node.status == "allowed":
            return index
    if any(n.name == name for n in nodes):
        raise DeploymentError(f"site {name!r} is already revoked")
    known = ", ".join(sorted({n.name for n in nodes if n.status == "allowed"})) or "none"
    raise DeploymentError(f"no allowed site is named {name!r} (allowed: {known})")


def _flwr(state_dir: Path, args: list[str]) -> dict[str, Any]:
    """Run ``flwr ARGS --format json`` for ``state_dir`` and return its answer if it succeeded."""
    what = f"flwr {' '.join(args[:2])}"
    if not (flwr_home(state_dir) / "config.toml").is_file():
        raise DeploymentError(f"{state_dir} has no coordinator connection; start the coordinator first with "
                              f"`fedmodel coordinator start --state-dir {state_dir}`")
    try:
        proc = subprocess.run([_tool("flwr"), *args, "--format", "json"], env=flwr_env(state_dir),
                              capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=FLWR_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise DeploymentError(f"`{what}` did not answer within {FLWR_TIMEOUT_S:.0f} s") from None
    answer = _json_answer(proc.stdout)
    if answer is None:
        output = (proc.stdout + proc.stderr).strip()[-800:]
        raise DeploymentError(f"`{what}` gave no JSON answer (exit code {proc.returncode}): {output}")
    if not answer.get("success", False):
        message = _error_message(answer)
        if "unavailable" in message:
            message += f" (is `fedmodel coordinator start --state-dir {state_dir}` running?)"
        raise DeploymentError(f"`{what}` failed: {message}")
    return answer


def _error_message(answer: dict[str, Any]) -> str:
    """The error of a failed flwr answer, without the CLI's progress lines ("Using SuperLink: ...")."""
    text = str(answer.get("error-message", answer))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    kept = [ln for ln in lines if not ln.startswith("Using SuperLink") and not ln.endswith("...")]
    return " ".join(kept or lines)


def _json_answer(stdout: str) -> dict[str, Any] | None:
    """The JSON object the flwr CLI printed (the whole output, or its last line starting with '{')."""
    candidates = [stdout.strip()] + [ln.strip() for ln in reversed(stdout.splitlines()) if ln.startswith("{")]
    for text in candidates:
        try:
            answer = json.loads(text)
        except json.JSONDecodeError:
            continue
        if isinstance(answer, dict):
            return answer
    return None
