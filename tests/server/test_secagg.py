"""Secure aggregation in process: Flower's SecAgg+ workflow and mod, fedmodel's round code, real Messages.

The grid hands each message to a ClientApp (mods included) with a Context per node, as a SuperNode
would, and turns an exception into an error reply, as Flower does. The oracle for the aggregate is
the plain round: the same strategy code and the same owners' updates without SecAgg+.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

import fedmodel.clients.app as client_app
import numpy as np
import pytest
import torch
from fedmodel.clients.central_dp import central_dp_mod
from fedmodel.clients.secagg import require_masked_train, secure_aggregation_mod
from fedmodel.server.recorder import RunRecorder
from fedmodel.server.secagg import (
    DEFAULT_MAX_WEIGHT,
    SecureAggregateRejected,
    quantisation_bound,
    quantisation_range,
    secure_train,
)
from fedmodel.server.strategy import build_strategy
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.supercore.task_identity import TaskIdentity

from fedmodel.config import RunConfig
from fedmodel.errors import BelowMinimumError, ConfigError, PolicyViolation
from fedmodel.privacy.policy import RULE_SECURE_AGGREGATION, PrivacyPolicy
from fedmodel.report.run_folder import RunFolder

OWNERS = 4
WEIGHTS = {100: 30.0, 101: 70.0, 102: 45.0, 103: 120.0}
GLOBAL = {"fc.weight": torch.linspace(-1, 1, 30).reshape(10, 3), "fc.bias": torch.linspace(0, 0.5, 10)}


def _deltas(node: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(node)
    return {k: rng.normal(0, 0.3, v.shape).astype(np.float32) for k, v in GLOBAL.items()}


DELTAS = {node: _deltas(node) for node in WEIGHTS}
toy = ClientApp()


@toy.train(mods=[secure_aggregation_mod, central_dp_mod])  # as in fedmodel.clients.app
def _toy_train(msg: Message, context: Context) -> Message:
    """An owner whose update is fixed in advance: the global arrays plus its own delta."""
    node = context.node_id
    arrays = msg.content["arrays"].to_torch_state_dict()
    new = {k: v + torch.from_numpy(DELTAS[node][k]) for k, v in arrays.items()}
    metrics = MetricRecord({"num-examples": WEIGHTS[node], "train-loss": 0.25, "owner": float(node - 100),
                            "epsilon": 0.5 + node - 100})
    return Message(RecordDict({"arrays": ArrayRecord(new), "metrics": metrics}), reply_to=msg)


@pytest.fixture(autouse=True)
def serverapp_identity() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 0)):
            patch.setattr(TaskIdentity, name, value)
        yield


class AppGrid:
    """Nodes running ``app``; ``lost`` maps a node to the number of SecAgg+ stages it answers before it dies."""

    def __init__(self, app: ClientApp, contexts: dict[int, Context], lost: dict[int, int] | None = None) -> None:
        self.app, self.contexts, self.lost = app, contexts, lost or {}
        self.answered: dict[int, int] = {}
        self.replies: list[Message] = []

    def get_node_ids(self) -> list[int]:
        return sorted(self.contexts)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        replies = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            node = int(msg.metadata.dst_node_id)
            if self.answered.get(node, 0) >= self.lost.get(node, 99):
                continue  # dead: no reply
            self.answered[node] = self.answered.get(node, 0) + 1
            delivered = copy.deepcopy(msg)  # a SuperNode gets its own copy (the workflow shares one content)
            try:
                reply = self.app(delivered, self.contexts[node])
            except Exception as exc:  # what Flower does with a ClientApp exception
                reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=str(exc)), reply_to=delivered)
            replies.append(reply)
        self.replies += replies
        return replies


def toy_grid(config: RunConfig, lost: dict[int, int] | None = None) -> AppGrid:
    contexts = {n: Context(run_id=1, node_id=n, node_config={}, state=RecordDict(), run_config=config.to_mapping())
                for n in WEIGHTS}
    return AppGrid(toy, contexts, lost)


def one_round(config: RunConfig, grid: AppGrid, tmp_path: Path) -> tuple[dict[str, torch.Tensor], RunRecorder]:
    recorder = RunRecorder(config, RunFolder(tmp_path / ("secure" if config.secure_aggregation else "plain")))
    recorder.folder.create(config.to_mapping())
    strategy = build_strategy(config, recorder)
    arrays = ArrayRecord(GLOBAL)
    if config.secure_aggregation:
        new = secure_train(strategy, grid, config, 1, arrays, ConfigRecord({}), None)  # type: ignore[arg-type]
    else:
        messages = list(strategy.configure_train(1, arrays, ConfigRecord({}), grid))  # type: ignore[arg-type]
        replies = grid.send_and_receive(messages)
        recorder.train_sent(1, messages, replies)
        new, _ = strategy.aggregate_train(1, replies)
    return new.to_torch_state_dict(), recorder


def bound_for(nodes: list[int]) -> dict[str, np.ndarray]:
    levels = quantisation_range(OWNERS)
    weights = [WEIGHTS[n] for n in nodes]
    return {k: quantisation_bound(weights, [DELTAS[n][k].astype(np.float64) for n in nodes],
                                  max_weight=DEFAULT_MAX_WEIGHT, levels=levels) for k in GLOBAL}


def check_close(secure: dict[str, torch.Tensor], plain: dict[str, torch.Tensor], bound: dict[str, np.ndarray]) -> None:
    for key, value in plain.items():
        diff = np.abs(secure[key].double().numpy() - value.double().numpy())
        slack = 4 * np.finfo(np.float32).eps * (np.abs(value.double().numpy()) + 1)  # float32 storage of both
        assert np.all(diff <= bound[key] + slack), (key, float(diff.max()), float(bound[key].max()))


def test_secagg_plus_gives_the_fedavg_aggregate_within_its_quantisation_error(tmp_path: Path) -> None:
    config = RunConfig(clients=OWNERS, rounds=1, secure_aggregation=True)
    grid = toy_grid(config)
    secure, recorder = one_round(config, grid, tmp_path)
    plain, _ = one_round(config.replace(secure_aggregation=False), toy_grid(config), tmp_path)
    bound = bound_for(sorted(WEIGHTS))
    assert max(float(b.max()) for b in bound.values()) < 1e-4  # the check below means something
    check_close(secure, plain, bound)
    moved = float(torch.abs(secure["fc.weight"] - GLOBAL["fc.weight"]).max())
    assert moved > 0.05  # the owners' deltas reached the model
    # the coordinator never held an owner's update: every reply's arrays were masked and cleared
    assert all(not any(len(r) for r in reply.content.array_records.values())
               for reply in grid.replies if not reply.has_error())
    # metrics (and the owners' epsilon) survive SecAgg+
    assert {o: m["num-examples"] for o, m in recorder.owner_train.items()} == {n - 100: w for n, w in WEIGHTS.items()}
    assert {o: m["epsilon"] for o, m in recorder.owner_privacy.items()} == {n - 100: 0.5 + n - 100 for n in WEIGHTS}


@pytest.mark.parametrize("strategy", ["fedprox", "fedadam"])
def test_fedprox_and_fedadam_take_their_step_from_the_secure_mean(tmp_path: Path, strategy: str) -> None:
    config = RunConfig(clients=OWNERS, rounds=1, secure_aggregation=True, strategy=strategy)
    secure, _ = one_round(config, toy_grid(config), tmp_path)
    plain, _ = one_round(config.replace(secure_aggregation=False), toy_grid(config), tmp_path)
    if strategy == "fedprox":  # FedAvg's mean: the same bound
        check_close(secure, plain, bound_for(sorted(WEIGHTS)))
    else:  # FedAdam's step eta * m / (sqrt(v) + tau) from a mean that differs by < 1e-4: far below eta = 0.1
        for key, value in plain.items():
            assert torch.allclose(secure[key], value, atol=1e-3), key
        assert float(torch.abs(secure["fc.weight"] - GLOBAL["fc.weight"]).max()) > 0.05


def test_with_central_dp_owners_clip_inside_secagg_and_weigh_the_same(tmp_path: Path) -> None:
    config = RunConfig(clients=OWNERS, rounds=1, secure_aggregation=True, central_dp="fixed", central_clip=0.5,
                       central_noise=1e-9)  # noise std 1e-10 / 4: the comparison below is about the mean
    grid = toy_grid(config)
    secure, recorder = one_round(config, grid, tmp_path)
    plain, _ = one_round(config.replace(secure_aggregation=False), toy_grid(config), tmp_path)
    weights = [1.0] * OWNERS  # central DP: equal weights, max_weight 1
    for key, value in plain.items():
        deltas = [DELTAS[n][key].astype(np.float64) for n in sorted(WEIGHTS)]
        bound = quantisation_bound(weights, deltas, max_weight=1.0, levels=quantisation_range(OWNERS))
        diff = np.abs(secure[key].double().numpy() - value.double().numpy())
        assert np.all(diff <= bound + 1e-6), (key, float(diff.max()))
    norm = float(torch.sqrt(sum(((secure[k] - GLOBAL[k]) ** 2).sum() for k in GLOBAL)))
    assert 0.1 < norm <= 0.5 * (1 + 1e-3)  # the mean of updates clipped to 0.5 moved the model
    assert len(recorder.central["releases"]) == 1 and recorder.central["releases"][0]["owners"] == OWNERS


def test_an_owner_lost_before_masking_is_left_out_of_the_sum(tmp_path: Path) -> None:
    config = RunConfig(clients=OWNERS, rounds=1, secure_aggregation=True)  # shares 4, threshold 3
    secure, recorder = one_round(config, toy_grid(config, lost={103: 2}), tmp_path)  # setup, share keys, then gone
    survivors = [100, 101, 102]
    plain_config = RunConfig(clients=len(survivors), rounds=1)  # round 1 waits for every owner's node
    plain_grid = toy_grid(plain_config)
    plain_grid.contexts = {n: plain_grid.contexts[n] for n in survivors}
    plain, _ = one_round(plain_config, plain_grid, tmp_path)
    check_close(secure, plain, bound_for(survivors))
    assert recorder._current(1).timed_out == ["node 103"]  # named as not answering the round


def test_below_the_threshold_the_round_stops_with_below_minimum(tmp_path: Path) -> None:
    config = RunConfig(clients=OWNERS, rounds=1, secure_aggregation=True)  # threshold 3: two lost is too many
    with pytest.raises(BelowMinimumError, match="secure aggregation halted.*secagg-threshold = 3"):
        one_round(config, toy_grid(config, lost={102: 2, 103: 2}), tmp_path)


def test_max_update_norm_bounds_the_aggregate(tmp_path: Path) -> None:
    config = RunConfig(clients=OWNERS, rounds=1, secure_aggregation=True, max_update_norm=0.01)
    with pytest.raises(SecureAggregateRejected, match="update norm .* above max-update-norm 0.01"):
        one_round(config, toy_grid(config), tmp_path)


def test_a_node_refuses_an_update_masked_by_too_few_others() -> None:
    config = RunConfig(clients=OWNERS, secure_aggregation=True)
    grid = toy_grid(config)
    ctx = grid.contexts[100]
    setup = {Key.STAGE: Stage.SETUP, Key.SAMPLE_NUMBER: 1, Key.SHARE_NUMBER: 1, Key.THRESHOLD: 1,
             Key.CLIPPING_RANGE: 8.0, Key.TARGET_RANGE: 2**22, Key.MOD_RANGE: 2**32, Key.MAX_WEIGHT: 100.0}
    msg = Message(RecordDict({RECORD_KEY_CONFIGS: ConfigRecord(setup)}), dst_node_id=100, message_type="train")
    keys = grid.send_and_receive([msg])[0].content.config_records[RECORD_KEY_CONFIGS]
    share = {"100": [keys[Key.PUBLIC_KEY_1], keys[Key.PUBLIC_KEY_2]], Key.STAGE: Stage.SHARE_KEYS}
    msg = Message(RecordDict({RECORD_KEY_CONFIGS: ConfigRecord(share)}), dst_node_id=100, message_type="train")
    grid.send_and_receive([msg])
    collect = RecordDict({"fitins.parameters": ArrayRecord(), "fitins.config": ConfigRecord({}),
                          RECORD_KEY_CONFIGS: ConfigRecord({Key.STAGE: Stage.COLLECT_MASKED_VECTORS,
                                                            Key.CIPHERTEXT_LIST: [], Key.SOURCE_LIST: []})})
    reply = grid.send_and_receive([Message(collect, dst_node_id=100, message_type="train")])[0]
    assert reply.has_error() and "masked by 0 other owners" in reply.error.reason
    assert ctx.node_id == 100


def test_secure_aggregation_config_is_checked_naming_the_keys() -> None:
    assert RunConfig(clients=5, secure_aggregation=True).secagg_shares_resolved == 5
    assert RunConfig(clients=5, secure_aggregation=True).secagg_threshold_resolved == 3
    assert RunConfig(clients=100, secure_aggregation=True).secagg_shares_resolved == 15
    with pytest.raises(ConfigError) as caught:
        RunConfig.from_mapping({"secure-aggregation": "true", "clients": 2, "aggregation": "krum:0",
                                "secagg-shares": 4, "secagg-threshold": 1})
    text = str(caught.value)
    for part in ("clients = 2: with two owners", "aggregation = 'krum:0': SecAgg+ reveals only",
                 "secagg-shares = 4", "secagg-threshold = 1"):
        assert part in text


# ---------------------------------------------------------------- the owner's policy, through the real ClientApp
SCHEMA = {"schema-features": 64, "schema-labels": "\x1f".join(str(i) for i in range(10))}


def deployed_contexts(config: RunConfig, tmp_path: Path, **node: object) -> dict[int, Context]:
    rng = np.random.default_rng(0)
    tmp_path.mkdir(parents=True, exist_ok=True)
    contexts = {}
    for i in range(3):
        data = tmp_path / f"site-{i}.csv"
        rows = [",".join([f"f{j}" for j in range(64)] + ["digit"])]
        rows += [",".join([f"{v:.3f}" for v in rng.random(64)] + [str(r % 10)]) for r in range(40 + 10 * i)]
        data.write_text("\n".join(rows) + "\n", encoding="utf-8")
        node_config = {"data-path": str(data), "label": "digit", "owner-name": f"site-{i}", "budget-epsilon": 4.0,
                       "device": "cpu", "state-dir": str(tmp_path / f"state-{i}"), **node}
        contexts[7 + i] = Context(run_id=1, node_id=7 + i, node_config=node_config,  # type: ignore[arg-type]
                                  state=RecordDict(), run_config=config.to_mapping())
    return contexts


def policy_round(config: RunConfig, tmp_path: Path, contexts: dict[int, Context]) -> tuple[AppGrid, RunRecorder]:
    from fedmodel.models import build_model

    grid = AppGrid(client_app.app, contexts)
    recorder = RunRecorder(config, RunFolder(tmp_path / "run"))
    recorder.folder.create(config.to_mapping())
    strategy = build_strategy(config, recorder)
    arrays = ArrayRecord(build_model(config.model, 64, 10, seed=1).state_dict())
    if config.secure_aggregation:
        secure_train(strategy, grid, config, 1, arrays, ConfigRecord(SCHEMA), None)  # type: ignore[arg-type]
    else:
        messages = list(strategy.configure_train(1, arrays, ConfigRecord(SCHEMA), grid))  # type: ignore[arg-type]
        replies = grid.send_and_receive(messages)
        recorder.train_sent(1, messages, replies)
        recorder.train_replies(1, replies) if any(not r.has_error() for r in replies) else None
        grid.replies = replies
    return grid, recorder


def test_require_secure_aggregation_is_met_by_a_secagg_run_and_refuses_a_plain_one(tmp_path: Path) -> None:
    node = {"require-secure-aggregation": True}
    secure = RunConfig(clients=3, rounds=2, epsilon=4.0, batch_size=16, secure_aggregation=True, out="/runs/s")
    grid, recorder = policy_round(secure, tmp_path / "s", deployed_contexts(secure, tmp_path / "s", **node))
    assert not [r.error.reason for r in grid.replies if r.has_error()]
    assert sorted(recorder.owner_privacy) == ["site-0", "site-1", "site-2"]  # trained, epsilon reported
    assert all(0 < m["epsilon"] <= 4.0 for m in recorder.owner_privacy.values())

    plain = secure.replace(secure_aggregation=False)
    grid, _ = policy_round(plain, tmp_path / "p", deployed_contexts(plain, tmp_path / "p", **node))
    reasons = [r.error.reason for r in grid.replies]
    assert len(reasons) == 3 and all(f"refused by the owner's privacy policy ({RULE_SECURE_AGGREGATION})" in r
                                     for r in reasons)


def test_a_run_declaring_secure_aggregation_never_gets_a_plain_update(tmp_path: Path) -> None:
    config = RunConfig(clients=3, rounds=1, epsilon=4.0, batch_size=16, secure_aggregation=True, out="/runs/l")
    contexts = deployed_contexts(config, tmp_path)  # no policy at the node: the run's own declaration holds
    grid = AppGrid(client_app.app, contexts)
    recorder = RunRecorder(config, RunFolder(tmp_path / "run"))
    recorder.folder.create(config.to_mapping())
    strategy = build_strategy(config, recorder)
    from fedmodel.models import build_model

    arrays = ArrayRecord(build_model(config.model, 64, 10, seed=1).state_dict())
    replies = grid.send_and_receive(strategy.configure_train(1, arrays, ConfigRecord(SCHEMA), grid))  # plain train
    assert all(r.has_error() and f"({RULE_SECURE_AGGREGATION})" in r.error.reason and "unmasked update is never sent"
               in r.error.reason for r in replies)
    with pytest.raises(PolicyViolation) as caught:
        require_masked_train("site-0", config)
    assert caught.value.rule == RULE_SECURE_AGGREGATION
    with pytest.raises(PolicyViolation) as refused:
        PrivacyPolicy(require_secure_aggregation=True).check_run("site-0", dp=True, secure_aggregation=False)
    assert refused.value.rule == RULE_SECURE_AGGREGATION


# ---------------------------------------------------------------- checkpoints and --resume under SecAgg+
class Crash(Exception):
    """The coordinator died."""


class CrashingGrid(AppGrid):
    """Simulated owners on the real ClientApp; dies right after the owners sent round ``crash_round``'s masked updates."""

    def __init__(self, config: RunConfig, crash_round: int | None = None) -> None:
        contexts = {100 + i: Context(run_id=1, node_id=100 + i, state=RecordDict(), run_config=config.to_mapping(),
                                     node_config={"partition-id": i, "num-partitions": config.clients})
                    for i in range(config.clients)}
        super().__init__(client_app.app, contexts)
        self.crash_round = crash_round

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        replies = super().send_and_receive(messages, timeout=timeout)
        if any(m.metadata.group_id == str(self.crash_round) and "fitins.config" in m.content.config_records
               for m in messages):
            raise Crash  # the owners trained and masked; the coordinator never unmasked
        return replies


def secure_coordinator(config: RunConfig, run_dir: Path, grid: AppGrid) -> tuple[dict[str, torch.Tensor], RunRecorder]:
    """What fedmodel.server.app.main does for a table run, minus Flower (fresh or resumed), with a checkpoint per round."""
    from fedmodel.server.resume import handbacks, open_checkpoint, resume, save_round, train_config
    from fedmodel.server.rounds import run_rounds

    from fedmodel.data import federated_split
    from fedmodel.models import build_model

    folder = RunFolder(run_dir)
    checkpoint = open_checkpoint(run_dir, config) if config.resume else None
    if checkpoint is None:
        folder.create(config.to_mapping())
    recorder = RunRecorder(config, folder)
    strategy = build_strategy(config, recorder)
    shared = resume(checkpoint, strategy, recorder, folder) if checkpoint else federated_split(config).schema.to_config()
    if checkpoint is None:
        arrays, first, extra = ArrayRecord(build_model(config.model, 64, 10, seed=config.seed).state_dict()), 1, {}
        save_round(folder, 0, arrays, strategy, recorder, shared, config)
    else:
        arrays, first = ArrayRecord(checkpoint.arrays), checkpoint.server_round + 1
        extra = handbacks(recorder, config, in_flight_round=first)
    final = run_rounds(strategy, grid, config, arrays=arrays, first_round=first,  # type: ignore[arg-type]
                       train_config=train_config(config, shared, extra), evaluate_config=ConfigRecord(shared),
                       evaluate_fn=lambda r, a: None,
                       after_round=lambda r, a: save_round(folder, r, a, strategy, recorder, shared, config))
    return final.to_torch_state_dict(), recorder


def test_a_secure_run_resumed_after_a_crash_mid_round_ends_as_the_uninterrupted_one(tmp_path: Path) -> None:
    config = RunConfig(clients=3, rounds=2, batch_size=64, secure_aggregation=True, out=str(tmp_path / "a"),
                       run_id="whole")
    expected, whole = secure_coordinator(config, tmp_path / "a", CrashingGrid(config))

    crashed = config.replace(out=str(tmp_path / "b"), run_id="crashed")
    with pytest.raises(Crash):
        secure_coordinator(crashed, tmp_path / "b", CrashingGrid(crashed, crash_round=2))
    resumed = crashed.replace(resume=True)
    weights, recorder = secure_coordinator(resumed, tmp_path / "b", CrashingGrid(resumed))  # owners' state died too

    assert {o: m["epsilon"] for o, m in recorder.owner_privacy.items()} == {
        o: m["epsilon"] for o, m in whole.owner_privacy.items()}  # the in-flight round counted once
    assert recorder.resumes[0]["in_flight_round"] == 2
    for key, value in expected.items():  # the same training; only SecAgg+'s stochastic rounding differs
        assert torch.allclose(weights[key], value, atol=1e-4), key
