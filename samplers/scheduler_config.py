"""`scheduler_config.json`: a learned schedule and/or policy, saved beside the model it was learned for.

It records the model's identity (data fingerprint, vocabulary size, mask id, sequence length) and
the step budget, so that loading it for another model or step count is refused with a clear
message. The policy head's weights sit beside it in `policy_head.safetensors`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import fewstep
from fewstep.distill.io import atomic_write_text
from fewstep.distill.runtime import RunError
from fewstep.samplers.policies import Policy, make_policy
from fewstep.samplers.policy_head import LearnedPolicy, PolicyHead, load_head, save_head
from fewstep.samplers.schedules import AllocationSchedule, Schedule, make_step_schedule

__all__ = [
    "SCHEDULER_FILE",
    "HEAD_FILE",
    "FORMAT",
    "model_identity",
    "save_scheduler_config",
    "read_scheduler_config",
    "load_learned",
]

SCHEDULER_FILE = "scheduler_config.json"
HEAD_FILE = "policy_head.safetensors"
FORMAT = "fewstep-scheduler/1"


def model_identity(meta: dict[str, Any]) -> dict[str, Any]:
    """What a learned schedule is tied to: the data it was trained on and the token space."""
    return {
        "data_fingerprint": meta.get("data_fingerprint"),
        "vocab_size": meta.get("vocab_size"),
        "mask_id": meta.get("mask_id"),
        "seq_len": meta.get("seq_len"),
    }


def save_scheduler_config(
    model_dir: Path,
    meta: dict[str, Any],
    steps: int,
    schedule: Schedule,
    policy: Policy,
    report: dict[str, Any],
    block_size: int | None = None,
) -> Path:
    """Write the schedule, the policy (and the head's weights) and the search report into `model_dir`."""
    policy_cfg = policy.to_config()
    if isinstance(policy, LearnedPolicy):
        save_head(policy.head, model_dir / HEAD_FILE)
        policy_cfg["weights"] = HEAD_FILE
    content = {
        "_class_name": "FewstepUnmaskingScheduler",
        "format": FORMAT,
        "fewstep_version": fewstep.__version__,
        "model": model_identity(meta),
        "steps": steps,
        "block_size": block_size,
        "schedule": schedule.to_config(),
        "policy": policy_cfg,
        "report": report,
    }
    path = model_dir / SCHEDULER_FILE
    atomic_write_text(path, json.dumps(content, indent=2, sort_keys=True) + "\n")
    return path


def read_scheduler_config(model_dir: Path) -> dict[str, Any]:
    """The parsed file, or a clear error when it is missing or unreadable."""
    path = Path(model_dir) / SCHEDULER_FILE
    if not path.is_file():
        raise RunError(
            f"{model_dir} has no {SCHEDULER_FILE}; learn one with `fewstep schedule schedule/markov "
            f"model={model_dir} steps=N`, or pick a fixed --schedule and --policy"
        )
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise RunError(f"{path} is not valid JSON ({error}); re-run `fewstep schedule`") from error
    if content.get("format") != FORMAT:
        raise RunError(
            f"{path} has format {content.get('format')!r}, expected {FORMAT!r}; re-run `fewstep schedule`"
        )
    return content


def load_learned(
    model_dir: Path, meta: dict[str, Any], steps: int
) -> tuple[Schedule, Policy, dict[str, Any]]:
    """The learned schedule and policy for `steps`, checked against the model's identity and the budget."""
    model_dir = Path(model_dir)
    content = read_scheduler_config(model_dir)
    path = model_dir / SCHEDULER_FILE
    saved, here = content.get("model", {}), model_identity(meta)
    differs = [
        f"{k}: learned for {saved.get(k)!r}, this model has {here[k]!r}"
        for k in here
        if saved.get(k) != here[k]
    ]
    if differs:
        raise RunError(
            f"{path} was learned for another model ({'; '.join(differs)}); re-run `fewstep schedule` "
            "for this model"
        )
    if content.get("steps") != steps:
        raise RunError(
            f"{path} was learned for a budget of {content.get('steps')} steps, not {steps}; sample with "
            f"--steps {content.get('steps')}, or learn one with `fewstep schedule CONFIG steps={steps}`"
        )
    sched_cfg = content["schedule"]
    if sched_cfg["name"] == "learned":
        schedule: Schedule = AllocationSchedule(sched_cfg["fractions"], source=str(path))
    else:
        schedule = make_step_schedule(sched_cfg["name"], sched_cfg.get("noise", "loglinear"))
    pol_cfg = content["policy"]
    if pol_cfg["name"] == "learned":
        weights = model_dir / pol_cfg.get("weights", HEAD_FILE)
        if not weights.is_file():
            raise RunError(
                f"{path} names a policy head {weights.name} that is missing; re-run `fewstep schedule`"
            )
        head: PolicyHead = load_head(weights, int(pol_cfg["hidden"]))
        fallback = make_policy(pol_cfg["fallback"]) if pol_cfg.get("fallback") else None
        policy: Policy = LearnedPolicy(head, int(meta["vocab_size"]), float(pol_cfg["threshold"]), fallback)
    else:
        policy = make_policy(
            pol_cfg["name"],
            threshold=pol_cfg.get("threshold", 0.9),
            gamma=pol_cfg.get("gamma", 0.1),
            fallback=pol_cfg.get("fallback"),
        )
    return schedule, policy, content
