"""The coordinator's library: SuperLink command, flwr connection, node registry (flwr CLI faked at its seam)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import typer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from typer.testing import CliRunner

from fedmodel.cli.coordinator import coordinator_app
from fedmodel.deployment.coordinator import (
    REGISTRY_ENV,
    DeploymentError,
    allow_node,
    flwr_env,
    list_nodes,
    read_nodes,
    revoke_node,
    split_address,
    superlink_command,
    superlink_env,
    write_connection,
)
from fedmodel.deployment.process import ProcessExit, run_foreground
from fedmodel.security.certs import CertPaths, fingerprint, generate_node_keys, init_certs

FlwrFake = Callable[[dict[str, Any]], list[list[str]]]


@pytest.fixture
def certs(tmp_path: Path) -> CertPaths:
    return init_certs(tmp_path / "certs", ["localhost", "127.0.0.1"])


@pytest.fixture
def state(tmp_path: Path, certs: CertPaths) -> Path:
    """A coordinator state folder with its flwr connection written."""
    folder = tmp_path / "state"
    write_connection(folder, "127.0.0.1:9091", certs.ca_cert)
    return folder


@pytest.fixture
def fake_flwr(monkeypatch: pytest.MonkeyPatch) -> FlwrFake:
    """Replace the flwr CLI: each call answers the JSON given for its subcommand, with exit code 0."""

    def install(answers: dict[str, Any]) -> list[list[str]]:
        calls: list[list[str]] = []

        def run(cmd: list[str], **_kwargs: object) -> subprocess.CompletedProcess[str]:
            calls.append(cmd)
            answer = answers[cmd[2]]
            return subprocess.CompletedProcess(cmd, 0, json.dumps(answer(cmd) if callable(answer) else answer), "")

        monkeypatch.setattr("fedmodel.deployment.coordinator.subprocess.run", run)
        return calls

    return install


def _value(cmd: list[str], flag: str) -> str:
    return cmd[cmd.index(flag) + 1]


def test_superlink_command_with_certificates(certs: CertPaths, tmp_path: Path) -> None:
    cmd = superlink_command(certs.ca_cert.parent, tmp_path / "state", "127.0.0.1", 9091, insecure=False)
    assert Path(cmd[0]).name == "flower-superlink"
    assert _value(cmd, "--ssl-ca-certfile") == str(certs.ca_cert.absolute())
    assert _value(cmd, "--ssl-certfile") == str(certs.server_cert.absolute())
    assert _value(cmd, "--ssl-keyfile") == str(certs.server_key.absolute())
    assert _value(cmd, "--database") == str((tmp_path / "state" / "superlink.db").absolute())
    assert (_value(cmd, "--host"), _value(cmd, "--port")) == ("127.0.0.1", "9091")
    assert "--enable-supernode-auth" in cmd and "--disable-runtime-dependency-installation" in cmd
    assert "--insecure" not in cmd


def test_superlink_command_insecure_has_no_tls_or_auth(tmp_path: Path) -> None:
    cmd = superlink_command(None, tmp_path, "127.0.0.1", 9091, insecure=True)
    assert "--insecure" in cmd
    assert not [a for a in cmd if a.startswith("--ssl") or a == "--enable-supernode-auth"]


def test_superlink_command_without_certificates_suggests_certs_init(tmp_path: Path) -> None:
    with pytest.raises(DeploymentError, match="fedmodel certs init") as caught:
        superlink_command(None, tmp_path, "127.0.0.1", 9091, insecure=False)
    assert caught.value.exit_code == 2
    assert "--insecure" in str(caught.value)


@pytest.mark.parametrize("name", ["ca.crt", "server.pem", "server.key"])
def test_superlink_command_names_the_missing_file(certs: CertPaths, tmp_path: Path, name: str) -> None:
    (certs.ca_cert.parent / name).unlink()
    with pytest.raises(DeploymentError) as caught:
        superlink_command(certs.ca_cert.parent, tmp_path, "127.0.0.1", 9091, insecure=False)
    assert str(certs.ca_cert.parent.absolute() / name) in str(caught.value)
    assert "fedmodel certs init" in str(caught.value)


def test_superlink_command_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DeploymentError, match="nowhere"):
        superlink_command(tmp_path / "nowhere", tmp_path, "127.0.0.1", 9091, insecure=False)


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:9091", ("127.0.0.1", 9091)), ("coord.example.org:1", ("coord.example.org", 1)),
    ("[::1]:9091", ("::1", 9091)),
])
def test_split_address(text: str, expected: tuple[str, int]) -> None:
    assert split_address(text) == expected


@pytest.mark.parametrize("text", ["127.0.0.1", ":9091", "host:0", "host:65536", "host:port", "::1:9091", "a b:1"])
def test_split_address_rejects(text: str) -> None:
    with pytest.raises(DeploymentError, match="HOST:PORT"):
        split_address(text)


def test_write_connection_uses_an_absolute_ca_path(certs: CertPaths, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = write_connection(Path("state"), "127.0.0.1:9091", Path("certs/ca.crt"))
    assert path == (tmp_path / "state" / "flwr_home" / "config.toml").absolute()
    config = tomllib.loads(path.read_text())
    assert config["superlink"]["default"] == "fedmodel"
    entry = config["superlink"]["fedmodel"]
    assert entry == {"address": "127.0.0.1:9091", "root-certificates": str(certs.ca_cert.resolve())}
    assert Path(entry["root-certificates"]).is_absolute()


def test_write_connection_insecure_keeps_other_connections(tmp_path: Path) -> None:
    home = tmp_path / "flwr_home"
    home.mkdir()
    (home / "config.toml").write_text('[superlink]\ndefault = "local"\n[superlink.local]\naddress = ":local:"\n')
    config = tomllib.loads(write_connection(tmp_path, "127.0.0.1:9091", None).read_text())
    assert config["superlink"]["fedmodel"] == {"address": "127.0.0.1:9091", "insecure": True}
    assert config["superlink"]["local"] == {"address": ":local:"}
    assert config["superlink"]["default"] == "fedmodel"


def test_write_connection_missing_ca(tmp_path: Path) -> None:
    with pytest.raises(DeploymentError, match=r"nope\.crt"):
        write_connection(tmp_path, "127.0.0.1:9091", tmp_path / "nope.crt")


def test_flwr_env(tmp_path: Path) -> None:
    env = flwr_env(tmp_path)
    assert env["FLWR_HOME"] == str(tmp_path.absolute() / "flwr_home")
    assert (env["FLWR_TELEMETRY_ENABLED"], env["FLWR_DISABLE_UPDATE_CHECK"]) == ("0", "1")
    assert env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] == "1"
    assert env["PATH"].startswith(str(Path(sys.executable).parent))


def test_allow_node_rejects_a_pem_public_key(state: Path, tmp_path: Path, fake_flwr: FlwrFake) -> None:
    calls = fake_flwr({})
    pem = tmp_path / "site.pem"
    pem.write_bytes(ec.generate_private_key(ec.SECP384R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(DeploymentError) as caught:
        allow_node(state, pem)
    message = str(caught.value)
    assert str(pem) in message and "ecdsa-sha2-nistp384 AAAA" in message and "fedmodel node keygen" in message
    assert calls == [] and read_nodes(state) == []


@pytest.mark.parametrize("content", [b"hello world\n", b"", b"ecdsa-sha2-nistp384 AAAAnotbase64!!\n",
                                     b"\x00\xff\x10garbage"])
def test_allow_node_rejects_garbage(state: Path, tmp_path: Path, fake_flwr: FlwrFake, content: bytes) -> None:
    calls = fake_flwr({})
    bad = tmp_path / "site.pub"
    bad.write_bytes(content)
    with pytest.raises(DeploymentError) as caught:
        allow_node(state, bad)
    assert str(bad) in str(caught.value) and "ecdsa-sha2-nistp384 AAAA" in str(caught.value)
    assert calls == []


def test_allow_node_rejects_a_non_ec_key(state: Path, tmp_path: Path, fake_flwr: FlwrFake) -> None:
    fake_flwr({})
    pub = tmp_path / "ed.pub"
    pub.write_bytes(ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))
    with pytest.raises(DeploymentError, match="ssh-ed25519 key"):
        allow_node(state, pub)


def test_allow_node_missing_file(state: Path, tmp_path: Path) -> None:
    with pytest.raises(DeploymentError, match="does not exist"):
        allow_node(state, tmp_path / "absent.pub")


def test_allow_node_needs_a_started_coordinator(tmp_path: Path) -> None:
    keys = generate_node_keys(tmp_path / "keys", "site-a")
    with pytest.raises(DeploymentError, match="fedmodel coordinator start"):
        allow_node(tmp_path / "never-started", keys.public)


def test_allow_list_revoke_with_flwr_faked(state: Path, tmp_path: Path, fake_flwr: FlwrFake) -> None:
    keys = generate_node_keys(tmp_path / "keys", "site-a")
    live = {"success": True, "nodes": [{"node-id": "17461525203068410578", "status": "online"},
                                       {"node-id": "5", "status": "registered"}]}
    calls = fake_flwr({
        "register": {"success": True, "node-id": 17461525203068410578},
        "list": live,
        "unregister": {"success": True, "node-id": 17461525203068410578},
    })
    entry = allow_node(state, keys.public)
    assert (entry.name, entry.node_id, entry.status) == ("site-a", 17461525203068410578, "allowed")
    assert entry.fingerprint == fingerprint(keys.public.read_bytes())
    assert calls[0][1:] == ["supernode", "register", str(keys.public.absolute()), "fedmodel", "--name", "site-a",
                            "--format", "json"]
    assert read_nodes(state) == [entry]

    nodes = list_nodes(state)
    assert [(n.name, n.status, n.live_status) for n in nodes] == [
        ("site-a", "allowed", "online"), ("node-5", "external", "registered")]

    revoked = revoke_node(state, "site-a")
    assert calls[-1][1:4] == ["supernode", "unregister", "17461525203068410578"]
    assert revoked.status == "revoked" and read_nodes(state)[0].status == "revoked"
    with pytest.raises(DeploymentError, match="never be registered again"):
        allow_node(state, keys.public, "site-a-again")
    with pytest.raises(DeploymentError, match="already revoked"):
        revoke_node(state, "site-a")


def test_allow_node_refuses_a_taken_name(state: Path, tmp_path: Path, fake_flwr: FlwrFake) -> None:
    first = generate_node_keys(tmp_path / "k1", "site")
    second = generate_node_keys(tmp_path / "k2", "site")
    ids = iter([1, 2])
    fake_flwr({"register": lambda _cmd: {"success": True, "node-id": next(ids)}})
    allow_node(state, first.public)
    with pytest.raises(DeploymentError, match="already allowed"):
        allow_node(state, second.public)
    assert allow_node(state, second.public, "site-2").node_id == 2


def test_flwr_failure_with_exit_code_zero_is_an_error(state: Path, tmp_path: Path, fake_flwr: FlwrFake) -> None:
    keys = generate_node_keys(tmp_path / "keys", "site-a")
    fake_flwr({"register": {"success": False, "error-message": "Connection to the SuperLink is unavailable."}})
    with pytest.raises(DeploymentError, match=r"unavailable.*fedmodel coordinator start"):
        allow_node(state, keys.public)
    assert read_nodes(state) == []


def test_revoke_unknown_name_lists_the_allowed(state: Path) -> None:
    with pytest.raises(DeploymentError, match=r"no allowed site is named 'ghost' \(allowed: none\)"):
        revoke_node(state, "ghost")


def test_registry_is_written_atomically(state: Path, tmp_path: Path, fake_flwr: FlwrFake) -> None:
    keys = generate_node_keys(tmp_path / "keys", "site-a")
    fake_flwr({"register": {"success": True, "node-id": 3}})
    allow_node(state, keys.public)
    assert sorted(p.name for p in state.iterdir()) == ["flwr_home", "nodes.json"]  # no temporary file left
    record = json.loads((state / "nodes.json").read_text())["nodes"][0]
    assert set(record) == {"name", "node_id", "fingerprint", "public_key", "status"}


def test_run_foreground_tees_and_returns_the_code(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    lines: list[str] = []
    script = "import sys; print('\\x1b[92mINFO\\x1b[0m: hello', flush=True); sys.exit(3)"
    result = run_foreground([sys.executable, "-c", script], env=dict(os.environ), cwd=tmp_path,
                            log_path=tmp_path / "out.log", on_line=lines.append)
    assert result == ProcessExit(3, False)
    assert lines == ["INFO: hello"]
    assert (tmp_path / "out.log").read_text() == "INFO: hello\n"
    assert "hello" in capfd.readouterr().out


def test_run_foreground_forwards_sigterm(tmp_path: Path) -> None:
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    started = time.monotonic()
    try:
        result = run_foreground([sys.executable, "-c", "import time; time.sleep(30)"], env=dict(os.environ),
                                cwd=tmp_path)
    finally:
        timer.cancel()
    assert result == ProcessExit(128 + signal.SIGTERM, True)
    assert time.monotonic() - started < 15


def test_allow_node_cli_prints_one_error_line(state: Path, tmp_path: Path) -> None:
    garbage = tmp_path / "site.pub"
    garbage.write_text("not a key\n")
    app = typer.Typer()
    app.add_typer(coordinator_app, name="coordinator")
    result = CliRunner().invoke(app, ["coordinator", "allow-node", str(garbage), "--state-dir", str(state)])
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and "Traceback" not in result.output
    assert "site.pub" in result.output and "fedmodel node keygen" in result.output


def test_the_superlink_names_the_registry_for_its_serverapps_unless_insecure(certs: CertPaths, tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, dict[str, str]] = {}

    def run(cmd: list[str], *, env: dict[str, str], cwd: Path, log_path: Path) -> ProcessExit:
        seen[cmd[0]] = env
        return ProcessExit(0, True)

    monkeypatch.setattr("fedmodel.cli.coordinator.run_foreground", run)
    app = typer.Typer()
    app.add_typer(coordinator_app, name="coordinator")
    state = tmp_path / "state"
    result = CliRunner().invoke(app, ["coordinator", "start", "--certs", str(certs.ca_cert.parent), "--state-dir",
                                      str(state)])
    assert result.exit_code == 0, result.output
    (env,) = seen.values()
    assert env[REGISTRY_ENV] == str(state.absolute() / "nodes.json")  # Flower passes it on to flwr-serverapp
    assert superlink_env(state, insecure=False) == env
    assert REGISTRY_ENV not in superlink_env(state, insecure=True)  # no node auth: no key names anybody
