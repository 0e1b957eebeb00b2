"""Embedded conditional tasks with exact checkers: prompts, answers, and the truth about them.

`anagram`: the prompt is a set of distinct letters followed by `=` (`"dbca="`), and any ordering of
those letters is a correct answer (`"acbd"`, `"dcab"`, ...). The k! answers share one constraint:
every letter exactly once. A denoiser that reveals one letter per forward pass conditions each next
letter on the ones already placed and can always stay valid; revealing several at once draws them
independently from the same marginal (uniform over the letters left), so they collide (`"aacd"`),
and temperature 0 is worse: identical marginals have identical argmaxes. That is the cost of
parallel decoding, exactly (the data's entropy is log k! per prompt), not a weakness of one model;
a student that learns to commit to one ordering need not pay it.
"""

from __future__ import annotations

import hashlib
import math
import random
import string
from dataclasses import asdict, dataclass

import torch
from torch import nn

from fewstep.distill.config import AnagramConfig

__all__ = ["AnagramOracle", "AnagramTask", "EQUALS", "char_tokenizer", "CHAR_SPECIALS"]

CHAR_SPECIALS = ("[PAD]", "[BOS]", "[EOS]", "[MASK]")  # ids 0-3, as a trained corpus tokenizer has them
EQUALS = "="  # ends every prompt


def char_tokenizer(symbols: str):
    """A character-level tokenizer: the specials (ids 0-3), then one token per symbol; decodes without spaces."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(CHAR_SPECIALS)}
    for symbol in symbols:
        vocab.setdefault(symbol, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[PAD]"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", bos_token="[BOS]", eos_token="[EOS]",
                                   mask_token="[MASK]", clean_up_tokenization_spaces=False)


@dataclass(frozen=True)
class Example:
    prompt: str  # "dbca="
    response: str  # "acbd"


class AnagramTask:
    """Prompts of distinct letters and `=`; an answer is correct when it uses each of them exactly once."""

    name = "anagram"

    def __init__(self, cfg: AnagramConfig) -> None:
        self.cfg = cfg
        self.letters = string.ascii_lowercase[: cfg.alphabet]
        self.tokenizer = char_tokenizer(string.ascii_lowercase + EQUALS)
        self.vocab = self.tokenizer.get_vocab()
        self.eos_id = int(self.tokenizer.eos_token_id)
        self.mask_id = int(self.tokenizer.mask_token_id)

    # ------------------------------------------------------------------------------------ the truth
    @staticmethod
    def check(prompt_text: str, response_text: str) -> bool:
        """Exact: the prompt is distinct letters then `=`, the response those letters, each once, in any order."""
        if not prompt_text.endswith(EQUALS):
            return False
        letters = prompt_text[: -len(EQUALS)]
        if not letters or len(set(letters)) != len(letters) or not letters.isalpha():
            return False
        return len(response_text) == len(letters) and sorted(response_text) == sorted(letters)

    checker = check  # the name the accuracy evaluation looks for on any task

    @staticmethod
    def entropy(num_letters: int) -> float:
        """Nats of the answer given the prompt: uniform over the k! orderings."""
        return math.lgamma(num_letters + 1)

    # ------------------------------------------------------------------------------------ the data
    def is_val_set(self, letters: str, val_fraction: float) -> bool:
        """Train or validation by a hash of the prompt's letter *set*: no prompt (in any order) is in both."""
        key = "".join(sorted(letters)).encode()
        return int.from_bytes(hashlib.sha1(key).digest()[:8], "big") / 2**64 < val_fraction

    def examples(self, count: int, seed: int, val: bool, val_fraction: float) -> list[Example]:
        """`count` examples drawn deterministically from `seed`, their letter sets all on one side of the split."""
        rng = random.Random(seed)
        out: list[Example] = []
        for _ in range(count * 1000):  # rejection by split: the validation side holds ~val_fraction of the sets
            if len(out) == count:
                break
            k = rng.randint(self.cfg.min_letters, self.cfg.max_letters)
            letters = "".join(rng.sample(self.letters, k))
            if self.is_val_set(letters, val_fraction) != val:
                continue
            out.append(Example(prompt=letters + EQUALS, response="".join(rng.sample(letters, k))))
        return out

    def encode(self, text: str) -> list[int]:
        return [self.vocab[c] for c in text]

    def rows(self, examples: list[Example], seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Token rows [N, seq_len] (prompt, response, EOS fill) and prompt lengths [N]."""
        rows = torch.full((len(examples), seq_len), self.eos_id, dtype=torch.long)
        prompt_len = torch.empty(len(examples), dtype=torch.long)
        for i, example in enumerate(examples):
            ids = self.encode(example.prompt + example.response)
            rows[i, : len(ids)] = torch.tensor(ids)
            prompt_len[i] = len(example.prompt)
        return rows, prompt_len

    def describe(self) -> dict:
        return {"task": self.name, **asdict(self.cfg)}


class AnagramOracle(nn.Module):
    """The exact denoiser of `anagram`: at each masked answer position, uniform over the prompt's letters
    not yet placed in the answer (EOS past the answer's end), so a sampler's errors are its own."""

    time_conditioning = False

    def __init__(self, task: AnagramTask) -> None:
        super().__init__()
        self.mask_id = task.mask_id
        self.eos_id = task.eos_id
        self.equals_id = task.vocab[EQUALS]
        self.letter_ids = torch.tensor([task.vocab[c] for c in string.ascii_lowercase])
        self.vocab_size = len(task.vocab)

    def forward(self, z: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        batch, seq_len = z.shape
        positions = torch.arange(seq_len, device=z.device)
        num_letters = (z == self.equals_id).to(torch.int8).argmax(dim=1, keepdim=True)  # the '=' sits after them
        prompt_end = num_letters + 1
        is_letter = torch.zeros(self.vocab_size, dtype=torch.bool, device=z.device)
        is_letter[self.letter_ids.to(z.device)] = True
        one_hot = nn.functional.one_hot(z, self.vocab_size).double() * is_letter.double()
        in_prompt = (positions < num_letters).double().unsqueeze(-1)
        in_answer = ((positions >= prompt_end) & (z != self.mask_id)).double().unsqueeze(-1)
        prompt_counts = (one_hot * in_prompt).sum(dim=1)
        left = (prompt_counts - (one_hot * in_answer).sum(dim=1)).clamp_min(0)
        left = torch.where(left.sum(dim=1, keepdim=True) > 0, left, prompt_counts)  # inconsistent answer so far
        letter_probs = left / left.sum(dim=1, keepdim=True).clamp_min(1)
        eos_probs = nn.functional.one_hot(torch.full_like(z[:, 0], self.eos_id), self.vocab_size).double()
        letter_region = ((positions >= prompt_end) & (positions < prompt_end + num_letters)).unsqueeze(-1)
        probs = torch.where(letter_region, letter_probs.unsqueeze(1), eos_probs.unsqueeze(1))
        probs = torch.where((positions < prompt_end).unsqueeze(-1), nn.functional.one_hot(z, self.vocab_size).double(),
                            probs)
        return probs.clamp_min(1e-30).log().float()
