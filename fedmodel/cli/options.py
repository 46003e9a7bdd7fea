"""Command-line options shared by ``fedmodel simulate`` and ``fedmodel train`` (one definition each)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from fedmodel.config import BUNDLED_DATASETS, TEXT_DATASETS

Dataset = Annotated[str | None, typer.Option(
    help=f"{' | '.join(BUNDLED_DATASETS + TEXT_DATASETS)} or a .csv/.parquet/.npz file (text: .csv/.parquet/.jsonl)")]
Label = Annotated[str | None, typer.Option(help="Label column of a CSV/Parquet file (label array key of an NPZ)")]
Rounds = Annotated[int | None, typer.Option(help="Federated rounds [default: 10]")]
Epsilon = Annotated[float | None, typer.Option(help="Each owner's DP budget for the whole run [default: 3]")]
Delta = Annotated[float | None, typer.Option(help="DP delta [default: 1e-5]")]
MaxGradNorm = Annotated[float | None, typer.Option(help="DP-SGD per-example clipping norm [default: 1]")]
Strategy = Annotated[str | None, typer.Option(help="fedavg | fedprox | fedadam [default: fedavg]")]
ProximalMu = Annotated[float | None, typer.Option(help="FedProx proximal weight [default: 0.01]")]
ServerLr = Annotated[float | None, typer.Option(help="FedAdam server learning rate [default: 0.1]")]
Model = Annotated[str | None, typer.Option(help="logreg | mlp [default: logreg]")]
LocalEpochs = Annotated[int | None, typer.Option(help="Local epochs per round [default: 1]")]
BatchSize = Annotated[int | None, typer.Option(help="Expected batch size (Poisson sampling) [default: 32]")]
Lr = Annotated[float | None, typer.Option(help="Local SGD learning rate [default: 2.0]")]
Seed = Annotated[int | None, typer.Option(help="Seed of the split, partition, sampling and noise [default: 42]")]
TestFraction = Annotated[float | None, typer.Option(help="Held-out test share [default: 0.2]")]
ConfigFile = Annotated[Path | None, typer.Option("--config", help="TOML file of the same keys (options win)")]
OutDir = Annotated[Path | None, typer.Option("--out", help="Run folder [default: runs/<timestamp>]")]
Format = Annotated[str, typer.Option("--format", help="table | json")]
RayAddress = Annotated[str | None, typer.Option(
    "--ray-address", help="Run the workers on this existing Ray cluster: HOST:PORT of its head (GCS, 6379 by "
                          "default) or ray://HOST:10001 [default: a private local Ray]")]
Nodes = Annotated[int | None, typer.Option(
    help="Flower nodes of the simulation; fewer than --clients: each hosts a cohort of owners and trains them one "
         "after another (fast for many owners) [default: 0 = one node per owner]")]
OwnersPerRound = Annotated[int | None, typer.Option(
    help="Owners sampled at random each round (needs --nodes < --clients) [default: 0 = every owner]")]
CpusPerWorker = Annotated[int | None, typer.Option(help="Whole CPUs each simulation worker reserves [default: 1]")]
GpusPerWorker = Annotated[float | None, typer.Option(
    help="GPUs each simulation worker reserves; 0.25 lets 4 workers share a GPU [default: 0]")]

Missing = Annotated[str | None, typer.Option(help="Missing values at each owner: error | drop | mean | median | mode "
                                                 "[default: error]")]
Duplicates = Annotated[str | None, typer.Option(help="Duplicate rows at each owner: keep | drop [default: keep]")]
Outliers = Annotated[str | None, typer.Option(help="Outliers (IQR rule) at each owner: keep | clip | drop "
                                                   "[default: keep]")]
OutlierK = Annotated[float | None, typer.Option(help="IQR multiplier of the outlier rule [default: 3]")]
Scaling = Annotated[str | None, typer.Option(help="Feature scaling: none | zscore | minmax [default: none]")]
ScalingStats = Annotated[str | None, typer.Option(
    help="Scaling statistics: federated (DP sums from every owner, charged to each owner's epsilon) | local "
         "[default: federated]")]
ScalingNoise = Annotated[float | None, typer.Option(help="Noise multiplier of the DP sums for federated scaling "
                                                         "[default: 5]")]
IdColumn = Annotated[list[str] | None, typer.Option(
    "--id-column", help="Identifier column: never a feature, never sent (repeat for several)")]
Augment = Annotated[str | None, typer.Option(help="Image augmentation in training: none | shift:N,noise:STD "
                                                  "[default: none]")]
Aggregation = Annotated[str | None, typer.Option(
    help="fedavg | median | trimmed-mean:BETA | krum:F | multikrum:F [default: fedavg]")]
MaxUpdateNorm = Annotated[float | None, typer.Option(
    help="Reject updates farther than this (L2) from the global model; 0 = no bound [default: 0]")]


MinClients = Annotated[str | None, typer.Option(
    help="Owners a round needs: a count N, a fraction such as 0.8, or all. The first round waits up to "
         "--round-timeout for every node, later rounds take the connected nodes if at least this many; a round "
         "aggregates only with at least this many valid replies [default: every node connected, at least 1 valid "
         "reply]")]
RoundTimeout = Annotated[float | None, typer.Option(
    help="Seconds a round waits for nodes to connect and for replies; late ones are named in the report as "
         "timed out. 0 = wait without limit [default: 0]")]
BelowMinimum = Annotated[str | None, typer.Option(
    help="When a round gets fewer than --min-clients: stop the run, or retry the round (3 tries) "
         "[default: stop]")]
Resume = Annotated[Path | None, typer.Option(
    "--resume", help="Continue the run in RUN_DIR from its newest checkpoint, with its own config.toml",
    metavar="RUN_DIR")]

# Language models (fedmodel.llm): LoRA fine-tuning of a local Hugging Face model.
Task = Annotated[str | None, typer.Option(
    help="tabular | classification (text) | causal-lm (next-token) [default: tabular]")]
ModelPath = Annotated[Path | None, typer.Option(
    "--model-path", help="Local Hugging Face model folder (config, *.safetensors, tokenizer); nothing is downloaded")]
TextColumn = Annotated[str | None, typer.Option(help="Text column of a .csv/.parquet/.jsonl file [default: text]")]
MaxLength = Annotated[int | None, typer.Option(help="Tokens per text; longer texts are truncated [default: 64]")]
LoraRank = Annotated[int | None, typer.Option(help="LoRA rank [default: 8]")]
LoraAlpha = Annotated[int | None, typer.Option(help="LoRA alpha (the update is scaled by alpha/rank) [default: 16]")]
LoraDropout = Annotated[float | None, typer.Option(help="LoRA dropout [default: 0]")]
LoraTargets = Annotated[str | None, typer.Option(
    help="Comma-separated layer names to adapt [default: the architecture's, BERT query,value; GPT-2 c_attn]")]
PhysicalBatchSize = Annotated[int | None, typer.Option(
    help="Most texts per forward pass; a larger --batch-size is split (Opacus BatchMemoryManager) [default: 32]")]
MaxRows = Annotated[int | None, typer.Option(
    help="Use a seeded, stratified sample of this many rows of a text data set (0 = all) [default: 0]")]
Pooling = Annotated[str | None, typer.Option(
    help="Classification: how a text's token states become one vector: auto (mean when the model folder "
         "declares mean pooling, as sentence-embedding models do) | mean | model (the architecture's own head) "
         "[default: auto]")]
HeadLr = Annotated[float | None, typer.Option(
    help="Learning rate of the classification head (the adapters use --lr) "
         "[default: 100 x --lr, 0.05 with the default --lr 5e-4]")]
TEXT_LR = 5e-4
"""The learning rate of a text run when --lr is not given: AdamW on LoRA adapters (tables: SGD, 2.0)."""


def text_options(*, task: str | None, model_path: Path | None, text_column: str | None, max_length: int | None,
                 lora_rank: int | None, lora_alpha: int | None, lora_dropout: float | None, lora_targets: str | None,
                 physical_batch_size: int | None, max_rows: int | None, pooling: str | None = None,
                 head_lr: float | None = None) -> dict[str, Any]:
    """The language-model options given, under their config keys; a model path made absolute."""
    return given(task=task, model_path=model_path.expanduser().absolute() if model_path else None,
                 text_column=text_column, max_length=max_length, lora_rank=lora_rank, lora_alpha=lora_alpha,
                 lora_dropout=lora_dropout, lora_targets=lora_targets, physical_batch_size=physical_batch_size,
                 max_rows=max_rows, pooling=pooling, head_lr=head_lr)

CentralDp = Annotated[str | None, typer.Option(
    help="Central (client-level) DP on top of DP-SGD: none | fixed | adaptive. Owners clip their update to "
         "--central-clip, the coordinator adds noise to the mean [default: none]")]
CentralNoise = Annotated[float | None, typer.Option(
    help="Central DP noise multiplier z: noise std z * clip on the sum of the clipped updates [default: 1]")]
CentralClip = Annotated[float | None, typer.Option(
    help="Central DP L2 clipping norm of an owner's whole update (adaptive: the first round's) [default: 1]")]
CentralTargetQuantile = Annotated[float | None, typer.Option(
    help="Adaptive clipping: share of updates the norm should leave unclipped [default: 0.5]")]
CentralClipLr = Annotated[float | None, typer.Option(
    help="Adaptive clipping: learning rate of the norm's geometric update [default: 0.2]")]
CentralCountStddev = Annotated[float | None, typer.Option(
    help="Adaptive clipping: noise std of the clipped count; must exceed --central-noise / 2 "
         "[default: clients / 20]")]


def central_options(*, central_dp: str | None, central_noise: float | None, central_clip: float | None,
                    central_target_quantile: float | None, central_clip_lr: float | None,
                    central_count_stddev: float | None) -> dict[str, Any]:
    """The central-DP options given, under their config keys."""
    return given(central_dp=central_dp, central_noise=central_noise, central_clip=central_clip,
                 central_target_quantile=central_target_quantile, central_clip_lr=central_clip_lr,
                 central_count_stddev=central_count_stddev)


SecureAggregation = Annotated[bool, typer.Option(
    "--secure-aggregation", help="Flower's SecAgg+ for training: the coordinator sees only the weighted mean of the "
                                 "owners' updates, never one update (needs >= 3 clients and --aggregation fedavg)")]
SecaggShares = Annotated[int | None, typer.Option(
    help="SecAgg+: owners each owner's key is shared with, itself included (odd, >= 3) [default: every owner up "
         "to 9, else about 2 log2(clients) + 1]")]
SecaggThreshold = Annotated[int | None, typer.Option(
    help="SecAgg+: shares that rebuild a key; a round survives dropouts while every owner keeps this many live "
         "neighbours [default: a majority of --secagg-shares]")]


def secure_options(*, secure_aggregation: bool, secagg_shares: int | None,
                   secagg_threshold: int | None) -> dict[str, Any]:
    """The secure-aggregation options given, under their config keys."""
    return given(secure_aggregation=True if secure_aggregation else None, secagg_shares=secagg_shares,
                 secagg_threshold=secagg_threshold)


Ledger = Annotated[Path | None, typer.Option(
    "--ledger", help="Folder of a privacy ledger holding every simulated owner: budgets carry across simulations "
                     "that share it (--epsilon is each owner's total budget) [default: none]")]


def id_columns(values: list[str] | None) -> str | None:
    """Repeated --id-column options as the config's comma-separated value."""
    return None if not values else ",".join(values)


def given(**options: Any) -> dict[str, Any]:
    """The options the user actually gave, under their config keys (``batch_size`` -> ``batch-size``)."""
    return {k.replace("_", "-"): (str(v) if isinstance(v, Path) else v) for k, v in options.items() if v is not None}
