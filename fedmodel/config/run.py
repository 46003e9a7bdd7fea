"""Run configuration: parsed once into a frozen, validated dataclass made of the sections of settings.

One key set serves every source: the ``fedmodel simulate`` options, a ``--config`` TOML file, the
resolved ``config.toml`` of a run folder and Flower's ``run_config`` all use the same kebab-case keys
(``local-epochs``, ``batch-size``, ...), each declared once in :mod:`fedmodel.config.sections`.
Parsing collects every problem and fails once with a :class:`~fedmodel.errors.ConfigError` listing
all of them.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from fedmodel.config.declare import (
    ALLOWED,
    SIMULATION_ONLY,
    TESTING_AID,
    Option,
    RunKeyRule,
    coerce,
    declared,
    field_types,
    finite,
    key_of,
    to_raw,
)
from fedmodel.config.sections import (
    SECTIONS,
    AuditSettings,
    CentralDPSettings,
    CleaningSettings,
    DataSettings,
    PrivacySettings,
    ReliabilitySettings,
    SecureAggregationSettings,
    SimulationSettings,
    TextSettings,
    TrainingSettings,
)
from fedmodel.config.specs import BUNDLED_DATASETS, TEXT_DATASETS
from fedmodel.errors import ConfigError


# The bases are listed last section first: dataclasses gathers fields from the last base to the first,
# so dataclasses.fields(RunConfig) runs in the order of SECTIONS (data first). Callers build a RunConfig
# by keyword only.
@dataclass(frozen=True)
class RunConfig(AuditSettings, SimulationSettings, CentralDPSettings, SecureAggregationSettings, ReliabilitySettings,
                TextSettings, CleaningSettings, PrivacySettings, TrainingSettings, DataSettings):
    """Everything one federated run needs, identical on the coordinator and at every owner.

    Field names are the snake_case form of the keys (``local_epochs`` for ``local-epochs``); each is
    declared, with its help, choices and check, in its section (:mod:`fedmodel.config.sections`).
    """

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *, source: str = "config") -> RunConfig:
        """Build from kebab-case keys (run_config, TOML, CLI), collecting every problem.

        Unknown keys are errors: a typo must not silently fall back to a default.
        """
        problems: list[str] = []
        known = {key_of(f.name): (f, meta) for f, meta in declared(cls)}
        types = field_types(cls)  # type: ignore[arg-type]  # classes are hashable; typeshed's lru_cache misses type[...]
        kwargs: dict[str, Any] = {}
        for key, raw in values.items():
            if key not in known:
                problems.append(f"{_at(source)}unknown key {key!r} (known: {', '.join(sorted(known))})")
                continue
            f, meta = known[key]
            try:
                kwargs[f.name] = coerce(types[f.name], raw, meta)
            except ValueError as exc:
                problems.append(f"{_at(source)}{key} = {raw!r}: {exc}")
        config = cls(**kwargs)
        try:
            config.validate()
        except ConfigError as exc:
            problems.extend(exc.problems)
        if problems:
            raise ConfigError(problems)
        return config

    @classmethod
    def from_toml(cls, path: Path) -> dict[str, Any]:
        """Read a TOML config file into a kebab-case mapping (validated later with the CLI values)."""
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError([f"{path}: cannot read config file ({exc.strerror})"]) from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"{path}: not valid TOML ({exc})"]) from None
        table = data.get("fedmodel", data)
        if not isinstance(table, dict):
            raise ConfigError([f"{path}: expected key = value pairs or a [fedmodel] table"])
        return table

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise ConfigError listing every invalid value: each section's own, then their combinations."""
        p: list[str] = []
        for section in SECTIONS:
            p.extend(section.problems(self))  # type: ignore[attr-defined]  # SECTIONS holds section classes, each with problems()
        p.extend(self._data_problems())
        p.extend(self._aggregation_problems())
        p.extend(self._text_problems())
        p.extend(self._reliability_problems())
        p.extend(self._audit_problems())
        p.extend(self._secure_aggregation_problems())
        p.extend(self._central_dp_problems())
        p.extend(self._simulation_problems())
        p.extend(self._cohort_problems())
        if p:
            raise ConfigError(p)

    def _data_problems(self) -> list[str]:
        """A data file needs its label column, except for language modelling."""
        if self.dataset == "file" and self.task != "causal-lm" and not self.label:
            return [f"label = {self.label!r}: expected the name of the label column (--label)"]
        return []

    def _simulation_problems(self) -> list[str]:
        """Owner ids of the testing aids, and a GPU share with a CPU device."""
        p: list[str] = []
        if finite(self.gpus_per_worker) and self.gpus_per_worker > 0 and self.device == "cpu":
            p.append(f"gpus-per-worker = {self.gpus_per_worker!r} with device = 'cpu': the GPU share would go "
                     "unused; use --device auto or cuda, or --gpus-per-worker 0")
        bad = [o for o in self.inject_failure_owners if not 0 <= o < max(self.clients, 1)]
        if bad:
            p.append(f"inject-failure-owners = {bad!r}: expected owner ids in [0, {self.clients - 1}]")
        bad_faults = [str(f) for f in self.inject_faults if not 0 <= f.owner < max(self.clients, 1)]
        if bad_faults:
            p.append(f"inject-faults = {','.join(bad_faults)!r}: expected owner ids in [0, {self.clients - 1}]")
        owners = [f.owner for f in self.inject_faults]
        twice = sorted({o for o in owners if owners.count(o) > 1})
        if twice:
            p.append(f"inject-faults = {','.join(str(f) for f in self.inject_faults)!r}: expected at most one fault "
                     f"per owner (owners {twice} have several)")
        return p

    def _text_problems(self) -> list[str]:
        """The combinations of a language-model task with the data set, the strategy and the table-only settings."""
        p: list[str] = []
        if self.dataset in TEXT_DATASETS and not self.text_task:
            p.append(f"dataset = {self.dataset!r}: a text data set; use it with task = 'classification' "
                     "(--task classification) and a local model (--model-path)")
        if self.text_task and self.dataset in BUNDLED_DATASETS:
            p.append(f"dataset = {self.dataset!r} with task = {self.task!r}: a table of numbers, not text; use "
                     f"{', '.join(TEXT_DATASETS)} or a .csv/.parquet/.jsonl file with a text column")
        if not self.text_task:
            return p
        if self.strategy == "fedprox":
            p.append(f"strategy = 'fedprox' with task = {self.task!r}: LoRA training has no proximal term; use "
                     "fedavg or fedadam")
        if self.task == "causal-lm" and self.partition.kind != "iid":
            p.append(f"partition = '{self.partition}' with task = 'causal-lm': label-based partitions need labels; "
                     "use iid")
        table_only = {"missing": "error", "duplicates": "keep", "outliers": "keep", "scaling": "none",
                      "augment": "none", "id-columns": ""}
        mapping = self.to_mapping()
        p.extend(f"{key} = {mapping[key]!r}: applies to tables only, not to task = {self.task!r}"
                 for key, default in table_only.items() if mapping[key] != default)
        not_yet = {"resume": False, "min-clients": "", "round-timeout": 0.0, "below-minimum": "stop"}
        p.extend(f"{key} = {mapping[key]!r}: not available for text runs yet (task = {self.task!r})"
                 for key, default in not_yet.items() if mapping[key] != default)
        return p

    def _aggregation_problems(self) -> list[str]:
        """The combinations of aggregation with strategy and clients that cannot work."""
        agg, p = self.aggregation, []
        if agg.kind != "fedavg" and self.strategy in ("fedprox", "fedadam"):
            p.append(
                f"aggregation = '{agg}' with strategy = '{self.strategy}': only 'fedavg' aggregation works with "
                f"{self.strategy}; Flower's FedProx and FedAdam combine updates by the example-weighted mean "
                "(FedAdam takes its server optimiser step from it), which a robust aggregator would replace. "
                "Use strategy = 'fedavg' with a robust aggregation, or aggregation = 'fedavg'"
            )
        if agg.kind in ("krum", "multikrum") and agg.byzantine is not None and self.clients <= 2 * agg.byzantine + 2:
            p.append(
                f"aggregation = '{agg}' with clients = {self.clients}: Krum tolerates F = {agg.byzantine} "
                f"Byzantine owners only with more than 2F + 2 = {2 * agg.byzantine + 2} clients"
            )
        if agg.kind == "trimmed-mean" and agg.beta is not None and int(agg.beta * self.clients) < 1:
            p.append(
                f"aggregation = '{agg}' with clients = {self.clients}: trims int({agg.beta!r} * {self.clients}) = 0 "
                "updates from each end, so it is a plain mean; use a fraction >= 1/clients"
            )
        return p

    def _reliability_problems(self) -> list[str]:
        """``min-clients`` against ``clients``."""
        try:
            if self.min_clients and self.min_replies > max(self.clients, 1):
                return [f"min-clients = {self.min_clients!r}: expected at most clients = {self.clients} (a count), "
                        "a fraction in (0, 1) or 'all'"]
        except ValueError as exc:
            return [f"min-clients = {self.min_clients!r}: {exc}"]
        return []

    def _central_dp_problems(self) -> list[str]:
        """The combinations of central (client-level) DP Flower's wrappers cannot honour."""
        p: list[str] = []
        if self.central_dp not in ("fixed", "adaptive") or CentralDPSettings.problems(self):
            return p  # the section's own problems are reported by it
        if self.aggregation.kind != "fedavg":
            p.append(f"central-dp = {self.central_dp!r} with aggregation = '{self.aggregation}': central DP adds "
                     "noise calibrated to the mean of clipped updates (sensitivity clip / owners); a robust "
                     "aggregator (median, trimmed mean, Krum) has another sensitivity, so the noise would not "
                     "cover it. Use aggregation = 'fedavg' with central DP")
        if self.strategy == "fedadam":
            p.append(f"central-dp = {self.central_dp!r} with strategy = 'fedadam': Flower's DP wrapper noises what "
                     "the strategy returns, and FedAdam's server step rescales the mean update per coordinate, so "
                     "the noise would not match its sensitivity. Use strategy = 'fedavg' or 'fedprox'")
        if self.task != "tabular":
            p.append(f"central-dp = {self.central_dp!r} with task = {self.task!r}: not available for text runs yet")
        if self.central_dp == "adaptive":
            stddev = self.central_count_stddev or self.clients / 20
            if self.central_noise >= 2 * stddev:
                p.append(
                    f"central-noise = {self.central_noise!r} with central-count-stddev = {stddev:g}"
                    f"{' (clients / 20)' if not self.central_count_stddev else ''}: adaptive clipping splits the "
                    "noise between the update and the clipped count (Andrew et al. 2021) and needs "
                    "central-noise < 2 x central-count-stddev; raise central-count-stddev or lower central-noise"
                )
        return p

    def _secure_aggregation_problems(self) -> list[str]:
        """SecAgg+ settings, and what cannot work when the coordinator sees only the sum of the updates."""
        p: list[str] = []
        shares, threshold = self.secagg_shares, self.secagg_threshold
        if shares and not (3 <= shares <= self.clients and (shares % 2 == 1 or shares == self.clients)):
            p.append(f"secagg-shares = {shares!r}: expected 0 (derived from clients) or an odd number in [3, clients "
                     f"= {self.clients}] (or clients itself): each owner's key is split among that many owners")
        if threshold and not 2 <= threshold < (shares or self.secagg_shares_resolved):
            p.append(f"secagg-threshold = {threshold!r}: expected 0 (a majority) or an integer >= 2 and below "
                     f"secagg-shares = {shares or self.secagg_shares_resolved}")
        if not self.secure_aggregation:
            return p
        if self.clients < 3:
            p.append(f"secure-aggregation = true with clients = {self.clients}: with two owners each learns the "
                     "other's update from the sum; use at least 3 clients")
        if self.aggregation.kind != "fedavg":
            p.append(f"secure-aggregation = true with aggregation = '{self.aggregation}': SecAgg+ reveals only the "
                     "weighted sum of the updates, and median, trimmed-mean and Krum need each owner's update; use "
                     "aggregation = 'fedavg' (max-update-norm then bounds the aggregate)")
        if self.task != "tabular":
            p.append(f"secure-aggregation = true with task = {self.task!r}: not available for text runs yet")
        return p

    @property
    def secagg_shares_resolved(self) -> int:
        """``secagg-shares``, or from ``clients``: every owner up to 9, else the odd number nearest 2 log2(n) + 1."""
        if self.secagg_shares:
            return self.secagg_shares
        if self.clients <= 9:
            return max(self.clients, 3)
        return min(2 * math.ceil(math.log2(self.clients)) + 1, self.clients - (1 - self.clients % 2))

    @property
    def secagg_threshold_resolved(self) -> int:
        """``secagg-threshold``, or a majority of the shares (at least 2)."""
        return self.secagg_threshold or max(2, self.secagg_shares_resolved // 2 + 1)

    def _audit_problems(self) -> list[str]:
        """Audit settings against ``clients`` and the task (checked against the data's size by the commands)."""
        p: list[str] = []
        bad = [o for o in self.audit_owners if not 0 <= o < max(self.clients, 1)]
        if bad:
            p.append(f"audit-owners = {bad}: expected owner ids in [0, {self.clients - 1}]")
        if self.audit and self.task != "tabular":
            p.append(f"audit = true with task = {self.task!r}: the privacy audit is for tables only")
        return p

    def _cohort_problems(self) -> list[str]:
        """Nodes hosting cohorts of owners, and sampling owners per round: what they cannot be combined with."""
        p: list[str] = []
        if not 0 <= self.nodes <= max(self.clients, 1):
            p.append(f"nodes = {self.nodes!r}: expected 0 (one node per owner) or a count in [1, clients = "
                     f"{self.clients}]")
        if not 0 <= self.owners_per_round <= max(self.clients, 1):
            p.append(f"owners-per-round = {self.owners_per_round!r}: expected 0 (every owner) or a count in "
                     f"[1, clients = {self.clients}]")
        if self.owners_per_round and not self.cohorts:
            p.append(f"owners-per-round = {self.owners_per_round} needs nodes < clients (each Flower node then hosts "
                     f"a cohort of owners and trains those sampled): add --nodes, e.g. --nodes 2")
        if self.partition.kind == "sample" and self.task != "tabular":
            p.append(f"partition = {self.partition} with task = {self.task!r}: sampled shards are for tables only")
        if not self.cohorts:
            return p
        clash = {
            "secure-aggregation": self.secure_aggregation, "central-dp": self.central_dp != "none",
            "audit": self.audit, "min-clients": bool(self.min_clients), "round-timeout": self.round_timeout > 0,
            "below-minimum": self.below_minimum != "stop",
            "resume and owners-per-round": self.resume and self.owners_per_round > 0,
            "scaling-stats = federated with scaling = zscore": (self.scaling == "zscore"
                                                                 and self.scaling_stats == "federated"),
        }
        for key, on in clash.items():
            if on:
                p.append(f"nodes = {self.nodes} (cohorts of owners per node) with {key}: not supported yet; "
                         "use --nodes 0 (one node per owner)")
        if self.task != "tabular":
            p.append(f"nodes = {self.nodes} with task = {self.task!r}: cohorts are for tables only; use --nodes 0")
        return p

    @property
    def cohorts(self) -> bool:
        """True when each simulated Flower node hosts a cohort of owners (``0 < nodes < clients``)."""
        return 0 < self.nodes < self.clients

    @property
    def flower_nodes(self) -> int:
        """The simulation's Flower nodes: ``nodes``, or one per owner."""
        return self.nodes if self.cohorts else self.clients

    @property
    def audited_owners(self) -> tuple[int, ...]:
        """The owners the audit gives canaries: ``audit-owners``, or every owner."""
        return tuple(sorted(set(self.audit_owners))) or tuple(range(self.clients))

    @property
    def min_replies(self) -> int:
        """The fewest valid train replies a round may aggregate: ``min-clients``, or 1 when it is not set.

        Raises ValueError when ``min-clients`` is neither ``all``, a count >= 1 nor a fraction in (0, 1].
        """
        return resolve_min_clients(self.min_clients, self.clients) if self.min_clients else 1

    @property
    def min_connected(self) -> int:
        """The fewest connected nodes a round may start with: ``min-clients``, or every owner when it is not set."""
        return resolve_min_clients(self.min_clients, self.clients) if self.min_clients else self.flower_nodes

    # ------------------------------------------------------------------ serialisation
    def to_mapping(self) -> dict[str, Any]:
        """Kebab-case mapping of scalars: Flower's run_config, config.toml, report.json."""
        return {key_of(f.name): to_raw(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def replace(self, **changes: Any) -> RunConfig:
        """Return a validated copy with some fields changed."""
        new = dataclasses.replace(self, **changes)
        new.validate()
        return new

    @property
    def dataset_label(self) -> str:
        """Human name of the data set: the bundled name or the file name."""
        return Path(self.data_path).name if self.dataset == "file" else self.dataset



def resolve_min_clients(text: str, clients: int) -> int:
    """``all`` -> clients; ``N`` -> N (>= 1); a fraction F in (0, 1] -> ceil(F * clients), at least 1."""
    value = text.strip().lower()
    if value == "all":
        return clients
    try:
        number = float(value)
    except ValueError:
        raise ValueError("expected 'all', a count N >= 1 or a fraction in (0, 1)") from None
    if not math.isfinite(number) or number <= 0:
        raise ValueError("expected 'all', a count N >= 1 or a fraction in (0, 1)")
    if number < 1 or (number == 1 and "." in value):  # a fraction; 1.0 is everyone
        return max(1, math.ceil(number * clients - 1e-9))
    if not number.is_integer() or "." in value:
        raise ValueError("a count must be a whole number (write a fraction as 0.8)")
    return int(number)


# ------------------------------------------------------------------ what a deployed node takes from a run
_OPTIONS: Mapping[str, Option] = MappingProxyType({f.name: meta for f, meta in declared(RunConfig)})
DEPLOYED_RUN_KEYS: Mapping[str, RunKeyRule] = MappingProxyType(
    {key_of(name): meta.deployed for name, meta in _OPTIONS.items()})
"""Every run-config key, as a deployed node treats it (the node's allow-list; each field's ``deployed``).

``allowed``: the coordinator may set it. ``simulation-only`` (Ray, cohorts, partitions, a simulation's
ledger) and ``testing-aid`` (injected faults and failures, privacy-audit canaries): refused unless at
RunConfig's default, since Flower fuses the app's ``[tool.flwr.app.config]`` defaults into every run.
A key RunConfig does not know is refused.
"""
_WHY_REFUSED = {
    SIMULATION_ONLY: "a simulation setting; a deployed node is one owner on its own machine",
    TESTING_AID: "a testing aid that makes the node misbehave on purpose; a node never takes it from a coordinator",
}


def refused_run_keys(values: Mapping[str, Any]) -> dict[str, str]:
    """The keys of a run config a deployed node refuses, each with why; empty when it may go on.

    Parameters
    ----------
    values
        The run config as Flower hands it over (kebab-case keys, raw values), before any parsing.

    Returns
    -------
    dict of str to str
        Key -> the reason: not on the allow-list, or a simulation-only key or testing aid set to
        something other than RunConfig's default (a value that does not parse counts as set).
    """
    defaults = RunConfig()
    refused: dict[str, str] = {}
    for key, raw in values.items():
        rule = DEPLOYED_RUN_KEYS.get(key)
        if rule is None:
            refused[key] = "not on this node's allow-list of run-config keys"
            continue
        if rule == ALLOWED:
            continue
        name = key.replace("-", "_")
        try:
            at_default = bool(coerce(field_types(RunConfig)[name], raw, _OPTIONS[name]) == getattr(defaults, name))
        except ValueError:
            at_default = False
        if not at_default:
            shown = repr(raw) if len(repr(raw)) <= 60 else repr(raw)[:57] + "..."
            refused[key] = f"= {shown}: {_WHY_REFUSED[rule]}"
    return refused




def _at(source: str) -> str:
    return f"{source}: " if source else ""
