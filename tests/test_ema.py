"""The one EMA (`SubmoduleEMA`): its warm-up, its checkpoints and resume, and the teacher export's choice."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from conftest import Crash, StopAt, tiny_overrides

from fewstep.core.config import load_config
from fewstep.deploy.export import export_model
from fewstep.errors import ConfigError
from fewstep.model.model_dir import load_model_dir
from fewstep.teacher.config import TeacherRunConfig
from fewstep.teacher.run import train_teacher
from fewstep.training.ema import RAW_STATE_KEY, SubmoduleEMA, better_weights, warmup_decay

KEY = "backbone.model.embeddings.tok_embeddings.weight"


def test_warmup_decay_at_steps_0_10_and_1000():
    assert warmup_decay(0.999, 0) == pytest.approx(1 / 10, abs=0, rel=1e-15)
    assert warmup_decay(0.999, 10) == pytest.approx(11 / 20, abs=0, rel=1e-15)
    assert warmup_decay(0.999, 1000) == pytest.approx(1001 / 1010, abs=0, rel=1e-15)
    assert warmup_decay(0.99, 1000) == 0.99  # the configured decay caps it
    ema = SubmoduleEMA("net", 0.999, warmup=False)
    assert ema.current_decay == 0.999


class Holder(L.LightningModule):
    def __init__(self, tied: bool = False) -> None:
        super().__init__()
        self.net = torch.nn.Linear(3, 3)
        if tied:  # one tensor under two names, as ModernBERT's embeddings and decoder
            self.net.register_parameter("alias", self.net.weight)


@torch.no_grad()
@pytest.mark.parametrize("tied", [False, True])
def test_each_update_uses_the_warmed_up_decay(tied):
    module, ema = Holder(tied), SubmoduleEMA("net", 0.9)
    ema.on_fit_start(None, module)
    expected = module.net.weight.clone()
    for t in range(30):
        module.net.weight.add_(1.0)
        d = min(0.9, (1 + t) / (10 + t))
        expected = d * expected + (1 - d) * module.net.weight
        ema.on_train_batch_end(None, module)
    assert ema.updates == 30
    assert torch.allclose(ema.averaged_state()["weight"], expected, atol=1e-5)
    raw = module.net.weight.clone()
    with ema.applied(module):
        assert torch.allclose(module.net.weight, expected, atol=1e-5)
    assert torch.equal(module.net.weight, raw)  # the raw weights are back, bit for bit


@torch.no_grad()
def test_older_checkpoints_load_and_a_missing_count_means_the_warmup_is_over():
    module = Holder()
    # fewstep's earlier layout: the shadow in the callback's state, no update count
    ema = SubmoduleEMA("net", 0.999)
    ema.load_state_dict({"decay": 0.999, "shadow": {k: torch.zeros_like(v) for k, v in module.net.state_dict().items()}})
    assert ema.updates is None and ema.current_decay == 0.999 and float(ema.shadow["weight"].abs().sum()) == 0
    # Lightning's EMAWeightAveraging: the average in state_dict, the raw weights in current_model_state
    raw = {f"net.{k}": v.clone() for k, v in module.net.state_dict().items()}
    averaged = {k: v + 1.0 for k, v in raw.items()}
    module.load_state_dict(averaged)  # what Lightning has done before the callback's hook runs
    ema = SubmoduleEMA("net", 0.999)
    ema.on_load_checkpoint(None, module, {"state_dict": averaged, RAW_STATE_KEY: raw})
    assert torch.equal(module.net.weight, raw["net.weight"]) and torch.equal(ema.shadow["weight"], averaged["net.weight"])
    assert ema.updates is None and ema.current_decay == 0.999


def test_better_weights():
    assert better_weights(1.0, 1.2) == "ema"
    assert better_weights(1.2, 1.0) == "raw"
    assert better_weights(1.0, 1.0) == "ema"
    assert better_weights(1.0, None) == "ema"  # no raw figure: the average, as before
    assert better_weights(None, 1.0) == "raw"
    assert better_weights(None, None) == "ema"  # validation off: the average, as before


def test_a_bad_ema_value_is_one_config_error():
    with pytest.raises(ConfigError, match="optim.ema"):
        load_config(TeacherRunConfig, None, ["optim.ema=1.0"])
    with pytest.raises(ConfigError, match="ema_warmup"):
        load_config(TeacherRunConfig, None, ["optim.ema_warmup=maybe"])


def _cfg(out, *extra):
    return load_config(TeacherRunConfig, None, tiny_overrides(out, "logger.wandb.mode=disabled", *extra))


def test_a_resumed_teacher_keeps_the_update_count_and_ends_with_the_same_average(tmp_path):
    args = ("trainer.max_steps=8", "trainer.val_every=4", "trainer.checkpoint_every=4", "optim.ema=0.9")
    whole = train_teacher(_cfg(tmp_path / "whole", *args))
    with pytest.raises(Crash):
        train_teacher(_cfg(tmp_path / "part", *args), callbacks=[StopAt(5)])
    saved = torch.load(tmp_path / "part" / "checkpoints" / "last.ckpt", weights_only=False)
    assert saved["global_step"] == 4 and saved["callbacks"]["SubmoduleEMA"]["updates"] == 4
    resumed = train_teacher(_cfg(tmp_path / "part", *args), resume=True)
    assert resumed.steps == 8
    ends = [torch.load(tmp_path / run / "checkpoints" / "last.ckpt", weights_only=False) for run in ("whole", "part")]
    assert [e["callbacks"]["SubmoduleEMA"]["updates"] for e in ends] == [8, 8]
    for layout in ("state_dict", RAW_STATE_KEY):  # the average and the raw weights, as if never stopped
        assert torch.allclose(ends[0][layout][f"denoiser.{KEY}"], ends[1][layout][f"denoiser.{KEY}"], atol=1e-6)
    assert resumed.val_nelbo_raw == pytest.approx(whole.val_nelbo_raw, rel=1e-5)
    assert resumed.val_nelbo_ema == pytest.approx(whole.val_nelbo_ema, rel=1e-5)


def _exported(out):
    meta = json.loads((out / "model" / "fewstep.json").read_text())
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    return meta, ckpt, load_model_dir(out).denoiser.state_dict()[KEY]


def _exported_from_checkpoint(out, where):
    """`fewstep export out/checkpoints/last.ckpt`: the weights and metadata it writes."""
    export_model(out / "checkpoints" / "last.ckpt", where)
    exported = load_model_dir(where)
    return exported.meta, exported.denoiser.state_dict()[KEY]


def test_the_export_takes_raw_weights_when_the_average_lags(tmp_path):
    # no warm-up and a decay near 1: after 30 steps the average is still almost the initial weights
    result = train_teacher(_cfg(tmp_path / "t", "trainer.max_steps=30", "trainer.val_every=30", "optim.lr=3e-3",
                                "optim.ema=0.999", "optim.ema_warmup=false"))
    meta, ckpt, exported = _exported(tmp_path / "t")
    assert result.weights == meta["weights"] == "raw"
    assert meta["val_nelbo"]["raw"] < meta["val_nelbo"]["ema"] == pytest.approx(result.val_nelbo_ema)
    assert result.val_nelbo == result.val_nelbo_raw
    assert torch.equal(exported, ckpt[RAW_STATE_KEY][f"denoiser.{KEY}"])
    # exporting the checkpoint takes the same choice, not the average the checkpoint's state_dict holds
    from_ckpt, weights = _exported_from_checkpoint(tmp_path / "t", tmp_path / "export")
    assert from_ckpt["weights"] == "raw" and torch.equal(weights, exported)


class SpoilRawAtTheEnd(L.Callback):
    """After the EMA's last update, scramble the raw embeddings: the average keeps the trained ones."""

    def __init__(self, step: int) -> None:
        self.step = step

    @torch.no_grad()
    def on_train_batch_end(self, trainer, module, *args) -> None:
        if trainer.global_step == self.step:
            weight = module.denoiser.backbone.model.embeddings.tok_embeddings.weight
            weight.copy_(torch.randn_like(weight) * 5.0)


def test_the_export_takes_the_average_when_it_validates_better(tmp_path):
    result = train_teacher(_cfg(tmp_path / "t", "trainer.max_steps=6", "trainer.val_every=6", "optim.ema=0.9"),
                           callbacks=[SpoilRawAtTheEnd(6)])
    meta, ckpt, exported = _exported(tmp_path / "t")
    assert result.weights == meta["weights"] == "ema"
    assert meta["val_nelbo"]["ema"] < meta["val_nelbo"]["raw"]
    assert torch.equal(exported, ckpt["state_dict"][f"denoiser.{KEY}"])
    assert not torch.equal(exported, ckpt[RAW_STATE_KEY][f"denoiser.{KEY}"])
    from_ckpt, weights = _exported_from_checkpoint(tmp_path / "t", tmp_path / "export")
    assert from_ckpt["weights"] == "ema" and torch.equal(weights, exported)


def test_without_an_ema_the_export_is_the_raw_weights(tmp_path):
    result = train_teacher(_cfg(tmp_path / "t", "trainer.max_steps=2", "trainer.val_every=2", "optim.ema=0"))
    meta, ckpt, exported = _exported(tmp_path / "t")
    assert meta["weights"] == result.weights == "raw" and set(meta["val_nelbo"]) == {"raw"}
    assert RAW_STATE_KEY not in ckpt and "SubmoduleEMA" not in ckpt["callbacks"]
    assert torch.equal(exported, ckpt["state_dict"][f"denoiser.{KEY}"])
