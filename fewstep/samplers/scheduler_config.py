"""`scheduler_config.json`: a learned schedule and/or policy, saved beside the model it was learned for.

It records the model's identity (data fingerprint, vocabulary size, mask id, sequence length) and
the step budget, so that loading it for another model or step count is refused with a clear
message. The policy head's weights sit beside it in `policy_head.safetensors`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fewstep.core.io import atomic_write_text, read_json_object
from fewstep.errors import RunError
from fewstep.samplers.policies import Policy, make_policy
from fewstep.samplers.policy_head import LearnedPolicy, PolicyHead, load_head, save_head
from fewstep.samplers.schedules import AllocationSchedule, DreamSchedule, Schedule, make_step_schedule
from fewstep.version import __version__

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
    # no "_class_name": older files name a class that never existed (FewstepUnmaskingScheduler); reading ignores it
    content = {
        "format": FORMAT,
        "fewstep_version": __version__,
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
    """The parsed file, or a one-line RunError when it is missing, unreadable or of the wrong shape."""
    path = Path(model_dir) / SCHEDULER_FILE
    if not path.is_file():
        raise RunError(
            f"{model_dir} has no {SCHEDULER_FILE}; learn one with `fewstep schedule schedule/markov "
            f"model={model_dir} steps=N`, or pick a fixed --schedule and --policy"
        )
    content = read_json_object(path, RunError, "re-run `fewstep schedule`")
    if content.get("format") != FORMAT:
        raise RunError(
            f"{path} has format {content.get('format')!r}, expected {FORMAT!r}; re-run `fewstep schedule`"
        )
    problem = _shape_problem(content)
    if problem:
        raise RunError(f"{path}: {problem}; re-run `fewstep schedule` to rewrite it")
    return content


_NUMBER = (int, float)


def _wrong(where: str, value: Any, types: tuple[type, ...], what: str, required: bool = True) -> str | None:
    """A description of what is wrong with one field (None: it is fine)."""
    if value is None and not required:
        return None
    if value is None:
        return f"{where} is missing (or null)"
    if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
        return f"{where} is {json.dumps(value)[:60]}, expected {what}"
    return None


def _shape_problem(content: dict[str, Any]) -> str | None:
    """What is structurally wrong with a parsed scheduler_config.json (None: the fields load_learned reads fit)."""
    checks: list[str | None] = [
        _wrong("'model'", content.get("model"), (dict,), "an object"),
        _wrong("'steps'", content.get("steps"), (int,), "an integer"),
        _wrong("'schedule'", content.get("schedule"), (dict,), "an object"),
        _wrong("'policy'", content.get("policy"), (dict,), "an object"),
    ]
    first = next((c for c in checks if c), None)
    if first:
        return first
    schedule, policy = content["schedule"], content["policy"]
    checks = [_wrong("schedule.name", schedule.get("name"), (str,), "a string"),
              _wrong("schedule.noise", schedule.get("noise"), (str,), "a string", required=False),
              _wrong("policy.name", policy.get("name"), (str,), "a string"),
              _wrong("policy.fallback", policy.get("fallback"), (str,), "a string", required=False),
              _wrong("policy.threshold", policy.get("threshold"), _NUMBER, "a number",
                     required=policy.get("name") == "learned"),
              _wrong("policy.gamma", policy.get("gamma"), _NUMBER, "a number", required=False)]
    if schedule.get("name") == "learned":
        fractions = schedule.get("fractions")
        checks.append(_wrong("schedule.fractions", fractions, (list,), "a list of numbers"))
        if isinstance(fractions, list) and not all(isinstance(f, _NUMBER) and not isinstance(f, bool)
                                                   for f in fractions):
            checks.append("schedule.fractions holds something other than numbers")
    if policy.get("name") == "learned":
        checks.append(_wrong("policy.hidden", policy.get("hidden"), (int,), "an integer"))
        weights = policy.get("weights", HEAD_FILE)
        checks.append(_wrong("policy.weights", weights, (str,), "a file name"))
        if isinstance(weights, str) and Path(weights).name != weights:  # never a path out of the directory
            checks.append(f"policy.weights is {weights!r}, expected a file name inside the model directory")
    return next((c for c in checks if c), None)


def load_learned(
    model_dir: Path, meta: dict[str, Any], steps: int
) -> tuple[Schedule, Policy, dict[str, Any]]:
    """The learned schedule and policy for `steps`, checked against the model's identity and the budget."""
    model_dir = Path(model_dir)
    content = read_scheduler_config(model_dir)
    path = model_dir / SCHEDULER_FILE
    saved, here = content["model"], model_identity(meta)
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
    if content["steps"] != steps:
        raise RunError(
            f"{path} was learned for a budget of {content['steps']} steps, not {steps}; sample with "
            f"--steps {content['steps']}, or learn one with `fewstep schedule CONFIG steps={steps}`"
        )
    try:
        return _schedule(content["schedule"], path), _policy(content["policy"], model_dir, meta, path), content
    except RunError as error:
        message = str(error)
        raise RunError(message if str(path) in message else f"{path}: {message}") from error


def _schedule(sched_cfg: dict[str, Any], path: Path) -> Schedule:
    if sched_cfg["name"] == "learned":
        return AllocationSchedule(sched_cfg["fractions"], source=str(path))
    if sched_cfg["name"] == "dream":  # its grid's end point is a parameter
        return DreamSchedule(eps=float(sched_cfg.get("eps", 1e-3)))
    return make_step_schedule(sched_cfg["name"], sched_cfg.get("noise", "loglinear"))


def _policy(pol_cfg: dict[str, Any], model_dir: Path, meta: dict[str, Any], path: Path) -> Policy:
    if pol_cfg["name"] != "learned":
        return make_policy(
            pol_cfg["name"],
            threshold=pol_cfg.get("threshold", 0.9),
            gamma=pol_cfg.get("gamma", 0.1),
            fallback=pol_cfg.get("fallback"),
            confidence=pol_cfg.get("confidence", "sampled"),
        )
    weights = model_dir / pol_cfg.get("weights", HEAD_FILE)
    if not weights.is_file():
        raise RunError(
            f"{path} names a policy head {weights.name} that is missing; re-run `fewstep schedule`"
        )
    try:
        head: PolicyHead = load_head(weights, int(pol_cfg["hidden"]))
    except Exception as error:  # safetensors and torch raise several types for a bad or mismatched file
        raise RunError(f"{weights} is not the policy head {path} describes "
                       f"({' '.join(str(error).split())[:200]}); re-run `fewstep schedule`") from error
    fallback = make_policy(pol_cfg["fallback"]) if pol_cfg.get("fallback") else None
    return LearnedPolicy(head, int(meta["vocab_size"]), float(pol_cfg["threshold"]), fallback)
