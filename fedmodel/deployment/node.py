"""A data site's side of a deployment: check its settings and build its ``flower-supernode`` command.

The SuperNode hands its ``--node-config`` to every ClientApp it runs, as ``context.node_config``. The keys
are the contract with fedmodel's ClientApp (:class:`~fedmodel.config.NodeSettings`): ``data-path`` and
``state-dir`` (absolute paths), ``label``, ``owner-name``, ``budget-epsilon``, ``delta``, ``device``,
``coordinator``, the owner's privacy policy (``allow-no-dp``, ``min-noise-multiplier``,
``require-secure-aggregation``, ``allow-local-statistics`` and, when set, ``max-epsilon-per-run``),
what evaluate and train replies release (``evaluation``, ``evaluation-noise``, ``exact-replies``) and,
when set, ``id-columns`` and ``ledger-key``. Flower parses the value with
``flwr.common.config.parse_config_args``: space-separated ``key=value`` pairs whose values are TOML
values, where a quoted string may not contain its own quote character.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from fedmodel.config import DEVICE_PATTERN, NodeSettings
from fedmodel.deployment.coordinator import DeploymentError, split_address
from fedmodel.device import resolve_device
from fedmodel.errors import ConfigError, FedModelError
from fedmodel.privacy.policy import PrivacyPolicy
from fedmodel.runs import free_port as _free_port
from fedmodel.runs import tool as _tool

__all__ = ["DATA_SUFFIXES", "NODE_CONFIG_KEYS", "check_node_audit_log", "exit_hint", "format_node_config", "open_node_ledger",
           "privacy_policy", "supernode_command", "toml_string"]

DATA_SUFFIXES = (".csv", ".parquet", ".npz", ".jsonl")
NODE_CONFIG_KEYS = NodeSettings.KEYS
"""The ``--node-config`` keys: NodeSettings' fields (declared once in :mod:`fedmodel.config.node`)."""
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_KEYGEN = "`fedmodel node keygen --out DIR --name NAME`"

NodeConfig = Mapping[str, str | float | bool]


def supernode_command(*, coordinator: str, ca_cert: Path | None, key: Path | None, data: Path, label: str,
                      name: str, budget_epsilon: float, delta: float, device: str, state_dir: Path,
                      port: int | None, insecure: bool, id_columns: tuple[str, ...] = (),
                      policy: PrivacyPolicy | None = None, ledger_key: Path | None = None,
                      model_path: Path | None = None, evaluation: str = "dp", evaluation_noise: float = 10.0,
                      exact_replies: bool = False, audit_key: Path | None = None) -> list[str]:
    """The ``flower-supernode`` command of a site, after checking every setting.

    Parameters
    ----------
    coordinator : str
        The coordinator's SuperLink as ``HOST:PORT``.
    ca_cert : Path or None
        The coordinator's CA certificate (``ca.crt``); required unless ``insecure``.
    key : Path or None
        This site's OpenSSH EC private key (``fedmodel node keygen``); required unless ``insecure``.
    data : Path
        The site's data file: ``.csv``, ``.parquet`` or ``.npz`` (texts: ``.csv``, ``.parquet`` or ``.jsonl``).
    label : str
        The label column of a table ("" for the data reader's default).
    name : str
        The data owner's name, as the coordinator's reports show it.
    budget_epsilon, delta : float
        This site's total privacy budget (epsilon > 0) and delta (0 < delta < 1).
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``; checked against this machine.
    state_dir : Path
        The site's state folder (privacy accounting, the SuperNode's working directory).
    port : int or None
        The SuperNode's local Runtime API port; None picks a free one (two nodes on one machine need
        different ports).
    insecure : bool
        Plain HTTP and no authentication (a coordinator started with ``--insecure``).
    id_columns : tuple of str
        The site's identifier columns: dropped before anything else, never features, never sent.
    policy : PrivacyPolicy or None
        The owner's privacy policy (None: the default, DP required and nothing else).
    ledger_key : Path or None
        The 32-byte key file of the site's encrypted privacy ledger (None: not encrypted).
    model_path : Path or None
        This site's copy of the base model folder, for language-model runs (None: tables only).
    evaluation : str
        What an evaluate message gets: ``dp`` (a charged Gaussian release), ``exact`` or ``off`` (refused).
    evaluation_noise : float
        The noise multiplier of a ``dp`` evaluation release (> 0).
    exact_replies : bool
        Exact train-loss and data-quality counts in train replies (default: withheld and coarsened).
    audit_key : Path or None
        The audit log's HMAC key file, outside the state folder (None: an unkeyed audit log).

    Returns
    -------
    list[str]
        The command line, with absolute paths.

    Raises
    ------
    ConfigError
        Every invalid setting, each named with its value.
    """
    problems = _check(coordinator, ca_cert, key, data, label, name, budget_epsilon, delta, device, state_dir,
                      port, insecure)
    if model_path is not None:
        problems += _check_model(model_path)
    if evaluation not in ("dp", "exact", "off"):
        problems.append(f"--evaluation {evaluation!r}: expected dp, exact or off")
    if not _is_number(evaluation_noise) or not (math.isfinite(evaluation_noise) and evaluation_noise > 0):
        problems.append(f"--evaluation-noise {evaluation_noise!r}: expected a finite number > 0")
    elif (evaluation == "dp" and policy is not None and _is_number(policy.min_noise_multiplier)
          and evaluation_noise < policy.min_noise_multiplier):
        problems.append(f"--evaluation-noise {evaluation_noise!r}: below --min-noise-multiplier "
                        f"{policy.min_noise_multiplier!r}, so every evaluation would be refused")
    if problems:
        raise ConfigError(problems)
    policy = policy if policy is not None else PrivacyPolicy()
    bad_ids = [c for c in id_columns if not c.strip() or "," in c]
    if bad_ids:
        raise ConfigError([f"--id-column {c!r}: expected one column name (repeat the option for several)"
                           for c in bad_ids])
    settings = NodeSettings(
        data_path=str(_absolute(data)), label=label, owner_name=name, budget_epsilon=budget_epsilon, delta=delta,
        device=device, state_dir=str(_absolute(state_dir)), coordinator=coordinator.strip(),
        allow_no_dp=not policy.dp_required, min_noise_multiplier=policy.min_noise_multiplier,
        max_epsilon_per_run=policy.max_epsilon_per_run,
        require_secure_aggregation=policy.require_secure_aggregation,
        allow_local_statistics=policy.allow_local_statistics,
        ledger_key=str(_absolute(ledger_key)) if ledger_key is not None else "",
        id_columns=tuple(c.strip() for c in id_columns),
        model_path=str(_absolute(model_path)) if model_path is not None else "",
        evaluation=evaluation, evaluation_noise=evaluation_noise, exact_replies=bool(exact_replies),
        audit_key=str(_absolute(audit_key)) if audit_key is not None else "",
    )
    config = settings.to_node_config()
    cmd = [_tool("flower-supernode"), "--superlink", coordinator.strip()]
    if insecure:
        cmd.append("--insecure")
    else:
        cmd += ["--root-certificates", str(_absolute(ca_cert)), "--auth-supernode-private-key",
                str(_absolute(key))]
    return cmd + ["--port", str(port if port is not None else _free_port()),
                  "--node-config", format_node_config(config)]


def privacy_policy(*, allow_no_dp: bool, min_noise_multiplier: float, max_epsilon_per_run: float | None,
                   require_secure_aggregation: bool, allow_local_statistics: bool = False) -> PrivacyPolicy:
    """The owner's policy from ``fedmodel node start``'s options; ConfigError naming every invalid option."""
    problems = []
    if not _is_number(min_noise_multiplier) or not (math.isfinite(min_noise_multiplier) and min_noise_multiplier >= 0):
        problems.append(f"--min-noise-multiplier {min_noise_multiplier!r}: expected a finite number >= 0 "
                        "(0 = no minimum)")
    if max_epsilon_per_run is not None and (not _is_number(max_epsilon_per_run)
                                            or not (math.isfinite(max_epsilon_per_run) and max_epsilon_per_run > 0)):
        problems.append(f"--max-epsilon-per-run {max_epsilon_per_run!r}: expected a finite number > 0")
    if problems:
        raise ConfigError(problems)
    return PrivacyPolicy(dp_required=not allow_no_dp, min_noise_multiplier=float(min_noise_multiplier),
                         max_epsilon_per_run=None if max_epsilon_per_run is None else float(max_epsilon_per_run),
                         require_secure_aggregation=require_secure_aggregation,
                         allow_local_statistics=allow_local_statistics)


def open_node_ledger(state_dir: Path, key_file: Path | None, *, owner: str | None = None,
                     audit_key: Path | None = None) -> tuple[Path, bool]:
    """Open (or create) the node's privacy ledger before the node starts, so a wrong key fails now.

    With ``key_file``: its key, created (32 random bytes, mode 0600) if the file does not exist yet.
    With ``audit_key`` (created likewise): the audit log must verify under it, against its head file and
    the anchor beside the key (:func:`check_node_audit_log`). With ``owner``: a ledger holding less of the
    owner's spending than the audit log shows (deleted, emptied, an older copy) is refused, never created
    afresh. Returns the ledger's path and whether it is encrypted. Raises LedgerError or AuditLogError.
    """
    from fedmodel.privacy.ledger import PrivacyLedger, ledger_path, load_or_create_key
    from fedmodel.privacy.owner_ledger import AUDIT_LOG_NAME, check_ledger_against_log

    state = _absolute(state_dir)
    audit_file = state / AUDIT_LOG_NAME
    if audit_key is not None:
        check_node_audit_log(audit_file, _absolute(audit_key))
    key = load_or_create_key(_absolute(key_file)) if key_file is not None else None
    path = ledger_path(state)
    if owner is not None and not path.exists():
        check_ledger_against_log(path, audit_file, owner)  # before an empty ledger is created
    with PrivacyLedger(path, key=key) as ledger:
        if owner is not None:
            check_ledger_against_log(path, audit_file, owner, ledger)
        return path, ledger.encrypted


def check_node_audit_log(audit_file: Path, audit_key: Path) -> None:
    """At node start: the audit key (created if absent), and a log that verifies under it.

    Refuses (AuditLogError) a log written without a key (move it aside after checking it: no silent
    upgrade), and a log with any problem: an edited or removed entry, a head file that does not match, or
    a log cut back behind the anchor kept beside the key (``<key>.anchor``).
    """
    from fedmodel.security.audit_log import AuditLogError, anchor_path, open_keyed

    log = open_keyed(audit_file, audit_key, create_key=True)
    if not audit_file.exists():
        if anchor_path(audit_key).exists():
            raise AuditLogError(f"the audit log {audit_file} is missing, but {anchor_path(audit_key)} shows it "
                                "had entries: it was deleted (put it back; nothing was started)")
        return
    result = log.verify(require_head=True)
    if result.unkeyed:
        raise AuditLogError(f"the audit log {audit_file} was written without a key (by an older fedmodel): check "
                            f"it with `fedmodel audit-log verify {audit_file}`, then move it aside (for example "
                            f"to {audit_file.name}.unkeyed) so that a keyed log starts; nothing was started")
    if not result.ok:
        problems = "; ".join(str(p) for p in result.problems[:3])
        raise AuditLogError(f"the audit log {audit_file} does not verify under {audit_key}: {problems} (run "
                            f"`fedmodel audit-log verify {audit_file} --key-file {audit_key}`); nothing was started")


def format_node_config(config: NodeConfig) -> str:
    """``key=value`` pairs, space-separated, as ``flower-supernode --node-config`` reads them."""
    return " ".join(f"{k}={_toml_value(v)}" for k, v in config.items())


def toml_string(value: str) -> str:
    """``value`` as a TOML string that Flower's ``--node-config`` parser keeps whole.

    A basic string (``"..."``, JSON escapes) unless the value holds ``"``; then a literal string
    (``'...'``), which cannot hold ``'`` or control characters.

    Raises
    ------
    ValueError
        The value holds both quote characters, or ``"`` and a control character.
    """
    if '"' not in value:
        return json.dumps(value, ensure_ascii=False)
    if "'" not in value and not _CONTROL.search(value):
        return f"'{value}'"
    raise ValueError(f"{value!r} cannot be passed in --node-config: it holds both ' and \" (or \" and a "
                     "control character)")


def exit_hint(output: str, *, ca_cert: Path | None, coordinator: str) -> str | None:
    """A one-line hint for a SuperNode that exited with an error, from the known messages in its output."""
    hints = [
        ("Hostname mismatch", f"the coordinator's certificate does not name the host of {coordinator}: use an "
                              "address listed in its certificate (fedmodel certs init --host)"),
        ("CERTIFICATE_VERIFY_FAILED", f"the coordinator's certificate is not signed by {ca_cert}: ask the "
                                      "coordinator for its ca.crt"),
        ("SSL/TLS handshake error", f"the coordinator's certificate is not signed by {ca_cert}: ask the "
                                    "coordinator for its ca.crt"),
        ("[code: 2004]", "this node's key is not admitted: ask the coordinator to run fedmodel coordinator "
                         "allow-node with this node's .pub (a revoked key stays refused: make a new one with "
                         "fedmodel node keygen)"),
        ("[code: 2001]", "the coordinator requires node authentication: pass --key NODE_KEY (make one with "
                         "fedmodel node keygen) and ask the coordinator to run fedmodel coordinator allow-node"),
        ("address already in use", "the local --port is taken (by another node?): pass another --port or "
                                   "leave it out to pick a free one"),
        ("TLS is not enabled", "--insecure cannot be combined with a node key"),
    ]
    return next((hint for marker, hint in hints if marker in output), None)


def _check(coordinator: str, ca_cert: Path | None, key: Path | None, data: Path, label: str, name: str,
           budget_epsilon: float, delta: float, device: str, state_dir: Path, port: int | None,
           insecure: bool) -> list[str]:
    problems = [
        *_check_coordinator(coordinator), *_check_data(data),
        *(_check_insecure(ca_cert, key) if insecure else _check_credentials(ca_cert, key)),
        *_check_privacy(budget_epsilon, delta), *_check_device(device), *_check_state_dir(state_dir),
        *_check_port(port), *_check_strings({"--label": label, "--name": name, "--data": str(_absolute(data)),
                                             "--state-dir": str(_absolute(state_dir))}),
    ]
    if not name.strip():
        problems.append("--name '': give the data owner's name")
    return problems


def _check_coordinator(coordinator: str) -> list[str]:
    try:
        split_address(coordinator)
    except DeploymentError as exc:
        return [f"--coordinator: {exc}"]
    return []


def _check_data(data: Path) -> list[str]:
    path = _absolute(data)
    if not path.is_file():
        return [f"--data {path}: no such file"]
    if path.suffix.lower() not in DATA_SUFFIXES:
        return [f"--data {path}: unsupported file type {path.suffix!r}, expected {', '.join(DATA_SUFFIXES)}"]
    return []


def _check_model(model_path: Path) -> list[str]:
    from fedmodel.llm.source import check_model_folder  # torch and the llm extra only when a model is named

    try:
        check_model_folder(_absolute(model_path))
    except FedModelError as exc:
        return [f"--model-path {exc}"]
    return list(_check_strings({"--model-path": str(_absolute(model_path))}))


def _check_credentials(ca_cert: Path | None, key: Path | None) -> list[str]:
    problems = []
    if ca_cert is None:
        problems.append("--ca is required: the coordinator's CA certificate ca.crt (or --insecure for a test "
                        "coordinator started with --insecure)")
    else:
        problems += _check_pem(ca_cert, "--ca", b"-----BEGIN CERTIFICATE-----", "a PEM CA certificate (ca.crt)")
    if key is None:
        problems.append(f"--key is required: this node's private key NAME.key, made with {_KEYGEN}")
    elif _absolute(key).suffix == ".pub":
        problems.append(f"--key {_absolute(key)}: this is the public key; pass the private key (NAME.key)")
    else:
        problems += _check_pem(key, "--key", b"-----BEGIN OPENSSH PRIVATE KEY-----",
                               f"an OpenSSH private key made with {_KEYGEN}")
    return problems


def _check_pem(path: Path, option: str, marker: bytes, expected: str) -> list[str]:
    full = _absolute(path)
    try:
        head = full.read_bytes()[:65536]
    except FileNotFoundError:
        return [f"{option} {full}: no such file"]
    except OSError as exc:
        return [f"{option} {full}: cannot read it ({exc.strerror or exc})"]
    return [] if marker in head else [f"{option} {full}: not {expected}"]


def _check_insecure(ca_cert: Path | None, key: Path | None) -> list[str]:
    given = [opt for opt, value in (("--ca", ca_cert), ("--key", key)) if value is not None]
    if given:
        return [f"--insecure cannot be combined with {' and '.join(given)}: an insecure coordinator has no "
                "TLS and no node authentication"]
    return []


def _check_privacy(budget_epsilon: float, delta: float) -> list[str]:
    problems = []
    if not _is_number(budget_epsilon) or not (math.isfinite(budget_epsilon) and budget_epsilon > 0):
        problems.append(f"--budget-epsilon {budget_epsilon!r}: expected a finite number > 0")
    if not _is_number(delta) or not 0 < delta < 1:
        problems.append(f"--delta {delta!r}: expected a number with 0 < delta < 1")
    return problems


def _check_device(device: str) -> list[str]:
    if not DEVICE_PATTERN.match(device):
        return [f"--device {device!r}: expected auto | cpu | cuda | cuda:N"]
    try:
        resolve_device(device)
    except FedModelError as exc:
        return [f"--device: {exc}"]
    return []


def _check_state_dir(state_dir: Path) -> list[str]:
    path = _absolute(state_dir)
    if path.exists() and not path.is_dir():
        return [f"--state-dir {path}: exists and is not a folder"]
    return []


def _check_port(port: int | None) -> list[str]:
    if port is not None and not 1 <= port <= 65535:
        return [f"--port {port}: expected 1 to 65535 (or leave it out to pick a free port)"]
    return []


def _check_strings(values: Mapping[str, str]) -> Iterable[str]:
    for option, value in values.items():
        try:
            toml_string(value)
        except ValueError as exc:
            yield f"{option}: {exc}"


def _toml_value(value: str | float | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return toml_string(value)
    return repr(float(value))


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _absolute(path: Path | None) -> Path:
    return Path(path or "").expanduser().absolute()
