"""`print_distill_summary`'s table: the exact NLL and invalid rate where the chain is known, else the teacher's
NELBO; one row per round and model."""

from __future__ import annotations

from types import SimpleNamespace

from fewstep.summary import print_distill_summary


def _record(round_index: int, exact: bool) -> dict[str, float]:
    record: dict[str, float] = {"round": round_index}
    for who in ("student", "teacher", "original"):
        record.update({f"{who}_steps": 8.0, f"{who}_entropy": 2.5})
        if exact:
            record.update({f"{who}_exact_nll": 1.25, f"{who}_invalid_rate": 0.01})
        else:
            record[f"{who}_teacher_nelbo"] = 3.5
    return record


def _printed(capsys, rounds) -> list[str]:
    print_distill_summary(SimpleNamespace(steps=10, train_seconds=3.0, model_dir="m", rounds=rounds))
    return capsys.readouterr().out.splitlines()


def test_markov_rounds_show_exact_nll_and_invalid_rate(capsys):
    lines = _printed(capsys, [_record(0, True)])
    assert lines[2] == "| round | model    | steps | exact_nll | entropy | invalid_rate |"
    assert lines[4] == "| 0     | student  | 8     | 1.25      | 2.5     | 0.01         |"
    assert len(lines) == 8


def test_other_rounds_show_the_teacher_nelbo(capsys):
    lines = _printed(capsys, [_record(0, False), _record(1, False)])
    assert lines[2] == "| round | model    | steps | teacher_nelbo | entropy |"
    assert [line.split("|")[2].strip() for line in lines[4:10]] == ["student", "teacher", "original"] * 2


def test_no_rounds_no_table(capsys):
    assert _printed(capsys, []) == ["", "distilled for 10 steps in 3 s; final student: m"]
