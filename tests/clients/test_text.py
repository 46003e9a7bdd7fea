"""The ClientApp's language-model path called in memory with real Flower Messages and Contexts (tiny models)."""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable
from pathlib import Path

import fedmodel.clients.app as client_app
import pytest
import torch
from fedmodel.clients.run_privacy import CARRY_KEY
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, Metadata, RecordDict
from flwr.app.message.message import make_message
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
from opacus.accountants.rdp import RDPAccountant

from fedmodel.config import RunConfig
from fedmodel.llm import LoraSettings, adapter_state, add_lora, fingerprint, load_base
from fedmodel.llm.federated import CLASSES_KEY, FINGERPRINT_KEY, text_split

ORDERS = RDPAccountant.DEFAULT_ALPHAS


def oracle_epsilon(sample_rate: float, noise_multiplier: float, steps: int, delta: float) -> float:
    rdp = compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=steps, orders=ORDERS)
    return float(get_privacy_spent(orders=ORDERS, rdp=rdp, delta=delta)[0])


def write_texts(path: Path, texts: list[str], labels: list[str] | None) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["review", "sentiment"] if labels is not None else ["review"])
        for i, text in enumerate(texts):
            writer.writerow([text, labels[i]] if labels is not None else [text])
    return path


def run_config(model: Path, data: Path, task: str = "classification", **changes: object) -> RunConfig:
    values: dict[str, object] = {
        "task": task, "model-path": str(model), "dataset": "file", "data-path": str(data), "text-column": "review",
        "label": "sentiment" if task == "classification" else "", "clients": 2, "rounds": 2, "epsilon": 4.0,
        "max-length": 16, "batch-size": 8, "physical-batch-size": 4, "lr": 0.01, "test-fraction": 0.25,
        "device": "cpu", **changes,
    }
    return RunConfig.from_mapping(values)


def initial_adapter(config: RunConfig, classes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """What the coordinator sends first: the seeded adapter (and head) of its own copy of the base."""
    num_labels = len(classes) if config.task == "classification" else None
    loaded = load_base(Path(config.model_path), config.task, num_labels, seed=config.seed)  # type: ignore[arg-type]
    settings = LoraSettings(config.lora_rank, config.lora_alpha, config.lora_dropout, config.lora_targets or None)
    return adapter_state(add_lora(loaded.model, settings, seed=config.seed))


def instruction(config: RunConfig, arrays: dict[str, torch.Tensor], server_round: int, *,
                base_fingerprint: str, message_type: str = MessageType.TRAIN) -> Message:
    classes = text_split(config).classes
    record = ConfigRecord({"server-round": server_round, "lr": config.lr, FINGERPRINT_KEY: base_fingerprint,
                           CLASSES_KEY: "\x1f".join(classes)})
    meta = Metadata(run_id=1, message_id=f"m{server_round}", src_node_id=0, dst_node_id=7, reply_to_message_id="",
                    group_id=str(server_round), created_at=time.time(), ttl=600.0, message_type=message_type)
    return make_message(metadata=meta, content=RecordDict({"arrays": ArrayRecord(arrays), "config": record}))


def sim_context(config: RunConfig, partition: int = 0) -> Context:
    return Context(run_id=1, node_id=7, node_config={"partition-id": partition, "num-partitions": config.clients},
                   state=RecordDict(), run_config=config.to_mapping())


@pytest.fixture
def labelled_csv(tmp_path: Path, random_texts: Callable[..., list[str]]) -> Path:
    texts = random_texts(48, seed=3)
    return write_texts(tmp_path / "reviews.csv", texts, ["good" if i % 2 else "bad" for i in range(len(texts))])


def test_simulated_owner_trains_the_adapter_only_and_epsilon_accumulates_like_the_oracle(
    bert_dir: Path, labelled_csv: Path
) -> None:
    config = run_config(bert_dir, labelled_csv)
    classes = text_split(config).classes
    sent = initial_adapter(config, classes)
    ctx = sim_context(config)
    base_fp = fingerprint(bert_dir)
    eps = []
    for server_round in (1, 2):
        reply = client_app.train(instruction(config, sent, server_round, base_fingerprint=base_fp), ctx)
        assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
        received = reply.content["arrays"].to_torch_state_dict()
        assert set(received) == set(sent)  # the adapter and head, nothing of the base
        assert all("lora_" in k or ".classifier." in k for k in received)  # LoRA matrices and the head
        assert any(not torch.equal(received[k], sent[k]) for k in received)
        metrics = reply.content["metrics"]
        assert int(metrics["num-examples"]) == len(text_split(config).owner_rows[0])
        eps.append(float(metrics["epsilon"]))
        m = {k: float(v) for k, v in metrics.items()}  # type: ignore[arg-type]
        assert m["epsilon"] == pytest.approx(oracle_epsilon(m["sample-rate"], m["noise-multiplier"], int(m["steps"]),
                                                            m["delta"]), rel=1e-9)
        sent = received
    assert 0 < eps[0] < eps[1] <= 4.0
    state = client_app.load_privacy(ctx)
    assert state.plan is not None and state.steps == 2 * state.plan.steps_per_round  # calibrated once, kept


def test_a_different_base_model_is_refused_before_any_privacy_is_spent(bert_dir: Path, labelled_csv: Path) -> None:
    config = run_config(bert_dir, labelled_csv)
    sent = initial_adapter(config, text_split(config).classes)
    ctx = sim_context(config, partition=1)
    reply = client_app.train(instruction(config, sent, 1, base_fingerprint="0" * 64), ctx)
    assert reply.has_error()
    reason = reply.error.reason
    assert reason.startswith("owner 1: ") and "fingerprint" in reason and "0" * 64 in reason
    assert fingerprint(bert_dir) in reason
    assert CARRY_KEY not in ctx.state  # nothing charged


def test_evaluate_reports_the_owner_metrics_and_the_same_worker_trains_next(bert_dir: Path,
                                                                            labelled_csv: Path) -> None:
    config = run_config(bert_dir, labelled_csv)
    sent = initial_adapter(config, text_split(config).classes)
    base_fp = fingerprint(bert_dir)
    ctx = sim_context(config)
    reply = client_app.evaluate(instruction(config, sent, 1, base_fingerprint=base_fp,
                                            message_type=MessageType.EVALUATE), ctx)
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    metrics = reply.content["metrics"]
    assert 0.0 <= float(metrics["accuracy"]) <= 1.0 and float(metrics["loss"]) > 0
    assert int(metrics["num-examples"]) == len(text_split(config).owner_rows[0])
    trained = client_app.train(instruction(config, sent, 1, base_fingerprint=base_fp), ctx)  # the cached model
    assert not trained.has_error(), trained.error.reason if trained.has_error() else ""


def test_causal_lm_owner_trains_its_adapter_with_dp(
    gpt2_dir: Path, tmp_path: Path, random_texts: Callable[..., list[str]]
) -> None:
    data = write_texts(tmp_path / "notes.csv", random_texts(40, seed=5), None)
    config = run_config(gpt2_dir, data, task="causal-lm", rounds=1)
    sent = initial_adapter(config, ())
    reply = client_app.train(instruction(config, sent, 1, base_fingerprint=fingerprint(gpt2_dir)), sim_context(config))
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    received = reply.content["arrays"].to_torch_state_dict()
    assert set(received) == set(sent) and all("lora_" in k for k in received)
    assert 0 < float(reply.content["metrics"]["epsilon"]) <= 4.0


# ---------------------------------------------------------------- deployment: the owner's own file and model

def deployed_context(config: RunConfig, data: Path, model: Path | None, state: Path) -> Context:
    node: dict[str, object] = {"data-path": str(data), "label": "stars", "owner-name": "site-a", "budget-epsilon": 2.0,
                               "delta": 1e-6, "device": "cpu", "state-dir": str(state)}
    if model is not None:
        node["model-path"] = str(model)
    return Context(run_id=1, node_id=7, node_config=node, state=RecordDict(), run_config=config.to_mapping())


def test_deployed_owner_reads_its_jsonl_file_with_the_run_classes_and_its_own_model(
    bert_dir: Path, labelled_csv: Path, tmp_path: Path, random_texts: Callable[..., list[str]]
) -> None:
    config = run_config(bert_dir, labelled_csv, epsilon=8.0)  # the coordinator's copy and its held-out file
    site = tmp_path / "site-a.jsonl"
    site.write_text("".join(json.dumps({"review": t, "stars": "good" if i % 3 else "bad"}) + "\n"
                            for i, t in enumerate(random_texts(30, seed=9))), encoding="utf-8")
    sent = initial_adapter(config, text_split(config).classes)
    ctx = deployed_context(config, site, bert_dir, tmp_path / "state")
    reply = client_app.train(instruction(config, sent, 1, base_fingerprint=fingerprint(bert_dir)), ctx)
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    metrics = reply.content["metrics"]
    assert int(metrics["num-examples"]) == 30
    assert float(metrics["budget-epsilon"]) == 2.0 and 0 < float(metrics["epsilon"]) <= 2.0  # the node's budget
    assert reply.content.config_records["owner-info"]["name"] == "site-a"
    assert set(reply.content["arrays"].to_torch_state_dict()) == set(sent)


def test_deployed_owner_without_a_model_path_gets_a_clear_refusal(bert_dir: Path, labelled_csv: Path,
                                                                    tmp_path: Path) -> None:
    config = run_config(bert_dir, labelled_csv)
    sent = initial_adapter(config, text_split(config).classes)
    ctx = deployed_context(config, labelled_csv, None, tmp_path / "state")
    reply = client_app.train(instruction(config, sent, 1, base_fingerprint=fingerprint(bert_dir)), ctx)
    assert reply.has_error()
    assert reply.error.reason.startswith("owner site-a: ") and "--model-path" in reply.error.reason
