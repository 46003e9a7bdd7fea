"""The run's settings, one frozen dataclass per concern; each field declared once with :func:`option`.

Each section checks its own fields (``problems()``); checks that combine sections live on
:class:`~fedmodel.config.RunConfig`. A field's kebab-case key is its name with ``-`` for ``_``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from fedmodel.config.declare import (
    SIMULATE,
    SIMULATION_ONLY,
    TESTING_AID,
    field_problems,
    finite,
    option,
)
from fedmodel.config.specs import (
    BELOW_MINIMUM,
    BUNDLED_DATASETS,
    CENTRAL_DP,
    DEVICE_PATTERN,
    DUPLICATE_POLICIES,
    MISSING_POLICIES,
    MODELS,
    OUTLIER_POLICIES,
    SCALING_STATS,
    SCALINGS,
    STRATEGIES,
    TASKS,
    TEXT_DATASETS,
    AggregationSpec,
    PartitionSpec,
)
from fedmodel.faults import Fault

_RUN_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_RAY_ADDRESS_RE = re.compile(r"^(ray://)?[A-Za-z0-9.\-]+:\d{1,5}$")
POOLINGS: tuple[str, ...] = ("auto", "mean", "model")


def _min_clients(raw: object) -> str:
    """``min-clients`` as text: ``all``, a count or a fraction (checked against ``clients`` by RunConfig)."""
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise ValueError("expected 'all', a count N >= 1 or a fraction in (0, 1)")
    return raw.strip() if isinstance(raw, str) else (str(raw) if isinstance(raw, int) else repr(raw))


@dataclass(frozen=True)
class DataSettings:
    """Which data the run trains on and how the coordinator holds part of it out."""

    dataset: str = option(
        "digits", help=f"{' | '.join(BUNDLED_DATASETS + TEXT_DATASETS)} or a .csv/.parquet/.npz file "
                       "(text: .csv/.parquet/.jsonl)")
    data_path: str = option("", help="The data file of dataset = 'file' (the command line sets it from --dataset)",
                            commands=())
    label: str = option("", help="Label column of a CSV/Parquet file (label array key of an NPZ)")
    test_fraction: float = option(0.2, help="Held-out test share", check=lambda v: finite(v) and 0 < v < 1,
                                  expected="a number in (0, 1)")
    partition: PartitionSpec = option(
        PartitionSpec(), help="How the training rows are split across owners: iid | dirichlet:ALPHA | pathological:K "
                              "| sample:R (each owner draws R rows; owners share rows)",
        deployed=SIMULATION_ONLY, commands=(SIMULATE,))

    def problems(self) -> list[str]:
        """The data set's own settings that cannot work."""
        p = field_problems(self, DataSettings)
        if self.dataset not in BUNDLED_DATASETS + TEXT_DATASETS and self.dataset != "file":
            p.append(
                f"dataset = {self.dataset!r}: unknown data set; expected one of "
                f"{', '.join(BUNDLED_DATASETS + TEXT_DATASETS)} or a path to a .csv, .parquet, .npz or .jsonl file"
            )
        if self.dataset == "file" and not self.data_path:
            p.append(f"data-path = {self.data_path!r}: expected a path to a .csv, .parquet or .npz file")
        return p


@dataclass(frozen=True)
class TrainingSettings:
    """The federation, the model and its local training, and how the coordinator combines updates."""

    clients: int = option(10, help="Data owners: the simulated owners, or the deployed nodes that must take part",
                          check=lambda v: v >= 1, expected="an integer >= 1")
    rounds: int = option(10, help="Federated rounds", check=lambda v: v >= 1, expected="an integer >= 1")
    model: str = option("logreg", help="The model every owner trains", choices=MODELS)
    strategy: str = option("fedavg", help="Flower strategy", choices=STRATEGIES)
    proximal_mu: float = option(0.01, help="FedProx proximal weight", check=lambda v: finite(v) and v >= 0,
                                expected="a number >= 0")
    server_lr: float = option(0.1, help="FedAdam server learning rate", check=lambda v: finite(v) and v > 0,
                              expected="a number > 0")
    aggregation: AggregationSpec = option(
        AggregationSpec(), help="How the coordinator combines updates: fedavg | median | trimmed-mean:BETA | krum:F "
                                "| multikrum:F")
    max_update_norm: float = option(
        0.0, help="Reject updates farther than this (L2) from the global model; 0 = no bound",
        check=lambda v: finite(v) and v >= 0, expected="a number >= 0 (0 = no bound)")
    local_epochs: int = option(1, help="Local epochs per round", check=lambda v: v >= 1, expected="an integer >= 1")
    batch_size: int = option(32, help="Expected batch size (Poisson sampling)", check=lambda v: v >= 1,
                             expected="an integer >= 1")
    lr: float = option(2.0, help="Local learning rate (SGD on tables; text runs: AdamW, 5e-4 unless given)",
                       check=lambda v: finite(v) and v > 0, expected="a number > 0")
    seed: int = option(42, help="Seed of the split, partition, sampling and noise (simulation)",
                       check=lambda v: v >= 0, expected="an integer >= 0")
    device: str = option("auto", help="auto | cpu | cuda | cuda:N", check=lambda v: bool(DEVICE_PATTERN.match(v)),
                         expected="auto | cpu | cuda | cuda:N", commands=(SIMULATE,))
    out: str = option("", help="Run folder", shown="runs/<timestamp>", path=True)

    def problems(self) -> list[str]:
        """The training settings' own checks."""
        return field_problems(self, TrainingSettings)


@dataclass(frozen=True)
class PrivacySettings:
    """Record-level differential privacy at each owner (Opacus DP-SGD)."""

    epsilon: float = option(3.0, help="Each owner's DP budget for the whole run",
                            check=lambda v: finite(v) and v > 0, expected="a number > 0")
    delta: float = option(1e-5, help="DP delta", check=lambda v: finite(v) and 0 < v < 1,
                          expected="a number in (0, 1)")
    dp: bool = option(True, help="Train without differential privacy (ablation); DP-SGD at each owner otherwise",
                      commands=(SIMULATE,))
    max_grad_norm: float = option(1.0, help="DP-SGD per-example clipping norm", check=lambda v: finite(v) and v > 0,
                                  expected="a number > 0")

    def problems(self) -> list[str]:
        """The privacy settings' own checks."""
        return field_problems(self, PrivacySettings)


@dataclass(frozen=True)
class CleaningSettings:
    """Cleaning at each owner (:mod:`fedmodel.data.cleaning`), applied to data files before training."""

    missing: str = option("error", help="Missing values at each owner", choices=MISSING_POLICIES)
    duplicates: str = option("keep", help="Duplicate rows at each owner", choices=DUPLICATE_POLICIES)
    outliers: str = option("keep", help="Outliers (IQR rule) at each owner", choices=OUTLIER_POLICIES)
    outlier_k: float = option(3.0, help="IQR multiplier of the outlier rule", check=lambda v: finite(v) and v > 0,
                              expected="a number > 0")
    scaling: str = option("none", help="Feature scaling", choices=SCALINGS)
    scaling_stats: str = option(
        "federated", help="Scaling statistics: federated (DP sums from every owner, charged to each owner's epsilon) "
                          "| local (each owner's own)", choices=SCALING_STATS)
    scaling_noise: float = option(5.0, help="Noise multiplier of the DP sums for federated scaling",
                                  check=lambda v: finite(v) and v > 0,
                                  expected="a number > 0 (the noise multiplier of the DP sums)")
    # The command line takes --id-column, repeated (fedmodel.cli.options.IdColumn), not a comma list.
    id_columns: tuple[str, ...] = option((), help="Identifier columns: never features, never sent (command line: --id-column, "
                                            "repeated)", commands=())
    augment: str = option("none", help="Image augmentation in training: none | shift:N,noise:STD")

    def problems(self) -> list[str]:
        """The cleaning settings' own checks (an augmentation spec parses)."""
        from fedmodel.data.augment import parse_augment

        p = field_problems(self, CleaningSettings)
        if not all(c.strip() for c in self.id_columns):
            p.append(f"id-columns = {','.join(self.id_columns)!r}: expected comma-separated column names")
        try:
            parse_augment(self.augment)
        except ValueError as exc:
            p.append(f"augment = {self.augment!r}: {exc}")
        return p


@dataclass(frozen=True)
class TextSettings:
    """Language models (task classification | causal-lm): LoRA fine-tuning of a local base model."""

    task: str = option("tabular", help="tabular | classification (text) | causal-lm (next-token)", choices=TASKS)
    model_path: str = option(
        "", help="Local Hugging Face model folder (config, *.safetensors, tokenizer); nothing is downloaded. A "
                 "deployed owner uses its own copy", path=True)
    text_column: str = option("text", help="Text column of a .csv/.parquet/.jsonl file",
                              check=lambda v: bool(v.strip()), expected="a column name")
    max_length: int = option(64, help="Tokens per text; longer texts are truncated", check=lambda v: v >= 2,
                             expected="an integer >= 2 (tokens per example)")
    lora_rank: int = option(8, help="LoRA rank", check=lambda v: v >= 1, expected="an integer >= 1")
    lora_alpha: int = option(16, help="LoRA alpha (the update is scaled by alpha/rank)", check=lambda v: v >= 1,
                             expected="an integer >= 1")
    lora_dropout: float = option(0.0, help="LoRA dropout", check=lambda v: finite(v) and 0 <= v < 1,
                                 expected="a number in [0, 1)")
    lora_targets: tuple[str, ...] = option(
        (), help="Comma-separated layer names to adapt", shown="the architecture's, BERT query,value; GPT-2 c_attn")
    physical_batch_size: int = option(
        32, help="Most texts per forward pass; a larger --batch-size is split (Opacus BatchMemoryManager)",
        check=lambda v: v >= 1, expected="an integer >= 1")
    pooling: str = option(
        "auto", help="Classification: how a text's token states become one vector: auto (mean when the model folder "
                     "declares mean pooling, as sentence-embedding models do) | mean | model (the architecture's own "
                     "head)", choices=POOLINGS)
    head_lr: float = option(0.0, help="Learning rate of the classification head (the adapters use --lr)",
                            check=lambda v: finite(v) and v >= 0, expected="a number >= 0 (0 = 100 x lr)",
                            shown="100 x --lr, 0.05 with the default --lr 5e-4")
    max_rows: int = option(0, help="Use a seeded, stratified sample of this many rows of a text data set (0 = all)",
                           check=lambda v: v >= 0, expected="an integer >= 0 (0 = all rows)")

    @property
    def text_task(self) -> bool:
        """True for a language-model task."""
        return self.task in TASKS[1:]

    def problems(self) -> list[str]:
        """The language-model settings, checked for a text task; the text-only ones must stay unset otherwise."""
        p = field_problems(self, TextSettings, only=("task",))
        if not self.text_task:
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
        return p + field_problems(self, TextSettings, skip=("task",))


@dataclass(frozen=True)
class ReliabilitySettings:
    """Dropouts, timeouts and resume (:mod:`fedmodel.server.rounds`)."""

    min_clients: str = option(
        "", help="Owners a round needs: a count N, a fraction such as 0.8, or all. The first round waits up to "
                 "--round-timeout for every node, later rounds take the connected nodes if at least this many; a "
                 "round aggregates only with at least this many valid replies",
        shown="every node connected, at least 1 valid reply", parse=_min_clients)
    round_timeout: float = option(
        0.0, help="Seconds a round waits for nodes to connect and for replies; late ones are named in the report as "
                  "timed out. 0 = wait without limit", check=lambda v: finite(v) and v >= 0,
        expected="seconds >= 0 (0 = no limit)")
    below_minimum: str = option("stop", help="When a round gets fewer than --min-clients: stop the run, or retry the "
                                             "round (3 tries)", choices=BELOW_MINIMUM)
    # Set by --resume RUN_DIR (fedmodel.cli.options.Resume), which takes the run folder, not a flag.
    resume: bool = option(False, help="Continue the run in out from its latest checkpoint", commands=())
    run_id: str = option("", help="fedmodel's own id of the run, kept across resume (names each node's privacy file)",
                         check=lambda v: not v or bool(_RUN_ID_RE.match(v)),
                         expected="1 to 64 letters, digits, '-' or '_'", commands=())

    def problems(self) -> list[str]:
        """The reliability settings' own checks (``min-clients`` needs ``clients``: RunConfig checks it)."""
        return field_problems(self, ReliabilitySettings)


@dataclass(frozen=True)
class SecureAggregationSettings:
    """Flower's SecAgg+ for the train stage (:mod:`fedmodel.server.secagg`, :mod:`fedmodel.clients.secagg`)."""

    secure_aggregation: bool = option(
        False, help="Flower's SecAgg+ for training: the coordinator sees only the weighted mean of the owners' "
                    "updates, never one update (needs >= 3 clients and --aggregation fedavg)")
    secagg_shares: int = option(
        0, help="SecAgg+: owners each owner's key is shared with, itself included (odd, >= 3)",
        shown="every owner up to 9, else about 2 log2(clients) + 1")
    secagg_threshold: int = option(
        0, help="SecAgg+: shares that rebuild a key; a round survives dropouts while every owner keeps this many "
                "live neighbours", shown="a majority of --secagg-shares")

    def problems(self) -> list[str]:
        """Nothing to check alone: shares and threshold depend on ``clients`` (RunConfig checks them)."""
        return field_problems(self, SecureAggregationSettings)


@dataclass(frozen=True)
class CentralDPSettings:
    """Central (client-level) DP: Flower's client-side clipping wrappers and mods (:mod:`fedmodel.server.central_dp`)."""

    central_dp: str = option(
        "none", help="Central (client-level) DP on top of DP-SGD: none | fixed | adaptive. Owners clip their update "
                     "to --central-clip, the coordinator adds noise to the mean", choices=CENTRAL_DP)
    central_noise: float = option(
        1.0, help="Central DP noise multiplier z: noise std z * clip on the sum of the clipped updates",
        check=lambda v: finite(v) and v > 0, expected="a noise multiplier > 0")
    central_clip: float = option(
        1.0, help="Central DP L2 clipping norm of an owner's whole update (adaptive: the first round's)",
        check=lambda v: finite(v) and v > 0, expected="a clipping norm > 0 (the L2 norm of an owner's whole update)")
    central_target_quantile: float = option(
        0.5, help="Adaptive clipping: share of updates the norm should leave unclipped",
        check=lambda v: finite(v) and 0 <= v <= 1, expected="a share in [0, 1]")
    central_clip_lr: float = option(
        0.2, help="Adaptive clipping: learning rate of the norm's geometric update",
        check=lambda v: finite(v) and v > 0, expected="a learning rate > 0")
    central_count_stddev: float = option(
        0.0, help="Adaptive clipping: noise std of the clipped count; must exceed --central-noise / 2",
        check=lambda v: finite(v) and v >= 0, expected="a standard deviation >= 0 (0 = clients / 20)",
        shown="clients / 20")

    def problems(self) -> list[str]:
        """The central-DP settings' own checks."""
        return field_problems(self, CentralDPSettings)


@dataclass(frozen=True)
class SimulationSettings:
    """Simulation only: Ray workers, cohorts of owners per Flower node, a ledger across simulations, testing aids."""

    ray_address: str = option(
        "", help="Run the workers on this existing Ray cluster: HOST:PORT of its head (GCS, 6379 by default) or "
                 "ray://HOST:10001", check=lambda v: not v or bool(_RAY_ADDRESS_RE.match(v)),
        expected="HOST:PORT (the head's GCS port, 6379 by default) or ray://HOST:PORT", shown="a private local Ray",
        deployed=SIMULATION_ONLY, commands=(SIMULATE,))
    cpus_per_worker: int = option(1, help="Whole CPUs each simulation worker reserves", check=lambda v: v >= 1,
                                  expected="an integer >= 1", deployed=SIMULATION_ONLY, commands=(SIMULATE,))
    gpus_per_worker: float = option(
        0.0, help="GPUs each simulation worker reserves; 0.25 lets 4 workers share a GPU",
        check=lambda v: finite(v) and v >= 0, expected="a number >= 0 (fractions such as 0.25 let workers share a GPU)",
        deployed=SIMULATION_ONLY, commands=(SIMULATE,))
    nodes: int = option(
        0, help="Flower nodes of the simulation; fewer than --clients: each hosts a cohort of owners and trains them "
                "one after another (fast for many owners); 0 = one node per owner",
        deployed=SIMULATION_ONLY, commands=(SIMULATE,))
    owners_per_round: int = option(
        0, help="Owners sampled at random each round (needs --nodes < --clients); 0 = every owner",
        deployed=SIMULATION_ONLY, commands=(SIMULATE,))
    ledger: str = option(
        "", help="Folder of a privacy ledger holding every simulated owner: budgets carry across simulations that "
                 "share it (--epsilon is each owner's total budget). A deployed node keeps its own ledger",
        check=lambda v: not v or Path(v).is_absolute(),
        expected="an absolute folder path (or empty for no persistent ledger)", shown="none", path=True,
        deployed=SIMULATION_ONLY, commands=(SIMULATE,))
    inject_failure_owners: tuple[int, ...] = option(
        (), help="Testing aid: these owners raise during training", deployed=TESTING_AID, commands=(SIMULATE,),
        hidden=True)
    inject_faults: tuple[Fault, ...] = option(
        (), help="Testing aid: faulty owners, as 3:signflip,4:scale10,... (fedmodel.faults)", deployed=TESTING_AID,
        commands=(SIMULATE,), hidden=True)

    def problems(self) -> list[str]:
        """The simulation settings' own checks (owner ids and node counts need ``clients``: RunConfig)."""
        return field_problems(self, SimulationSettings)


@dataclass(frozen=True)
class AuditSettings:
    """The empirical privacy audit (:mod:`fedmodel.privacy.canaries`): a testing aid, simulation only."""

    audit: bool = option(
        False, help="Empirical privacy audit (testing aid): train on canaries and report a lower bound on epsilon "
                    "beside the proven one", deployed=TESTING_AID, commands=(SIMULATE,))
    audit_canaries: int = option(200, help="Canaries of --audit, each in its owner's training data with probability "
                                           "1/2", check=lambda v: v >= 2, expected="an integer >= 2",
                                 deployed=TESTING_AID, commands=(SIMULATE,))
    audit_owners: tuple[int, ...] = option((), help="Owners given the canaries of --audit, comma-separated",
                                           shown="every owner", deployed=TESTING_AID, commands=(SIMULATE,))

    def problems(self) -> list[str]:
        """The audit's own checks (owner ids need ``clients``: RunConfig)."""
        return field_problems(self, AuditSettings)


SECTIONS: tuple[type, ...] = (DataSettings, TrainingSettings, PrivacySettings, CleaningSettings, TextSettings,
                              ReliabilitySettings, SecureAggregationSettings, CentralDPSettings, SimulationSettings,
                              AuditSettings)
"""Every section, in the order of ``--help``, the reference and ``pyproject.toml``."""
