"""Carrying an owner's privacy state across crashes: charged before the first step, a replay never twice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmodel.errors import FedModelError
from fedmodel.privacy import OwnerPrivacyState, PrivacyPlan
from fedmodel.privacy.run_privacy import CarriedPrivacy, HandBack, RoundPrivacy, load_file, round_digest, save_file

PLAN = PrivacyPlan(noise_multiplier=1.3, sample_rate=0.05, steps_per_round=20, total_steps=100, max_grad_norm=1.0,
                   delta=1e-5, budget_epsilon=3.0)


def planned(rounds: int = 0) -> OwnerPrivacyState:
    state = OwnerPrivacyState(plan=PLAN, other=[(5.0, 1.0, 1)])
    for _ in range(rounds):
        state.record(PLAN.noise_multiplier, PLAN.sample_rate, PLAN.steps_per_round)
    return state


def train(state: OwnerPrivacyState) -> None:
    """What DP-SGD does to the state when it reserves a round (OpacusDPSGD.wrap)."""
    state.record(PLAN.noise_multiplier, PLAN.sample_rate, PLAN.steps_per_round)


def test_the_round_is_saved_as_charged_before_the_first_step() -> None:
    saved: list[CarriedPrivacy] = []
    state = RoundPrivacy(CarriedPrivacy(planned(2)), 3, "d3", saved.append)
    assert saved == [] and state.steps == 40
    train(state)
    assert len(saved) == 1 and saved[0].state.steps == 60  # on disk before any training step
    assert (saved[0].last_round, saved[0].last_digest, saved[0].before_last.steps) == (3, "d3", 40)  # type: ignore[union-attr]
    assert state.outcome() == saved[0]


def test_a_replay_of_the_same_round_and_inputs_is_not_charged_again() -> None:
    first: list[CarriedPrivacy] = []
    attempt = RoundPrivacy(CarriedPrivacy(planned(2)), 3, "d3", first.append)
    train(attempt)
    again: list[CarriedPrivacy] = []
    replay = RoundPrivacy(attempt.outcome(), 3, "d3", again.append)
    assert replay.replay and replay.steps == 40  # trains from the state before round 3
    train(replay)
    assert again == [] and replay.steps == 60  # the same total: the same release, counted once
    assert replay.outcome().state.steps == 60


@pytest.mark.parametrize(("server_round", "digest"), [(3, "other model"), (4, "d3")])
def test_other_inputs_or_another_round_are_charged(server_round: int, digest: str) -> None:
    attempt = RoundPrivacy(CarriedPrivacy(planned(2)), 3, "d3", lambda _: None)
    train(attempt)
    nxt = RoundPrivacy(attempt.outcome(), server_round, digest, lambda _: None)
    assert not nxt.replay
    train(nxt)
    assert nxt.outcome().state.steps == 80


def test_a_round_refused_before_any_step_is_not_charged_and_is_not_a_replay_later() -> None:
    refused = RoundPrivacy(CarriedPrivacy(planned(2)), 3, "d3", lambda _: None)  # e.g. budget check failed
    outcome = refused.outcome()
    assert outcome.state.steps == 40 and outcome.last_round == 0
    retry = RoundPrivacy(outcome, 3, "d3", lambda _: None)
    assert not retry.replay
    train(retry)
    assert retry.outcome().state.steps == 60


def test_a_replay_that_fails_keeps_the_charge_of_the_first_attempt() -> None:
    attempt = RoundPrivacy(CarriedPrivacy(planned(2)), 3, "d3", lambda _: None)
    train(attempt)
    failed_replay = RoundPrivacy(attempt.outcome(), 3, "d3", lambda _: None)
    assert failed_replay.outcome().state.steps == 60  # the first attempt may have released its update


def test_hand_back_with_a_plan_charges_the_in_flight_round_which_a_replay_absorbs() -> None:
    record, pending = HandBack(planned(2), unreported_rounds=1, in_flight_round=3).adopt(3)
    assert pending == 0 and record.state.steps == 60  # the in-flight round counted before anything else
    replay = RoundPrivacy(record, 3, "any digest", lambda _: None)
    assert replay.replay
    train(replay)
    assert replay.outcome().state.steps == 60 and replay.outcome().last_digest == "any digest"


def test_hand_back_to_an_owner_first_asked_after_the_in_flight_round_keeps_it_charged() -> None:
    record, _ = HandBack(planned(2), unreported_rounds=1, in_flight_round=3).adopt(4)
    later = RoundPrivacy(record, 4, "d4", lambda _: None)
    train(later)
    assert later.outcome().state.steps == 80  # rounds 1-2, the in-flight 3 (conservative), and 4


@pytest.mark.parametrize(("first_round", "expected_steps"), [(1, 20), (2, 40)])
def test_hand_back_without_a_plan_charges_when_the_owner_next_trains(first_round: int, expected_steps: int) -> None:
    never_trained = OwnerPrivacyState(other=[(5.0, 1.0, 1)])
    record, pending = HandBack(never_trained, unreported_rounds=1, in_flight_round=1).adopt(first_round)
    state = RoundPrivacy(record, first_round, "d", lambda _: None, pending=pending)
    state.plan = PLAN  # set by the owner's calibration before DP-SGD reserves the round
    train(state)
    assert state.outcome().state.steps == expected_steps
    assert state.outcome().state.other == [(5.0, 1.0, 1)]


def test_file_round_trip_and_a_damaged_file_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "privacy-runs" / "run.json"
    assert load_file(path) is None
    attempt = RoundPrivacy(CarriedPrivacy(planned(1)), 2, "d2", lambda record: save_file(path, record))
    train(attempt)
    assert load_file(path) == attempt.outcome()
    data = json.loads(path.read_text())
    data["state"]["steps"] = [1, 2]  # three sigmas, two step counts
    path.write_text(json.dumps(data))
    with pytest.raises(FedModelError, match=f"{path}: damaged privacy state"):
        load_file(path)


def test_digest_changes_with_the_model_the_config_and_the_settings() -> None:
    import numpy as np

    base = round_digest({"w": np.zeros(3, np.float32)}, [("server-round", 3), ("lr", 2.0)], {"seed": 1})
    assert base == round_digest({"w": np.zeros(3, np.float32)}, [("lr", 2.0), ("server-round", 3)], {"seed": 1})
    assert base != round_digest({"w": np.ones(3, np.float32)}, [("server-round", 3), ("lr", 2.0)], {"seed": 1})
    assert base != round_digest({"w": np.zeros(3, np.float32)}, [("server-round", 3), ("lr", 2.5)], {"seed": 1})
    assert base != round_digest({"w": np.zeros(3, np.float32)}, [("server-round", 3), ("lr", 2.0)], {"seed": 2})


ROUNDS = 5


@settings(max_examples=100, deadline=None)
@given(kills=st.lists(st.tuples(st.integers(1, ROUNDS), st.sampled_from(["before", "reserved", "trained"])),
                      max_size=4))
def test_a_node_killed_at_any_point_never_forgets_a_round_and_never_counts_one_twice(
        kills: list[tuple[int, str]]) -> None:
    """A deployed node's record on disk through SIGKILLs: before the round, after the reservation, after training.

    After each kill the coordinator resumes from the round before (it never saw the killed round's
    reply), so the node is asked that round again with the same inputs. The node's total is the
    uninterrupted run's, plus at most the one round it reserved and was then not asked again.
    """
    disk: dict[str, CarriedPrivacy] = {"record": CarriedPrivacy(planned(0))}
    pending_kills = {r: phase for r, phase in kills}
    server_round = 1
    while server_round <= ROUNDS:
        state = RoundPrivacy(disk["record"], server_round, f"inputs of round {server_round}",
                             lambda record: disk.__setitem__("record", record))
        phase = pending_kills.pop(server_round, None)
        if phase == "before":
            continue  # killed before the message reached the node: nothing happened
        train(state)  # the reservation is on disk from here on
        if phase in ("reserved", "trained"):
            continue  # killed: the in-memory state is lost, the round is asked again
        disk["record"] = state.outcome()
        server_round += 1
    assert disk["record"].state.history == planned(ROUNDS).history  # so the same epsilon: never more, never less
    assert disk["record"].state.other == planned(ROUNDS).other
