"""The ClientApp clips its update for central DP (Flower's mods), called like Flower calls it."""

from __future__ import annotations

import time

import fedmodel.clients.app as client_app
import torch
from fedmodel.server.validation import update_norm
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, Metadata, RecordDict
from flwr.app.message.message import make_message
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM, KEY_NORM_BIT

from fedmodel.config import RunConfig
from fedmodel.models import build_model


def train_message(config: ConfigRecord) -> tuple[Message, dict[str, torch.Tensor]]:
    weights = build_model("logreg", 64, 10, seed=42).state_dict()
    meta = Metadata(run_id=1, message_id="m1", src_node_id=0, dst_node_id=7, reply_to_message_id="", group_id="1",
                    created_at=time.time(), ttl=600.0, message_type=MessageType.TRAIN)
    return make_message(metadata=meta, content=RecordDict({"arrays": ArrayRecord(weights), "config": config})), weights


def context(**values: object) -> Context:
    config = RunConfig.from_mapping({"clients": 2, "rounds": 1, **values})
    return Context(run_id=1, node_id=7, node_config={"partition-id": 0, "num-partitions": 2}, state=RecordDict(),
                   run_config=config.to_mapping())


def test_fixed_clipping_bounds_the_update_and_the_owner_still_spends_dp_sgd() -> None:
    msg, sent = train_message(ConfigRecord({"server-round": 1, KEY_CLIPPING_NORM: 0.05}))
    reply = client_app.app(msg, context(**{"central-dp": "fixed"}))
    assert not reply.has_error(), reply.error
    got = reply.content["arrays"].to_torch_state_dict()
    assert 0.049 < update_norm(sent, got) <= 0.05 * (1 + 1e-5)  # clipped (the unclipped update is far larger)
    assert reply.content["metrics"]["epsilon"] > 0  # the Opacus sample-level accounting is unchanged


def test_adaptive_clipping_reports_whether_it_clipped() -> None:
    msg, _ = train_message(ConfigRecord({"server-round": 1, KEY_CLIPPING_NORM: 1e-4}))
    reply = client_app.app(msg, context(**{"central-dp": "adaptive", "central-noise": 0.05}))
    assert reply.content["metrics"][KEY_NORM_BIT] == 1


def test_a_central_dp_run_without_clipping_norm_is_refused_not_answered_unclipped() -> None:
    msg, _ = train_message(ConfigRecord({"server-round": 1}))
    reply = client_app.app(msg, context(**{"central-dp": "fixed"}))
    assert reply.has_error() and KEY_CLIPPING_NORM in reply.error.reason


def test_without_central_dp_nothing_is_clipped() -> None:
    msg, sent = train_message(ConfigRecord({"server-round": 1, KEY_CLIPPING_NORM: 1e-6}))
    reply = client_app.app(msg, context())
    assert update_norm(sent, reply.content["arrays"].to_torch_state_dict()) > 1e-3
