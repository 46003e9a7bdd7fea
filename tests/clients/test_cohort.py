"""A simulated node hosting a cohort of owners: each owner's reply and privacy state equal a node of its own."""

from __future__ import annotations

import time

import fedmodel.clients.app as client_app
import numpy as np
import pytest
from fedmodel.clients.cohort import STATE_INDEX_KEY, CellCache, owner_context
from fedmodel.server.cohorts import round_owners, split_replies
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, Metadata, RecordDict
from flwr.app.message.message import make_message

from fedmodel.config import PartitionSpec, RunConfig
from fedmodel.models import build_model
from fedmodel.privacy import OwnerPrivacyState, epsilon_spent
from fedmodel.protocol import COHORT_ERRORS_KEY, COHORT_KEY


def message(server_round: int, cohort: list[int] | None, message_type: str = MessageType.TRAIN) -> Message:
    model = build_model("logreg", 64, 10, seed=42)
    config: dict[str, object] = {"server-round": server_round}
    if cohort is not None:
        config[COHORT_KEY] = cohort
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "config": ConfigRecord(config)})
    meta = Metadata(run_id=1, message_id=f"m{server_round}", src_node_id=0, dst_node_id=7, reply_to_message_id="",
                    group_id=str(server_round), created_at=time.time(), ttl=600.0, message_type=message_type)
    return make_message(metadata=meta, content=content)


def node(config: RunConfig, partition: int, partitions: int) -> Context:
    return Context(run_id=1, node_id=7 + partition, node_config={"partition-id": partition,
                                                                   "num-partitions": partitions},
                   state=RecordDict(), run_config=config.to_mapping())


def as_reply(reply: Message, src: int) -> Message:
    """What the coordinator receives: the node's reply with its sender filled in."""
    meta = Metadata(run_id=1, message_id=f"r{src}", src_node_id=src, dst_node_id=0, reply_to_message_id="m",
                    group_id="1", created_at=time.time(), ttl=600.0, message_type=MessageType.TRAIN)
    if reply.has_error():
        return make_message(metadata=meta, error=reply.error)
    return make_message(metadata=meta, content=reply.content)


def test_cohort_replies_equal_one_node_per_owner_over_two_rounds() -> None:
    config = RunConfig(clients=5, rounds=2, nodes=2)
    alone = RunConfig(clients=5, rounds=2)
    nodes = [node(config, j, 2) for j in range(2)]
    singles = [node(alone, o, 5) for o in range(5)]
    for server_round in (1, 2):
        got = []
        for j, ctx in enumerate(nodes):
            got += split_replies([as_reply(client_app.train(message(server_round, [0, 1, 2, 3, 4]), ctx), j)])
        assert sorted(int(r.content["metrics"]["owner"]) for r in got) == [0, 1, 2, 3, 4]
        for reply in got:
            owner = int(reply.content["metrics"]["owner"])
            single = client_app.train(message(server_round, None), singles[owner])
            assert dict(reply.content["metrics"]) == dict(single.content["metrics"])  # same seeds, same epsilon
            for key, value in single.content["arrays"].to_torch_state_dict().items():
                assert np.array_equal(reply.content["arrays"].to_torch_state_dict()[key].numpy(), value.numpy())
    # each owner's privacy state is its own, kept in the node's state under its name
    index = dict(nodes[0].state[STATE_INDEX_KEY])
    assert sorted(index) == ["0", "2", "4"]
    state = client_app.load_privacy(owner_context(nodes[0], 2))
    assert state.steps == 2 * state.plan.steps_per_round  # type: ignore[union-attr]
    single_state = client_app.load_privacy(singles[2])
    assert epsilon_spent(state.history, config.delta) == pytest.approx(epsilon_spent(single_state.history,
                                                                                      alone.delta))


def test_only_the_owners_asked_train_and_the_rest_keep_their_budget() -> None:
    config = RunConfig(clients=6, rounds=3, nodes=2, owners_per_round=2)
    ctx = node(config, 1, 2)
    reply = client_app.train(message(1, [1, 2]), ctx)  # owner 1 is on node 1, owner 2 on node 0
    owners = [int(r.content["metrics"]["owner"]) for r in split_replies([as_reply(reply, 1)])]
    assert owners == [1]
    assert sorted(dict(ctx.state[STATE_INDEX_KEY])) == ["1"]
    empty = client_app.train(message(2, [0, 2]), ctx)  # none of this node's owners asked
    assert not empty.has_error() and split_replies([as_reply(empty, 1)]) == []


def test_one_failing_owner_fails_alone_and_is_named() -> None:
    config = RunConfig(clients=4, rounds=1, nodes=2, inject_failure_owners=(2,))
    reply = client_app.train(message(1, [0, 1, 2, 3]), node(config, 0, 2))
    assert not reply.has_error()
    errors = dict(reply.content[COHORT_ERRORS_KEY])
    assert list(errors) == ["2"] and str(errors["2"]).startswith("owner 2: injected failure")
    split = split_replies([as_reply(reply, 0)])
    assert [m.has_error() for m in split] == [False, True]
    assert split[1].error.reason.startswith("owner 2: injected failure")


def test_evaluation_of_a_cohort_names_each_owner() -> None:
    config = RunConfig(clients=4, rounds=1, nodes=2)
    reply = client_app.evaluate(message(1, [0, 1, 2, 3], MessageType.EVALUATE), node(config, 1, 2))
    split = split_replies([as_reply(reply, 1)])
    assert [int(m.content["metrics"]["owner"]) for m in split] == [1, 3]
    assert all(0.0 <= float(m.content["metrics"]["accuracy"]) <= 1.0 for m in split)


def test_a_node_started_with_another_node_count_is_refused() -> None:
    config = RunConfig(clients=4, rounds=1, nodes=2)
    with pytest.raises(Exception, match="the simulation has 3 nodes, the run expects nodes = 2"):
        client_app.train(message(1, [0, 1]), node(config, 0, 3))


def test_round_owners_are_a_seeded_sample_without_replacement() -> None:
    config = RunConfig(clients=1_000_000, rounds=3, nodes=2, owners_per_round=10, partition=PartitionSpec.parse("sample:2"))
    first = round_owners(config, 1)
    assert first == round_owners(config, 1) and len(set(first)) == 10 and first == sorted(first)
    assert first != round_owners(config, 2)
    assert all(0 <= o < 1_000_000 for o in first)
    assert round_owners(RunConfig(clients=5, nodes=2), 1) == [0, 1, 2, 3, 4]


def test_the_shard_cache_keeps_the_newest_within_its_cell_bound() -> None:
    cache: CellCache[str] = CellCache(10)
    cache.put("a", "A", 4)
    cache.put("b", "B", 4)
    assert cache.get("a") == "A"  # now the most recent
    cache.put("c", "C", 4)  # 12 cells > 10: the least recent (b) goes
    assert (cache.get("b"), cache.get("a"), cache.get("c"), len(cache)) == (None, "A", "C", 2)
    cache.put("huge", "H", 100)  # larger than the bound alone: kept, everything else dropped
    assert (cache.get("huge"), len(cache)) == ("H", 1)


def test_a_model_to_load_leaves_the_global_random_state_and_the_template_alone() -> None:
    import torch

    from fedmodel.models import model_to_load

    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    first = model_to_load("logreg", 64, 10)
    with torch.no_grad():
        next(first.parameters()).add_(1.0)
    second = model_to_load("logreg", 64, 10)
    assert torch.equal(torch.rand(3), expected)  # building it drew nothing from the global generator
    assert not torch.equal(next(first.parameters()), next(second.parameters()))  # copies, not one shared model


def test_a_sampled_owner_pays_only_for_the_rounds_it_trains_opacus_oracle() -> None:
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
    from opacus.accountants.rdp import RDPAccountant

    config = RunConfig(clients=6, rounds=3, nodes=2, owners_per_round=2)
    ctx = node(config, 1, 2)
    client_app.train(message(1, [1, 4]), ctx)
    client_app.train(message(2, [0, 3]), ctx)  # owner 3 trains; owner 1 is not asked
    reply = client_app.train(message(3, [1, 2]), ctx)
    (only,) = split_replies([as_reply(reply, 1)])
    metrics = only.content["metrics"]
    assert int(metrics["owner"]) == 1
    sigma, q, steps = float(metrics["noise-multiplier"]), float(metrics["sample-rate"]), int(metrics["steps"])
    state = client_app.load_privacy(owner_context(ctx, 1))
    assert steps == 2 * state.plan.steps_per_round  # type: ignore[union-attr]  # rounds 1 and 3, not 2
    orders = RDPAccountant.DEFAULT_ALPHAS
    oracle, _ = get_privacy_spent(orders=orders, rdp=compute_rdp(q=q, noise_multiplier=sigma, steps=steps,
                                                                 orders=orders), delta=config.delta)
    assert float(metrics["epsilon"]) == pytest.approx(oracle, rel=1e-9)
    assert float(metrics["epsilon"]) < config.epsilon  # the plan covers all 3 rounds; it trained in 2


def test_a_resumed_cohort_hands_each_owner_its_own_privacy_state_back() -> None:
    from fedmodel.privacy.run_privacy import HandBack
    from fedmodel.protocol import HANDBACK_PREFIX

    config = RunConfig(clients=4, rounds=3, nodes=2)
    first = split_replies([as_reply(client_app.train(message(1, [0, 1, 2, 3]), node(config, 0, 2)), 0)])
    reported = {int(r.content["metrics"]["owner"]): dict(r.content["privacy-state"]) for r in first}
    resumed = message(2, [0, 1, 2, 3])  # the coordinator crashed after round 1; every node starts afresh
    for owner in (0, 2):
        back = HandBack(OwnerPrivacyState.from_dict(reported[owner]), unreported_rounds=0, in_flight_round=2)
        resumed.content["config"][f"{HANDBACK_PREFIX}{owner}"] = back.to_json()
    fresh = node(config, 0, 2)
    again = split_replies([as_reply(client_app.train(resumed, fresh), 0)])
    per_round = OwnerPrivacyState.from_dict(reported[0]).plan.steps_per_round  # type: ignore[union-attr]
    assert {int(r.content["metrics"]["owner"]): int(r.content["metrics"]["steps"]) for r in again} == {
        0: 2 * per_round, 2: 2 * per_round}  # round 1 (handed back) and round 2, each owner its own
    assert float(again[0].content["metrics"]["epsilon"]) > float(first[0].content["metrics"]["epsilon"])
