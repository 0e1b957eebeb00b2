"""`fewstep tune`: the smallest step count whose quality meets a target, from a trade-off sweep.

Quality is relative to the reference row (e.g. `teacher@128`); entropy is always held against the
reference model's own many-step samples (its row with the most steps, `entropy_reference_row`), so a
reference at few steps, whose samples may already have lost diversity, cannot lower the floor.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fewstep.errors import RunError
from fewstep.evaluation.metrics import HIGHER_IS_BETTER, quality_loss

__all__ = ["Target", "tune", "reference_row", "entropy_reference_row", "load_tradeoff"]


@dataclass
class Target:
    """Quality at most `max_ratio` x the reference's (at least, for accuracy-like metrics: `accuracy:0.99`); entropy at least `min_entropy_ratio` x the entropy of the
    reference model's own many-step samples (`entropy_reference_row`): 0.95 lets a row lose 5%."""

    metric: str
    reference_model: str
    reference_steps: int
    max_ratio: float = 1.05
    min_entropy_ratio: float = 0.95
    reference_sampler: str = "ancestral"  # the reference row's sampler, when the sweep has several
    speed_tolerance: float = 0.1  # rows within this fraction of the fastest are equally fast: better quality wins
    # the reference rows' temperature: the sweep's own (tradeoff.json's "temperature"), whatever else it swept;
    # None = any (a sweep at one temperature)
    reference_temperature: float | None = None


def load_tradeoff(path: str | Path) -> dict[str, Any]:
    """A `tradeoff.json` written by `fewstep bench`; a file of another shape is a one-line RunError naming it."""
    path = Path(path)
    if not path.is_file():
        raise RunError(f"{path} does not exist; produce one with `fewstep bench`")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RunError(f"{path} is not a tradeoff.json written by `fewstep bench` ({error})") from error
    problem = _shape_problem(payload)
    if problem:
        raise RunError(f"{path} is not a tradeoff.json written by `fewstep bench`: {problem}")
    return payload


# what tune and its report read from each row, and the JSON type each must have
_ROW_FIELDS: dict[str, tuple[tuple[type, ...], str]] = {
    "model": ((str,), "a string"), "sampler": ((str,), "a string"), "schedule": ((str,), "a string"),
    "steps": ((int,), "an integer"), "tokens_per_s": ((int, float), "a number"), "quality": ((dict,), "an object"),
}


def _shape_problem(payload: Any) -> str | None:
    """What is structurally wrong with a parsed tradeoff.json (None: every row has what tune reads)."""
    if not isinstance(payload, dict):
        return f"it holds a JSON {type(payload).__name__}, not an object"
    rows = payload.get("rows")
    if not isinstance(rows, list):
        return "it has no list of 'rows'" if rows is None else f"'rows' is a {type(rows).__name__}, not a list"
    if not rows:
        return "it has no rows"
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            return f"row {index} is a {type(row).__name__}, not an object"
        for key, (types, what) in _ROW_FIELDS.items():
            value = row.get(key)
            if key not in row:
                return f"row {index} has no {key!r}"
            if isinstance(value, bool) or not isinstance(value, types):
                return f"row {index}: {key!r} is {json.dumps(value)[:60]}, expected {what}"
        temperature = row.get("temperature", 1.0)
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
            return f"row {index}: 'temperature' is {json.dumps(temperature)[:60]}, expected a number"
        quality = row["quality"]
        if "entropy" not in quality:
            return f"row {index}: 'quality' has no 'entropy'"
        bad = [k for k, v in quality.items() if isinstance(v, bool) or not isinstance(v, (int, float))]
        if bad:
            return f"row {index}: quality {bad[0]!r} is {json.dumps(quality[bad[0]])[:60]}, expected a number"
    return None


def _at_reference_temperature(rows: list[dict[str, Any]], target: Target) -> list[dict[str, Any]]:
    if target.reference_temperature is None:
        return rows
    return [r for r in rows if float(r.get("temperature", 1.0)) == target.reference_temperature]


def reference_row(rows: list[dict[str, Any]], target: Target) -> dict[str, Any]:
    """The row the target is relative to: the reference model at its steps, with the reference sampler if run."""
    reference = [r for r in _at_reference_temperature(rows, target)
                 if r["model"] == target.reference_model and r["steps"] == target.reference_steps]
    if not reference:
        have = sorted({f"{r['model']}@{r['steps']}" for r in rows})
        raise RunError(f"no row for the reference {target.reference_model}@{target.reference_steps}; rows: "
                       f"{', '.join(have)}")
    return next((r for r in reference if r.get("sampler") == target.reference_sampler), reference[0])


def entropy_reference_row(rows: list[dict[str, Any]], target: Target) -> dict[str, Any]:
    """The row the entropy floor is relative to: the reference model at its most steps (with the reference sampler
    if it was run), i.e. its own many-step samples."""
    own = [r for r in _at_reference_temperature(rows, target) if r["model"] == target.reference_model]
    if not own:
        reference_row(rows, target)  # raises, naming the rows there are
    same = [r for r in own if r.get("sampler") == target.reference_sampler] or own
    return max(same, key=lambda r: r["steps"])


def tune(rows: list[dict[str, Any]], target: Target) -> tuple[dict[str, Any], dict[str, Any]]:
    """(chosen row, reference row): the fewest steps meeting the target; among those, the best quality of
    the rows within `speed_tolerance` of the fastest."""
    if not 0.0 <= target.min_entropy_ratio <= 1.0:
        raise RunError(f"the minimum entropy ratio (--min-entropy) is {target.min_entropy_ratio}; it must be in [0, 1], "
                       "e.g. 0.95 (a row may lose at most 5% of the reference's sample entropy)")
    ref = reference_row(rows, target)
    if target.metric not in ref["quality"]:
        raise RunError(f"the rows have no quality metric {target.metric!r}; they have "
                       f"{', '.join(sorted(ref['quality']))}")
    higher = target.metric in HIGHER_IS_BETTER  # accuracy: at least RATIO x the reference's; a loss: at most
    bound = target.max_ratio * ref["quality"][target.metric]
    entropy_ref = entropy_reference_row(rows, target)
    floor = target.min_entropy_ratio * entropy_ref["quality"]["entropy"]
    fits = [r for r in rows if r["model"] != "autoregressive" and target.metric in r["quality"]
            and (r["quality"][target.metric] >= bound if higher else r["quality"][target.metric] <= bound)
            and r["quality"]["entropy"] >= floor]
    if not fits:
        raise RunError(f"no row meets {target.metric} {'>=' if higher else '<='} {bound:.4g} with entropy >= "
                       f"{floor:.4g} ({target.min_entropy_ratio:g} x {target.reference_model}@{entropy_ref['steps']}'s); "
                       "relax the target or bench more step counts")
    fewest = [r for r in fits if r["steps"] == min(f["steps"] for f in fits)]
    # timing noise must not pick the worse of two rows with the same cost (e.g. two students at 4 steps)
    fastest = max(r["tokens_per_s"] for r in fewest)
    as_fast = [r for r in fewest if r["tokens_per_s"] >= (1.0 - target.speed_tolerance) * fastest]
    chosen = min(as_fast, key=lambda r: (quality_loss(r, target.metric), -r["tokens_per_s"]))
    return chosen, ref
