"""Resuming a run whose config.yaml predates a key: the missing key counts as its default."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from fewstep.core.config import load_config
from fewstep.errors import RunError
from fewstep.teacher.config import TeacherRunConfig
from fewstep.training.runtime import prepare_out_dir


def _run(tmp_path, drop: str):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": {}}, out / "checkpoints" / "last.ckpt")
    saved = OmegaConf.to_container(OmegaConf.structured(TeacherRunConfig()))
    section, key = drop.split(".")
    del saved[section][key]  # written by a fewstep that did not have this key yet
    OmegaConf.save(OmegaConf.create(saved), out / "config.yaml")
    return out


def test_a_key_the_saved_config_lacks_resumes_at_its_default(tmp_path):
    out = _run(tmp_path, "optim.ema_warmup")
    assert prepare_out_dir(out, TeacherRunConfig(), resume=True) == out / "checkpoints" / "last.ckpt"


def test_a_changed_key_is_still_refused_and_a_non_default_new_key_too(tmp_path):
    out = _run(tmp_path, "optim.ema_warmup")
    with pytest.raises(RunError, match=r"optim.lr: 0.0003 -> 0.5|optim.lr"):
        prepare_out_dir(out, load_config(TeacherRunConfig, None, ["optim.lr=0.5"]), resume=True)
    with pytest.raises(RunError, match="optim.ema_warmup: True -> False"):
        prepare_out_dir(out, load_config(TeacherRunConfig, None, ["optim.ema_warmup=false"]), resume=True)
