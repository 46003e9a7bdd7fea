"""Injected faults (testing aid): parsing, exact effects on small tensors, the config key and the owner wiring."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import fedmodel.faults as faults
from fedmodel.config import RunConfig
from fedmodel.data import Dataset
from fedmodel.errors import ConfigError, FedModelError
from fedmodel.faults import Fault, apply_fault, parse_faults
from fedmodel.models import build_model
from fedmodel.owner import train_owner_round

CPU = torch.device("cpu")


def global_weights() -> dict[str, torch.Tensor]:
    return {"w": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "b": torch.tensor([0.5, -0.5]),
            "n": torch.tensor([7], dtype=torch.int64)}


def update() -> dict[str, torch.Tensor]:
    return {"w": torch.tensor([[1.5, 1.0], [3.0, 5.0]]), "b": torch.tensor([0.0, 0.0]),
            "n": torch.tensor([8], dtype=torch.int64)}


@pytest.mark.parametrize(
    ("text", "fault"),
    [
        ("3:signflip", Fault(3, "signflip")),
        ("4:scale10", Fault(4, "scale", 10.0)),
        ("4:scale-0.5", Fault(4, "scale", -0.5)),
        ("5:nan", Fault(5, "nan")),
        ("6:inf", Fault(6, "inf")),
        ("7:shape", Fault(7, "shape")),
        ("8:hang:30", Fault(8, "hang", 30.0)),
        ("8:hang:0.25", Fault(8, "hang", 0.25)),
        ("9:crash", Fault(9, "crash")),
    ],
)
def test_each_fault_parses_and_prints_back(text: str, fault: Fault) -> None:
    assert Fault.parse(text) == fault
    assert str(fault) == text


def test_a_list_parses_in_order() -> None:
    assert parse_faults(" 1:nan , 2:scale3,") == (Fault(1, "nan"), Fault(2, "scale", 3.0))
    assert parse_faults("") == ()


@pytest.mark.parametrize("text", ["x:nan", "3", "3:", "3:flip", "3:scale", "3:scalex", "3:scaleinf", "3:hang",
                                  "3:hang:0", "3:hang:-1", "3:nan:1", "-1:nan"])
def test_malformed_items_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="3|x|-1"):
        Fault.parse(text)


def test_signflip_reflects_the_update_around_the_global_model() -> None:
    out = apply_fault(Fault(0, "signflip"), update(), global_weights())
    assert torch.equal(out["w"], torch.tensor([[0.5, 3.0], [3.0, 3.0]]))  # g - (u - g)
    assert torch.equal(out["b"], torch.tensor([1.0, -1.0]))
    assert torch.equal(out["n"], update()["n"])  # integer buffers are left alone


def test_scale_multiplies_the_update() -> None:
    out = apply_fault(Fault(0, "scale", 10.0), update(), global_weights())
    assert torch.equal(out["w"], torch.tensor([[6.0, -8.0], [3.0, 14.0]]))  # g + 10 (u - g)
    assert torch.equal(out["b"], torch.tensor([-4.5, 4.5]))


@pytest.mark.parametrize("kind", ["nan", "inf"])
def test_nan_and_inf_poison_the_first_float_tensor(kind: str) -> None:
    out = apply_fault(Fault(0, kind), update(), global_weights())  # type: ignore[arg-type]
    assert torch.isnan(out["w"]).all() if kind == "nan" else torch.isposinf(out["w"]).all()
    assert torch.equal(out["b"], update()["b"])


def test_shape_adds_a_row() -> None:
    out = apply_fault(Fault(0, "shape"), update(), global_weights())
    assert out["w"].shape == (3, 2) and torch.equal(out["w"][:2], update()["w"])


def test_faults_leave_their_inputs_unchanged() -> None:
    given, ref = update(), global_weights()
    apply_fault(Fault(0, "nan"), given, ref)
    apply_fault(Fault(0, "scale", 3.0), given, ref)
    assert all(torch.equal(given[k], update()[k]) for k in given)
    assert all(torch.equal(ref[k], global_weights()[k]) for k in ref)


def test_hang_sleeps_then_replies_honestly(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(faults.time, "sleep", slept.append)
    out = apply_fault(Fault(0, "hang", 2.5), update(), global_weights())
    assert slept == [2.5] and all(torch.equal(out[k], update()[k]) for k in out)


def test_crash_raises_naming_the_owner() -> None:
    with pytest.raises(FedModelError, match="owner 9: injected crash"):
        apply_fault(Fault(9, "crash"), update(), global_weights())


# ---------------------------------------------------------------------------------------------- config key
def test_config_key_round_trips() -> None:
    config = RunConfig.from_mapping({"clients": 10, "inject-faults": "3:signflip,4:scale10,8:hang:5,9:crash"})
    assert config.inject_faults == (Fault(3, "signflip"), Fault(4, "scale", 10.0), Fault(8, "hang", 5.0),
                                    Fault(9, "crash"))
    assert config.to_mapping()["inject-faults"] == "3:signflip,4:scale10,8:hang:5,9:crash"
    assert RunConfig.from_mapping(config.to_mapping()) == config
    assert RunConfig().inject_faults == ()


@pytest.mark.parametrize(
    ("value", "needle"),
    [("3:bogus", "inject-faults = '3:bogus': '3:bogus': unknown fault"),
     ("10:nan", "inject-faults = '10:nan': expected owner ids in [0, 9]"),
     ("1:nan,1:crash", "at most one fault per owner")],
)
def test_config_key_is_validated(value: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig.from_mapping({"clients": 10, "inject-faults": value, "clients-typo": 1})
    assert len(info.value.problems) == 2  # collected with the other problems
    assert any(needle in p for p in info.value.problems), info.value.problems


# ---------------------------------------------------------------------------------------------- owner wiring
def shard() -> Dataset:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 5)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    return Dataset("toy", x, y, ("0", "1"), tuple(f"f{i}" for i in range(5)))


def train(config: RunConfig, owner: int, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return train_owner_round(config, owner, shard(), weights, privacy=None, server_round=1, proximal_mu=0.0,
                             device=CPU).weights


@pytest.mark.parametrize(("fault", "factor"), [("signflip", -1.0), ("scale3", 3.0)])
def test_owner_sends_the_faulty_version_of_its_honest_update(fault: str, factor: float) -> None:
    config = RunConfig(clients=2, dp=False, model="logreg", local_epochs=1, batch_size=8, lr=0.1)
    weights = {k: v.detach().clone() for k, v in build_model("logreg", 5, 2, seed=1).state_dict().items()}
    honest = train(config, 1, weights)
    faulty = train(config.replace(inject_faults=(Fault.parse(f"1:{fault}"),)), 1, weights)
    for key, g in weights.items():
        torch.testing.assert_close(faulty[key], g + factor * (honest[key] - g), rtol=0, atol=1e-6)
    assert all(torch.equal(train(config.replace(inject_faults=(Fault.parse(f"0:{fault}"),)), 1, weights)[k],
                           honest[k]) for k in honest)  # another owner's fault changes nothing here


def test_owner_crash_and_inject_failure_owners_both_raise() -> None:
    config = RunConfig(clients=2, dp=False, model="logreg", batch_size=8)
    weights = build_model("logreg", 5, 2, seed=1).state_dict()
    with pytest.raises(FedModelError, match="owner 1: injected crash"):
        train(config.replace(inject_faults=(Fault(1, "crash"),)), 1, weights)
    with pytest.raises(FedModelError, match="owner 0: injected failure"):
        train(config.replace(inject_failure_owners=(0,)), 0, weights)


def test_nan_fault_reaches_the_reply_weights() -> None:
    config = RunConfig(clients=2, dp=False, model="logreg", batch_size=8, inject_faults=(Fault(0, "nan"),))
    out = train(config, 0, build_model("logreg", 5, 2, seed=1).state_dict())
    poisoned = [k for k, v in out.items() if bool(torch.isnan(v).any())]
    assert len(poisoned) == 1 and all(math.isnan(x) for x in out[poisoned[0]].flatten().tolist())
