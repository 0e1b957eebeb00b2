"""The denoiser wrapper, vocabulary checks, and model directories (safetensors round trips)."""

from __future__ import annotations

import json

import pytest
import torch

from fewstep.data.sources import markov_tokenizer
from fewstep.errors import ModelError
from fewstep.model.config import ModelConfig
from fewstep.model.denoiser import build_denoiser, check_vocab
from fewstep.model.model_dir import load_model_dir, save_model_dir

SMALL = ModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)


@pytest.fixture(scope="module")
def tokenizer():
    return markov_tokenizer(10)


def test_forward_shape_and_mask_logit(tokenizer):
    model = build_denoiser(SMALL, tokenizer, tokenizer.mask_token_id, seq_len=12).eval()
    z = torch.randint(0, 11, (3, 12))
    logits = model(z)
    assert logits.shape == (3, 12, 11) and logits.dtype == torch.float32 and torch.isfinite(logits).all()
    # a view of the backbone's logits (its vocabulary is padded to 16), not a copy; the mask token is excluded
    # where the logits are used (the sampling step, the losses)
    assert logits._base is not None and logits.stride(-1) == 1


def test_time_conditioning_changes_nothing_at_init_and_needs_t(tokenizer):
    cfg = ModelConfig(**{**SMALL.__dict__, "time_conditioning": True})
    torch.manual_seed(0)
    model = build_denoiser(cfg, tokenizer, 10, seq_len=8).eval()
    z = torch.randint(0, 11, (2, 8))
    a = model(z, torch.tensor([0.1, 0.9]))
    b = model(z, torch.tensor([0.5, 0.5]))
    assert torch.allclose(a, b)  # zero-initialised last layer: a no-op until trained
    with pytest.raises(ValueError, match="pass t"):
        model(z)


def test_vocab_checks_say_what_to_fix(tokenizer):
    with pytest.raises(ModelError, match="no mask token"):
        check_vocab(64, tokenizer, None)
    with pytest.raises(ModelError, match="smaller than the tokenizer"):
        check_vocab(5, tokenizer, 10)
    with pytest.raises(ModelError, match="mask_token_id=3"):
        check_vocab(16, tokenizer, 10, model_mask_id=3)


def test_model_dir_round_trip_gives_identical_logits(tmp_path, tokenizer):
    torch.manual_seed(1)
    model = build_denoiser(ModelConfig(**{**SMALL.__dict__, "time_conditioning": True}), tokenizer, 10, 12).eval()
    with torch.no_grad():
        model.time_embedding.mlp[2].weight.normal_()
    save_model_dir(model, tokenizer, tmp_path / "m", {"seq_len": 12, "data_fingerprint": "abc"})
    loaded = load_model_dir(tmp_path / "m")
    z = torch.randint(0, 11, (2, 12))
    t = torch.tensor([0.2, 0.7])
    assert torch.equal(model(z, t), loaded.denoiser(z, t))
    assert loaded.meta["seq_len"] == 12 and loaded.tokenizer.mask_token_id == 10
    from safetensors import safe_open

    with safe_open(str(tmp_path / "m" / "model.safetensors"), "pt") as handle:
        header = handle.metadata()
    assert header["format"] == "pt" and header["mask_id"] == "10" and header["data_fingerprint"] == "abc"
    # a Hugging Face user can load the backbone without fewstep's wrapper
    from transformers import AutoModelForMaskedLM

    assert AutoModelForMaskedLM.from_pretrained(tmp_path / "m").config.vocab_size >= 11


def test_corrupt_or_mismatched_weights_are_refused(tmp_path, tokenizer):
    model = build_denoiser(SMALL, tokenizer, 10, 12)
    save_model_dir(model, tokenizer, tmp_path / "m", {"seq_len": 12})
    weights = tmp_path / "m" / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])
    with pytest.raises(ModelError, match="corrupt"):
        load_model_dir(tmp_path / "m")
    weights.write_bytes(good)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["hidden_size"] = 64
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="not match config.json|corrupt"):
        load_model_dir(tmp_path / "m")
    weights.unlink()
    with pytest.raises(ModelError, match="no model.safetensors"):
        load_model_dir(tmp_path / "m")
    with pytest.raises(ModelError, match="does not exist"):
        load_model_dir(tmp_path / "nowhere")
    with pytest.raises(ModelError, match="not a fewstep model directory"):
        load_model_dir(tmp_path)


def test_saving_over_a_model_dir_is_atomic(tmp_path, tokenizer):
    model = build_denoiser(SMALL, tokenizer, 10, 12)
    save_model_dir(model, tokenizer, tmp_path / "m", {"seq_len": 12, "round": 1})

    class Broken(torch.nn.Module):
        mask_id, vocab_size, time_conditioning, time_embedding = 10, 11, False, None

        @property
        def backbone(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_model_dir(Broken(), tokenizer, tmp_path / "m", {"seq_len": 12, "round": 2})
    assert load_model_dir(tmp_path / "m").meta["round"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
