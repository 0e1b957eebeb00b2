"""Prompted data (issue 16): response-only masks and loss, the anagram task and its checker, prompted
jsonl and its refusals, accuracy evaluation, and a tiny teacher trained on the task."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import tiny_overrides
from torch import nn

from fewstep.core.config import load_config
from fewstep.core.diffusion import forward_process, make_schedule, nelbo_per_position, sample_t
from fewstep.data.anagram import AnagramOracle, AnagramTask
from fewstep.data.config import AnagramConfig, DataConfig
from fewstep.data.sources import build_data
from fewstep.data.tokens import fingerprint, make_loader
from fewstep.errors import ConfigError, DataError
from fewstep.evaluation.accuracy import evaluate_accuracy, response_ids, task_accuracy
from fewstep.samplers.presets import sampler_from_spec
from fewstep.teacher.config import TeacherRunConfig
from fewstep.teacher.module import TeacherModule

SMALL_TASK = ["data.source=anagram", "data.seq_len=10", "data.anagram.min_letters=2", "data.anagram.max_letters=4",
              "data.anagram.alphabet=8", "data.num_train=256", "data.num_val=64", "data.val_fraction=0.2"]


def anagram_data(**overrides) -> object:
    cfg = DataConfig(source="anagram", seq_len=overrides.pop("seq_len", 12), num_train=overrides.pop("num_train", 300),
                     num_val=overrides.pop("num_val", 64), val_fraction=0.2,
                     anagram=AnagramConfig(**{"min_letters": 2, "max_letters": 5, "alphabet": 8, **overrides}))
    return build_data(cfg)


def _alphabetical(task: AnagramTask, row: torch.Tensor, prompt_len: int) -> str:
    return task.answer_letters(task.tokenizer.decode(row[:prompt_len].tolist()))


# ------------------------------------------------------------------------ response-only masks and loss
def test_forward_process_never_masks_the_prompt_and_keeps_the_unprompted_draws():
    schedule = make_schedule("loglinear")
    x0 = torch.randint(0, 20, (64, 12))
    prompt_len = torch.randint(1, 11, (64,))
    t = torch.ones(64)  # alpha(1) = eps: almost every token masked
    z = forward_process(x0, t, schedule, mask_id=99, generator=torch.Generator().manual_seed(0), prompt_len=prompt_len)
    positions = torch.arange(12)
    in_prompt = positions < prompt_len[:, None]
    assert torch.equal(z[in_prompt], x0[in_prompt])  # never masked
    assert (z[~in_prompt] == 99).float().mean() > 0.99
    # the same draws as without a prompt, on the response; no prompt = exactly the MDLM forward process
    t = torch.rand(64)
    plain = forward_process(x0, t, schedule, 99, generator=torch.Generator().manual_seed(1))
    prompted = forward_process(x0, t, schedule, 99, generator=torch.Generator().manual_seed(1), prompt_len=prompt_len)
    assert torch.equal(plain[~in_prompt], prompted[~in_prompt])
    zero = forward_process(x0, t, schedule, 99, generator=torch.Generator().manual_seed(1),
                           prompt_len=torch.zeros(64, dtype=torch.long))
    assert torch.equal(plain, zero)


class FixedLogits(nn.Module):
    """A denoiser that returns given logits, so a test can perturb them where it likes."""

    def __init__(self, logits: torch.Tensor, mask_id: int) -> None:
        super().__init__()
        self.logits = logits
        self.mask_id = mask_id
        self.weight = nn.Parameter(torch.zeros(()))

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.logits + self.weight


def test_the_loss_never_counts_the_prompt_and_averages_over_response_tokens():
    schedule = make_schedule("loglinear")
    batch, seq_len, vocab, mask_id = 8, 10, 12, 11
    x0 = torch.randint(0, mask_id, (batch, seq_len))
    prompt_len = torch.randint(2, 8, (batch,))
    z = torch.full_like(x0, mask_id)  # even a masked prompt position is not counted
    t = torch.full((batch,), 0.5)
    logits = torch.randn(batch, seq_len, vocab)
    in_prompt = torch.arange(seq_len) < prompt_len[:, None]
    perturbed = logits + 10 * torch.randn_like(logits) * in_prompt[..., None]
    first = nelbo_per_position(logits, x0, z, t, schedule, mask_id, prompt_len)
    second = nelbo_per_position(perturbed, x0, z, t, schedule, mask_id, prompt_len)
    assert torch.equal(first, second) and (first[in_prompt] == 0).all() and (first[~in_prompt] > 0).all()

    module = TeacherModule(FixedLogits(logits, mask_id), schedule, load_config(TeacherRunConfig, None).optim,
                           max_steps=10)
    loss = module.nelbo(x0, torch.Generator().manual_seed(3), prompt_len=prompt_len)
    module.denoiser.logits = perturbed
    assert torch.allclose(module.nelbo(x0, torch.Generator().manual_seed(3), prompt_len=prompt_len), loss)
    # the mean over response tokens: the same per-position sum divided by their number
    generator = torch.Generator().manual_seed(3)
    t = sample_t(batch, True, generator=generator)
    z = forward_process(x0, t, schedule, mask_id, generator=generator, prompt_len=prompt_len)
    expected = nelbo_per_position(perturbed, x0, z, t, schedule, mask_id, prompt_len).sum() / (~in_prompt).sum()
    assert torch.allclose(loss, expected)
    # unprompted: the plain mean over every position, as before
    generator = torch.Generator().manual_seed(4)
    plain = module.nelbo(x0, torch.Generator().manual_seed(4))
    t = sample_t(batch, True, generator=generator)
    z = forward_process(x0, t, schedule, mask_id, generator=generator)
    assert torch.allclose(plain, nelbo_per_position(perturbed, x0, z, t, schedule, mask_id).mean())


# ----------------------------------------------------------------------------------- the anagram task
@pytest.mark.parametrize("prompt, response, ok", [
    # alphabet a-h, the prompt lists the letters the answer leaves out
    ("hbf=", "acdeg", True),
    ("hbf=", "gedca", True),
    ("abcdefg=", "h", True),
    ("hbf=", "acde", False),  # g missing
    ("hbf=", "acdeh", False),  # h is one of the left-out letters
    ("hbf=", "acdegg", False),  # a letter twice
    ("hbf=", "acd eg", False),
    ("hbf=", "ACDEG", False),
    ("hbz=", "acdeg", False),  # not a prompt: z is outside a-h
    ("hbbf=", "acdeg", False),  # not a prompt: a letter repeats
    ("hbf", "acdeg", False),  # not a prompt: no '='
    ("abcdefgh=", "", False),  # nothing left to spell
])
def test_anagram_checker_on_hand_written_cases(prompt, response, ok):
    task = AnagramTask(AnagramConfig(alphabet=8, min_letters=2, max_letters=6))
    assert task.check(prompt, response) is ok and task.checker(prompt, response) is ok


@pytest.mark.parametrize("prompt, response, ok", [
    # show=letters: the prompt lists the answer's own letters
    ("dbca=", "abcd", True),
    ("dbca=", "dbca", True),
    ("dbca=", "abcc", False),  # a letter twice, one missing
    ("dbca=", "abc", False),
    ("dbca=", "abcde", False),
    ("dbca=", "abce", False),  # a letter not in the prompt
    ("dbca=", "", False),
    ("dbca", "abcd", False),
    ("aab=", "aba", False),
    ("=", "", False),
])
def test_anagram_checker_showing_the_letters(prompt, response, ok):
    assert AnagramTask(AnagramConfig(show="letters")).check(prompt, response) is ok


@pytest.mark.parametrize("show", ["missing", "letters"])
def test_anagram_data_is_deterministic_split_by_prompt_set_and_laid_out_as_prompt_response_eos(show):
    data = anagram_data(show=show)
    again = anagram_data(show=show)
    assert torch.equal(data.train, again.train) and data.fingerprint == again.fingerprint
    assert data.fingerprint != anagram_data(alphabet=9, show=show).fingerprint
    task, tokenizer = data.task, data.tokenizer
    sets = {}
    for name, rows, plen in (("train", data.train, data.train_prompt_len), ("val", data.val, data.val_prompt_len)):
        sets[name] = set()
        for row, p in zip(rows, plen.tolist()):
            prompt = tokenizer.decode(row[:p].tolist())
            answer = tokenizer.decode(response_ids(row, p, task.eos_id))
            assert task.check(prompt, answer), (prompt, answer)
            k = task.answer_length(p)
            assert len(answer) == k and (row[p + k:] == task.eos_id).all()  # k letters, then EOS to the end
            sets[name].add("".join(sorted(prompt[:-1])))
    assert sets["train"] and sets["val"] and not sets["train"] & sets["val"]  # no prompt set on both sides
    assert tokenizer("dbca=")["input_ids"] == task.encode("dbca=")
    k = [task.answer_length(p) for p in data.val_prompt_len.tolist()]
    expected = sum(math.lgamma(n + 1) for n in k) / int((12 - data.val_prompt_len).sum())
    assert data.stats["data_entropy_per_token"] == pytest.approx(expected)


def test_the_fingerprint_covers_prompt_lengths():
    rows = torch.zeros(4, 8, dtype=torch.long)
    assert fingerprint({"a": 1}, rows, torch.tensor([1, 2, 3, 4])) != fingerprint({"a": 1}, rows, torch.tensor([1, 2, 3, 5]))


def test_anagram_refusals():
    with pytest.raises(ConfigError, match="data.seq_len=9 cannot hold every example of data.anagram .*use "
                                          "data.seq_len=10 or more"):
        load_config(TeacherRunConfig, None, ["data.source=anagram", "data.seq_len=9", "data.anagram.max_letters=4",
                                             "data.anagram.show=letters"])
    with pytest.raises(ConfigError, match="use data.seq_len=14 or more"):  # 12 letters shown or answered, '=', EOS
        load_config(TeacherRunConfig, None, ["data.source=anagram", "data.seq_len=13"])
    with pytest.raises(ConfigError, match="data.anagram.show='all' is not one of missing, letters"):
        AnagramConfig(show="all")
    with pytest.raises(ConfigError, match="max_letters"):
        AnagramConfig(min_letters=3, max_letters=2)
    with pytest.raises(DataError, match="too few letter sets"):
        anagram_data(alphabet=2, min_letters=2, max_letters=2, num_val=64)


def test_loaders_yield_prompt_lengths_only_for_prompted_data():
    data = anagram_data()
    tokens, plen = next(iter(make_loader(data.train, 16, True, prompt_len=data.train_prompt_len)))
    assert tokens.shape == (16, 12) and plen.shape == (16,) and plen.dtype == torch.long
    plain = next(iter(make_loader(data.train, 16, True)))
    assert torch.is_tensor(plain) and plain.shape == (16, 12)


# ------------------------------------------------------------------------------ accuracy evaluation
def test_the_oracle_is_exact_at_one_token_per_step_and_parallel_decoding_costs_accuracy():
    data = anagram_data(num_val=48)
    oracle = AnagramOracle(data.task)
    many = task_accuracy(oracle, data, "llada", steps=64, temperature=1.0)
    assert many.accuracy == 1.0 and many.num_prompts == 48
    assert many.tokens_per_forward == pytest.approx(1.0)  # one response position per forward pass
    # temperature 0, all at once: the letters' marginals are equal, so are their argmaxes: never valid
    assert task_accuracy(oracle, data, "llada", steps=1, temperature=0.0).accuracy == 0.0
    few = task_accuracy(oracle, data, "llada", steps=2, temperature=1.0)
    assert few.accuracy < 0.6 and few.nfe == 2.0
    assert few.tokens_per_forward == pytest.approx(int((12 - data.val_prompt_len).sum()) / 48 / 2)
    assert few.answer_tokens_per_forward <= few.tokens_per_forward and few.tokens_per_s > 0


def test_accuracy_against_reference_answers_and_its_refusals():
    data = anagram_data(num_val=16)
    oracle = AnagramOracle(data.task)
    sampler = sampler_from_spec("llada", 64, temperature=0.0)
    prompts, plen = data.val, data.val_prompt_len
    # at temperature 0 the oracle answers in alphabetical order (the lowest id wins ties)
    answers = [_alphabetical(data.task, row, p) for row, p in zip(prompts, plen.tolist())]
    result = evaluate_accuracy(oracle, sampler, prompts, plen, 64, data.tokenizer, answers=answers)
    assert result.accuracy == 1.0
    wrong = evaluate_accuracy(oracle, sampler, prompts, plen, 64, data.tokenizer, answers=[a[::-1] for a in answers])
    assert wrong.accuracy == 0.0
    with pytest.raises(DataError, match="exactly one of check"):
        evaluate_accuracy(oracle, sampler, prompts, plen, 64, data.tokenizer)
    with pytest.raises(DataError, match="one answer per prompt"):
        evaluate_accuracy(oracle, sampler, prompts, plen, 64, data.tokenizer, answers=answers[:3])


# ------------------------------------------------------------------------------------- prompted jsonl
def write_jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def pairs(n: int = 30) -> list[dict]:
    return [{"prompt": f"question {i}?", "response": f"answer {i * 7}"} for i in range(n)]


def jsonl_cfg(path: str, **extra) -> DataConfig:
    return DataConfig(source="jsonl", path=path, seq_len=extra.pop("seq_len", 24), vocab_size=300, **extra)


def test_prompted_jsonl_rows_are_prompt_response_and_eos_fill(tmp_path):
    data = build_data(jsonl_cfg(write_jsonl(tmp_path / "qa.jsonl", pairs()), prompted=True))
    assert data.prompted and len(data.train) + len(data.val) == 30 and len(data.val) > 0
    eos = data.tokenizer.eos_token_id
    for row, p in zip(data.train, data.train_prompt_len.tolist()):
        prompt = data.tokenizer.decode(row[:p].tolist(), skip_special_tokens=True)
        response = data.tokenizer.decode(response_ids(row, p, eos))
        number = int(prompt.split()[1].rstrip("?"))
        assert row[0] == data.tokenizer.bos_token_id and response == f"answer {number * 7}"
        assert row[-1] == eos  # the tail is EOS
    train_prompts = {data.tokenizer.decode(r[:p].tolist()) for r, p in zip(data.train, data.train_prompt_len.tolist())}
    val_prompts = {data.tokenizer.decode(r[:p].tolist()) for r, p in zip(data.val, data.val_prompt_len.tolist())}
    assert not train_prompts & val_prompts
    unprompted = build_data(jsonl_cfg(write_jsonl(tmp_path / "t.jsonl", [{"text": r["prompt"]} for r in pairs()]),
                                      seq_len=4))
    assert not unprompted.prompted and unprompted.train_prompt_len is None


def test_a_jsonl_line_without_the_prompt_field_is_one_error_with_its_line(tmp_path):
    records = pairs()
    records[2] = {"question": "where is it?", "response": "here"}
    with pytest.raises(DataError, match=r"line 3 has no field 'prompt' \(its fields: question, response\); set "
                                        r"data.prompt_field"):
        build_data(jsonl_cfg(write_jsonl(tmp_path / "qa.jsonl", records), prompted=True))
    records[2] = {"prompt": "where?", "response": 7}
    with pytest.raises(DataError, match="line 3: field 'response' is a int, not a string"):
        build_data(jsonl_cfg(write_jsonl(tmp_path / "qa.jsonl", records), prompted=True))


def test_a_prompt_longer_than_seq_len_is_one_error_naming_its_line(tmp_path):
    records = pairs()
    records[4] = {"prompt": "a very long question " * 10, "response": "short"}
    path = write_jsonl(tmp_path / "qa.jsonl", records)
    with pytest.raises(DataError, match=r"qa.jsonl line 5: the prompt is \d+ tokens, and data.seq_len=24 leaves no "
                                        "room for a response"):
        build_data(jsonl_cfg(path, prompted=True))
    records[4] = {"prompt": "short?", "response": "a long answer " * 10}
    with pytest.raises(DataError, match=r"line 5: prompt \(\d+ tokens\) \+ response \(\d+\) \+ one EOS is \d+ tokens, "
                                        "more than data.seq_len=24; responses are never truncated"):
        build_data(jsonl_cfg(write_jsonl(tmp_path / "qa.jsonl", records), prompted=True))


def chats(n: int = 30) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i * 3}"}]}
            for i in range(n)]


def test_a_chat_template_missing_from_the_tokenizer_is_one_error(tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", chats())
    with pytest.raises(DataError, match="renders chat messages with the tokenizer's chat template, and the tokenizer "
                                        "fewstep trains when none is given"):
        build_data(jsonl_cfg(path, messages_field="messages"))
    from fewstep.data.corpus import train_tokenizer

    plain = tmp_path / "plain"
    plain.mkdir()
    train_tokenizer(["q1 a3 user assistant"] * 4, 300).backend_tokenizer.save(str(plain / "tokenizer.json"))
    with pytest.raises(DataError, match="the given tokenizer has none"):
        build_data(jsonl_cfg(path, messages_field="messages", tokenizer=str(plain)))
    with pytest.raises(ConfigError, match="use data.source=jsonl"):
        DataConfig(source="text", path=path, messages_field="messages")


def test_chat_messages_are_rendered_by_the_tokenizers_template(tmp_path):
    from fewstep.data.corpus import train_tokenizer

    directory = tmp_path / "tok"
    directory.mkdir()
    train_tokenizer(["<user> q1 <bot> a3 [EOS]"] * 4, 300).backend_tokenizer.save(str(directory / "tokenizer.json"))
    template = ("{% for m in messages %}{% if m['role'] == 'user' %}<user> {{ m['content'] }} {% else %}<bot> "
                "{{ m['content'] }}[EOS]{% endif %}{% endfor %}{% if add_generation_prompt %}<bot> {% endif %}")
    (directory / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    data = build_data(jsonl_cfg(write_jsonl(tmp_path / "chat.jsonl", chats()), messages_field="messages",
                                tokenizer=str(directory)))
    row, p = data.train[0], int(data.train_prompt_len[0])
    prompt = data.tokenizer.decode(row[:p].tolist())
    assert prompt.startswith("<user> q") and prompt.endswith("<bot> ")
    response = data.tokenizer.decode(response_ids(row, p, data.tokenizer.eos_token_id))
    assert response.startswith("a") and int(response[1:]) % 3 == 0  # the answer, its [EOS] ends the response


# --------------------------------------------------------------------------------- a tiny teacher on it
def test_a_tiny_teacher_trains_on_the_anagram_task_end_to_end(tmp_path):
    from fewstep.teacher.run import train_teacher

    out = tmp_path / "run"
    cfg = load_config(TeacherRunConfig, None, tiny_overrides(out, *SMALL_TASK, "trainer.max_steps=4",
                                                             "trainer.val_every=2"))
    result = train_teacher(cfg)
    assert result.steps == 4 and math.isfinite(result.val_nelbo)
    described = json.loads((out / "data.json").read_text())
    assert described["prompted"] and described["source"] == "anagram"
    assert (out / "model" / "model.safetensors").is_file()


def test_a_tiny_teacher_trains_on_prompted_jsonl(tmp_path):
    from fewstep.teacher.run import train_teacher

    path = write_jsonl(tmp_path / "qa.jsonl", pairs(60))
    cfg = load_config(TeacherRunConfig, None, tiny_overrides(
        tmp_path / "run", "data.source=jsonl", f"data.path={path}", "data.prompted=true", "data.seq_len=24",
        "data.vocab_size=300", "data.val_fraction=0.3", "trainer.batch_size=8", "trainer.max_steps=2",
        "trainer.val_every=2"))
    result = train_teacher(cfg)
    assert result.steps == 2 and math.isfinite(result.val_nelbo) and result.data["prompted"]


def test_the_teachers_batches_carry_prompt_lengths(tmp_path):
    import lightning as L

    from fewstep.teacher.run import train_teacher

    seen = []

    class Spy(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(batch)

        def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
            seen.append(batch)

    cfg = load_config(TeacherRunConfig, None, tiny_overrides(tmp_path / "run", *SMALL_TASK, "trainer.max_steps=2",
                                                             "trainer.val_every=2"))
    train_teacher(cfg, callbacks=[Spy()])
    assert len(seen) >= 3 and all(isinstance(b, (list, tuple)) and len(b) == 2 for b in seen)
    for tokens, prompt_len in seen:  # each row's own prompt length, from the task's layout
        equals = tokens == AnagramTask(AnagramConfig(min_letters=2, max_letters=4, alphabet=8)).vocab["="]
        assert torch.equal(prompt_len, equals.to(torch.int8).argmax(dim=1) + 1)
