"""What the one-of-each clean-up must keep: older files still read, and one set of generation defaults."""

from __future__ import annotations

import json

import torch

from fewstep.deploy.export import GENERATION_FILE, _default_generation, _generation_defaults
from fewstep.evaluation.metrics import ENTROPY, TEACHER_NELBO
from fewstep.samplers import make_policy, make_step_schedule
from fewstep.samplers.scheduler_config import SCHEDULER_FILE, load_learned, save_scheduler_config
from fewstep.schedule.objective import SampleObjective

META = {"data_fingerprint": "abc", "vocab_size": 9, "mask_id": 8, "seq_len": 12, "noise_schedule": "cosine"}


def test_a_scheduler_config_names_no_class_and_an_older_one_that_does_still_loads(tmp_path):
    save_scheduler_config(tmp_path, META, 4, make_step_schedule("even"), make_policy("margin"), {})
    path = tmp_path / SCHEDULER_FILE
    content = json.loads(path.read_text())
    assert "_class_name" not in content
    path.write_text(json.dumps({**content, "_class_name": "FewstepUnmaskingScheduler"}))  # as 0.1.0 wrote it
    schedule, policy, loaded = load_learned(tmp_path, META, 4)
    assert schedule.to_config() == {"name": "even"} and policy.to_config() == make_policy("margin").to_config()
    assert loaded["_class_name"] == "FewstepUnmaskingScheduler"


def test_generation_defaults_come_from_the_model_then_its_generation_file(tmp_path):
    assert _generation_defaults(META, tmp_path) == _default_generation(META) == {
        "steps": 64, "sampler": "ancestral", "schedule": "cosine", "temperature": 1.0}
    (tmp_path / GENERATION_FILE).write_text(json.dumps({"steps": 8, "sampler": "llada"}))
    assert _generation_defaults({**META, "steps": 16}, tmp_path) == {
        "steps": 8, "sampler": "llada", "schedule": "cosine", "temperature": 1.0}


class _Uniform(torch.nn.Module):
    """A denoiser that predicts every token uniformly: enough for a NELBO."""

    mask_id = 8

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*z.shape, 9) + self.weight


def test_the_schedule_objective_calls_the_models_nelbo_teacher_nelbo():
    objective = SampleObjective(model=_Uniform(), reference_entropy=None)
    metrics = objective.metrics(torch.randint(0, 8, (3, 12), generator=torch.Generator().manual_seed(0)))
    assert objective.name == TEACHER_NELBO and set(metrics) == {TEACHER_NELBO, ENTROPY}
    assert objective.value(metrics) == metrics[TEACHER_NELBO] > 0
