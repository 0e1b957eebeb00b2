"""The one optimiser factory: its parameter groups and its learning rate over a run."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from fewstep.training.config import OptimConfig
from fewstep.training.optim import make_optimizer, regroup_saved_optimizer


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(5, 4)
        self.proj = torch.nn.Linear(4, 4)
        self.norm = torch.nn.LayerNorm(4)
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.frozen = torch.nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def _lrs(scheduler: torch.optim.lr_scheduler.LRScheduler, optimizer: torch.optim.Optimizer, steps: int
         ) -> list[float]:
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_matrices_decay_and_biases_norms_scalars_and_frozen_weights_do_not():
    model = Tiny()
    out = make_optimizer(model, OptimConfig(weight_decay=0.1), total_steps=10)
    decay, no_decay = out["optimizer"].param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model.embed.weight), id(model.proj.weight)}
    assert {id(p) for p in no_decay["params"]} == {id(model.proj.bias), id(model.norm.weight),
                                                     id(model.norm.bias), id(model.scale)}
    assert isinstance(out["optimizer"], torch.optim.AdamW) and out["optimizer"].defaults["betas"] == (0.9, 0.98)
    assert out["lr_scheduler"]["interval"] == "step"


def test_a_model_with_no_vectors_still_gets_both_groups():
    out = make_optimizer(torch.nn.Linear(3, 3, bias=False), OptimConfig(), total_steps=10)
    assert [len(g["params"]) for g in out["optimizer"].param_groups] == [1, 0]


@pytest.mark.parametrize("decay", ["cosine", "constant"])
def test_the_learning_rate_warms_up_then_decays_to_its_floor(decay):
    cfg = OptimConfig(lr=1e-2, warmup_steps=4, decay=decay, min_lr_ratio=0.1)
    out = make_optimizer(torch.nn.Linear(2, 2), cfg, total_steps=20)
    lrs = _lrs(out["lr_scheduler"]["scheduler"], out["optimizer"], 25)
    assert lrs[0] == pytest.approx(1e-2 / 4)  # step 0: the first of four warm-up steps
    assert lrs[3] == pytest.approx(1e-2)  # the last warm-up step reaches the peak
    assert lrs[4] == pytest.approx(1e-2)  # decay starts from the peak
    floor = 1e-3 if decay == "cosine" else 1e-2
    assert lrs[20] == pytest.approx(floor) and lrs[24] == pytest.approx(floor)  # held past the end
    if decay == "cosine":
        assert lrs[12] == pytest.approx(1e-3 + 0.9e-2 * 0.5 * (1 + math.cos(math.pi * 0.5)))
        assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))
    group_lrs = {g["lr"] for g in out["optimizer"].param_groups}
    assert len(group_lrs) == 1  # both groups follow one schedule


def test_a_one_group_optimiser_state_resumes_in_the_two_groups():
    """Distillation and evaluator checkpoints saved before `decay_groups` hold one AdamW group; each
    parameter's moments must land on the same parameter in the two-group optimiser."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    old = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(torch.randn(5, 3)).pow(2).sum().backward()
    old.step()
    moments = {id(p): old.state[p]["exp_avg"].clone() for p in model.parameters()}
    checkpoint = {"optimizer_states": [copy.deepcopy(old.state_dict())]}

    regroup_saved_optimizer(checkpoint, model)
    new = make_optimizer(model, OptimConfig(lr=1e-2), total_steps=10)["optimizer"]
    new.load_state_dict(checkpoint["optimizer_states"][0])  # raises if the layout does not fit
    assert [len(g["params"]) for g in new.param_groups] == [2, 4]
    for group in new.param_groups:
        for p in group["params"]:
            assert torch.equal(new.state[p]["exp_avg"], moments[id(p)])
    assert new.param_groups[1]["weight_decay"] == 0.0

    again = copy.deepcopy(checkpoint)
    regroup_saved_optimizer(again, model)  # two groups already: left as it is
    before, after = checkpoint["optimizer_states"][0], again["optimizer_states"][0]
    assert after["param_groups"] == before["param_groups"] and after["state"].keys() == before["state"].keys()
