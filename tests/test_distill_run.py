"""Real multi-round distillation runs: rounds, teacher swap, checkpoints, resume, bad input."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from conftest import TINY, run_cli
from wandb_records import history_keys

from fewstep.core.config import load_config
from fewstep.distillation.config import DistillRunConfig
from fewstep.distillation.run import run_distill
from fewstep.distillation.trajectory import ensure_trajectories
from fewstep.errors import ConfigError, RunError
from fewstep.model.model_dir import load_model_dir

DATA = [o for o in TINY if o.startswith("data.")]


def distill_overrides(teacher, out, *extra):
    return [f"teacher.path={teacher}", f"out_dir={out}", *DATA, "rounds.start_steps=8", "rounds.count=3",
            "rounds.steps_per_round=4", "trainer.batch_size=8", "trainer.checkpoint_every=2", "trainer.log_every=1",
            "trainer.progress=false", "eval.num_samples=8", "logger.wandb.mode=disabled", "optim.warmup_steps=1",
            *extra]


class Watch(L.Callback):
    """Record the first teacher weight and the optimiser's parameter count at every step."""

    def __init__(self):
        self.teacher_at = {}
        self.optimised = None

    def on_train_batch_start(self, trainer, module, *args):
        self.teacher_at[trainer.global_step] = module.teacher.backbone.model.embeddings.tok_embeddings.weight.clone()
        self.optimised = sum(p.numel() for g in trainer.optimizers[0].param_groups for p in g["params"])


class Crash(RuntimeError):
    pass


class CrashAt(L.Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step:
            raise Crash("simulated crash")


def test_rounds_halve_swap_the_teacher_and_checkpoint(tiny_teacher, tmp_path):
    out = tmp_path / "d"
    cfg = load_config(DistillRunConfig, None, distill_overrides(tiny_teacher, out))
    watch = Watch()
    result = run_distill(cfg, callbacks=[watch])
    assert result.steps == 12
    history = json.loads((out / "rounds.json").read_text())
    assert [h["student_steps"] for h in history] == [8, 4, 2]
    assert [h["teacher_steps"] for h in history] == [16, 8, 4]
    assert [h["original_steps"] for h in history] == [8, 4, 2]
    for r, steps in enumerate([8, 4, 2]):
        meta = load_model_dir(out / f"round_{r}" / "model").meta
        assert (meta["round"], meta["steps"], meta["divergence"]) == (r, steps, "kl_bwd")
    assert load_model_dir(out / "model").meta["round"] == 2
    # the teacher of round r+1 is round r's student (its EMA); before that, the original teacher
    original = load_model_dir(tiny_teacher).denoiser.backbone.model.embeddings.tok_embeddings.weight
    assert torch.equal(watch.teacher_at[0], original) and torch.equal(watch.teacher_at[3], original)
    for r in (0, 1):
        exported = load_model_dir(out / f"round_{r}" / "model").denoiser.backbone.model.embeddings.tok_embeddings
        assert torch.equal(watch.teacher_at[4 * (r + 1)], exported.weight)
    # only the student is optimised and checkpointed
    student = load_model_dir(out / "model").denoiser
    assert watch.optimised == sum(p.numel() for p in student.parameters())
    state = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert state and not any(k.startswith("teacher.") for k in state)


def test_stopped_mid_round_resumes_to_the_same_end(tiny_teacher, tmp_path):
    out = tmp_path / "d"
    cfg = load_config(DistillRunConfig, None, distill_overrides(tiny_teacher, out, "eval.enabled=false"))
    with pytest.raises(Crash):
        run_distill(cfg, callbacks=[CrashAt(7)])
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 6
    assert (out / "round_0" / "model").exists() and not (out / "round_1" / "model").exists()
    with pytest.raises(RunError, match="--resume"):
        run_distill(cfg)
    watch = Watch()
    result = run_distill(cfg, resume=True, callbacks=[watch])
    assert result.steps == 12 and min(watch.teacher_at) == 6
    round0 = load_model_dir(out / "round_0" / "model").denoiser.backbone.model.embeddings.tok_embeddings.weight
    assert torch.equal(watch.teacher_at[6], round0)  # the resumed round's teacher was rebuilt from round 0
    assert load_model_dir(out / "model").meta["round"] == 2


def test_rounds_log_their_tradeoff_to_wandb(tiny_teacher, tmp_path):
    out = tmp_path / "w"
    cfg = load_config(DistillRunConfig, None, distill_overrides(tiny_teacher, out, "logger.wandb.mode=offline",
                                                                "rounds.count=2", "eval.sampler=dilated/geometric"))
    run_distill(cfg)
    rounds = json.loads((out / "rounds.json").read_text())
    assert [r["student_steps"] for r in rounds] == [8, 4] and all(r["student_exact_nll"] > 0 for r in rounds)
    run_file = next((out / "wandb").glob("offline-run-*/*.wandb"))
    keys = history_keys(run_file)
    assert {"round/tradeoff/_type", "round/student_exact_nll", "round/original_exact_nll"} <= keys
    tables = sorted((out / "wandb").glob("offline-run-*/files/media/table/round/tradeoff_*.table.json"),
                    key=lambda p: int(p.name.split("_")[1]))  # tradeoff_<step>_<hash>
    last = json.loads(tables[-1].read_text())
    assert last["columns"] == ["round", "model", "steps", "tokens_per_s", "exact_nll", "entropy"]
    assert [row[:3] for row in last["data"]] == [[0, "student", 8], [0, "teacher", 16], [0, "original", 8],
                                                 [1, "student", 4], [1, "teacher", 8], [1, "original", 4]]


class CollapseAt(L.Callback):
    """Make the student put all its mass on token 0 (its samples repeat one token), as a collapsed student does."""

    def __init__(self, step):
        self.step = step

    @torch.no_grad()
    def on_train_batch_end(self, trainer, module, *args):
        if trainer.global_step == self.step:
            bias = module.student.backbone.decoder.bias
            bias.fill_(-50.0)
            bias[0] = 50.0


def test_round_validation_flags_a_student_whose_entropy_falls_below_the_teachers_many_step_samples(
        tiny_teacher, tmp_path, capsys):
    out = tmp_path / "e"
    cfg = load_config(DistillRunConfig, None, distill_overrides(
        tiny_teacher, out, "rounds.count=2", "rounds.teacher_from=student", "optim.ema=0", "eval.min_entropy_ratio=0.9"))
    run_distill(cfg, callbacks=[CollapseAt(6)])  # in round 1 (steps 5-8), before its end
    history = json.loads((out / "rounds.json").read_text())
    # the reference: the undistilled teacher at the first round's teacher steps (8 x k=2), sampled once
    assert [h["reference_steps"] for h in history] == [16, 16]
    assert history[0]["reference_entropy"] == history[1]["reference_entropy"] > 0
    for h in history:
        assert h["entropy_ratio"] == pytest.approx(h["student_entropy"] / h["reference_entropy"])
        assert h["entropy_ok"] is (h["entropy_ratio"] >= 0.9)
    assert history[1]["student_entropy"] < 0.1 and history[1]["entropy_ok"] is False
    printed = capsys.readouterr().out
    assert "round 1: WARNING the student's sample entropy" in printed and "eval.min_entropy_ratio" in printed
    assert load_model_dir(out / "model").meta["weights"] == "raw"  # rounds.teacher_from=student
    with pytest.raises(ConfigError, match="eval.min_entropy_ratio=1.5 must be in"):
        load_config(DistillRunConfig, None, distill_overrides(tiny_teacher, out, "eval.min_entropy_ratio=1.5"))


def test_trajectory_method_and_its_resumable_cache(tiny_teacher, tmp_path):
    out = tmp_path / "t"
    cfg = load_config(DistillRunConfig, None, distill_overrides(
        tiny_teacher, out, "method=trajectory", "rounds.count=1", "trajectory.num_trajectories=24",
        "trajectory.batch_size=16", "trajectory.teacher_steps=8"))
    result = run_distill(cfg)
    assert result.steps == 4 and (out / "model" / "model.safetensors").is_file()
    cached = torch.load(out / "trajectories.pt", weights_only=True)["tokens"]
    assert cached.shape == (24, 16) and (cached < 8).all()
    teacher = load_model_dir(tiny_teacher).denoiser
    signature = json.loads(torch.load(out / "trajectories.pt", weights_only=True)["signature"])
    more, lengths = ensure_trajectories(teacher, out / "trajectories.pt", 40, 16, 8, 16, 0, 8, "loglinear",
                                        signature, progress=False)
    assert lengths is None  # no prompts
    assert torch.equal(more[:24], cached) and more.shape == (40, 16)  # only the remainder was generated
    with pytest.raises(ValueError, match="other settings"):
        ensure_trajectories(teacher, out / "trajectories.pt", 40, 16, 4, 16, 0, 8, "loglinear",
                            {**signature, "steps": 4}, progress=False)


def test_an_interrupted_trajectory_draw_keeps_what_it_saved(tiny_teacher, tmp_path, monkeypatch):
    from types import SimpleNamespace

    import fewstep.distillation.trajectory as trajectory

    calls = []

    def sampler(spec, teacher, batch, seq_len, *args, **kwargs):
        calls.append(batch)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the user stops the run during the third batch
        return SimpleNamespace(tokens=torch.full((batch, seq_len), len(calls)))

    monkeypatch.setattr(trajectory, "sample_with_spec", sampler)
    monkeypatch.setattr(trajectory, "SAVE_EVERY_S", 0.0)  # save after every batch
    path = tmp_path / "trajectories.pt"
    with pytest.raises(KeyboardInterrupt):
        ensure_trajectories(None, path, 40, 16, 8, 16, 0, 8, "loglinear", {"k": 1}, progress=False)
    assert torch.load(path, weights_only=True)["tokens"].shape == (32, 16)  # two batches were saved
    monkeypatch.setattr(trajectory, "SAVE_EVERY_S", 3600.0)  # only the end is saved now
    tokens, _ = ensure_trajectories(None, path, 40, 16, 8, 16, 0, 8, "loglinear", {"k": 1}, progress=False)
    assert calls == [16, 16, 8, 8] and tokens[:16].eq(1).all() and tokens[32:].eq(4).all()
    assert torch.equal(torch.load(path, weights_only=True)["tokens"], tokens)


def test_references_need_prompts(tiny_teacher, tmp_path):
    out = tmp_path / "refs"
    result = run_cli("distill", "distill/markov", *distill_overrides(
        tiny_teacher, out, "method=trajectory", "rounds.count=1", "trajectory.references=2"))
    _fails(result, "trajectory.references=2 needs prompted data", "drop trajectory.references")
    assert not out.exists()


def test_verify_needs_a_task_with_a_checker(tiny_teacher, tmp_path):
    out = tmp_path / "verify"
    result = run_cli("distill", "distill/markov", *distill_overrides(
        tiny_teacher, out, "method=trajectory", "rounds.count=1", "trajectory.verify=true"))
    _fails(result, "trajectory.verify=true needs prompted data whose task has an exact checker",
           "drop trajectory.verify")
    assert not out.exists()


def test_trajectory_reuse_shares_another_runs_teacher_samples(tiny_teacher, tmp_path):
    first = tmp_path / "first"
    common = ("method=trajectory", "rounds.count=1", "trajectory.num_trajectories=16", "trajectory.batch_size=16",
              "trajectory.teacher_steps=8")
    run_distill(load_config(DistillRunConfig, None, distill_overrides(tiny_teacher, first, *common)))
    source = first / "trajectories.pt"
    before = source.read_bytes()
    shared = ("trainer.seed=1", "trajectory.seed=0", f"trajectory.reuse={source}")
    second = tmp_path / "second"
    run_distill(load_config(DistillRunConfig, None, distill_overrides(
        tiny_teacher, second, *common[:2], "trajectory.num_trajectories=24", *common[3:], *shared)))
    mine = torch.load(second / "trajectories.pt", weights_only=True)["tokens"]
    assert torch.equal(mine[:16], torch.load(source, weights_only=True)["tokens"]) and mine.shape[0] == 24
    assert source.read_bytes() == before  # read, never written
    # without trajectory.seed the samples would be seed 1's: another signature, refused with the fix
    result = run_cli("distill", "distill/markov", *distill_overrides(tiny_teacher, tmp_path / "third", *common,
                                                                      "trainer.seed=1", f"trajectory.reuse={source}"))
    _fails(result, "other settings", "trajectory.reuse")
    _fails(run_cli("distill", "distill/markov", *distill_overrides(
        tiny_teacher, tmp_path / "fourth", *common, f"trajectory.reuse={tmp_path / 'missing.pt'}")),
        "missing.pt", "trajectory.reuse")
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(source.read_bytes()[:100])
    _fails(run_cli("distill", "distill/markov", *distill_overrides(
        tiny_teacher, tmp_path / "fifth", *common, f"trajectory.reuse={damaged}")), "damaged.pt", "truncated or damaged")
    assert not (tmp_path / "fifth").exists()
    assert not (tmp_path / "third").exists() and not (tmp_path / "fourth").exists()  # a refused start leaves nothing


def _fails(result, *words):
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "Traceback" not in result.stderr
    for word in words:
        assert word in last, last


def test_bad_input(tiny_teacher, tmp_path):
    args = distill_overrides(tiny_teacher, tmp_path / "o")
    _fails(run_cli("distill", "distill/markov", *args, "data.markov.num_states=10"), "does not fit")
    _fails(run_cli("distill", "distill/markov", *args, f"teacher.path={tmp_path / 'none'}"), "does not exist")
    _fails(run_cli("distill", "distill/markov", *args, "rounds.start_steps=6"), "not divisible")
    _fails(run_cli("distill", "distill/markov", *args, "loss.divergence=kl"), "kl_bwd")
    _fails(run_cli("distill", "distill/markov", *args, "eval.sampler=zigzag"), "eval.sampler", "unknown policy")
    assert not (tmp_path / "o" / "checkpoints").exists()
