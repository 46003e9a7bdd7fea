"""A deployed node masks at most one update per (run, round): the SecAgg+ replay attack, through the real ClientApp.

The attack: a coordinator runs a round under SecAgg+, then runs it again without one owner and
subtracts the two unmasked sums; when the other owners' updates repeat, what is left is that
owner's update. The node's defence is to mask one update per (run, round), remembered in its state
folder across processes (a SuperNode starts a fresh ClientApp process per message: here, a fresh
Context). The coordinator side is fedmodel's own (fedmodel.server.secagg) with Flower's SecAgg+ workflow.
"""

from __future__ import annotations

import copy
import stat
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

import fedmodel.clients.app as client_app
import numpy as np
import pytest
from fedmodel.clients.secagg import MASKED_ROUNDS_FILE, RULE_SECURE_AGGREGATION_REPLAY, read_masked_rounds
from fedmodel.server.recorder import RunRecorder
from fedmodel.server.secagg import secure_train
from fedmodel.server.strategy import build_strategy
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.supercore.task_identity import TaskIdentity

from fedmodel.config import RunConfig
from fedmodel.errors import FedModelError
from fedmodel.models import build_model
from fedmodel.report.run_folder import RunFolder
from fedmodel.security.audit_log import read_entries

SITES = 3
SCHEMA = {"schema-features": 64, "schema-labels": "\x1f".join(str(i) for i in range(10))}


@pytest.fixture(autouse=True)
def serverapp_identity() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 0)):
            patch.setattr(TaskIdentity, name, value)
        yield


class NodesGrid:
    """Each node runs ``app`` with its own Context, as a SuperNode would; an exception becomes an error reply."""

    def __init__(self, app: ClientApp, contexts: dict[int, Context]) -> None:
        self.app, self.contexts = app, contexts
        self.replies: list[Message] = []
        self.failure: FedModelError | None = None

    def get_node_ids(self) -> list[int]:
        return sorted(self.contexts)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        replies = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            delivered = copy.deepcopy(msg)
            try:
                reply = self.app(delivered, self.contexts[int(msg.metadata.dst_node_id)])
            except Exception as exc:  # what Flower does with a ClientApp exception
                reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=str(exc)), reply_to=delivered)
            replies.append(reply)
        self.replies += replies
        return replies


def write_sites(tmp_path: Path) -> list[dict[str, object]]:
    """Three owners' CSV shards and node configs (the node's own settings, state folder included)."""
    rng = np.random.default_rng(0)
    configs = []
    for i in range(SITES):
        data = tmp_path / f"site-{i}.csv"
        rows = [",".join([f"f{j}" for j in range(64)] + ["digit"])]
        rows += [",".join([f"{v:.3f}" for v in rng.random(64)] + [str(r % 10)]) for r in range(40 + 10 * i)]
        data.write_text("\n".join(rows) + "\n", encoding="utf-8")
        configs.append({"data-path": str(data), "label": "digit", "owner-name": f"site-{i}", "budget-epsilon": 8.0,
                        "device": "cpu", "state-dir": str(tmp_path / f"state-{i}")})
    return configs


def fresh_nodes(config: RunConfig, node_configs: list[dict[str, object]], flower_run: int = 1) -> dict[int, Context]:
    """New Contexts: what a fresh ``flwr-clientapp`` process of each node starts from (nothing in memory)."""
    return {7 + i: Context(run_id=flower_run, node_id=7 + i, node_config=dict(n),  # type: ignore[arg-type]
                           state=RecordDict(), run_config=config.to_mapping()) for i, n in enumerate(node_configs)}


def secure_round(config: RunConfig, contexts: dict[int, Context], out: Path, server_round: int = 1,
                 train_config: dict[str, object] | None = None) -> NodesGrid:
    """One SecAgg+ train stage of fedmodel's coordinator over these nodes; the grid keeps every reply."""
    grid = NodesGrid(client_app.app, contexts)
    recorder = RunRecorder(config, RunFolder(out))
    recorder.folder.create(config.to_mapping())
    arrays = ArrayRecord(build_model(config.model, 64, 10, seed=1).state_dict())
    try:
        secure_train(build_strategy(config, recorder), grid, config, server_round, arrays,  # type: ignore[arg-type]
                     ConfigRecord(SCHEMA if train_config is None else train_config), None)  # type: ignore[arg-type]
    except FedModelError as exc:  # every owner refused: nothing to aggregate
        grid.failure = exc
    return grid


def refusals(state_dir: Path) -> list[dict[str, object]]:
    entries, _ = read_entries(state_dir / "audit.log")
    return [dict(e.fields) for e in entries if e.event == "refuse"]


def test_a_node_masks_one_update_per_run_and_round_even_across_processes(tmp_path: Path) -> None:
    nodes = write_sites(tmp_path)
    config = RunConfig(clients=SITES, rounds=2, epsilon=4.0, batch_size=16, secure_aggregation=True,
                       out=str(tmp_path / "run"), run_id="run-a")
    first = secure_round(config, fresh_nodes(config, nodes), tmp_path / "first")
    assert first.failure is None and not [r.error.reason for r in first.replies if r.has_error()]
    for node in nodes:  # recorded on disk, owner-only, before the masked update left
        state = Path(str(node["state-dir"]))
        assert read_masked_rounds(state) == {("run-a", 1)}
        assert stat.S_IMODE((state / MASKED_ROUNDS_FILE).stat().st_mode) == 0o600
        assert refusals(state) == []

    # the coordinator re-runs round 1 of the same run: fresh processes (nothing in memory), another Flower run
    again = secure_round(config, fresh_nodes(config, nodes, flower_run=2), tmp_path / "again")
    assert again.failure is not None
    errors = [r.error.reason for r in again.replies if r.has_error()]
    assert len(errors) == SITES and all(f"({RULE_SECURE_AGGREGATION_REPLAY})" in r for r in errors)
    assert not [r for r in again.replies if not r.has_error() and "fitres.parameters" in r.content.array_records]
    for i, node in enumerate(nodes):  # each refusal is in the owner's audit log
        (refused,) = refusals(Path(str(node["state-dir"])))
        assert refused["rule"] == RULE_SECURE_AGGREGATION_REPLAY and refused["owner"] == f"site-{i}"
        assert "run 'run-a' round 1 was masked and sent already" in str(refused["reason"])

    # the next round of the run, and a new run (new keys, new protocol instance, charged again), go on as usual
    after = secure_round(config, fresh_nodes(config, nodes), tmp_path / "next", server_round=2)
    other = config.replace(run_id="run-b", out=str(tmp_path / "run-b"))
    new_run = secure_round(other, fresh_nodes(other, nodes, flower_run=3), tmp_path / "other")
    assert after.failure is None and new_run.failure is None
    for node in nodes:
        assert read_masked_rounds(Path(str(node["state-dir"]))) == {("run-a", 1), ("run-a", 2), ("run-b", 1)}


def test_a_failed_attempt_gives_its_round_back_and_an_unreadable_record_sends_nothing(tmp_path: Path) -> None:
    nodes = write_sites(tmp_path)
    config = RunConfig(clients=SITES, rounds=1, epsilon=4.0, batch_size=16, secure_aggregation=True,
                       out=str(tmp_path / "run"), run_id="run-a")
    failed = secure_round(config, fresh_nodes(config, nodes), tmp_path / "failed", train_config={})  # no schema
    assert failed.failure is not None
    assert all("declared no data schema" in r.error.reason for r in failed.replies if r.has_error())
    assert all(read_masked_rounds(Path(str(n["state-dir"]))) == set() for n in nodes)  # nothing was released

    broken = Path(str(nodes[0]["state-dir"])) / MASKED_ROUNDS_FILE
    broken.write_text("{not json", encoding="utf-8")
    retried = secure_round(config, fresh_nodes(config, nodes), tmp_path / "retried")
    errors = {r.metadata.src_node_id: r.error.reason for r in retried.replies if r.has_error()}
    assert list(errors) == [7] and "cannot record the masked round, nothing is sent" in errors[7]
    assert all(read_masked_rounds(Path(str(n["state-dir"]))) == {("run-a", 1)} for n in nodes[1:])
