"""``fedmodel certs init`` and ``fedmodel node keygen``: files on success, exit 2 and one line on bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from click.testing import Result
from typer.testing import CliRunner

from fedmodel.cli.certs import certs_app
from fedmodel.cli.node import node_app


def _invoke(args: list[str]) -> Result:
    app = typer.Typer()
    app.add_typer(certs_app, name="certs")
    app.add_typer(node_app, name="node")
    return CliRunner().invoke(app, args)


def test_certs_init_writes_the_files(tmp_path: Path) -> None:
    result = _invoke(["certs", "init", "--out", str(tmp_path), "--host", "localhost", "--host", "127.0.0.1"])
    assert result.exit_code == 0, result.output
    for name in ("ca.crt", "server.pem", "server.key"):
        assert (tmp_path / name).is_file()
    assert not (tmp_path / "ca.key").exists() and (tmp_path.with_name(tmp_path.name + "-ca") / "ca.key").is_file()
    assert "localhost, 127.0.0.1" in result.output
    assert "server.pem" in result.output


def test_node_keygen_writes_the_pair(tmp_path: Path) -> None:
    result = _invoke(["node", "keygen", "--out", str(tmp_path), "--name", "site-a"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "site-a.key").is_file() and (tmp_path / "site-a.pub").is_file()
    assert "fingerprint" in result.output
    assert "fedmodel coordinator allow-node site-a.pub" in result.output


@pytest.mark.parametrize("args", [
    ["certs", "init", "--host", "bad host!"],
    ["certs", "init"],
    ["certs", "init", "--host", "localhost", "--days", "0"],
    ["node", "keygen", "--name", "bad name"],
])
def test_bad_input_exits_2_without_a_traceback(tmp_path: Path, args: list[str]) -> None:
    result = _invoke([*args, "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "error:" in result.output
    assert "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []


def test_bad_host_is_named(tmp_path: Path) -> None:
    result = _invoke(["certs", "init", "--out", str(tmp_path), "--host", "bad host!"])
    assert "'bad host!'" in result.output


@pytest.mark.parametrize("args", [
    ["certs", "init", "--host", "localhost"],
    ["node", "keygen", "--name", "site-a"],
])
def test_second_run_into_the_same_folder_needs_force(tmp_path: Path, args: list[str]) -> None:
    assert _invoke([*args, "--out", str(tmp_path)]).exit_code == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    again = _invoke([*args, "--out", str(tmp_path)])
    assert again.exit_code == 2
    assert "error:" in again.output and "refusing to overwrite" in again.output
    assert "Traceback" not in again.output
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_force_replaces_the_certificates(tmp_path: Path) -> None:
    args = ["certs", "init", "--out", str(tmp_path), "--host", "localhost"]
    assert _invoke(args).exit_code == 0
    before = (tmp_path / "ca.crt").read_bytes()
    assert _invoke([*args, "--force"]).exit_code == 0
    assert (tmp_path / "ca.crt").read_bytes() != before


def test_certs_rotate_makes_a_new_server_key(tmp_path: Path) -> None:
    assert _invoke(["certs", "init", "--out", str(tmp_path / "c"), "--ca-dir", str(tmp_path / "ca"),
                    "--host", "localhost"]).exit_code == 0
    before = (tmp_path / "c" / "server.key").read_bytes()
    result = _invoke(["certs", "rotate", "--out", str(tmp_path / "c"), "--ca-dir", str(tmp_path / "ca")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "c" / "server.key").read_bytes() != before and "Restart the coordinator" in result.output
    missing = _invoke(["certs", "rotate", "--out", str(tmp_path / "c")])  # default <out>-ca: not there
    assert missing.exit_code == 2 and "is missing" in missing.output
