"""`build_data(cfg)`: the one entry point from a `DataConfig` to `TokenData`, whatever the source.

`markov` and the prompted task `anagram` (`anagram.py`) are generated here; corpora (`stdlib`, `text`,
`jsonl`, `hf`) are read and tokenised in `corpus.py`, prompted jsonl in `prompted.py`, with a given
tokenizer (a Hugging Face teacher's own) when there is one.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from fewstep.data.anagram import AnagramTask
from fewstep.data.config import DataConfig
from fewstep.data.corpus import build_corpus_data
from fewstep.data.markov import MarkovChain
from fewstep.data.prompted import build_prompted_data
from fewstep.data.tokens import MASK_TOKEN, TokenData, fingerprint
from fewstep.errors import DataError


def markov_tokenizer(num_states: int):
    """A word-level tokenizer over state names `s0 … s{S-1}` plus `[MASK]` (id S)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"s{i}": i for i in range(num_states)}
    vocab[MASK_TOKEN] = num_states
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=MASK_TOKEN))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, mask_token=MASK_TOKEN)


def _build_markov(cfg: DataConfig) -> TokenData:

    chain = MarkovChain.from_config(cfg.markov)
    train = chain.sample(cfg.num_train, cfg.seq_len, seed=cfg.seed)
    val = chain.sample(cfg.num_val, cfg.seq_len, seed=cfg.seed + 1_000_003)
    tokenizer = markov_tokenizer(cfg.markov.num_states)
    stats = {
        "entropy_rate": chain.entropy_rate(),
        "data_entropy_per_token": chain.expected_nll(cfg.seq_len) / cfg.seq_len,
    }
    description = {"source": "markov", "markov": asdict(cfg.markov), "seq_len": cfg.seq_len,
                   "num_train": cfg.num_train, "num_val": cfg.num_val, "seed": cfg.seed}
    return TokenData(
        train=train,
        val=val,
        tokenizer=tokenizer,
        mask_id=cfg.markov.num_states,
        fingerprint=fingerprint(description, train, val),
        stats=stats,
        task=chain,
    )


def _build_anagram(cfg: DataConfig) -> TokenData:
    task = AnagramTask(cfg.anagram)
    split = {}
    for name, count, seed, val in (("train", cfg.num_train, cfg.seed, False),
                                   ("val", cfg.num_val, cfg.seed + 1_000_003, True)):
        examples = task.examples(count, seed, val=val, val_fraction=cfg.val_fraction)
        if len(examples) < count:
            raise DataError(f"data.source=anagram found {len(examples)} of data.num_{name}={count} examples on the "
                            f"{name} side of the split: too few letter sets (alphabet {cfg.anagram.alphabet}, "
                            f"{cfg.anagram.min_letters}-{cfg.anagram.max_letters} letters) for data.val_fraction="
                            f"{cfg.val_fraction}; raise data.anagram.alphabet or change data.val_fraction")
        split[name] = task.rows(examples, cfg.seq_len)
    (train, train_plen), (val, val_plen) = split["train"], split["val"]
    response_tokens = (cfg.seq_len - val_plen).sum()
    entropy = sum(task.entropy(task.answer_length(int(p))) for p in val_plen)
    stats = {
        "source": "anagram",
        # exact: the NELBO's optimum per response token (log k! nats per prompt over its response positions)
        "data_entropy_per_token": entropy / int(response_tokens),
    }
    description = {"source": "anagram", **task.describe(), "seq_len": cfg.seq_len, "num_train": cfg.num_train,
                   "num_val": cfg.num_val, "seed": cfg.seed, "val_fraction": cfg.val_fraction}
    return TokenData(train=train, val=val, tokenizer=task.tokenizer, mask_id=task.mask_id,
                     fingerprint=fingerprint(description, train, val, train_plen, val_plen), stats=stats, task=task,
                     train_prompt_len=train_plen, val_prompt_len=val_plen)


def build_data(cfg: DataConfig, out_dir: str | Path | None = None, tokenizer: Any = None) -> TokenData:
    """Build the token data for `cfg`; the tokenizer is saved as `out_dir/tokenizer.json`.

    `tokenizer` (a transformers tokenizer with a mask token, e.g. a Hugging Face teacher's) tokenises
    a corpus in place of `data.tokenizer` or a trained one. A slow tokenizer has no tokenizer.json, so
    it is saved with `save_pretrained` to `out_dir/tokenizer/` instead.
    """
    if cfg.source in ("markov", "anagram"):
        if tokenizer is not None:
            raise DataError(f"data.source={cfg.source} has its own vocabulary, so it cannot be tokenised with "
                            "the teacher's tokenizer; distil a Hugging Face teacher on a corpus (data.source=text, "
                            "jsonl, hf or stdlib)")
        data = _build_markov(cfg) if cfg.source == "markov" else _build_anagram(cfg)
    elif cfg.is_prompted:  # jsonl prompt/response pairs or chat messages

        data = build_prompted_data(cfg, tokenizer=tokenizer)
    else:

        data = build_corpus_data(cfg, tokenizer=tokenizer)
    if len(data.train) == 0 or len(data.val) == 0:
        raise DataError(
            f"data.source={cfg.source} gave {len(data.train)} training and {len(data.val)} validation "
            f"sequences of length {cfg.seq_len}; provide more text or lower data.seq_len"
        )
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        backend = getattr(data.tokenizer, "backend_tokenizer", None)
        if backend is not None:
            backend.save(str(out / "tokenizer.json"))
        else:
            data.tokenizer.save_pretrained(str(out / "tokenizer"))
    return data
