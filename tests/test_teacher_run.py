"""Real Lightning runs of the teacher: checkpoints, resume, guards, NaN, W&B offline files."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from conftest import Crash, StopAt, tiny_overrides
from wandb_records import history_keys

from fewstep.core.config import load_config
from fewstep.errors import ConfigError, NonFiniteLossError, RunError
from fewstep.model.model_dir import load_model_dir
from fewstep.teacher.config import TeacherRunConfig
from fewstep.teacher.run import train_teacher


def cfg_for(out, *extra):
    return load_config(TeacherRunConfig, None, tiny_overrides(out, *extra))


def test_a_run_writes_everything(tiny_teacher):
    out = tiny_teacher
    for name in ("config.yaml", "data.json", "tokenizer.json", "checkpoints/last.ckpt", "checkpoints/best.ckpt",
                 "model/model.safetensors", "model/config.json", "model/fewstep.json", "csv/metrics.csv"):
        assert (out / name).is_file(), name
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 6
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    loaded = load_model_dir(out)
    assert len(loaded.meta["data_fingerprint"]) == 16
    # the checkpoint's state_dict holds the EMA, current_model_state the raw weights; the export holds the
    # better of the two by the final validation NELBO, and fewstep.json says which
    meta = loaded.meta
    assert meta["weights"] in ("ema", "raw") and set(meta["val_nelbo"]) == {"ema", "raw"}
    assert meta["weights"] == ("raw" if meta["val_nelbo"]["raw"] < meta["val_nelbo"]["ema"] else "ema")
    kept = ckpt["state_dict"] if meta["weights"] == "ema" else ckpt["current_model_state"]
    other = ckpt["current_model_state"] if meta["weights"] == "ema" else ckpt["state_dict"]
    key = "backbone.model.embeddings.tok_embeddings.weight"
    ours = loaded.denoiser.state_dict()[key]
    assert torch.equal(ours, kept[f"denoiser.{key}"]) and not torch.equal(ours, other[f"denoiser.{key}"])


def test_wandb_offline_run_holds_the_metrics(tiny_teacher):
    runs = list((tiny_teacher / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    files = list(runs[0].glob("*.wandb"))
    assert len(files) == 1
    assert {"train/nelbo", "val/nelbo", "val/nelbo_raw", "val/gap"} <= history_keys(files[0])


class FirstStep(L.Callback):
    def on_train_start(self, trainer, *args) -> None:
        self.first = trainer.global_step


def test_stopped_run_resumes_from_last_checkpoint_and_finishes(tmp_path):
    out = tmp_path / "run"
    cfg = cfg_for(out, "trainer.max_steps=8", "trainer.val_every=2", "trainer.checkpoint_every=2", "logger.wandb.mode=disabled")
    with pytest.raises(Crash):
        train_teacher(cfg, callbacks=[StopAt(5)])
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 4
    assert not (out / "model").exists()
    with pytest.raises(RunError, match="--resume"):
        train_teacher(cfg)  # without --resume the run is not overwritten
    first = FirstStep()
    result = train_teacher(cfg, resume=True, callbacks=[first])
    assert first.first == 4 and result.steps == 8
    assert (out / "model" / "model.safetensors").is_file()


def test_resume_with_a_config_that_does_not_fit_is_refused(tmp_path):
    out = tmp_path / "run"
    train_teacher(cfg_for(out, "trainer.max_steps=2", "trainer.val_every=2", "logger.wandb.mode=disabled"))
    before = (out / "checkpoints" / "last.ckpt").read_bytes()
    changed = cfg_for(out, "trainer.max_steps=4", "model.hidden_size=64", "logger.wandb.mode=disabled")
    with pytest.raises(RunError, match="model.hidden_size: 32 -> 64"):
        train_teacher(changed, resume=True)
    assert (out / "checkpoints" / "last.ckpt").read_bytes() == before
    with pytest.raises(RunError, match="no checkpoint there to continue from"):
        train_teacher(cfg_for(tmp_path / "empty", "logger.wandb.mode=disabled"), resume=True)


class PoisonAt(L.Callback):
    """Turn the weights into NaN after `step` steps, as a diverging run would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, module, *args) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                for p in module.parameters():
                    p.fill_(math.nan)


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    out = tmp_path / "run"
    cfg = cfg_for(out, "trainer.max_steps=10", "trainer.val_every=2", "trainer.checkpoint_every=2", "logger.wandb.mode=disabled",
                  "optim.ema=0")
    with pytest.raises(NonFiniteLossError, match="last good checkpoint is kept"):
        train_teacher(cfg, callbacks=[PoisonAt(3)])
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


class Inputs(L.Callback):
    """Records the (z, t) of every training forward of the teacher's denoiser."""

    def __init__(self) -> None:
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def on_train_start(self, trainer, pl_module) -> None:
        def hook(module, args):
            if module.training:
                self.seen.append((args[0].detach().clone(), args[1].detach().clone()))
        pl_module.denoiser.register_forward_pre_hook(hook)


@pytest.mark.parametrize("masking", ["independent", "exact_count"])
def test_the_teacher_trains_with_the_masking_its_config_names(tmp_path, masking):
    inputs = Inputs()
    cfg = cfg_for(tmp_path / "run", "trainer.max_steps=3", f"diffusion.masking={masking}",
                  "logger.wandb.mode=disabled")
    train_teacher(cfg, callbacks=[inputs])
    assert len(inputs.seen) == 3
    mask_id = load_model_dir(tmp_path / "run").denoiser.mask_id
    for z, t in inputs.seen:
        fraction = (z == mask_id).double().mean(-1)
        if masking == "exact_count":  # exactly n masked, and the model's t is n / L
            assert torch.allclose(fraction.float(), t) and (fraction > 0).all()
        else:  # each position masked independently at a continuous t: the fraction is only near t
            assert not torch.allclose(fraction.float(), t)


def test_exact_count_with_a_time_conditioned_cosine_model_is_refused():
    with pytest.raises(ConfigError, match="diffusion.masking=exact_count"):
        load_config(TeacherRunConfig, None, ["diffusion.masking=exact_count", "model.time_conditioning=true",
                                             "diffusion.noise_schedule=cosine"])
