"""Run configuration: parsed once into frozen, validated dataclasses.

One key set serves every source: the ``fedmodel simulate`` options, a ``--config`` TOML file, the
resolved ``config.toml`` of a run folder and Flower's ``run_config`` all use the same kebab-case keys
(``local-epochs``, ``batch-size``, ...). Parsing collects every problem and fails once with a
:class:`~fedmodel.errors.ConfigError` listing all of them.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from fedmodel.errors import ConfigError
from fedmodel.faults import Fault, parse_faults

if TYPE_CHECKING:
    from fedmodel.privacy.policy import PrivacyPolicy

BUNDLED_DATASETS: tuple[str, ...] = ("digits", "breast-cancer")
STRATEGIES: tuple[str, ...] = ("fedavg", "fedprox", "fedadam")
MODELS: tuple[str, ...] = ("logreg", "mlp")
PartitionKind = Literal["iid", "dirichlet", "pathological", "sample"]
MISSING_POLICIES: tuple[str, ...] = ("error", "drop", "mean", "median", "mode")
DUPLICATE_POLICIES: tuple[str, ...] = ("keep", "drop")
OUTLIER_POLICIES: tuple[str, ...] = ("keep", "clip", "drop")
SCALINGS: tuple[str, ...] = ("none", "zscore", "minmax")
SCALING_STATS: tuple[str, ...] = ("federated", "local")
TASKS: tuple[str, ...] = ("tabular", "classification", "causal-lm")
TEXT_DATASETS: tuple[str, ...] = ("rotten-tomatoes",)
"""Named text data sets (``task`` classification or causal-lm); see :mod:`fedmodel.llm.corpus`."""
BELOW_MINIMUM: tuple[str, ...] = ("stop", "retry")
CENTRAL_DP: tuple[str, ...] = ("none", "fixed", "adaptive")
RETRY_ATTEMPTS = 3
"""With ``below-minimum = retry``: how many times a round is tried before the run stops."""
_RUN_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
"""Accepted ``device`` values; checked against this machine by :func:`fedmodel.device.resolve_device`."""
_RAY_ADDRESS_RE = re.compile(r"^(ray://)?[A-Za-z0-9.\-]+:\d{1,5}$")


@dataclass(frozen=True)
class PartitionSpec:
    """How the training data is split across owners.

    ``iid``; ``dirichlet:ALPHA`` (label skew, smaller alpha is more skewed); ``pathological:K``
    (each owner holds K classes); ``sample:R`` (each owner draws R distinct rows at random from all the
    training rows, independently of the others: owners share rows, so a million owners fit a small
    data set; for rehearsing scale, since a record held by several owners is protected per owner only).
    """

    kind: PartitionKind = "iid"
    alpha: float | None = None
    classes_per_owner: int | None = None
    rows_per_owner: int | None = None

    @classmethod
    def parse(cls, text: str) -> PartitionSpec:
        """Parse ``iid``, ``dirichlet:ALPHA`` or ``pathological:K``; raise ValueError if malformed."""
        kind, _, arg = text.strip().partition(":")
        if kind == "iid" and not arg:
            return cls("iid")
        if kind == "dirichlet":
            try:
                alpha = float(arg)
            except ValueError:
                raise ValueError(f"dirichlet needs a number, as in dirichlet:0.5, got {text!r}") from None
            if not math.isfinite(alpha) or alpha <= 0:
                raise ValueError(f"dirichlet alpha must be > 0, got {arg}")
            return cls("dirichlet", alpha=alpha)
        if kind == "pathological":
            if not arg.isdigit() or int(arg) < 1:
                raise ValueError(f"pathological needs a class count >= 1, as in pathological:2, got {text!r}")
            return cls("pathological", classes_per_owner=int(arg))
        if kind == "sample":
            if not arg.isdigit() or int(arg) < 1:
                raise ValueError(f"sample needs a row count >= 1, as in sample:2, got {text!r}")
            return cls("sample", rows_per_owner=int(arg))
        raise ValueError(f"expected iid, dirichlet:ALPHA, pathological:K or sample:R, got {text!r}")

    def __str__(self) -> str:
        if self.kind == "dirichlet":
            return f"dirichlet:{self.alpha!r}"
        if self.kind == "pathological":
            return f"pathological:{self.classes_per_owner}"
        if self.kind == "sample":
            return f"sample:{self.rows_per_owner}"
        return "iid"


AggregationKind = Literal["fedavg", "median", "trimmed-mean", "krum", "multikrum"]


@dataclass(frozen=True)
class AggregationSpec:
    """How the coordinator combines the owners' updates (Flower's strategies do the work).

    ``fedavg`` (example-weighted mean); ``median`` (coordinate-wise median, FedMedian);
    ``trimmed-mean:BETA`` (coordinate-wise mean without the BETA share of highest and of lowest values,
    0 < BETA < 0.5, FedTrimmedAvg); ``krum:F`` (the one update closest to its neighbours) and
    ``multikrum:F`` (the mean of the n - F closest) tolerate F Byzantine owners (Krum, MultiKrum).
    """

    kind: AggregationKind = "fedavg"
    beta: float | None = None
    byzantine: int | None = None

    @classmethod
    def parse(cls, text: str) -> AggregationSpec:
        """Parse ``fedavg``, ``median``, ``trimmed-mean:BETA``, ``krum:F`` or ``multikrum:F``; ValueError if bad."""
        kind, _, arg = text.strip().partition(":")
        if kind in ("fedavg", "median") and not arg:
            return cls(kind)
        if kind == "trimmed-mean":
            try:
                beta = float(arg)
            except ValueError:
                raise ValueError(f"trimmed-mean needs a fraction, as in trimmed-mean:0.2, got {text!r}") from None
            if not (math.isfinite(beta) and 0 < beta < 0.5):
                raise ValueError(f"trimmed-mean fraction must be in (0, 0.5), got {arg}")
            return cls("trimmed-mean", beta=beta)
        if kind in ("krum", "multikrum"):
            if not arg.isdigit():
                raise ValueError(f"{kind} needs the number of Byzantine owners F >= 0, as in {kind}:1, got {text!r}")
            return cls(kind, byzantine=int(arg))
        raise ValueError(f"expected fedavg, median, trimmed-mean:BETA, krum:F or multikrum:F, got {text!r}")

    def __str__(self) -> str:
        if self.kind == "trimmed-mean":
            return f"trimmed-mean:{self.beta!r}"
        if self.kind in ("krum", "multikrum"):
            return f"{self.kind}:{self.byzantine}"
        return self.kind


@dataclass(frozen=True)
class RunConfig:
    """Everything one federated run needs, identical on the coordinator and at every owner.

    Field names are the snake_case form of the keys (``local_epochs`` for ``local-epochs``).
    """

    dataset: str = "digits"
    data_path: str = ""
    label: str = ""
    clients: int = 10
    rounds: int = 10
    partition: PartitionSpec = field(default_factory=PartitionSpec)
    epsilon: float = 3.0
    delta: float = 1e-5
    dp: bool = True
    max_grad_norm: float = 1.0
    strategy: str = "fedavg"
    proximal_mu: float = 0.01
    server_lr: float = 0.1
    model: str = "logreg"
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 2.0
    seed: int = 42
    device: str = "auto"
    test_fraction: float = 0.2
    out: str = ""
    ray_address: str = ""  # "" = a private local Ray; HOST:PORT (GCS) or ray://HOST:PORT = an existing cluster
    cpus_per_worker: int = 1
    gpus_per_worker: float = 0.0
    # Simulation at scale (simulations.cohorts): Flower nodes that each host a cohort of owners, and sampling
    nodes: int = 0  # Flower nodes of a simulation; 0 = one per owner; fewer = each trains a cohort in turn
    owners_per_round: int = 0  # owners sampled (uniformly, without replacement) each round; 0 = every owner
    inject_failure_owners: tuple[int, ...] = ()  # testing aid: these owners raise during training
    aggregation: AggregationSpec = field(default_factory=AggregationSpec)
    max_update_norm: float = 0.0  # reject updates farther than this (L2) from the global model; 0 = no bound
    inject_faults: tuple[Fault, ...] = ()  # testing aid: "3:signflip,4:scale10,..." (fedmodel.faults)
    # Language models (task classification | causal-lm): LoRA fine-tuning of a local base model (fedmodel.llm).
    task: str = "tabular"
    model_path: str = ""  # local Hugging Face model folder (absolute); a deployed owner uses its own copy
    text_column: str = "text"
    max_length: int = 64  # tokens per example (longer texts are truncated)
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ()  # layer names to adapt; () = the architecture's default
    physical_batch_size: int = 32  # most examples per forward pass; larger logical batches are split
    pooling: str = "auto"  # classification: auto | mean | model (fedmodel.llm.pooling)
    head_lr: float = 0.0  # learning rate of the classification head; 0 = 100 x lr (fedmodel.llm.train)
    max_rows: int = 0  # a text run uses a seeded, stratified sample of this many rows (0 = all)
    # Cleaning at the owner (fedmodel.data.cleaning), applied to data files before training.
    missing: str = "error"
    duplicates: str = "keep"
    outliers: str = "keep"
    outlier_k: float = 3.0
    scaling: str = "none"
    scaling_stats: str = "federated"  # federated: DP sums from every owner; local: each owner's own statistics
    scaling_noise: float = 5.0  # noise multiplier of the DP sums for federated scaling statistics
    id_columns: tuple[str, ...] = ()  # identifier columns: never features, never sent
    augment: str = "none"  # image-like data: "shift:1,noise:0.05" (fedmodel.data.augment)
    # Simulation only: a folder whose privacy ledger holds every simulated owner across simulations ("" = none).
    # A deployed node ignores it: its ledger is in its own state folder.
    ledger: str = ""
    # Reliability: dropouts and resume (server.rounds)
    min_clients: str = ""  # owners a round needs: "" = as before (all connected, >= 1 valid reply), "all", N or a fraction
    round_timeout: float = 0.0  # seconds a round waits for nodes and replies; 0 = no limit
    below_minimum: str = "stop"  # fewer replies than min-clients: stop the run, or retry the round
    resume: bool = False  # set by --resume: continue the run in ``out`` from its latest checkpoint
    run_id: str = ""  # fedmodel's own id of the run, kept across --resume (names each node's privacy file)
    # Empirical privacy audit (fedmodel.privacy.audit): a testing aid, simulation only
    audit: bool = False  # insert canaries and report the one-run lower bound on epsilon beside the proven one
    audit_canaries: int = 200  # canaries, each in its owner's training data with probability 1/2
    audit_owners: tuple[int, ...] = ()  # the owners given canaries; () = every owner
    # Secure aggregation: Flower's SecAgg+ for the train stage (server.secure, clients.secure)
    secure_aggregation: bool = False
    secagg_shares: int = 0  # key shares per owner (its neighbours, itself included); 0 = from clients
    secagg_threshold: int = 0  # shares that rebuild a key; 0 = a majority of secagg-shares
    # Central (client-level) DP: Flower's client-side clipping wrappers and mods (server.central_dp)
    central_dp: str = "none"  # none | fixed | adaptive
    central_noise: float = 1.0  # noise multiplier z: noise std z * clip on the sum of the owners' clipped updates
    central_clip: float = 1.0  # L2 clipping norm of an owner's update (adaptive: the first round's norm)
    central_target_quantile: float = 0.5  # adaptive: the share of updates the norm should leave unclipped
    central_clip_lr: float = 0.2  # adaptive: the geometric learning rate of the clipping norm
    central_count_stddev: float = 0.0  # adaptive: noise std of the clipped-update count; 0 = clients / 20

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *, source: str = "config") -> RunConfig:
        """Build from kebab-case keys (run_config, TOML, CLI), collecting every problem.

        Unknown keys are errors: a typo must not silently fall back to a default.
        """
        problems: list[str] = []
        known = {f.name.replace("_", "-"): f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, raw in values.items():
            f = known.get(key)
            if f is None:
                problems.append(f"{_at(source)}unknown key {key!r} (known: {', '.join(sorted(known))})")
                continue
            try:
                kwargs[f.name] = _coerce(f.name, raw)
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
        """Raise ConfigError listing every invalid value."""
        p: list[str] = []

        def need(ok: bool, key: str, value: object, expected: str) -> None:
            if not ok:
                p.append(f"{key} = {value!r}: expected {expected}")

        if self.dataset not in BUNDLED_DATASETS + TEXT_DATASETS and self.dataset != "file":
            p.append(
                f"dataset = {self.dataset!r}: unknown data set; expected one of "
                f"{', '.join(BUNDLED_DATASETS + TEXT_DATASETS)} or a path to a .csv, .parquet, .npz or .jsonl file"
            )
        if self.dataset == "file":
            need(bool(self.data_path), "data-path", self.data_path, "a path to a .csv, .parquet or .npz file")
            if self.task != "causal-lm":  # language modelling needs no label
                need(bool(self.label), "label", self.label, "the name of the label column (--label)")
        need(self.clients >= 1, "clients", self.clients, "an integer >= 1")
        need(self.rounds >= 1, "rounds", self.rounds, "an integer >= 1")
        need(_finite(self.epsilon) and self.epsilon > 0, "epsilon", self.epsilon, "a number > 0")
        need(_finite(self.delta) and 0 < self.delta < 1, "delta", self.delta, "a number in (0, 1)")
        need(_finite(self.max_grad_norm) and self.max_grad_norm > 0, "max-grad-norm", self.max_grad_norm,
             "a number > 0")
        need(self.strategy in STRATEGIES, "strategy", self.strategy, " | ".join(STRATEGIES))
        need(_finite(self.proximal_mu) and self.proximal_mu >= 0, "proximal-mu", self.proximal_mu, "a number >= 0")
        need(_finite(self.server_lr) and self.server_lr > 0, "server-lr", self.server_lr, "a number > 0")
        need(self.model in MODELS, "model", self.model, " | ".join(MODELS))
        need(self.local_epochs >= 1, "local-epochs", self.local_epochs, "an integer >= 1")
        need(self.batch_size >= 1, "batch-size", self.batch_size, "an integer >= 1")
        need(_finite(self.lr) and self.lr > 0, "lr", self.lr, "a number > 0")
        need(self.seed >= 0, "seed", self.seed, "an integer >= 0")
        need(bool(DEVICE_PATTERN.match(self.device)), "device", self.device, "auto | cpu | cuda | cuda:N")
        need(_finite(self.test_fraction) and 0 < self.test_fraction < 1, "test-fraction", self.test_fraction,
             "a number in (0, 1)")
        need(not self.ray_address or bool(_RAY_ADDRESS_RE.match(self.ray_address)), "ray-address",
             self.ray_address, "HOST:PORT (the head's GCS port, 6379 by default) or ray://HOST:PORT")
        need(self.cpus_per_worker >= 1, "cpus-per-worker", self.cpus_per_worker, "an integer >= 1")
        need(_finite(self.gpus_per_worker) and self.gpus_per_worker >= 0, "gpus-per-worker", self.gpus_per_worker,
             "a number >= 0 (fractions such as 0.25 let workers share a GPU)")
        if _finite(self.gpus_per_worker) and self.gpus_per_worker > 0 and self.device == "cpu":
            p.append(f"gpus-per-worker = {self.gpus_per_worker!r} with device = 'cpu': the GPU share would go "
                     "unused; use --device auto or cuda, or --gpus-per-worker 0")
        need(self.missing in MISSING_POLICIES, "missing", self.missing, " | ".join(MISSING_POLICIES))
        need(self.duplicates in DUPLICATE_POLICIES, "duplicates", self.duplicates, " | ".join(DUPLICATE_POLICIES))
        need(self.outliers in OUTLIER_POLICIES, "outliers", self.outliers, " | ".join(OUTLIER_POLICIES))
        need(_finite(self.outlier_k) and self.outlier_k > 0, "outlier-k", self.outlier_k, "a number > 0")
        need(self.scaling in SCALINGS, "scaling", self.scaling, " | ".join(SCALINGS))
        need(self.scaling_stats in SCALING_STATS, "scaling-stats", self.scaling_stats, " | ".join(SCALING_STATS))
        need(_finite(self.scaling_noise) and self.scaling_noise > 0, "scaling-noise", self.scaling_noise,
             "a number > 0 (the noise multiplier of the DP sums)")
        need(all(c.strip() for c in self.id_columns), "id-columns", ",".join(self.id_columns),
             "comma-separated column names")
        try:
            from fedmodel.data.augment import parse_augment

            parse_augment(self.augment)
        except ValueError as exc:
            p.append(f"augment = {self.augment!r}: {exc}")
        bad = [o for o in self.inject_failure_owners if not 0 <= o < max(self.clients, 1)]
        need(not bad, "inject-failure-owners", bad, f"owner ids in [0, {self.clients - 1}]")
        p.extend(self._aggregation_problems())
        p.extend(self._text_problems())
        need(_finite(self.max_update_norm) and self.max_update_norm >= 0, "max-update-norm", self.max_update_norm,
             "a number >= 0 (0 = no bound)")
        bad = [str(f) for f in self.inject_faults if not 0 <= f.owner < max(self.clients, 1)]
        need(not bad, "inject-faults", ",".join(bad), f"owner ids in [0, {self.clients - 1}]")
        need(not self.ledger or Path(self.ledger).is_absolute(), "ledger", self.ledger,
             "an absolute folder path (or empty for no persistent ledger)")
        owners = [f.owner for f in self.inject_faults]
        twice = sorted({o for o in owners if owners.count(o) > 1})
        need(not twice, "inject-faults", ",".join(str(f) for f in self.inject_faults),
             f"at most one fault per owner (owners {twice} have several)")
        p.extend(self._reliability_problems())
        p.extend(self._audit_problems())
        p.extend(self._secure_aggregation_problems())
        p.extend(self._central_dp_problems())
        p.extend(self._cohort_problems())
        if p:
            raise ConfigError(p)

    def _text_problems(self) -> list[str]:
        """Language-model settings, and the table-only settings a text run cannot honour."""
        text = self.task in TASKS[1:]
        p = [] if self.task in TASKS else [f"task = {self.task!r}: expected {' | '.join(TASKS)}"]
        if self.dataset in TEXT_DATASETS and not text:
            p.append(f"dataset = {self.dataset!r}: a text data set; use it with task = 'classification' "
                     "(--task classification) and a local model (--model-path)")
        if text and self.dataset in BUNDLED_DATASETS:
            p.append(f"dataset = {self.dataset!r} with task = {self.task!r}: a table of numbers, not text; use "
                     f"{', '.join(TEXT_DATASETS)} or a .csv/.parquet/.jsonl file with a text column")
        if not text:
            if self.max_rows:
                p.append(f"max-rows = {self.max_rows!r}: applies to text data sets only (task classification "
                         "or causal-lm)")
            p.extend(f"{key} = {value!r}: applies to text classification only (task classification)"
                     for key, value, default in (("pooling", self.pooling, "auto"), ("head-lr", self.head_lr, 0.0))
                     if value != default)
            return p
        if not self.model_path or not Path(self.model_path).is_absolute():
            p.append(f"model-path = {self.model_path!r}: a text task needs the absolute path of a local Hugging Face "
                     "model folder (--model-path)")
        checks = [(bool(self.text_column.strip()), "text-column", self.text_column, "a column name"),
                  (self.max_length >= 2, "max-length", self.max_length, "an integer >= 2 (tokens per example)"),
                  (self.lora_rank >= 1, "lora-rank", self.lora_rank, "an integer >= 1"),
                  (self.lora_alpha >= 1, "lora-alpha", self.lora_alpha, "an integer >= 1"),
                  (_finite(self.lora_dropout) and 0 <= self.lora_dropout < 1, "lora-dropout", self.lora_dropout,
                   "a number in [0, 1)"),
                  (self.physical_batch_size >= 1, "physical-batch-size", self.physical_batch_size, "an integer >= 1"),
                  (self.max_rows >= 0, "max-rows", self.max_rows, "an integer >= 0 (0 = all rows)"),
                  (self.pooling in ("auto", "mean", "model"), "pooling", self.pooling, "auto | mean | model"),
                  (_finite(self.head_lr) and self.head_lr >= 0, "head-lr", self.head_lr,
                   "a number >= 0 (0 = 100 x lr)")]
        p.extend(f"{key} = {value!r}: expected {expected}" for ok, key, value, expected in checks if not ok)
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
        """Invalid dropout and resume settings."""
        p = []
        try:
            if self.min_clients and self.min_replies > max(self.clients, 1):
                p.append(f"min-clients = {self.min_clients!r}: expected at most clients = {self.clients} (a count), "
                         "a fraction in (0, 1) or 'all'")
        except ValueError as exc:
            p.append(f"min-clients = {self.min_clients!r}: {exc}")
        if not (_finite(self.round_timeout) and self.round_timeout >= 0):
            p.append(f"round-timeout = {self.round_timeout!r}: expected seconds >= 0 (0 = no limit)")
        if self.below_minimum not in BELOW_MINIMUM:
            p.append(f"below-minimum = {self.below_minimum!r}: expected {' | '.join(BELOW_MINIMUM)}")
        if self.run_id and not _RUN_ID_RE.match(self.run_id):
            p.append(f"run-id = {self.run_id!r}: expected 1 to 64 letters, digits, '-' or '_'")
        return p

    def _central_dp_problems(self) -> list[str]:
        """Central (client-level) DP settings and the combinations Flower's wrappers cannot honour."""
        p: list[str] = []
        if self.central_dp not in CENTRAL_DP:
            p.append(f"central-dp = {self.central_dp!r}: expected {' | '.join(CENTRAL_DP)}")
        checks = [
            (_finite(self.central_noise) and self.central_noise > 0, "central-noise", self.central_noise,
             "a noise multiplier > 0"),
            (_finite(self.central_clip) and self.central_clip > 0, "central-clip", self.central_clip,
             "a clipping norm > 0 (the L2 norm of an owner's whole update)"),
            (_finite(self.central_target_quantile) and 0 <= self.central_target_quantile <= 1,
             "central-target-quantile", self.central_target_quantile, "a share in [0, 1]"),
            (_finite(self.central_clip_lr) and self.central_clip_lr > 0, "central-clip-lr", self.central_clip_lr,
             "a learning rate > 0"),
            (_finite(self.central_count_stddev) and self.central_count_stddev >= 0, "central-count-stddev",
             self.central_count_stddev, "a standard deviation >= 0 (0 = clients / 20)"),
        ]
        p.extend(f"{key} = {value!r}: expected {expected}" for ok, key, value, expected in checks if not ok)
        if self.central_dp not in ("fixed", "adaptive") or p:
            return p
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
        """Audit settings (checked against the data's size by ``fedmodel simulate`` and the coordinator)."""
        p: list[str] = []
        if self.audit_canaries < 2:
            p.append(f"audit-canaries = {self.audit_canaries!r}: expected an integer >= 2")
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
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (PartitionSpec, AggregationSpec)):
                value = str(value)
            elif isinstance(value, tuple):
                value = ",".join(str(v) for v in value)
            out[f.name.replace("_", "-")] = value
        return out

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
RunKeyRule = Literal["allowed", "simulation-only", "testing-aid"]
ALLOWED: RunKeyRule = "allowed"
SIMULATION_ONLY: RunKeyRule = "simulation-only"
TESTING_AID: RunKeyRule = "testing-aid"
_ALLOWED_KEYS = (
    # what to train and how: the coordinator's choice (the owner's budget and policy still bound privacy)
    "dataset", "data-path", "label", "clients", "rounds", "epsilon", "delta", "dp", "max-grad-norm", "strategy",
    "proximal-mu", "server-lr", "model", "local-epochs", "batch-size", "lr", "seed", "device", "test-fraction",
    "out", "aggregation", "max-update-norm",
    # language models (the base model is the owner's own copy, node-config model-path)
    "task", "model-path", "text-column", "max-length", "lora-rank", "lora-alpha", "lora-dropout", "lora-targets",
    "physical-batch-size", "pooling", "head-lr", "max-rows",
    # cleaning (local statistics need the owner's --allow-local-statistics, fedmodel.data.prepare.local_statistics)
    "missing", "duplicates", "outliers", "outlier-k", "scaling", "scaling-stats", "scaling-noise", "id-columns",
    "augment",
    # reliability, secure aggregation and central DP: the coordinator's protocol
    "min-clients", "round-timeout", "below-minimum", "resume", "run-id", "secure-aggregation", "secagg-shares",
    "secagg-threshold", "central-dp", "central-noise", "central-clip", "central-target-quantile", "central-clip-lr",
    "central-count-stddev",
)
_SIMULATION_ONLY_KEYS = ("partition", "ray-address", "cpus-per-worker", "gpus-per-worker", "nodes",
                         "owners-per-round", "ledger")
_TESTING_AID_KEYS = ("inject-failure-owners", "inject-faults", "audit", "audit-canaries", "audit-owners")
DEPLOYED_RUN_KEYS: Mapping[str, RunKeyRule] = MappingProxyType({
    **{k: ALLOWED for k in _ALLOWED_KEYS}, **{k: SIMULATION_ONLY for k in _SIMULATION_ONLY_KEYS},
    **{k: TESTING_AID for k in _TESTING_AID_KEYS},
})
"""Every run-config key, as a deployed node treats it (the node's allow-list, declared once).

``allowed``: the coordinator may set it. ``simulation-only`` (Ray, cohorts, partitions, a simulation's
ledger) and ``testing-aid`` (injected faults and failures, privacy-audit canaries): refused unless at
RunConfig's default, since Flower fuses the app's ``[tool.flwr.app.config]`` defaults into every run.
A key missing here (a new RunConfig field nobody classified, or a key RunConfig does not know) is refused.
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
            at_default = bool(_coerce(name, raw) == getattr(defaults, name))
        except ValueError:
            at_default = False
        if not at_default:
            shown = repr(raw) if len(repr(raw)) <= 60 else repr(raw)[:57] + "..."
            refused[key] = f"= {shown}: {_WHY_REFUSED[rule]}"
    return refused


def _at(source: str) -> str:
    return f"{source}: " if source else ""


def _finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


_INT_FIELDS = {"clients", "rounds", "local_epochs", "batch_size", "seed", "cpus_per_worker", "nodes",
               "owners_per_round"}
_FLOAT_FIELDS = {"epsilon", "delta", "max_grad_norm", "proximal_mu", "server_lr", "lr", "test_fraction",
                 "gpus_per_worker", "outlier_k", "scaling_noise", "max_update_norm", "round_timeout"}
_STR_FIELDS = {"dataset", "data_path", "label", "strategy", "model", "device", "out", "ray_address", "missing",
               "duplicates", "outliers", "scaling", "scaling_stats", "augment", "below_minimum", "run_id",
               "ledger"}

_INT_FIELDS |= {"max_length", "lora_rank", "lora_alpha", "physical_batch_size", "max_rows"}  # language models
_FLOAT_FIELDS |= {"lora_dropout", "head_lr"}
_STR_FIELDS |= {"task", "model_path", "text_column", "pooling"}
_INT_FIELDS |= {"audit_canaries"}  # privacy audit
_FLOAT_FIELDS |= {"central_noise", "central_clip", "central_target_quantile", "central_clip_lr", "central_count_stddev"}
_STR_FIELDS |= {"central_dp"}  # central (client-level) DP
_INT_FIELDS |= {"secagg_shares", "secagg_threshold"}  # secure aggregation


def _coerce(name: str, raw: Any) -> Any:
    """Turn a raw value (TOML, Flower run_config, CLI) into the field's type or raise ValueError."""
    if name in _INT_FIELDS:
        if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
            raise ValueError("expected an integer")
        try:
            value = float(raw) if isinstance(raw, str) else raw
        except ValueError:
            raise ValueError("expected an integer") from None
        if not float(value).is_integer():
            raise ValueError("expected an integer")
        return int(value)
    if name in _FLOAT_FIELDS:
        if isinstance(raw, bool):
            raise ValueError("expected a number")
        try:
            return float(raw)
        except (TypeError, ValueError):
            raise ValueError("expected a number") from None
    if name == "min_clients":
        if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
            raise ValueError("expected 'all', a count N >= 1 or a fraction in (0, 1)")
        return raw.strip() if isinstance(raw, str) else (str(raw) if isinstance(raw, int) else repr(raw))
    if name in ("dp", "resume", "secure_aggregation"):
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in ("true", "false"):
            return raw.lower() == "true"
        raise ValueError("expected true or false")
    if name == "audit":
        return _coerce("dp", raw)
    if name == "partition":
        if isinstance(raw, PartitionSpec):
            return raw
        return PartitionSpec.parse(str(raw))
    if name == "aggregation":
        if isinstance(raw, AggregationSpec):
            return raw
        return AggregationSpec.parse(str(raw))
    if name == "inject_faults":
        if isinstance(raw, (list, tuple)):
            return tuple(f if isinstance(f, Fault) else Fault.parse(str(f)) for f in raw)
        return parse_faults(str(raw))
    if name in ("id_columns", "lora_targets"):
        items = [str(x) for x in raw] if isinstance(raw, (list, tuple)) else str(raw).split(",")
        return tuple(x.strip() for x in items if x.strip())
    if name in ("inject_failure_owners", "audit_owners"):
        if isinstance(raw, (list, tuple)):
            items = [str(x) for x in raw]
        else:
            items = [x for x in str(raw).split(",") if x.strip()]
        try:
            return tuple(int(x) for x in items)
        except ValueError:
            raise ValueError("expected comma-separated owner ids") from None
    if name in _STR_FIELDS:
        if not isinstance(raw, str):
            raise ValueError("expected a string")
        return raw.strip()
    raise ValueError("unsupported key")  # pragma: no cover - every field is listed above


@dataclass(frozen=True)
class NodeSettings:
    """A data owner's own settings, from its SuperNode's ``node_config``; the coordinator cannot change them.

    The owner's budget (its total across every run, kept in the privacy ledger in ``state_dir``) caps
    what a run may spend (a run may ask for less, never more); the delta is the owner's alone (a run's
    delta is ignored: a smaller one would make the same noise cost more of the budget); the data path
    and the device are the owner's, and so is the privacy policy (:attr:`policy`: DP required unless
    ``allow_no_dp``, cleaning with local statistics refused unless ``allow_local_statistics``).
    """

    data_path: str
    label: str = ""
    owner_name: str = "owner"
    budget_epsilon: float = 3.0
    delta: float = 1e-5
    device: str = "auto"
    state_dir: str = ""  # required: the privacy ledger and the audit log live here
    id_columns: tuple[str, ...] = ()  # the owner's identifier columns: dropped before anything else
    model_path: str = ""  # language models: this owner's own copy of the base model folder
    coordinator: str = ""  # the coordinator the node serves (HOST:PORT), recorded in the ledger and audit log
    ledger_key: str = ""  # the 32-byte key file of an encrypted ledger ("" = not encrypted)
    allow_no_dp: bool = False
    min_noise_multiplier: float = 0.0  # 0 = no minimum
    max_epsilon_per_run: float | None = None  # None = no limit per run (the total budget still holds)
    require_secure_aggregation: bool = False
    allow_local_statistics: bool = False  # cleaning with the owner's own statistics (outside DP-SGD's guarantee)
    evaluation: str = "dp"  # dp | exact | off: what an evaluate message may release (fedmodel.privacy.release)
    evaluation_noise: float = 10.0  # the dp evaluation release's Gaussian noise multiplier
    exact_replies: bool = False  # exact train-loss and data-quality counts in train replies
    audit_key: str = ""  # the audit log's HMAC key file, outside the state folder ("" = an unkeyed log)

    KEYS = ("data-path", "label", "owner-name", "budget-epsilon", "delta", "device", "state-dir", "id-columns",
            "coordinator", "ledger-key", "allow-no-dp", "min-noise-multiplier", "max-epsilon-per-run",
            "require-secure-aggregation")
    _FLOAT_KEYS = ("budget-epsilon", "delta", "min-noise-multiplier", "max-epsilon-per-run")
    _BOOL_KEYS = ("allow-no-dp", "require-secure-aggregation")
    KEYS += ("model-path",)  # language models (fedmodel node start --model-path)
    KEYS += ("allow-local-statistics",)  # fedmodel node start --allow-local-statistics
    _BOOL_KEYS += ("allow-local-statistics",)
    KEYS += ("evaluation", "evaluation-noise", "exact-replies")  # what evaluate and train replies release
    _FLOAT_KEYS += ("evaluation-noise",)
    _BOOL_KEYS += ("exact-replies",)
    EVALUATION_MODES = ("dp", "exact", "off")
    KEYS += ("audit-key",)  # the keyed audit log (fedmodel node start --audit-key)

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
            elif key == "id-columns":
                values[name] = tuple(c.strip() for c in str(raw).split(",") if c.strip())
            else:
                values[name] = str(raw)
        if p:
            raise ConfigError(p)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """ConfigError listing every invalid setting."""
        p: list[str] = []
        if not Path(self.data_path).is_absolute():
            p.append(f"node-config data-path = {self.data_path!r}: expected an absolute path")
        if not (_finite(self.budget_epsilon) and self.budget_epsilon > 0):
            p.append(f"node-config budget-epsilon = {self.budget_epsilon!r}: expected a number > 0")
        if not (_finite(self.delta) and 0 < self.delta < 1):
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
        if not (_finite(self.min_noise_multiplier) and self.min_noise_multiplier >= 0):
            p.append(f"node-config min-noise-multiplier = {self.min_noise_multiplier!r}: expected a number >= 0")
        cap = self.max_epsilon_per_run
        if cap is not None and not (_finite(cap) and cap > 0):
            p.append(f"node-config max-epsilon-per-run = {cap!r}: expected a number > 0")
        if self.evaluation not in self.EVALUATION_MODES:
            p.append(f"node-config evaluation = {self.evaluation!r}: expected dp | exact | off")
        if not (_finite(self.evaluation_noise) and self.evaluation_noise > 0):
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
