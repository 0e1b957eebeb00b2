"""Trade-off sweep, W&B files read back, export/load/generate, tune, and the evaluator."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_cli
from wandb_records import chart_specs, history_keys, read_records

import fewstep
from fewstep.deploy.export import export_model
from fewstep.errors import ModelError, RunError
from fewstep.samplers.presets import sample_with_spec
from fewstep.tradeoff.bench import run_bench
from fewstep.tradeoff.config import BenchModel, BenchRunConfig
from fewstep.tradeoff.pareto import pareto_front, python_lines_ok
from fewstep.tradeoff.tune import Target, tune
from fewstep.training.config import LoggerConfig, WandbConfig
from fewstep.training.ema import RAW_STATE_KEY


def row(model, steps, nll, entropy, speed):
    return {"model": model, "sampler": "ancestral", "schedule": "loglinear", "steps": steps, "nfe": float(steps),
            "tokens_per_s": speed, "latency_ms": 1.0, "quality": {"gen_nll": nll, "entropy": entropy}}


HAND = [row("teacher", 128, 2.00, 5.0, 10.0), row("teacher", 16, 2.40, 5.0, 80.0),
        row("student", 8, 2.30, 4.9, 160.0),   # too far from the reference
        row("student", 16, 2.08, 4.9, 80.0),   # meets the target
        row("student", 32, 2.02, 5.0, 40.0),   # meets it too, but with more steps
        row("sharp", 12, 2.01, 4.0, 100.0),    # meets quality, loses entropy
        row("autoregressive", 64, 1.9, 5.0, 5.0)]


def test_tune_picks_the_fewest_steps_that_meet_the_target():
    chosen, ref = tune(HAND, Target("gen_nll", "teacher", 128, 1.05, 0.95))
    assert (chosen["model"], chosen["steps"]) == ("student", 16) and ref["steps"] == 128
    chosen, _ = tune(HAND, Target("gen_nll", "teacher", 128, 1.25, 0.95))
    assert (chosen["model"], chosen["steps"]) == ("student", 8)
    # at the same steps, timing noise does not pick the worse row; a clearly faster one still wins
    tied = [*HAND, row("student-b", 16, 2.05, 4.9, 78.0)]
    assert tune(tied, Target("gen_nll", "teacher", 128, 1.05, 0.95))[0]["model"] == "student-b"
    assert tune(tied, Target("gen_nll", "teacher", 128, 1.05, 0.95, speed_tolerance=0.0))[0]["model"] == "student"
    slower = [*HAND, row("student-b", 16, 2.05, 4.9, 60.0)]
    assert tune(slower, Target("gen_nll", "teacher", 128, 1.05, 0.95))[0]["model"] == "student"
    with pytest.raises(RunError, match="no row meets"):
        tune(HAND, Target("gen_nll", "teacher", 128, 0.9, 0.95))
    with pytest.raises(RunError, match="teacher@128"):
        tune(HAND, Target("gen_nll", "teacher", 64))
    with pytest.raises(RunError, match="exact_nll"):
        tune(HAND, Target("exact_nll", "teacher", 128))


def test_tune_holds_entropy_against_the_teachers_own_many_step_samples():
    # quality relative to teacher@16, whose few-step samples have lost entropy; the floor stays 0.95 x teacher@128's
    rows = [row("teacher", 128, 2.00, 5.0, 10.0), row("teacher", 16, 2.10, 4.5, 80.0),
            row("student", 8, 2.10, 4.4, 160.0),  # within 5% of teacher@16's entropy, 12% below teacher@128's
            row("student", 16, 2.12, 4.8, 80.0)]
    chosen, ref = tune(rows, Target("gen_nll", "teacher", 16, 1.05, 0.95))
    assert (chosen["model"], chosen["steps"]) == ("student", 16) and ref["steps"] == 16
    assert tune(rows[:3], Target("gen_nll", "teacher", 16, 1.05, 0.95))[0]["steps"] == 128  # not student@8
    with pytest.raises(RunError, match=r"entropy >= 4.75 \(0.95 x teacher@128's\)"):
        tune(rows[1:3] + [row("teacher", 128, 2.50, 5.0, 10.0)], Target("gen_nll", "teacher", 16, 1.05, 0.95))
    assert tune(rows, Target("gen_nll", "teacher", 16, 1.05, 0.85))[0]["steps"] == 8  # a looser floor lets it in
    with pytest.raises(RunError, match=r"--min-entropy\) is 1.5; it must be in \[0, 1\]"):
        tune(rows, Target("gen_nll", "teacher", 16, 1.05, 1.5))


def test_pareto_front():
    front = {(HAND[i]["model"], HAND[i]["steps"]) for i in pareto_front(HAND, "gen_nll")}
    # student@16 and student@32 lose to sharp@12 (faster and better); teacher@16 to student@8
    assert front == {("student", 8), ("sharp", 12), ("teacher", 128), ("autoregressive", 64)}


def test_python_lines_ok():
    assert python_lines_ok(["x = (1,\nfor i in range(3):\ny = i + 1\nreturn\nif x ==\n) cut"]) == 0.75
    assert python_lines_ok(["only one line"]) == 0.0


def test_bench_writes_tradeoff_pareto_and_a_wandb_run(tiny_teacher, tmp_path):
    cfg = BenchRunConfig(out_dir=str(tmp_path / "b"), models=[BenchModel("teacher", str(tiny_teacher)),
                                                              BenchModel("again", str(tiny_teacher))],
                         steps=[2, 8], num_samples=8, repeats=1, export=str(tiny_teacher / "model"))
    payload = run_bench(cfg, progress=False)
    saved = json.loads((tmp_path / "b" / "tradeoff.json").read_text())
    assert saved["task"] == "markov" and saved["device"].startswith("cpu") and len(saved["rows"]) == 4
    for r in saved["rows"]:
        assert {"model", "sampler", "schedule", "steps", "nfe", "tokens_per_s", "latency_ms", "latency_b1_ms",
                "quality"} <= set(r)
        assert {"entropy", "exact_nll", "invalid_rate"} <= set(r["quality"])
        assert 0 < r["latency_b1_ms"]  # one sequence at batch 1, beside the batch's throughput
    assert payload["rows"][0]["steps"] == 2
    png = (tmp_path / "b" / "pareto.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    run_file = next((tmp_path / "b" / "wandb").glob("offline-run-*/*.wandb"))
    records = read_records(run_file)
    logged = history_keys(run_file)
    assert {"tradeoff/table/_type", "tradeoff/pareto/_type", "tradeoff/pareto/path"} <= logged
    charts = chart_specs(run_file)
    assert charts == {"tradeoff/teacher/exact_nll_vs_steps": "wandb/line/v0",
                      "tradeoff/again/exact_nll_vs_steps": "wandb/line/v0"}
    assert any(r.WhichOneof("record_type") == "artifact" for r in records)
    media = list((tmp_path / "b" / "wandb").glob("offline-run-*/files/media/table/tradeoff/table_*.table.json"))
    table = json.loads(media[0].read_text())
    assert table["columns"][:4] == ["model", "sampler", "schedule", "steps"] and len(table["data"]) == 4


def test_bench_sweeps_samplers_by_preset_or_policy_and_schedule(tiny_teacher, tmp_path):
    cfg = BenchRunConfig(out_dir=str(tmp_path / "b"), models=[BenchModel("teacher", str(tiny_teacher))],
                         samplers=["ancestral", "dilated", "eb+random/cosine", "learned"], steps=[2, 4],
                         num_samples=4, repeats=1, logger=LoggerConfig(wandb=WandbConfig(mode="disabled")))
    rows = run_bench(cfg, progress=False)["rows"]
    # `learned` is skipped: the tiny teacher has no scheduler_config.json
    assert [(r["sampler"], r["schedule"], r["steps"]) for r in rows] == [
        ("ancestral", "loglinear", 2), ("ancestral", "loglinear", 4), ("dilated", "loglinear", 2),
        ("dilated", "loglinear", 4), ("eb+random/cosine", "cosine", 2), ("eb+random/cosine", "cosine", 4)]
    assert all(r["nfe"] <= r["steps"] for r in rows)
    for bad, message in (("nonsense", "unknown policy 'nonsense'"), ("random/zigzag", "unknown schedule 'zigzag'")):
        with pytest.raises(RunError, match=message):
            run_bench(BenchRunConfig(out_dir=str(tmp_path / "c"), models=cfg.models, samplers=[bad], steps=[2],
                                     num_samples=2, repeats=1, logger=cfg.logger), progress=False)


def memory_weights(run) -> str:
    return json.loads((run / "model" / "fewstep.json").read_text()).get("weights", "raw")


def test_export_load_and_generate_give_the_in_memory_tokens(tiny_teacher, tmp_path):
    out = export_model(tiny_teacher / "checkpoints" / "last.ckpt", tmp_path / "export", {"steps": 6})
    pipeline = fewstep.load(out)
    result = pipeline.generate(num_samples=3, seed=7)
    assert result["steps"] == 6
    from fewstep.model.model_dir import load_model_dir

    # the checkpoint's weights as the run chose them (raw or its EMA, by validation NELBO): the run's own
    # model directory, written from the same last step
    ckpt = torch.load(tiny_teacher / "checkpoints" / "last.ckpt", weights_only=False)
    memory = load_model_dir(tiny_teacher).denoiser
    chosen = {**ckpt["state_dict"], **(ckpt.get(RAW_STATE_KEY) or {})} if memory_weights(tiny_teacher) == "raw" \
        else ckpt["state_dict"]
    memory.load_state_dict({k.removeprefix("denoiser."): v for k, v in chosen.items()})
    expected = sample_with_spec("ancestral", memory, 3, 16, 6, seed=7).tokens
    assert torch.equal(result["tokens"], expected)
    cli = run_cli("generate", str(out), "--num-samples", "3", "--seed", "7")
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert [json.loads(line)["tokens"] for line in cli.stdout.splitlines()] == expected.tolist()


def test_export_generates_with_its_tuned_sampler(tiny_teacher, tmp_path):
    """A tuned sampler other than ancestral (here the dilated order with geometric counts) is what
    `fewstep.load(...).generate()` uses."""
    from fewstep.model.model_dir import load_model_dir
    from fewstep.samplers import Sampler, make_policy, make_step_schedule

    out = export_model(tiny_teacher, tmp_path / "export", {"steps": 4, "sampler": "dilated/geometric",
                                                          "schedule": "geometric"})
    result = fewstep.load(out).generate(num_samples=3, seed=7)
    memory = load_model_dir(tiny_teacher).denoiser
    expected = Sampler(make_step_schedule("geometric"), make_policy("dilated")).generate(memory, 3, 16, 4, seed=7)
    assert torch.equal(result["tokens"], expected.tokens) and result["nfe"] == expected.nfe_per_sequence
    assert not torch.equal(result["tokens"], sample_with_spec("ancestral", memory, 3, 16, 4, seed=7).tokens)


def test_export_refuses_bad_sources(tiny_teacher, tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        export_model(tmp_path / "missing.ckpt", tmp_path / "e")
    junk = tmp_path / "checkpoints" / "junk.ckpt"
    junk.parent.mkdir()
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="cannot find the run"):
        export_model(junk, tmp_path / "e")
    assert not (tmp_path / "e").exists()


def test_tune_cli_writes_the_choice_into_the_export(tiny_teacher, tmp_path):
    export_model(tiny_teacher, tmp_path / "export")
    tradeoff = tmp_path / "tradeoff.json"
    tradeoff.write_text(json.dumps({"task": "markov", "device": "cpu", "rows": HAND}))
    result = run_cli("tune", str(tradeoff), "--target", "gen_nll:1.05", "--reference", "teacher@128",
                     "--export", str(tmp_path / "export"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "student" in result.stdout and "16 steps" in result.stdout
    assert "entropy floor 0.95 x" in result.stdout and "(teacher @ " in result.stdout  # the floor's own row
    assert fewstep.load(tmp_path / "export").generation["steps"] == 16
    bad = run_cli("tune", str(tradeoff), "--target", "gen_nll", "--reference", "teacher@128")
    assert bad.returncode == 2 and "METRIC:RATIO" in bad.stderr


def test_summary_reports_batch_one_latency_against_the_autoregressive_model():
    """Throughput at the bench's batch and latency at batch 1 are both compared with the AR baseline."""
    from fewstep.tradeoff.bench import summary_rows

    def row(model, speed, b1):
        return {"model": model, "sampler": "s", "steps": 4, "nfe": 4.0, "tokens_per_s": speed,
                "latency_b1_ms": b1, "quality": {"exact_nll": 1.0, "entropy": 3.0}}

    table = summary_rows([row("teacher", 100.0, 10.0), row("autoregressive", 400.0, 80.0)])
    assert table[0]["x_ar"] == 0.25 and table[0]["x_ar_b1"] == 8.0 and table[0]["b1_ms"] == 10.0


def test_bench_sweeps_extra_temperatures_as_curves_of_their_own(tiny_teacher, tmp_path):
    cfg = BenchRunConfig(out_dir=str(tmp_path / "b"), models=[BenchModel("teacher", str(tiny_teacher))],
                         steps=[2, 8], num_samples=8, repeats=1, extra_temperatures=[0.5, 1.0],
                         logger=LoggerConfig(wandb=WandbConfig(mode="disabled")))
    payload = run_bench(cfg, progress=False)
    saved = json.loads((tmp_path / "b" / "tradeoff.json").read_text())
    assert saved["temperature"] == payload["temperature"] == 1.0  # the sweep's own: tune's reference rows
    assert [(r["temperature"], r["steps"]) for r in saved["rows"]] == [(1.0, 2), (1.0, 8), (0.5, 2), (0.5, 8)]
    # the rows really sample at their temperature: the same seeds give other samples, with less entropy
    hot, cold = saved["rows"][1]["quality"], saved["rows"][3]["quality"]
    assert cold["entropy"] < hot["entropy"]
    from fewstep.tradeoff.bench import summary_rows

    assert [r["sampler"] for r in summary_rows(saved["rows"])] == ["ancestral, T=1"] * 2 + ["ancestral, T=0.5"] * 2
    with pytest.raises(Exception, match="extra_temperatures holds -1"):
        BenchRunConfig(models=cfg.models, extra_temperatures=[-1.0])


def test_tune_takes_its_reference_at_the_sweeps_temperature_and_may_choose_another():
    rows = [{**r, "temperature": 1.0} for r in HAND if r["model"] in ("teacher", "autoregressive")]
    rows += [{**row("teacher", 128, 1.70, 4.6, 10.0), "temperature": 0.8},  # sharper: not the reference
             {**row("teacher", 16, 2.06, 4.9, 80.0), "temperature": 0.8}]   # 16 steps within 5% at T=0.8
    target = Target("gen_nll", "teacher", 128, 1.05, 0.95, reference_temperature=1.0)
    chosen, ref = tune(rows, target)
    assert ref["temperature"] == 1.0 and ref["quality"]["gen_nll"] == 2.00
    assert (chosen["steps"], chosen["temperature"]) == (16, 0.8)
    # without the sweep's temperature the sharper row can be taken for the reference, and the 16-step row misses
    chosen, ref = tune(rows[2:] + rows[:2], Target("gen_nll", "teacher", 128, 1.05, 0.95))
    assert ref["quality"]["gen_nll"] == 1.70 and chosen["steps"] == 128


def test_tune_cli_exports_the_chosen_temperature(tiny_teacher, tmp_path):
    export_model(tiny_teacher, tmp_path / "export")
    rows = [{**r, "temperature": 1.0} for r in HAND] + [{**row("teacher", 4, 2.09, 4.8, 300.0), "temperature": 0.9}]
    tradeoff = tmp_path / "tradeoff.json"
    tradeoff.write_text(json.dumps({"task": "markov", "device": "cpu", "temperature": 1.0, "rows": rows}))
    result = run_cli("tune", str(tradeoff), "--target", "gen_nll:1.05", "--reference", "teacher@128",
                     "--export", str(tmp_path / "export"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "temperature 0.9) @ 4 steps" in result.stdout
    generation = fewstep.load(tmp_path / "export").generation
    assert (generation["steps"], generation["temperature"]) == (4, 0.9)
