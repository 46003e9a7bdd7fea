"""A data owner's own settings (its SuperNode's ``node_config``), each declared once with :func:`setting`.

From the declaration: :attr:`NodeSettings.KEYS` (the node-config keys, the contract between
``fedmodel node start`` and the ClientApp), the parsing of raw values by annotation, the
``--node-config`` mapping (:meth:`NodeSettings.to_node_config`) and the help of ``fedmodel node start``'s
options (:func:`node_help`). A setting that relaxes a protection says in its help what it gives up.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from fedmodel.config.declare import field_types, finite, key_of, optional_of
from fedmodel.config.run import RunConfig
from fedmodel.config.specs import DEVICE_PATTERN
from fedmodel.errors import ConfigError

if TYPE_CHECKING:
    from fedmodel.privacy.policy import PrivacyPolicy

EVALUATION_MODES: tuple[str, ...] = ("dp", "exact", "off")


@dataclass(frozen=True)
class NodeSetting:
    """What a node setting declares besides its name, type and default (see :func:`setting`)."""

    help: str
    omit_empty: bool = False


def setting(default: Any = dataclasses.MISSING, *, help: str, omit_empty: bool = False) -> Any:
    """A NodeSettings field: ``help`` for ``fedmodel node start`` and the reference; ``omit_empty``: the
    key is left out of ``--node-config`` while the value is empty (None is always left out)."""
    return field(default=default, metadata={"node": NodeSetting(help=help, omit_empty=omit_empty)})


@dataclass(frozen=True)
class NodeSettings:
    """A data owner's own settings, from its SuperNode's ``node_config``; the coordinator cannot change them.

    The owner's budget (its total across every run, kept in the privacy ledger in ``state_dir``) caps
    what a run may spend (a run may ask for less, never more); the delta is the owner's alone (a run's
    delta is ignored: a smaller one would make the same noise cost more of the budget); the data path
    and the device are the owner's, and so is the privacy policy (:attr:`policy`: DP required unless
    ``allow_no_dp``, cleaning with local statistics refused unless ``allow_local_statistics``).
    """

    data_path: str = setting(help="This site's data file (.csv, .parquet or .npz; texts .csv, .parquet or .jsonl)")
    label: str = setting("", help="Label column of a table (default: the reader's)")
    owner_name: str = setting("owner", help="Data owner's name, as the coordinator's reports show it")
    budget_epsilon: float = setting(
        3.0, help="This site's total privacy budget: the most epsilon every run together may spend on its data (> 0)")
    delta: float = setting(1e-5, help="DP delta, 0 < delta < 1")
    device: str = setting("auto", help="auto | cpu | cuda | cuda:N")
    state_dir: str = setting("", help="This site's state folder (privacy ledger, audit log, SuperNode log)")
    id_columns: tuple[str, ...] = setting(
        (), help="An identifier column of this site's file: never a feature, never sent (repeatable)", omit_empty=True)
    model_path: str = setting(
        "", help="This site's copy of the base model folder, for language-model runs (Hugging Face folder: config, "
                 "*.safetensors, tokenizer; checked against the coordinator's)", omit_empty=True)
    coordinator: str = setting("", help="The coordinator's SuperLink, HOST:PORT (recorded in the ledger and audit log)")
    ledger_key: str = setting(
        "", help="Encrypt the privacy ledger with the 32-byte key in this file (created if absent)", omit_empty=True)
    allow_no_dp: bool = setting(
        False, help="Policy: accept runs without DP (refused by default). Gives up: record-level DP for those runs: "
                    "their updates reveal individual rows")
    min_noise_multiplier: float = setting(
        0.0, help="Policy: refuse runs whose noise multiplier is below this (0 = no minimum)")
    max_epsilon_per_run: float | None = setting(
        None, help="Policy: refuse runs that would spend more epsilon than this on this site's data")
    require_secure_aggregation: bool = setting(
        False, help="Policy: train only inside Flower's SecAgg+ protocol; refuse runs without --secure-aggregation")
    allow_local_statistics: bool = setting(
        False, help="Policy: accept cleaning and scaling computed from this site's own rows (local quartiles for "
                    "outliers, local mean/median/mode imputation, local z-score or min-max). Gives up: one record "
                    "can shift every other row, so DP-SGD's record-level guarantee no longer covers the "
                    "preprocessing; replies and the audit log show it (refused by default)")
    evaluation: str = setting(
        "dp", help="What the coordinator's evaluate messages get. dp: only noisy counts of examples and correct "
                   "predictions and a noisy sum of clipped losses (Gaussian mechanism, charged to this site's budget "
                   "before release; precision/recall/F1 not sent); a run plans one per round. exact: exact loss, "
                   "accuracy, precision, recall, F1 and example count for ANY weights the coordinator sends, charged "
                   "to nothing. Gives up: the coordinator can count the rows matching any rule it can encode as a "
                   "model (e.g. rows with feature j > t), for free. off: refuse evaluate messages")
    evaluation_noise: float = setting(
        10.0, help="Noise multiplier of a dp evaluation (> 0): at 10, one release costs epsilon 0.375 at delta 1e-5 "
                   "(RDP), ten cost 1.31 alone; the example count gets noise of std 17. Gives up (below 10): more "
                   "budget per evaluation and more precise counts for the coordinator")
    exact_replies: bool = setting(
        False, help="Send the exact train-loss and data-quality counts (rows, gaps, duplicates, outlier cells) in "
                    "train replies. Gives up: they are outside DP; a crafted model's mean loss can reveal a single "
                    "row. Default: train-loss withheld, counts rounded to one significant digit (steps of at least "
                    "10)")
    audit_key: str = setting(
        "", help="HMAC key of the audit log, created (32 random bytes, 0600) if absent; keep it OUTSIDE the state "
                 "folder (default: <state-dir>.audit-key beside it). The copy of the log's head kept beside it "
                 "(<key>.anchor) catches a log cut back", omit_empty=True)

    KEYS: ClassVar[tuple[str, ...]]
    """Every node-config key, in declaration order (``fedmodel.deployment.node.NODE_CONFIG_KEYS``)."""
    _FLOAT_KEYS: ClassVar[tuple[str, ...]]
    _BOOL_KEYS: ClassVar[tuple[str, ...]]
    EVALUATION_MODES: ClassVar[tuple[str, ...]] = EVALUATION_MODES

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any]) -> NodeSettings | None:
        """The settings of a deployed node; None for a simulated node (no ``data-path``)."""
        if "data-path" not in node_config:
            return None
        p: list[str] = []
        values: dict[str, Any] = {}
        for key in cls.KEYS:
            if key not in node_config:
                continue
            raw = node_config[key]
            name = key.replace("-", "_")
            if key in cls._FLOAT_KEYS:
                try:
                    values[name] = float(raw)
                except (TypeError, ValueError):
                    p.append(f"node-config {key} = {raw!r}: expected a number")
            elif key in cls._BOOL_KEYS:
                if isinstance(raw, bool) or str(raw).lower() in ("true", "false"):
                    values[name] = raw if isinstance(raw, bool) else str(raw).lower() == "true"
                else:
                    p.append(f"node-config {key} = {raw!r}: expected true or false")
            elif field_types(cls)[name] == tuple[str, ...]:  # type: ignore[arg-type]  # classes are hashable; typeshed's lru_cache misses type[...]
                values[name] = tuple(c.strip() for c in str(raw).split(",") if c.strip())
            else:
                values[name] = str(raw)
        if p:
            raise ConfigError(p)
        settings = cls(**values)
        settings.validate()
        return settings

    def to_node_config(self) -> dict[str, str | float | bool]:
        """The ``--node-config`` mapping of these settings: floats as floats, lists comma-separated.

        A key whose value is None, or empty where its declaration says ``omit_empty``, is left out.
        """
        config: dict[str, str | float | bool] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None or (f.metadata["node"].omit_empty and not value):
                continue
            if isinstance(value, tuple):
                value = ",".join(value)
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                value = float(value)
            config[key_of(f.name)] = value
        return config

    def validate(self) -> None:
        """ConfigError listing every invalid setting."""
        p: list[str] = []
        if not Path(self.data_path).is_absolute():
            p.append(f"node-config data-path = {self.data_path!r}: expected an absolute path")
        if not (finite(self.budget_epsilon) and self.budget_epsilon > 0):
            p.append(f"node-config budget-epsilon = {self.budget_epsilon!r}: expected a number > 0")
        if not (finite(self.delta) and 0 < self.delta < 1):
            p.append(f"node-config delta = {self.delta!r}: expected a number in (0, 1)")
        if self.model_path and not Path(self.model_path).is_absolute():
            p.append(f"node-config model-path = {self.model_path!r}: expected an absolute path")
        if not DEVICE_PATTERN.match(self.device):
            p.append(f"node-config device = {self.device!r}: expected auto | cpu | cuda | cuda:N")
        if not Path(self.state_dir).is_absolute():
            p.append(f"node-config state-dir = {self.state_dir!r}: expected an absolute path (the node's privacy "
                     "ledger and audit log live there)")
        if self.ledger_key and not Path(self.ledger_key).is_absolute():
            p.append(f"node-config ledger-key = {self.ledger_key!r}: expected an absolute path")
        if self.audit_key and not Path(self.audit_key).is_absolute():
            p.append(f"node-config audit-key = {self.audit_key!r}: expected an absolute path")
        if not (finite(self.min_noise_multiplier) and self.min_noise_multiplier >= 0):
            p.append(f"node-config min-noise-multiplier = {self.min_noise_multiplier!r}: expected a number >= 0")
        cap = self.max_epsilon_per_run
        if cap is not None and not (finite(cap) and cap > 0):
            p.append(f"node-config max-epsilon-per-run = {cap!r}: expected a number > 0")
        if self.evaluation not in self.EVALUATION_MODES:
            p.append(f"node-config evaluation = {self.evaluation!r}: expected dp | exact | off")
        if not (finite(self.evaluation_noise) and self.evaluation_noise > 0):
            p.append(f"node-config evaluation-noise = {self.evaluation_noise!r}: expected a number > 0")
        if p:
            raise ConfigError(p)

    @property
    def policy(self) -> PrivacyPolicy:
        """The owner's privacy policy, which every run must meet."""
        from fedmodel.privacy.policy import PrivacyPolicy  # not at import: fedmodel.privacy imports torch

        return PrivacyPolicy(dp_required=not self.allow_no_dp, min_noise_multiplier=self.min_noise_multiplier,
                             max_epsilon_per_run=self.max_epsilon_per_run,
                             require_secure_aggregation=self.require_secure_aggregation,
                             allow_local_statistics=self.allow_local_statistics)

    def apply(self, run: RunConfig) -> RunConfig:
        """The run as this owner trains it: the smaller epsilon, the owner's delta, data and device.

        The delta is the owner's whatever the run asks (the train reply's ``delta`` metric shows it):
        the ledger reports the owner's total at the smallest delta it was charged at, so a coordinator
        pushing delta down would make every earlier release cost more of the owner's budget.
        """
        return dataclasses.replace(
            run, epsilon=min(run.epsilon, self.budget_epsilon), delta=self.delta,
            device=self.device, data_path=self.data_path, label=self.label,
        )


def _keys_of(kind: type) -> tuple[str, ...]:
    types = field_types(NodeSettings)
    return tuple(key_of(f.name) for f in dataclasses.fields(NodeSettings) if optional_of(types[f.name]) is kind)


NodeSettings.KEYS = tuple(key_of(f.name) for f in dataclasses.fields(NodeSettings))
NodeSettings._FLOAT_KEYS = _keys_of(float)
NodeSettings._BOOL_KEYS = _keys_of(bool)


def node_help(key: str) -> str:
    """The help of node setting ``key`` (kebab-case), for ``fedmodel node start``'s option."""
    for f in dataclasses.fields(NodeSettings):
        if key_of(f.name) == key:
            return str(f.metadata["node"].help)
    raise KeyError(key)


def node_default(key: str) -> Any:
    """The default of node setting ``key`` (kebab-case), for ``fedmodel node start``'s option."""
    for f in dataclasses.fields(NodeSettings):
        if key_of(f.name) == key:
            return f.default
    raise KeyError(key)
