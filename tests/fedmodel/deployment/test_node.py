"""A site's SuperNode command: the --node-config contract with the ClientApp, and checks at the boundary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import typer
from flwr.common.config import parse_config_args
from typer.testing import CliRunner

from fedmodel.cli.node import node_app
from fedmodel.deployment.node import NODE_CONFIG_KEYS, exit_hint, supernode_command, toml_string
from fedmodel.errors import ConfigError
from fedmodel.security.certs import generate_node_keys, init_certs


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Valid keyword arguments of supernode_command, with relative paths (cwd = tmp_path)."""
    monkeypatch.chdir(tmp_path)
    init_certs(Path("certs"), ["localhost"])
    generate_node_keys(Path("keys"), "site-a")
    Path("data.csv").write_text("x,y\n1,0\n")
    return {
        "coordinator": "127.0.0.1:9091", "ca_cert": Path("certs/ca.crt"), "key": Path("keys/site-a.key"),
        "data": Path("data.csv"), "label": "y", "name": "site-a", "budget_epsilon": 3.0, "delta": 1e-5,
        "device": "cpu", "state_dir": Path("state"), "port": 9094, "insecure": False,
    }


def _value(cmd: list[str], flag: str) -> str:
    return cmd[cmd.index(flag) + 1]


def _node_config(cmd: list[str]) -> dict[str, Any]:
    return parse_config_args([_value(cmd, "--node-config")])


def test_node_config_parses_back_to_the_keys(settings: dict[str, Any], tmp_path: Path) -> None:
    cmd = supernode_command(**settings, id_columns=("patient_id", "mrn"))
    assert _node_config(cmd) == {
        "data-path": str(tmp_path / "data.csv"), "label": "y", "owner-name": "site-a", "budget-epsilon": 3.0,
        "delta": 1e-5, "device": "cpu", "state-dir": str(tmp_path / "state"), "coordinator": "127.0.0.1:9091",
        "allow-no-dp": False, "min-noise-multiplier": 0.0, "require-secure-aggregation": False,
        "allow-local-statistics": False, "id-columns": "patient_id,mrn", "evaluation": "dp", "evaluation-noise": 10.0,
        "exact-replies": False,
    }
    assert set(_node_config(cmd)) <= set(NODE_CONFIG_KEYS)
    from fedmodel.config import NodeSettings

    node = NodeSettings.from_node_config(_node_config(cmd))
    assert node is not None and node.id_columns == ("patient_id", "mrn")
    assert "id-columns" not in _node_config(supernode_command(**settings))  # none named: the key is absent


def test_the_owners_policy_and_ledger_key_reach_the_clientapp(settings: dict[str, Any], tmp_path: Path) -> None:
    from fedmodel.config import NodeSettings
    from fedmodel.deployment.node import privacy_policy

    policy = privacy_policy(allow_no_dp=True, min_noise_multiplier=0.8, max_epsilon_per_run=1.5,
                            require_secure_aggregation=True)
    cmd = supernode_command(**settings, policy=policy, ledger_key=Path("ledger.key"))
    node = NodeSettings.from_node_config(_node_config(cmd))
    assert node is not None and node.policy == policy
    assert node.ledger_key == str(tmp_path / "ledger.key") and node.coordinator == "127.0.0.1:9091"
    assert set(_node_config(cmd)) == set(NODE_CONFIG_KEYS) - {"id-columns", "model-path", "audit-key"}


def test_allow_local_statistics_reaches_the_clientapp_and_its_help_says_what_it_gives_up(
        settings: dict[str, Any]) -> None:
    from typer.testing import CliRunner

    from fedmodel.cli.node import node_app
    from fedmodel.config import NodeSettings
    from fedmodel.deployment.node import privacy_policy

    policy = privacy_policy(allow_no_dp=False, min_noise_multiplier=0.0, max_epsilon_per_run=None,
                            require_secure_aggregation=False, allow_local_statistics=True)
    node = NodeSettings.from_node_config(_node_config(supernode_command(**settings, policy=policy)))
    assert node is not None and node.allow_local_statistics and node.policy.allow_local_statistics
    default = NodeSettings.from_node_config(_node_config(supernode_command(**settings)))
    assert default is not None and not default.policy.allow_local_statistics
    help_text = " ".join(CliRunner().invoke(node_app, ["start", "--help"], env={"COLUMNS": "200"}).output.split())
    assert "--allow-local-statistics" in help_text and "record-level guarantee no longer covers" in help_text


def test_the_owners_release_options_reach_the_clientapp(settings: dict[str, Any]) -> None:
    from fedmodel.config import NodeSettings

    cmd = supernode_command(**settings, evaluation="off", evaluation_noise=25.0, exact_replies=True)
    node = NodeSettings.from_node_config(_node_config(cmd))
    assert node is not None and (node.evaluation, node.evaluation_noise, node.exact_replies) == ("off", 25.0, True)
    default = NodeSettings.from_node_config(_node_config(supernode_command(**settings)))
    assert default is not None and (default.evaluation, default.exact_replies) == ("dp", False)


def test_invalid_release_options_are_all_named(settings: dict[str, Any]) -> None:
    from fedmodel.deployment.node import privacy_policy

    with pytest.raises(ConfigError) as caught:
        supernode_command(**settings, evaluation="maybe", evaluation_noise=0.0)
    assert "--evaluation 'maybe'" in str(caught.value) and "--evaluation-noise 0.0" in str(caught.value)
    policy = privacy_policy(allow_no_dp=False, min_noise_multiplier=12.0, max_epsilon_per_run=None,
                            require_secure_aggregation=False)
    with pytest.raises(ConfigError, match="below --min-noise-multiplier"):  # every evaluation would be refused
        supernode_command(**settings, policy=policy, evaluation_noise=10.0)


def test_invalid_policy_options_are_all_named() -> None:
    from fedmodel.deployment.node import privacy_policy

    with pytest.raises(ConfigError) as caught:
        privacy_policy(allow_no_dp=False, min_noise_multiplier=-1.0, max_epsilon_per_run=0.0,
                       require_secure_aggregation=False)
    assert caught.value.problems == [
        "--min-noise-multiplier -1.0: expected a finite number >= 0 (0 = no minimum)",
        "--max-epsilon-per-run 0.0: expected a finite number > 0",
    ]


def test_an_id_column_with_a_comma_is_refused(settings: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="--id-column 'a,b': expected one column name"):
        supernode_command(**settings, id_columns=("a,b",))


def test_command_flags(settings: dict[str, Any], tmp_path: Path) -> None:
    cmd = supernode_command(**settings)
    assert Path(cmd[0]).name == "flower-supernode"
    assert _value(cmd, "--superlink") == "127.0.0.1:9091"
    assert _value(cmd, "--root-certificates") == str(tmp_path / "certs" / "ca.crt")
    assert _value(cmd, "--auth-supernode-private-key") == str(tmp_path / "keys" / "site-a.key")
    assert _value(cmd, "--port") == "9094"
    assert "--insecure" not in cmd


def test_a_free_port_is_picked_when_none_is_given(settings: dict[str, Any]) -> None:
    ports = {_value(supernode_command(**{**settings, "port": None}), "--port") for _ in range(3)}
    assert all(1 <= int(p) <= 65535 for p in ports) and "9094" not in ports


def test_insecure_has_no_credentials(settings: dict[str, Any]) -> None:
    cmd = supernode_command(**{**settings, "ca_cert": None, "key": None, "insecure": True})
    assert "--insecure" in cmd and "--root-certificates" not in cmd and "--auth-supernode-private-key" not in cmd


def test_insecure_with_a_key_is_refused(settings: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="--insecure cannot be combined with --ca and --key"):
        supernode_command(**{**settings, "insecure": True})


@pytest.mark.parametrize("text", ['say "hi"', "back\\slash", "sp ace=x y=1", "ünï-cødé 😀", "tab\there", "",
                                  "a'b"])
def test_strings_round_trip(settings: dict[str, Any], text: str) -> None:
    assert _node_config(supernode_command(**{**settings, "label": text, "name": text or "n"}))["label"] == text


def test_a_string_with_both_quotes_is_refused() -> None:
    with pytest.raises(ValueError, match="both"):
        toml_string("it's \"odd\"")


@pytest.mark.parametrize(("change", "named"), [
    ({"data": Path("missing.csv")}, "missing.csv"),
    ({"data": Path("certs/ca.crt")}, "'.crt'"),
    ({"budget_epsilon": 0.0}, "--budget-epsilon 0.0"),
    ({"budget_epsilon": float("inf")}, "--budget-epsilon inf"),
    ({"delta": 1.0}, "--delta 1.0"),
    ({"delta": 0.0}, "--delta 0.0"),
    ({"device": "gpu"}, "'gpu'"),
    ({"coordinator": "127.0.0.1"}, "'127.0.0.1'"),
    ({"ca_cert": Path("nope.crt")}, "nope.crt"),
    ({"ca_cert": Path("keys/site-a.key")}, "site-a.key: not a PEM CA certificate"),
    ({"key": Path("keys/site-a.pub")}, "this is the public key"),
    ({"key": None}, "--key is required"),
    ({"ca_cert": None}, "--ca is required"),
    ({"port": 70000}, "--port 70000"),
    ({"label": "it's \"odd\""}, "--label"),
])
def test_bad_settings_are_named(settings: dict[str, Any], change: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        supernode_command(**{**settings, **change})
    assert named in str(caught.value)
    assert caught.value.exit_code == 2


def test_all_problems_are_listed_at_once(settings: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as caught:
        supernode_command(**{**settings, "budget_epsilon": -1.0, "delta": 2.0, "device": "tpu"})
    assert len(caught.value.problems) == 3


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_without_a_gpu_is_refused(settings: dict[str, Any], device: str) -> None:
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        supernode_command(**{**settings, "device": device})


@pytest.mark.parametrize(("output", "expected"), [
    ("SSL/TLS handshake error detected.\n[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: unable to "
     "get local issuer certificate", "the coordinator's certificate is not signed by /x/ca.crt"),
    ("ERROR : Exit Code: 305\n[code: 2004] Failed to activate SuperNode.", "this node's key is not admitted"),
    ("[code: 2001] SuperNode authentication is enabled.", "pass --key NODE_KEY"),
    ("ERROR: [Errno 98] error while attempting to bind on address ('127.0.0.1', 9094): address already in use",
     "--port"),
    ("something else", None),
])
def test_exit_hint(output: str, expected: str | None) -> None:
    hint = exit_hint(output, ca_cert=Path("/x/ca.crt"), coordinator="127.0.0.1:9091")
    assert hint == expected if expected is None else expected in (hint or "")


def test_node_start_cli_lists_every_problem_and_starts_nothing(settings: dict[str, Any], tmp_path: Path) -> None:
    app = typer.Typer()
    app.add_typer(node_app, name="node")
    result = CliRunner().invoke(app, [
        "node", "start", "--coordinator", "127.0.0.1", "--ca", "certs/ca.crt", "--key", "keys/site-a.key",
        "--data", "data.txt", "--budget-epsilon", "0", "--device", "gpu", "--state-dir", "state",
    ])
    assert result.exit_code == 2
    assert result.output.startswith("error: invalid configuration:") and "Traceback" not in result.output
    for named in ("'127.0.0.1'", "data.txt", "--budget-epsilon 0.0", "'gpu'"):
        assert named in result.output
    assert not (tmp_path / "state").exists()


def test_a_model_folder_reaches_the_clientapp_and_a_bad_one_is_refused(settings: dict[str, Any], bert_dir: Path,
                                                                       tmp_path: Path) -> None:
    from fedmodel.config import NodeSettings

    node = NodeSettings.from_node_config(_node_config(supernode_command(**settings, model_path=bert_dir)))
    assert node is not None and node.model_path == str(bert_dir)
    (tmp_path / "empty-model").mkdir()
    with pytest.raises(ConfigError) as caught:
        supernode_command(**settings, model_path=tmp_path / "empty-model")
    assert caught.value.problems == [f"--model-path {tmp_path / 'empty-model'}: missing file config.json; expected "
                                     "the model's configuration there"]
