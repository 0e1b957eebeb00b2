"""Embedded conditional tasks with exact checkers: prompts, answers, and the truth about them.

`anagram`: the answer is a set of k distinct letters of the alphabet (the first `alphabet` of a-z)
in any order, and the prompt says which: by default (`show=missing`) it lists, then `=`, the letters
the answer leaves out (alphabet a-h, prompt `"hbf="`, answers `"acdeg"`, `"gedca"`, ...); with
`show=letters` it lists the answer's own letters (`"dbca="` -> `"acbd"`). The k! answers share one
constraint: every letter exactly once. A denoiser that reveals one letter per forward pass conditions
each next letter on the ones already placed and can always stay valid; revealing several at once
draws them independently from the same marginal (uniform over the letters left), so they collide
(`"aacd"`), and temperature 0 is worse: identical marginals have identical argmaxes. That is the cost
of parallel decoding, exactly (the data's entropy is log k! per prompt), not a weakness of one model;
a student that learns to commit to one ordering need not pay it.

Why `missing` is the default: there, the right letter at any masked answer position is one seen
nowhere in the context (prompt or answer so far), a rule a small model reads off the bag of tokens
and learns under the NELBO in a few thousand steps. With `letters`, a letter seen once (in the
prompt) is right and one seen twice (prompt and answer) is wrong: the NELBO's heavily weighted
lightly-masked terms reward avoiding seen letters while its heavily masked ones reward copying them,
and a 0.7M-parameter teacher stalls near the unconditional loss for thousands of steps (measured).
"""

from __future__ import annotations

import hashlib
import math
import random
import string
from dataclasses import asdict, dataclass

import torch
from torch import nn

from fewstep.data.config import AnagramConfig

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
    """Prompts of distinct letters and `=`; an answer is correct when it uses each letter it must (the
    alphabet's letters missing from the prompt, or the prompt's own) exactly once."""

    name = "anagram"

    def __init__(self, cfg: AnagramConfig) -> None:
        self.cfg = cfg
        self.letters = string.ascii_lowercase[: cfg.alphabet]
        self.tokenizer = char_tokenizer(string.ascii_lowercase + EQUALS)
        self.vocab = self.tokenizer.get_vocab()
        self.eos_id = int(self.tokenizer.eos_token_id)
        self.mask_id = int(self.tokenizer.mask_token_id)

    # ------------------------------------------------------------------------------------ the truth
    def answer_letters(self, prompt_text: str) -> str | None:
        """The letters a correct answer uses, in alphabetical order; None for a text that is not a prompt."""
        if not prompt_text.endswith(EQUALS):
            return None
        shown = prompt_text[: -len(EQUALS)]
        if len(set(shown)) != len(shown) or any(c not in self.letters for c in shown):
            return None
        wanted = [c for c in self.letters if c not in shown] if self.cfg.show == "missing" else sorted(shown)
        return "".join(wanted) or None

    def check(self, prompt_text: str, response_text: str) -> bool:
        """Exact: the response uses each letter the prompt asks for exactly once, in any order, and nothing else."""
        wanted = self.answer_letters(prompt_text)
        return wanted is not None and "".join(sorted(response_text)) == wanted

    checker = check  # the name the issue gives it

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
            if self.cfg.show == "missing":
                shown = [c for c in self.letters if c not in letters]
                rng.shuffle(shown)
            else:
                shown = rng.sample(letters, k)
            out.append(Example(prompt="".join(shown) + EQUALS, response="".join(rng.sample(letters, k))))
        return out

    def answer_length(self, prompt_len: int) -> int:
        """Letters in the answer to a prompt of `prompt_len` tokens (its letters and '=')."""
        return self.cfg.alphabet - (prompt_len - 1) if self.cfg.show == "missing" else prompt_len - 1

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
    """The exact denoiser of `anagram`: at each masked answer position, uniform over the letters the prompt
    asks for that are not yet placed in the answer (EOS past the answer's end), so a sampler's errors are
    its own."""

    time_conditioning = False

    def __init__(self, task: AnagramTask) -> None:
        super().__init__()
        self.mask_id = task.mask_id
        self.eos_id = task.eos_id
        self.equals_id = task.vocab[EQUALS]
        self.vocab_size = len(task.vocab)
        self.missing = task.cfg.show == "missing"
        alphabet = torch.zeros(self.vocab_size, dtype=torch.float64)
        alphabet[[task.vocab[c] for c in task.letters]] = 1.0
        self.register_buffer("alphabet", alphabet, persistent=False)

    def forward(self, z: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        batch, seq_len = z.shape
        positions = torch.arange(seq_len, device=z.device)
        shown = (z == self.equals_id).to(torch.int8).argmax(dim=1, keepdim=True)  # the '=' sits after them
        prompt_end = shown + 1
        one_hot = nn.functional.one_hot(z, self.vocab_size).double() * self.alphabet
        in_prompt = (positions < shown).double().unsqueeze(-1)
        in_answer = ((positions >= prompt_end) & (z != self.mask_id)).double().unsqueeze(-1)
        prompt_counts = (one_hot * in_prompt).sum(dim=1)
        wanted = self.alphabet - prompt_counts if self.missing else prompt_counts
        num_letters = wanted.sum(dim=1, keepdim=True).to(torch.long)
        left = (wanted - (one_hot * in_answer).sum(dim=1)).clamp_min(0)
        left = torch.where(left.sum(dim=1, keepdim=True) > 0, left, wanted)  # an inconsistent answer so far
        letter_probs = left / left.sum(dim=1, keepdim=True).clamp_min(1)
        eos_probs = nn.functional.one_hot(torch.full_like(z[:, 0], self.eos_id), self.vocab_size).double()
        letter_region = ((positions >= prompt_end) & (positions < prompt_end + num_letters)).unsqueeze(-1)
        probs = torch.where(letter_region, letter_probs.unsqueeze(1), eos_probs.unsqueeze(1))
        probs = torch.where((positions < prompt_end).unsqueeze(-1), nn.functional.one_hot(z, self.vocab_size).double(),
                            probs)
        return probs.clamp_min(1e-30).log().float()
