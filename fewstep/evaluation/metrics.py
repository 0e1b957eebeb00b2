"""The names of fewstep's quality metrics, which one heads a table, and which way each is better.

Every score a row, a W&B log or a round record carries is named here; code that picks or ranks a metric
asks `quality_key` / `quality_loss` rather than testing names itself.
"""

from __future__ import annotations

from typing import Any

EXACT_NLL = "exact_nll"  # nats/token under the true chain (embedded markov task)
GEN_NLL = "gen_nll"  # nats/token under the autoregressive evaluator
TEACHER_NELBO = "teacher_nelbo"  # the teacher's (or a scoring model's) NELBO of the samples, nats/token
ENTROPY = "entropy"  # unigram entropy of the samples, nats: the diversity every quality number stands beside
ACCURACY = "accuracy"  # prompted tasks: the share of answers that are right
PYTHON_LINES_OK = "python_lines_ok"  # stdlib: the share of sample lines that parse as Python
INVALID_RATE = "invalid_rate"  # markov: the share of transitions the chain cannot make

# the headline metric, in order of preference: the first that every row has
HEADLINE_ORDER = (ACCURACY, GEN_NLL, EXACT_NLL, TEACHER_NELBO)

__all__ = ["EXACT_NLL", "GEN_NLL", "TEACHER_NELBO", "ENTROPY", "ACCURACY", "PYTHON_LINES_OK", "INVALID_RATE",
           "HEADLINE_ORDER", "HIGHER_IS_BETTER", "quality_key", "quality_loss"]

HIGHER_IS_BETTER = (ACCURACY, PYTHON_LINES_OK)  # every other quality metric is a loss


def quality_key(rows: list[dict[str, Any]]) -> str:
    """The headline quality metric present in every row: accuracy (prompt sets), else gen_nll, else
    exact_nll, else teacher_nelbo, else entropy."""
    for key in HEADLINE_ORDER:
        if rows and all(key in r["quality"] for r in rows):
            return key
    return ENTROPY


def quality_loss(row: dict[str, Any], key: str) -> float:
    """`key` of a row as a loss (lower is better): accuracy-like metrics negated."""
    value = float(row["quality"][key])
    return -value if key in HIGHER_IS_BETTER else value
