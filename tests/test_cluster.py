"""Data-parallel training: two gloo processes give what one process gives with the same global batch."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import TINY, run_cli, tiny_overrides

from fewstep.core.config import load_config
from fewstep.core.streams import step_noise
from fewstep.data.loader import GlobalBatchSampler
from fewstep.distillation.config import DistillRunConfig
from fewstep.errors import ConfigError
from fewstep.model.model_dir import load_model_dir

REPO = Path(__file__).resolve().parents[1]
DATA = [o for o in TINY if o.startswith("data.")]


# ------------------------------------------------------------------------------------------ pieces
def test_noise_of_a_shard_is_that_shard_of_the_whole_batch():
    whole = step_noise(seed=3, step=7, local_batch=8)
    halves = [step_noise(seed=3, step=7, local_batch=4, rank=r, world_size=2) for r in range(2)]
    torch.testing.assert_close(torch.cat([h.rand((4, 5, 6)) for h in halves]), whole.rand((8, 5, 6)), rtol=0, atol=0)
    torch.testing.assert_close(torch.cat([h.antithetic() for h in halves]), whole.antithetic(), rtol=0, atol=0)
    assert not torch.equal(step_noise(3, 8, 8).rand((8, 4)), step_noise(3, 7, 8).rand((8, 4)))  # steps differ


def test_global_batches_are_shared_out_and_resume_mid_epoch():
    whole = GlobalBatchSampler(40, 8, seed=1)
    batches = list(whole)
    assert len(batches) == 5 and sorted(i for b in batches for i in b) == sorted(set(range(40)))
    for rank in range(2):
        shard = GlobalBatchSampler(40, 8, seed=1)
        shard.set_process(rank, 2)
        assert [b for b in shard] == [b[rank * 4:(rank + 1) * 4] for b in batches]
    resumed = GlobalBatchSampler(40, 8, seed=1)
    resumed.consumed = lambda: 7  # step 7 = epoch 1, third batch
    second_epoch = list(GlobalBatchSampler(40, 8, seed=1)._order(1).view(5, 8).tolist())
    assert list(resumed) == second_epoch[2:]
    with pytest.raises(Exception, match="multiple of 3"):
        whole.set_process(0, 3)


def test_validation_batches_sample_the_whole_held_out_split_the_same_way_each_time():
    from fewstep.data.loader import eval_loader

    tokens = torch.arange(473).unsqueeze(-1).repeat(1, 4)  # row i holds i: rows in file (document) order
    loader, _ = eval_loader(tokens, 32)
    first_eight = torch.cat([batch[:, 0] for _, batch in zip(range(8), loader)])
    assert len(set(first_eight.tolist())) == 256
    # drawn from all of it, not the first 256 rows (the first documents)
    assert (first_eight >= 256).sum() > 60 and (first_eight < 100).sum() > 20
    again, _ = eval_loader(tokens, 32)
    assert torch.equal(torch.cat([b[:, 0] for b in again]), torch.cat([b[:, 0] for b in loader]))
    with_prompts, _ = eval_loader(tokens, 32, prompt_len=torch.arange(473) % 3)
    rows, lengths = next(iter(with_prompts))
    assert torch.equal(lengths, rows[:, 0] % 3)  # a row keeps its own prompt length


def test_cluster_layers_merge_over_the_recipe():
    cfg = load_config(DistillRunConfig, ["distill/markov", "cluster/fsdp"], ["teacher.path=t", "trainer.num_nodes=4"])
    assert (cfg.trainer.strategy, cfg.trainer.num_nodes, cfg.trainer.precision) == ("fsdp", 4, "bf16-mixed")
    assert cfg.trainer.activation_checkpointing and cfg.rounds.count == 4  # the recipe's keys stay
    with pytest.raises(ConfigError, match="trainer.strategy"):
        load_config(DistillRunConfig, None, ["teacher.path=t", "trainer.strategy=horovod"])


def test_slurm_script_is_valid_bash_and_shipped():
    script = REPO / "configs" / "cluster" / "slurm.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    assert "--signal=USR1@" in text and "--requeue" in text and "srun fewstep" in text


# ------------------------------------------------------------------------------------------ DDP
def _metrics(out: Path, key: str) -> dict[int, float]:
    with open(out / "csv" / "metrics.csv") as handle:
        return {int(r["step"]): float(r[key]) for r in csv.DictReader(handle) if r.get(key)}


def _same_weights(a: Path, b: Path) -> None:
    wa, wb = load_model_dir(a).denoiser.state_dict(), load_model_dir(b).denoiser.state_dict()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-4, atol=1e-5, msg=key)


def _run_both(tmp_path: Path, *args: str) -> tuple[Path, Path]:
    outs = []
    for name, layers in (("one", []), ("two", ["--with", "cluster/cpu_ddp"])):
        out = tmp_path / name
        result = run_cli(*args, *layers, f"out_dir={out}", "trainer.accelerator=cpu", "logger.wandb.mode=disabled")
        assert result.returncode == 0, result.stderr[-3000:]
        outs.append(out)
    return outs[0], outs[1]


@pytest.mark.skipif(sys.platform != "linux", reason="gloo process groups are tested on Linux")
def test_teacher_on_two_processes_matches_one(tmp_path):
    one, two = _run_both(tmp_path, "teacher", "teacher/markov", *tiny_overrides(tmp_path / "unused"),
                         "trainer.max_steps=6", "trainer.val_every=3", "trainer.batch_size=8")
    for key in ("train/nelbo", "val/nelbo"):
        a, b = _metrics(one, key), _metrics(two, key)
        assert a.keys() == b.keys() and len(a) >= 2
        for step in a:
            assert b[step] == pytest.approx(a[step], rel=1e-5), (key, step)
    _same_weights(one, two)


@pytest.mark.skipif(sys.platform != "linux", reason="gloo process groups are tested on Linux")
def test_distillation_on_two_processes_matches_one(tiny_teacher, tmp_path):
    one, two = _run_both(tmp_path, "distill", "distill/markov", f"teacher.path={tiny_teacher}", *DATA,
                         "rounds.start_steps=8", "rounds.count=2", "rounds.steps_per_round=3", "trainer.batch_size=8",
                         "trainer.log_every=1", "trainer.progress=false", "eval.num_samples=8",
                         "optim.warmup_steps=1", "optim.lr=3e-3")
    a, b = _metrics(one, "train/loss"), _metrics(two, "train/loss")
    assert a.keys() == b.keys() == set(range(6))
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-3, abs=1e-7), step
    for index in range(2):
        _same_weights(one / f"round_{index}" / "model", two / f"round_{index}" / "model")
    assert not (two / "rounds.json").read_text().count('"round": 0') > 1  # one process wrote the history
    assert os.listdir(two / "checkpoints") == ["last.ckpt"]


class LargestUpdate(L.Callback):
    """The largest change of any weight in the first optimiser step."""

    def on_train_batch_start(self, trainer, module, *args):
        self.before = [p.detach().clone() for p in module.parameters()]

    def on_train_batch_end(self, trainer, module, *args):
        self.moved = max((p.detach() - b).abs().max().item() for p, b in zip(module.parameters(), self.before))


def test_gradient_clipping_goes_through_the_fsdp_aware_hook(tmp_path):
    """Clipping runs in `configure_gradient_clipping` (which FSDP needs) and still clips outside FSDP."""
    from fewstep.teacher.config import TeacherRunConfig
    from fewstep.teacher.run import train_teacher

    moved = {}
    for clip in ("0", "1e-12"):
        watch = LargestUpdate()
        train_teacher(load_config(TeacherRunConfig, None, tiny_overrides(
            tmp_path / clip, "trainer.max_steps=1", "trainer.val_every=1", "optim.ema=0", f"optim.grad_clip={clip}",
            "optim.warmup_steps=1", "logger.wandb.mode=disabled")), callbacks=[watch])
        moved[clip] = watch.moved
    # Adam's step is about lr without clipping; clipped to a 1e-12 norm, eps dominates and it nearly vanishes
    assert moved["1e-12"] < 0.01 * moved["0"]


def test_fsdp_without_gpus_and_fsdp_distillation_are_refused_clearly(tiny_teacher, tmp_path):
    result = run_cli("teacher", "teacher/markov", *tiny_overrides(tmp_path / "t"), "trainer.strategy=fsdp",
                     "trainer.accelerator=cpu")
    assert result.returncode == 2 and "trainer.strategy=fsdp needs CUDA GPUs" in result.stderr
    result = run_cli("distill", "distill/markov", f"teacher.path={tiny_teacher}", f"out_dir={tmp_path / 'd'}",
                     "--with", "cluster/fsdp")
    assert result.returncode == 2 and "not supported for distillation yet" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "d").exists()


def test_activation_checkpointing_gives_the_same_training(tmp_path):
    from fewstep.teacher.config import TeacherRunConfig
    from fewstep.teacher.run import train_teacher

    losses = {}
    for flag in ("false", "true"):
        out = tmp_path / flag
        train_teacher(load_config(TeacherRunConfig, None, tiny_overrides(
            out, "trainer.max_steps=3", "trainer.val_every=3", f"trainer.activation_checkpointing={flag}",
            "logger.wandb.mode=disabled")))
        losses[flag] = _metrics(out, "train/nelbo")
    assert losses["true"].keys() == losses["false"].keys()
    for step, value in losses["false"].items():
        assert losses["true"][step] == pytest.approx(value, rel=1e-5)
