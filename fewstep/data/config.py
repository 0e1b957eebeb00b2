"""The `data` section of a run config: which source, its sequence length and vocabulary, the embedded
tasks' settings (`data.markov`, `data.anagram`); `data_config` rebuilds it from a saved model's metadata."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fewstep.core.config import explain_error
from fewstep.errors import ConfigError


@dataclass
class MarkovConfig:
    """The embedded `markov` task: a fixed sparse random Markov chain."""

    num_states: int = 32
    branching: int = 4  # successors per state; every other transition has probability 0
    concentration: float = 1.0  # Dirichlet concentration of each row's non-zero weights
    seed: int = 0  # fixes the chain itself (not the samples drawn from it)

    def __post_init__(self) -> None:
        if self.num_states < 2:
            raise ConfigError("data.markov.num_states must be at least 2")
        if not 1 <= self.branching <= self.num_states:
            raise ConfigError(f"data.markov.branching must be in [1, num_states={self.num_states}]")


ANAGRAM_LETTERS = 26  # the alphabet the `anagram` task draws its letters from: a-z


@dataclass
class AnagramConfig:
    """The embedded `anagram` task: the answer is a set of distinct letters in any order.

    `show=missing` (the default): the prompt lists the alphabet's letters the answer leaves out;
    `show=letters`: the prompt lists the answer's own letters (under the NELBO this one stalls for
    thousands of steps: see fewstep/data/anagram.py).
    """

    min_letters: int = 4  # letters per answer, drawn uniformly from [min_letters, max_letters]
    max_letters: int = 8
    alphabet: int = 12  # the first `alphabet` letters of a-z
    show: str = "missing"  # missing | letters

    def __post_init__(self) -> None:
        if not 2 <= self.alphabet <= ANAGRAM_LETTERS:
            raise ConfigError(f"data.anagram.alphabet={self.alphabet} must be in [2, {ANAGRAM_LETTERS}] (letters a-z)")
        if not 2 <= self.min_letters <= self.max_letters <= self.alphabet:
            raise ConfigError(f"data.anagram needs 2 <= min_letters ({self.min_letters}) <= max_letters "
                              f"({self.max_letters}) <= alphabet ({self.alphabet})")
        if self.show not in ("missing", "letters"):
            raise ConfigError(f"data.anagram.show={self.show!r} is not one of missing, letters")

    def min_seq_len(self) -> int:
        """Tokens the longest example needs: prompt letters, '=', the answer and one EOS."""
        return self.alphabet + 2 if self.show == "missing" else 2 * self.max_letters + 2


MAX_SEQ_LEN = 65_536  # tokens per sequence; far above any model fewstep distils, far below an allocator failure


@dataclass
class DataConfig:
    """Where tokens come from, how long a sequence is, and how the data is split."""

    source: str = "markov"  # markov | anagram | stdlib | text | jsonl | hf
    path: str | None = None  # text / jsonl file, or a Hugging Face dataset name for `hf`
    text_field: str = "text"  # jsonl / hf field that holds the document
    # jsonl prompt/response data: one example per line, one row of seq_len each (prompt, response, EOS fill);
    # the loss counts the response only. `prompted` reads prompt_field/response_field; messages_field (chat
    # messages rendered by the tokenizer's chat template, the last one the assistant's answer) implies it.
    prompted: bool = False
    prompt_field: str = "prompt"
    response_field: str = "response"
    messages_field: str | None = None
    hf_config: str | None = None  # Hugging Face dataset config name
    hf_split: str = "train"
    seq_len: int = 64
    tokenizer: str | None = None  # tokenizer.json or a directory with one; trained when absent
    vocab_size: int = 2048  # BPE vocabulary size when a tokenizer is trained
    max_bytes: int = 4_000_000  # cap on corpus bytes read (stdlib / text / jsonl / hf); 0 = no cap
    num_train: int = 20_000  # markov / anagram: training sequences
    num_val: int = 512  # markov / anagram: validation sequences
    val_fraction: float = 0.05  # corpora: fraction of documents held out (by a hash of their text)
    seed: int = 0  # markov / anagram: seed of the sampled sequences
    markov: MarkovConfig = field(default_factory=MarkovConfig)
    anagram: AnagramConfig = field(default_factory=AnagramConfig)

    @property
    def is_prompted(self) -> bool:
        """Whether examples are prompt/response pairs (the loss on the response only)."""
        return self.source == "anagram" or (self.source == "jsonl" and (self.prompted or bool(self.messages_field)))

    def __post_init__(self) -> None:
        sources = ("markov", "anagram", "stdlib", "text", "jsonl", "hf")
        if self.source not in sources:
            raise ConfigError(f"data.source={self.source!r} is not one of {', '.join(sources)}")
        if not 2 <= self.seq_len <= MAX_SEQ_LEN:
            raise ConfigError(f"data.seq_len={self.seq_len} must be in [2, {MAX_SEQ_LEN}] (tokens per sequence; "
                              "real diffusion LMs use 1024-8192)")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError("data.val_fraction must be in (0, 1)")
        if self.source in ("text", "jsonl", "hf") and not self.path:
            raise ConfigError(
                f"data.source={self.source} needs data.path (a file, or a dataset name for hf); "
                f"pass it as data.path=..."
            )
        if (self.prompted or self.messages_field) and self.source != "jsonl":
            raise ConfigError(f"data.prompted / data.messages_field read prompt/response pairs from a jsonl file, "
                              f"not data.source={self.source}; use data.source=jsonl (data.source=anagram is "
                              "prompted by itself)")
        if self.source == "anagram" and self.seq_len < self.anagram.min_seq_len():
            raise ConfigError(f"data.seq_len={self.seq_len} cannot hold every example of data.anagram (show="
                              f"{self.anagram.show}: prompt letters and '=', then the answer and at least one EOS); "
                              f"use data.seq_len={self.anagram.min_seq_len()} or more, or a smaller alphabet / "
                              "max_letters")


def data_config(saved: dict[str, Any]) -> DataConfig:
    """A `DataConfig` from its saved form (a model's `fewstep.json` "data", a run's config): nested sections
    (markov, anagram) rebuilt as their dataclasses, keys it does not know (a later version's) refused."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(DataConfig), saved)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        reason = explain_error(error, OmegaConf.structured(DataConfig))
        raise ConfigError(f"the saved data config is not one this fewstep reads: {reason}") from error
    except ValueError as error:  # __post_init__
        raise ConfigError(str(error)) from error
