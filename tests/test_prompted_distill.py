"""Conditional distillation (issue 16 item 3): the teacher's own answers to the training prompts, and
SDTT and trajectory losses with the prompt fixed and counted nowhere."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_overrides
from torch import nn

from fewstep.core.config import load_config
from fewstep.core.diffusion import make_schedule
from fewstep.core.streams import step_noise
from fewstep.data.anagram import AnagramOracle
from fewstep.data.config import AnagramConfig, DataConfig
from fewstep.data.sources import build_data
from fewstep.distillation.config import DistillRunConfig, TrajectoryConfig
from fewstep.distillation.trajectory import (
    ensure_trajectories,
    keep_verified,
    select_reference,
    trajectory_loss,
)
from fewstep.errors import ConfigError
from fewstep.samplers.presets import sample_with_spec
from fewstep.teacher.config import TeacherRunConfig

SMALL_TASK = ["data.source=anagram", "data.seq_len=10", "data.anagram.min_letters=2", "data.anagram.max_letters=4",
              "data.anagram.alphabet=8", "data.num_train=256", "data.num_val=64", "data.val_fraction=0.2"]


def _data():
    return build_data(DataConfig(source="anagram", seq_len=10, num_train=120, num_val=32, val_fraction=0.2,
                                 anagram=AnagramConfig(min_letters=2, max_letters=4, alphabet=8)))


class Recorder(nn.Module):
    """A student that records its inputs and returns learnable logits."""

    def __init__(self, vocab: int, mask_id: int) -> None:
        super().__init__()
        self.mask_id = mask_id
        self.table = nn.Parameter(torch.zeros(vocab, vocab))
        self.inputs: list[torch.Tensor] = []

    def forward(self, z, t=None):
        self.inputs.append(z.clone())
        return self.table[z]


class PositionRecorder(Recorder):
    """A recorder whose logits also depend on the position: masked positions differ in entropy."""

    def __init__(self, vocab: int, mask_id: int, seq_len: int) -> None:
        super().__init__(vocab, mask_id)
        self.position = nn.Parameter(torch.zeros(seq_len, vocab))

    def forward(self, z, t=None):
        return super().forward(z, t) + self.position[: z.shape[1]]


def test_trajectories_are_the_teachers_answers_to_the_training_prompts(tmp_path):
    data = _data()
    oracle = AnagramOracle(data.task)
    tokens, lengths = ensure_trajectories(
        oracle, tmp_path / "t.pt", 50, 10, 16, 16, 3, data.mask_id, "loglinear", {"k": 1}, progress=False,
        prompts=data.train, prompt_len=data.train_prompt_len, spec="llada", temperature=0.0)
    assert tokens.shape == (50, 10) and torch.equal(lengths, data.train_prompt_len[:50])
    for i in range(50):
        n = int(lengths[i])
        assert torch.equal(tokens[i, :n], data.train[i, :n])  # the prompt is kept
    # at one token per forward pass the exact teacher is always right: the answers are its own, valid
    decode = data.tokenizer.decode
    for row, n in zip(tokens.tolist(), lengths.tolist()):
        response = row[n:]
        response = response[: response.index(data.task.eos_id)] if data.task.eos_id in response else response
        assert data.task.check(decode(row[:n], skip_special_tokens=True), decode(response, skip_special_tokens=True))
    # each answer is what the teacher gives that prompt alone (batch and position in the cache do not matter)
    alone = sample_with_spec("llada", oracle, 1, 10, 16, seed=3, temperature=0.0,
                             prompt=data.train[7, : int(lengths[7])], sample_ids=[7])
    assert torch.equal(alone.tokens[0], tokens[7])
    again, _ = ensure_trajectories(
        oracle, tmp_path / "t.pt", 50, 10, 16, 16, 3, data.mask_id, "loglinear", {"k": 1}, progress=False,
        prompts=data.train, prompt_len=data.train_prompt_len, spec="llada", temperature=0.0)
    assert torch.equal(again, tokens)  # read back from the cache


class Positional(nn.Module):
    """A student whose logits depend on the position only, and which records its inputs."""

    def __init__(self, seq_len: int, vocab: int, mask_id: int, seed: int = 0) -> None:
        super().__init__()
        self.mask_id = mask_id
        self.table = nn.Parameter(torch.randn(seq_len, vocab, generator=torch.Generator().manual_seed(seed)))
        self.inputs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, z, t=None):
        self.inputs.append((z.clone(), t.clone()))
        return self.table.expand(z.shape[0], -1, -1)


def test_references_are_several_answers_to_each_prompt(tmp_path):
    data = _data()
    oracle = AnagramOracle(data.task)
    tokens, lengths = ensure_trajectories(
        oracle, tmp_path / "t.pt", 20, 10, 16, 16, 3, data.mask_id, "loglinear", {"k": 1}, progress=False,
        prompts=data.train, prompt_len=data.train_prompt_len, spec="llada", temperature=1.0, references=3)
    assert tokens.shape == (20, 3, 10) and torch.equal(lengths, data.train_prompt_len[:20])
    decode = data.tokenizer.decode
    distinct = 0
    for i in range(20):
        n = int(lengths[i])
        for row in tokens[i].tolist():
            assert row[:n] == data.train[i, :n].tolist()  # every reference answers prompt i
            response = row[n:]
            response = response[: response.index(data.task.eos_id)] if data.task.eos_id in response else response
            assert data.task.check(decode(row[:n], skip_special_tokens=True),
                                   decode(response, skip_special_tokens=True))
        distinct += len({tuple(row) for row in tokens[i].tolist()}) > 1
    assert distinct >= 5  # each answer has its own noise: where a prompt has several right answers, they differ
    again, _ = ensure_trajectories(
        oracle, tmp_path / "t.pt", 20, 10, 16, 16, 3, data.mask_id, "loglinear", {"k": 1}, progress=False,
        prompts=data.train, prompt_len=data.train_prompt_len, spec="llada", temperature=1.0, references=3)
    assert torch.equal(again, tokens)


def _answer(data, index: int, response: str) -> list[int]:
    """Training prompt `index` with `response` (letters) after it, EOS-filled to the row width."""
    n = int(data.train_prompt_len[index])
    row = data.train[index, :n].tolist() + data.tokenizer.encode(response, add_special_tokens=False)
    return row + [data.task.eos_id] * (data.train.shape[1] - len(row))


def test_keep_verified_keeps_the_answers_the_checker_accepts():
    data = _data()
    decode = data.tokenizer.decode
    right = [data.task.answer_letters(decode(data.train[i, : int(data.train_prompt_len[i])].tolist(),
                                             skip_special_tokens=True)) for i in range(3)]
    wrong = [r[0] * len(r) for r in right]  # one letter repeated: the collision parallel decoding makes
    lengths = data.train_prompt_len[:3]
    # one answer per prompt: the wrong ones drop out with their prompts
    tokens = torch.tensor([_answer(data, 0, right[0]), _answer(data, 1, wrong[1]), _answer(data, 2, right[2][::-1])])
    kept, kept_len, counts = keep_verified(tokens, lengths, data.tokenizer, data.task.check)
    assert torch.equal(kept, tokens[[0, 2]]) and torch.equal(kept_len, lengths[[0, 2]])
    assert counts == {"answers": 3, "accepted": 2, "prompts": 3, "prompts_kept": 2}
    # three answers per prompt: a rejected answer becomes the prompt's first accepted one; a prompt with none drops
    refs = torch.tensor([[_answer(data, 0, wrong[0]), _answer(data, 0, right[0]), _answer(data, 0, right[0][::-1])],
                         [_answer(data, 1, wrong[1]), _answer(data, 1, wrong[1]), _answer(data, 1, wrong[1][:-1])],
                         [_answer(data, 2, right[2]), _answer(data, 2, wrong[2]), _answer(data, 2, right[2])]])
    kept, kept_len, counts = keep_verified(refs, lengths, data.tokenizer, data.task.check)
    assert counts == {"answers": 9, "accepted": 4, "prompts": 3, "prompts_kept": 2}
    assert torch.equal(kept_len, lengths[[0, 2]])
    assert torch.equal(kept[0], refs[0, [1, 1, 2]]) and torch.equal(kept[1], refs[2, [0, 0, 2]])


def test_select_reference_takes_the_answer_the_student_finds_likeliest_in_one_pass():
    vocab, mask_id, seq_len = 6, 5, 5
    student = Positional(seq_len, vocab, mask_id)
    prompt_len = torch.tensor([2, 1, 3])
    references = torch.randint(0, 5, (3, 4, seq_len), generator=torch.Generator().manual_seed(1))
    for b, n in enumerate(prompt_len.tolist()):
        references[b, :, :n] = references[b, 0, :n]  # one prompt per row, four answers
    chosen = select_reference(student, references, prompt_len, mask_id)
    z, t = student.inputs[0]
    assert torch.equal(t, torch.ones(3))  # one forward pass from the fully masked response
    for b, n in enumerate(prompt_len.tolist()):
        assert torch.equal(z[b, :n], references[b, 0, :n]) and (z[b, n:] == mask_id).all()
        log_q = torch.log_softmax(student.table.detach()[:, :mask_id], -1)
        scores = [sum(float(log_q[i, references[b, r, i]]) for i in range(n, seq_len)) for r in range(4)]
        assert torch.equal(chosen[b], references[b, max(range(4), key=scores.__getitem__)])
    # the loss trains on the chosen answers: a [B, R, L] batch is the [B, L] batch of its choices
    noise = step_noise(0, 0, 3, 0, 1, torch.device("cpu"))
    loss, _ = trajectory_loss(student, references, make_schedule("loglinear"), mask_id, 0.5, noise, prompt_len)
    noise = step_noise(0, 0, 3, 0, 1, torch.device("cpu"))
    plain, _ = trajectory_loss(student, chosen, make_schedule("loglinear"), mask_id, 0.5, noise, prompt_len)
    assert torch.equal(loss, plain)


def test_trajectory_loss_masks_and_scores_the_response_only():
    data = _data()
    student = Recorder(data.vocab_size, data.mask_id)
    x = data.train[:16]
    prompt_len = data.train_prompt_len[:16]
    noise = step_noise(0, 0, 16, 0, 1, torch.device("cpu"))
    loss, _ = trajectory_loss(student, x, make_schedule("loglinear"), data.mask_id, 0.5, noise, prompt_len)
    z = student.inputs[0]
    first, second = z[:16], z[16:]
    prompt = torch.arange(10).unsqueeze(0) < prompt_len.unsqueeze(1)
    assert torch.equal(first[prompt], x[prompt]) and torch.equal(second[prompt], x[prompt])
    # the two masks are complementary on the response: every response token is a target exactly once
    assert torch.equal((first == data.mask_id) ^ (second == data.mask_id), ~prompt)
    loss.backward()
    prompt_tokens = x[prompt].unique()
    response_only = set(prompt_tokens.tolist()) - set(x[~prompt].tolist()) - {int(t) for t in z[z != data.mask_id]}
    assert not response_only  # (every prompt token is also seen as context; nothing to check there)
    assert torch.isfinite(loss)


def test_certainty_forcing_adds_the_weighted_entropy_of_the_right_predictions():
    """dParallel's certainty forcing: the loss is the cross-entropy plus `entropy_weight` times the mean
    entropy of the student's distribution at the masked positions whose argmax is already the target."""
    data = _data()
    x, prompt_len = data.train[:16], data.train_prompt_len[:16]
    student = PositionRecorder(data.vocab_size, data.mask_id, x.shape[1])
    response = torch.arange(x.shape[1]).unsqueeze(0) >= prompt_len.unsqueeze(1)
    with torch.no_grad():  # masked positions lean to the commonest answer token: right at some of them
        student.table.normal_(generator=torch.Generator().manual_seed(0))
        student.position.normal_(generator=torch.Generator().manual_seed(1))
        student.table[data.mask_id, x[response].mode().values] += 3.0
    losses = {}
    for weight in (0.0, 0.2, 0.5):
        student.inputs.clear()
        noise = step_noise(0, 0, 16, 0, 1, torch.device("cpu"))
        losses[weight], metrics = trajectory_loss(student, x, make_schedule("loglinear"), data.mask_id, weight,
                                                  noise, prompt_len)
    z = student.inputs[0]
    target = torch.cat([x, x])
    logits = student(z).detach()[z == data.mask_id].double()
    logits[:, data.mask_id] = -torch.inf  # the mask token is never a prediction
    goal = target[z == data.mask_id]
    entropy = torch.special.entr(torch.softmax(logits, -1)).sum(-1)
    right = logits.argmax(-1) == goal
    assert 0 < int(right.sum()) < len(goal)  # some right, some wrong: the term picks the right ones only
    certainty = float(entropy[right].mean())
    assert float(metrics["certainty_entropy"]) == pytest.approx(certainty, rel=1e-5)
    assert float(losses[0.0]) == pytest.approx(float(torch.nn.functional.cross_entropy(logits, goal)), rel=1e-5)
    for weight in (0.2, 0.5):
        assert float(losses[weight] - losses[0.0]) == pytest.approx(weight * certainty, rel=1e-4)


def test_sdtt_keeps_the_prompt_out_of_the_teachers_rollout_and_the_loss():
    from fewstep.distillation.config import LossConfig, RoundsConfig
    from fewstep.distillation.module import DistillModule
    from fewstep.training.config import OptimConfig

    data = _data()
    teacher = Recorder(data.vocab_size, data.mask_id)
    student = Recorder(data.vocab_size, data.mask_id)
    module = DistillModule(student, teacher, make_schedule("loglinear"), "sdtt", LossConfig(),
                           RoundsConfig(start_steps=4, k=2, count=1, steps_per_round=1), OptimConfig(),
                           TrajectoryConfig())
    module._trainer = SimpleNamespace(world_size=1, global_step=0)  # the one-process loss, no fit loop
    x, prompt_len = data.train[:16], data.train_prompt_len[:16]
    noise = step_noise(0, 0, 16, 0, 1, torch.device("cpu"))
    loss = module.sdtt_loss(x, noise, prompt_len)
    assert len(teacher.inputs) == 2 and len(student.inputs) == 1  # k = 2 teacher steps
    prompt = torch.arange(10).unsqueeze(0) < prompt_len.unsqueeze(1)
    for z in [*teacher.inputs, *student.inputs]:
        assert torch.equal(z[prompt], x[prompt])
    assert torch.isfinite(loss)


def test_trajectory_config_defaults_follow_the_data():
    assert TrajectoryConfig().resolved(prompted=True) == ("llada", 0.0)
    assert TrajectoryConfig().resolved(prompted=False) == ("ancestral", 1.0)
    assert TrajectoryConfig(sampler="fast-dllm", temperature=0.5).resolved(True) == ("fast-dllm", 0.5)
    assert TrajectoryConfig(references=4).resolved(prompted=True) == ("llada", 1.0)  # answers that differ
    with pytest.raises(ConfigError, match="trajectory.temperature=0"):
        TrajectoryConfig(references=4, temperature=0.0)
    with pytest.raises(ConfigError, match="references"):
        TrajectoryConfig(references=0)


@pytest.fixture(scope="module")
def anagram_teacher(tmp_path_factory):
    from fewstep.teacher.run import train_teacher

    teacher_dir = tmp_path_factory.mktemp("anagram") / "teacher"
    train_teacher(load_config(TeacherRunConfig, None, tiny_overrides(teacher_dir, *SMALL_TASK, "trainer.max_steps=4",
                                                                     "trainer.val_every=2")))
    return teacher_dir


def test_a_prompted_distillation_run_end_to_end(anagram_teacher, tmp_path):
    from fewstep.distillation.run import run_distill
    from fewstep.evaluation.accuracy import task_accuracy
    from fewstep.model.model_dir import load_model_dir

    teacher_dir = anagram_teacher
    out = tmp_path / "distill"
    cfg = load_config(DistillRunConfig, None, [
        f"teacher.path={teacher_dir}", f"out_dir={out}", *SMALL_TASK, "method=trajectory", "rounds.start_steps=8",
        "rounds.count=1", "rounds.steps_per_round=3", "trainer.batch_size=8", "trainer.progress=false",
        "trajectory.num_trajectories=24", "trajectory.batch_size=12", "eval.num_samples=4",
        "logger.wandb.mode=disabled", "optim.warmup_steps=1"])
    result = run_distill(cfg)
    assert result.steps == 3
    record = json.loads((out / "rounds.json").read_text())[0]  # the round validation answered prompts
    for who in ("student", "teacher", "original"):
        assert 0.0 <= record[f"{who}_accuracy"] <= 1.0 and record[f"{who}_tokens_per_forward"] > 0
    assert record["reference_entropy"] >= 0 and "entropy_ok" in record  # (a 4-step teacher may answer nothing)
    cached = torch.load(out / "trajectories.pt", weights_only=True)
    assert cached["tokens"].shape == (24, 10)
    data = build_data(cfg.data)
    lengths = data.train_prompt_len[:24]
    for row, n, source in zip(cached["tokens"], lengths.tolist(), data.train[:24]):
        assert torch.equal(row[:n], source[:n])  # teacher answers to the training prompts
    student = load_model_dir(out / "model").denoiser
    accuracy = task_accuracy(student, data, "llada", steps=4, num_prompts=8)
    assert accuracy.num_prompts == 8 and 0.0 <= accuracy.accuracy <= 1.0


def test_a_distillation_run_on_several_references_per_prompt(anagram_teacher, tmp_path):
    from fewstep.distillation.run import run_distill

    out = tmp_path / "distill"
    cfg = load_config(DistillRunConfig, None, [
        f"teacher.path={anagram_teacher}", f"out_dir={out}", *SMALL_TASK, "method=trajectory", "rounds.start_steps=8",
        "rounds.count=1", "rounds.steps_per_round=3", "trainer.batch_size=8", "trainer.progress=false",
        "trajectory.num_trajectories=12", "trajectory.references=3", "trajectory.batch_size=12",
        "eval.enabled=false", "logger.wandb.mode=disabled", "optim.warmup_steps=1"])
    assert run_distill(cfg).steps == 3
    cached = torch.load(out / "trajectories.pt", weights_only=True)
    assert cached["tokens"].shape == (36, 10) and json.loads(cached["signature"])["references"] == 3
    data = build_data(cfg.data)
    for i, row in enumerate(cached["tokens"]):
        n = int(data.train_prompt_len[i // 3])
        assert torch.equal(row[:n], data.train[i // 3, :n])  # rows 3i, 3i+1, 3i+2 answer prompt i


def _verified_run(teacher_dir, out):
    return load_config(DistillRunConfig, None, [
        f"teacher.path={teacher_dir}", f"out_dir={out}", *SMALL_TASK, "method=trajectory", "rounds.start_steps=2",
        "rounds.count=1", "rounds.steps_per_round=2", "trainer.batch_size=8", "trainer.progress=false",
        "trajectory.num_trajectories=16", "trajectory.references=2", "trajectory.batch_size=16",
        "trajectory.teacher_steps=2", "trajectory.verify=true", "eval.enabled=false", "logger.wandb.mode=disabled",
        "optim.warmup_steps=1"])


def test_a_verified_distillation_trains_on_accepted_answers_only(anagram_teacher, tmp_path, monkeypatch):
    from fewstep.distillation import run
    from fewstep.distillation.run import run_distill

    # the exact oracle answers in the teacher's place: at 2 steps it answers some prompts right, some not
    oracle = AnagramOracle(build_data(_verified_run(anagram_teacher, tmp_path).data).task)
    draw, verify = run.ensure_trajectories, run.keep_verified
    monkeypatch.setattr(run, "ensure_trajectories", lambda teacher, *a, **k: draw(oracle, *a, **k))
    verified = []  # what keep_verified hands the run

    def recording(*args):
        verified.append(verify(*args))
        return verified[-1]

    monkeypatch.setattr(run, "keep_verified", recording)
    cfg = _verified_run(anagram_teacher, tmp_path / "distill")
    assert run_distill(cfg).steps == 2
    (kept, kept_len, counts), = verified
    assert counts["prompts"] == 16 and counts["answers"] == 32 and 0 < counts["accepted"] < 32
    assert len(kept) == counts["prompts_kept"] < 16  # some prompts got no right answer: they are gone
    data = build_data(cfg.data)
    decode = data.tokenizer.decode
    for answers, n in zip(kept, kept_len.tolist()):
        for row in answers.tolist():
            response = row[n:]
            response = response[: response.index(data.task.eos_id)] if data.task.eos_id in response else response
            assert data.task.check(decode(row[:n], skip_special_tokens=True), decode(response, skip_special_tokens=True))


def test_a_verified_distillation_whose_teacher_is_always_wrong_stops_with_an_error(anagram_teacher, tmp_path):
    from fewstep.distillation.run import run_distill
    from fewstep.errors import RunError

    # the fixture's teacher trained 4 steps: at 2 steps the checker rejects every one of its answers
    with pytest.raises(RunError, match="rejects all 32 teacher answers.*drop trajectory.verify"):
        run_distill(_verified_run(anagram_teacher, tmp_path / "distill"))


def test_bench_on_a_prompted_task_reports_accuracy_tokens_per_forward_and_aup(anagram_teacher, tmp_path):
    from fewstep.tradeoff.bench import run_bench, summary_rows
    from fewstep.tradeoff.config import BenchModel, BenchRunConfig

    cfg = BenchRunConfig(out_dir=str(tmp_path / "bench"), models=[BenchModel("teacher", str(anagram_teacher))],
                         samplers=["llada", "fast-dllm"], steps=[2, 8], num_samples=6, repeats=1)
    cfg.logger.wandb.mode = "disabled"
    rows = run_bench(cfg, progress=False)["rows"]
    assert len(rows) == 4 and all(r["batch_size"] == 6 for r in rows)
    for row in rows:
        quality = row["quality"]
        assert 0.0 <= quality["accuracy"] <= 1.0 and "entropy" in quality and quality["aup"] >= 0.0
        # response tokens only: the 10 positions less the prompt, per forward pass
        assert 0 < row["tokens_per_forward"] <= 10 and row["nfe"] <= row["steps"]
    llada = {r["steps"]: r for r in rows if r["sampler"] == "llada"}
    assert llada[2]["tokens_per_forward"] > llada[8]["tokens_per_forward"]
    table = summary_rows(rows)
    assert {"accuracy", "aup", "tpf", "entropy", "steps"} <= set(table[0])


def test_reference_answers_are_the_validation_responses(tmp_path):
    import json as _json

    from fewstep.evaluation.accuracy import reference_answers

    path = tmp_path / "qa.jsonl"
    records = [{"prompt": f"question {i}?", "response": f"answer {i * 7}"} for i in range(60)]
    path.write_text("".join(_json.dumps(r) + "\n" for r in records))
    data = build_data(DataConfig(source="jsonl", path=str(path), prompted=True, seq_len=24, vocab_size=300,
                                 val_fraction=0.3))
    answers = reference_answers(data, len(data.val))
    expected = {r["prompt"]: r["response"] for r in records}
    for i, answer in enumerate(answers):
        prompt = data.tokenizer.decode(data.val[i, : int(data.val_prompt_len[i])].tolist(), skip_special_tokens=True)
        assert " ".join(answer.split()) == " ".join(expected[prompt.strip()].split())
