"""Real-teacher adapters on tiny local stand-ins of MDLM, LLaDA and Dream (remote code, no download).

Each stand-in is a folder with config.json whose `auto_map` names a small modeling file written
here, with the real family's forward signature and output convention, and a tiny tokenizer.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import lightning as L
import pytest
import torch

from fewstep.core.config import load_config
from fewstep.data.sources import build_data
from fewstep.distillation.config import DistillRunConfig
from fewstep.distillation.run import run_distill
from fewstep.errors import DataError, ModelError
from fewstep.model.config import LoraConfig, TeacherSourceConfig
from fewstep.model.families import FAMILIES, detect_family
from fewstep.model.hub import load_hf_teacher
from fewstep.model.lora import apply_lora, merged_copy
from fewstep.model.model_dir import load_model_dir, save_model_dir

WORDS = ("the cat dog sat ran on a mat log red blue big small fox jumps over lazy river tree stone "
         "light dark quick slow bird sings song morning night").split()

PRELUDE = '''
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput


class {name}Config(PretrainedConfig):
    model_type = "{model_type}"

    def __init__(self, vocab_size=64, hidden_size=16, num_layers=1, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        super().__init__(**kwargs)


def attend(q, k, v):
    return F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)).squeeze(1)
'''

# MDLM: forward(input_ids, timesteps) -> MaskedLMOutput; DiT block names attn_qkv, attn_out, mlp.0, mlp.2
MDLM_CODE = PRELUDE.format(name="TinyMDLM", model_type="mdlm") + '''

class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.attn_qkv = nn.Linear(d, 3 * d, bias=False)
        self.attn_out = nn.Linear(d, d, bias=False)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x):
        x = x + self.attn_out(attend(*self.attn_qkv(x).chunk(3, dim=-1)))
        return x + self.mlp(x)


class Backbone(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.vocab_embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.sigma_map = nn.Linear(1, config.hidden_size)
        self.blocks = nn.ModuleList(Block(config.hidden_size) for _ in range(config.num_layers))
        self.output_layer = nn.Linear(config.hidden_size, config.vocab_size)

    def forward(self, indices, sigma):
        x = self.vocab_embed(indices) + self.sigma_map(sigma.float()[:, None])[:, None]
        for block in self.blocks:
            x = block(x)
        return self.output_layer(x)


class TinyMDLM(PreTrainedModel):
    config_class = TinyMDLMConfig
    base_model_prefix = "mdlm"

    def __init__(self, config):
        super().__init__(config)
        self.backbone = Backbone(config)
        self.post_init()

    def forward(self, input_ids=None, timesteps=None, output_hidden_states=None, return_dict=None):
        if timesteps is None:
            raise TypeError("MDLM needs timesteps")
        return MaskedLMOutput(logits=self.backbone(input_ids, timesteps))
'''

# LLaDA: AutoModel, forward(input_ids).logits; blocks under model.transformer, output head also named ff_out
LLADA_CODE = PRELUDE.format(name="TinyLLaDA", model_type="llada") + '''
from transformers.modeling_outputs import CausalLMOutputWithPast


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.attn_out = nn.Linear(d, d)
        self.ff_proj, self.up_proj, self.ff_out = nn.Linear(d, 2 * d), nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, x):
        x = x + self.attn_out(attend(self.q_proj(x), self.k_proj(x), self.v_proj(x)))
        return x + self.ff_out(F.silu(self.ff_proj(x)) * self.up_proj(x))


class Inner(nn.Module):
    def __init__(self, config):
        super().__init__()
        d = config.hidden_size
        self.transformer = nn.ModuleDict({"wte": nn.Embedding(config.vocab_size, d),
                                          "blocks": nn.ModuleList(Block(d) for _ in range(config.num_layers)),
                                          "ff_out": nn.Linear(d, config.vocab_size)})

    def forward(self, input_ids):
        x = self.transformer["wte"](input_ids)
        for block in self.transformer["blocks"]:
            x = block(x)
        return self.transformer["ff_out"](x)


class TinyLLaDAModelLM(PreTrainedModel):
    config_class = TinyLLaDAConfig
    base_model_prefix = "model"

    def __init__(self, config):
        super().__init__(config)
        self.model = Inner(config)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        return CausalLMOutputWithPast(logits=self.model(input_ids))
'''

# Dream: AutoModel, Qwen2-style names; the output at position i-1 predicts token i (shifted logits)
DREAM_CODE = PRELUDE.format(name="TinyDream", model_type="Dream") + '''

class Attention(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x):
        return self.o_proj(attend(self.q_proj(x), self.k_proj(x), self.v_proj(x)))


class MLP(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = nn.Linear(d, 2 * d), nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.self_attn, self.mlp = Attention(d), MLP(d)

    def forward(self, x):
        x = x + self.self_attn(x)
        return x + self.mlp(x)


class Inner(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Layer(config.hidden_size) for _ in range(config.num_layers))

    def forward(self, input_ids):
        x = self.embed_tokens(input_ids)
        for layer in self.layers:
            x = layer(x)
        return x


class TinyDreamModel(PreTrainedModel):
    config_class = TinyDreamConfig
    base_model_prefix = "model"

    def __init__(self, config):
        super().__init__(config)
        self.model = Inner(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        return MaskedLMOutput(logits=self.lm_head(self.model(input_ids)))
'''

# family -> (modeling code, module, config class, Auto class, model class, architecture, specials)
STANDINS = {
    "mdlm": (MDLM_CODE, "modeling_tiny_mdlm", "TinyMDLMConfig", "AutoModelForMaskedLM", "TinyMDLM", "MDLM",
             ["<|endoftext|>"]),
    "llada": (LLADA_CODE, "modeling_tiny_llada", "TinyLLaDAConfig", "AutoModel", "TinyLLaDAModelLM",
              "LLaDAModelLM", ["<|startoftext|>", "<|endoftext|>", "<|mdm_mask|>"]),
    "dream": (DREAM_CODE, "modeling_tiny_dream", "TinyDreamConfig", "AutoModel", "TinyDreamModel", "DreamModel",
              ["<|endoftext|>", "<|beginoftext|>"]),
}


MODEL_TYPES = {"mdlm": "mdlm", "llada": "llada", "dream": "Dream"}  # as in the real config.json files


def write_corpus(path: Path, lines: int = 240) -> Path:
    generator = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(lines):
        picks = torch.randint(len(WORDS), (int(torch.randint(4, 10, (1,), generator=generator)),),
                              generator=generator)
        rows.append(" ".join(WORDS[i] for i in picks))
    path.write_text("\n".join(rows) + "\n")
    return path


def tiny_tokenizer(corpus: Path, specials: list[str], bos: str | None, eos: str):
    """A GPT-2-like byte-level BPE over the corpus, with `specials` first and no mask token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(corpus.read_text().splitlines(), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token=bos, eos_token=eos)


def make_standin(folder: Path, family: str, corpus: Path) -> Path:
    """Write a tiny remote-code checkpoint of `family` into `folder` (a unique name: HF caches code by it)."""
    import transformers

    code, module, config_cls, auto, model_cls, arch, specials = STANDINS[family]
    folder.mkdir(parents=True)
    (folder / f"{module}.py").write_text(code)
    tokenizer = tiny_tokenizer(corpus, specials, bos=specials[0] if family != "mdlm" else "<|endoftext|>",
                               eos="<|endoftext|>")
    size = len(tokenizer)
    if family == "mdlm":  # MDLM: tokenizer + 1 ids, the last one the mask; tokenizer in a separate folder
        tokenizer.save_pretrained(folder.with_name(folder.name + "-tokenizer"))
        vocab, extra = size + 1, {}
    elif family == "llada":  # the model's vocabulary is padded past the tokenizer's
        vocab, extra = size + 7, {"mask_token_id": tokenizer.get_vocab()["<|mdm_mask|>"]}
        tokenizer.save_pretrained(folder)
    else:  # Dream: the mask is the next id after the tokenizer (teacher.mask_id), vocabulary padded
        vocab, extra = size + 5, {"mask_token_id": size}
        tokenizer.save_pretrained(folder)
    config = {"model_type": MODEL_TYPES[family], "architectures": [arch], "vocab_size": vocab, "hidden_size": 16, "num_layers": 1,
              "auto_map": {"AutoConfig": f"{module}.{config_cls}", auto: f"{module}.{model_cls}"}, **extra}
    (folder / "config.json").write_text(json.dumps(config))
    config = transformers.AutoConfig.from_pretrained(str(folder), trust_remote_code=True)
    model = getattr(transformers, auto).from_config(config, trust_remote_code=True)
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.5)
    model.save_pretrained(folder)
    return folder


def source(folder: Path, kind: str, **fields) -> TeacherSourceConfig:
    """The teacher config for the stand-in of family `kind`, as a user would write it; `fields` override."""
    extra = {}
    if kind == "mdlm":  # MDLM-OWT has no tokenizer of its own (it uses gpt2)
        extra["tokenizer"] = str(folder.with_name(folder.name + "-tokenizer"))
    if kind == "dream":  # the stand-in's tokenizer lacks <|mask|>: the id is given, the token added
        extra["mask_id"] = json.loads((folder / "config.json").read_text())["mask_token_id"]
    return TeacherSourceConfig(path=str(folder), **{"trust_remote_code": True, **extra, **fields})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "corpus.txt")


@pytest.fixture(scope="module")
def standins(tmp_path_factory, corpus) -> dict[str, Path]:
    return {family: make_standin(tmp_path_factory.mktemp("standins") / f"tiny-{family}", family, corpus)
            for family in STANDINS}


def raw_logits(folder: Path, family: str, ids: torch.Tensor) -> torch.Tensor:
    import transformers

    auto = getattr(transformers, STANDINS[family][3])
    model = auto.from_pretrained(str(folder), trust_remote_code=True).eval()
    if family == "mdlm":
        return model(input_ids=ids, timesteps=torch.zeros(ids.shape[0])).logits
    return model(input_ids=ids).logits


# ------------------------------------------------------------------------------------ loading
@pytest.mark.parametrize("family", list(STANDINS))
def test_family_loads_with_its_mask_vocab_and_logit_convention(standins, family):
    folder = standins[family]
    loaded = load_hf_teacher(source(folder, family))
    denoiser, tokenizer = loaded.denoiser, loaded.tokenizer
    model_vocab = denoiser.backbone.config.vocab_size
    assert loaded.meta["family"] == family == denoiser.family  # detected from config.json (family=auto)
    assert loaded.path is None and loaded.meta["noise_schedule"] == "loglinear"
    assert tokenizer.mask_token_id == denoiser.mask_id == loaded.meta["mask_id"]
    assert denoiser.vocab_size == len(tokenizer) < model_vocab + (family == "mdlm")
    if family == "mdlm":  # GPT-2 + one added mask token = the model's vocabulary; the mask is its last id
        assert len(tokenizer) == model_vocab and denoiser.mask_id == model_vocab - 1
    if family == "llada":  # found by its name in the tokenizer
        assert tokenizer.convert_ids_to_tokens(denoiser.mask_id) == "<|mdm_mask|>"
    if family == "dream":  # teacher.mask_id one past the tokenizer: added, spelled as Dream spells it
        assert tokenizer.mask_token == "<|mask|>"

    ids = torch.randint(0, denoiser.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))
    ids[:, 3] = denoiser.mask_id
    with torch.no_grad():
        logits = denoiser(ids)
        raw = raw_logits(folder, family, ids)
    assert logits.shape == (2, 12, len(tokenizer)) and logits.dtype == torch.float32
    assert torch.isfinite(logits[..., : denoiser.mask_id]).all()  # the mask is excluded by the step and losses
    expected = torch.cat([raw[:, :1], raw[:, :-1]], dim=1) if family == "dream" else raw
    keep = torch.arange(len(tokenizer)) != denoiser.mask_id
    torch.testing.assert_close(logits[..., keep], expected[..., : len(tokenizer)][..., keep])
    if family == "dream":  # the shift matters: position i is not the raw output at i
        assert not torch.allclose(logits[:, 1:, keep], raw[:, 1:, : len(tokenizer)][..., keep])


@pytest.mark.parametrize("family", list(STANDINS))
def test_remote_code_needs_trust(standins, family):
    with pytest.raises(ModelError, match=r"pass teacher\.trust_remote_code=true"):
        load_hf_teacher(source(standins[family], family, trust_remote_code=False))


def test_explicit_family_and_detection(standins):
    assert detect_family({"model_type": "llada", "architectures": ["LLaDAModelLM"]}).name == "llada"
    assert detect_family({"model_type": "Dream", "architectures": ["DreamModel"]}).name == "dream"
    assert detect_family({"model_type": "mdlm", "architectures": ["MDLM"]}).name == "mdlm"
    assert detect_family({"model_type": "modernbert", "architectures": ["ModernBertForMaskedLM"]}).name == "masked_lm"
    assert load_hf_teacher(source(standins["llada"], "llada", family="llada")).denoiser.family == "llada"
    # an explicit family wins over detection: LLaDA's model read with Dream's convention is shifted
    forced = load_hf_teacher(source(standins["llada"], "llada", family="dream")).denoiser
    assert forced.family == "dream" and forced.adapter.shifted


def test_clear_errors_for_a_mask_or_tokenizer_that_does_not_fit(standins, tmp_path):
    folder = standins["llada"]
    vocab = json.loads((folder / "config.json").read_text())["vocab_size"]
    with pytest.raises(ModelError, match="outside the model's vocabulary"):
        load_hf_teacher(source(folder, "llada", mask_id=vocab + 3))
    with pytest.raises(ModelError, match="beyond the tokenizer"):
        load_hf_teacher(source(folder, "llada", mask_id=vocab - 1))
    with pytest.raises(ModelError, match="teacher.tokenizer"):  # MDLM's folder has no tokenizer of its own
        load_hf_teacher(source(standins["mdlm"], "mdlm", tokenizer=None))
    with pytest.raises(ModelError, match="config.json"):
        load_hf_teacher(TeacherSourceConfig(path=str(tmp_path), trust_remote_code=True))


def test_data_with_a_teacher_tokenizer(standins, corpus, tmp_path):
    from fewstep.data.config import DataConfig

    tokenizer = load_hf_teacher(source(standins["mdlm"], "mdlm")).tokenizer
    cfg = DataConfig(source="text", path=str(corpus), seq_len=16, val_fraction=0.2, tokenizer="/nonexistent")
    data = build_data(cfg, tmp_path, tokenizer=tokenizer)  # data.tokenizer is ignored: the object wins
    assert data.tokenizer is tokenizer and data.mask_id == tokenizer.mask_token_id
    assert int(data.train.max()) < len(tokenizer) and not (data.train == data.mask_id).any()
    assert (tmp_path / "tokenizer.json").is_file()
    with pytest.raises(DataError, match="markov has its own vocabulary"):
        build_data(DataConfig(source="markov"), tokenizer=tokenizer)


def test_data_with_a_slow_tokenizer(tmp_path):
    """Dream's tokenizer is a slow (Python) one: no tokenizer.json, no backend to encode with."""
    from transformers import PreTrainedTokenizer

    from fewstep.data.config import DataConfig

    class WordTokenizer(PreTrainedTokenizer):
        def __init__(self, **kwargs):
            self.vocab = {w: i for i, w in enumerate(["<unk>", "<eos>", *WORDS])}
            super().__init__(**kwargs)

        @property
        def vocab_size(self):
            return len(self.vocab)

        def get_vocab(self):
            return {**self.vocab, **self.added_tokens_encoder}

        def _tokenize(self, text, **kwargs):
            return text.split()

        def _convert_token_to_id(self, token):
            return self.vocab.get(token, 0)

        def _convert_id_to_token(self, index):
            return {i: w for w, i in self.vocab.items()}.get(index, "<unk>")

    tokenizer = WordTokenizer(eos_token="<eos>", unk_token="<unk>")
    tokenizer.add_special_tokens({"mask_token": "<|mask|>"})
    assert getattr(tokenizer, "backend_tokenizer", None) is None
    corpus = write_corpus(tmp_path / "c.txt")
    corpus.write_text(corpus.read_text() + "the <|mask|> token spelled out\n")
    data = build_data(DataConfig(source="text", path=str(corpus), seq_len=8, val_fraction=0.2), tmp_path / "out",
                      tokenizer=tokenizer)
    assert data.mask_id == tokenizer.mask_token_id
    assert not (data.train == data.mask_id).any() and not (data.val == data.mask_id).any()
    assert (data.train == tokenizer.eos_token_id).any()  # documents are packed with EOS between them
    assert (tmp_path / "out" / "tokenizer" / "tokenizer_config.json").is_file()


# ------------------------------------------------------------------------------------ LoRA
def test_apply_lora_trains_only_the_adapters_and_merges_on_a_copy(standins):
    student = load_hf_teacher(source(standins["llada"], "llada")).denoiser
    before = {k: v.clone() for k, v in student.state_dict().items()}
    student = apply_lora(student, LoraConfig(rank=4, alpha=8.0))
    trainable = [name for name, p in student.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    assert not any("transformer.ff_out.lora" in name for name in trainable)  # the output head is not adapted
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable} == {
        "q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out"}
    with torch.no_grad():  # LoRA B starts at zero; perturb it so merging has something to merge
        for name, parameter in student.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.1)
    ids = torch.randint(0, student.vocab_size, (2, 8), generator=torch.Generator().manual_seed(0))
    merged = merged_copy(student)
    assert not any("lora" in k for k in merged.state_dict())
    assert any("lora" in k for k in student.state_dict())  # the training student keeps its adapters
    with torch.no_grad():
        torch.testing.assert_close(merged(ids), student(ids), rtol=1e-4, atol=1e-4)
    assert set(merged.state_dict()) == set(before)


def test_apply_lora_on_a_fewstep_model_and_missing_targets(tiny_teacher):
    student = copy.deepcopy(load_model_dir(tiny_teacher).denoiser)
    student.requires_grad_(True)
    student = apply_lora(student, LoraConfig(rank=2))
    trainable = [name for name, p in student.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    fresh = copy.deepcopy(load_model_dir(tiny_teacher).denoiser)
    with pytest.raises(ModelError, match="student.lora.target_modules"):
        apply_lora(fresh, LoraConfig(rank=2, target_modules=["no_such_layer"]))


# ------------------------------------------------------------------------------------ distillation
class KeepStudent(L.Callback):
    def on_train_end(self, trainer, module):
        self.student = copy.deepcopy(module.student).cpu().eval()


def distil(folder: Path, family: str, corpus: Path, out: Path, *extra: str):
    src = source(folder, family)
    overrides = [f"teacher.path={folder}", "teacher.trust_remote_code=true", f"out_dir={out}",
                 "data.source=text", f"data.path={corpus}", "data.seq_len=16", "data.val_fraction=0.2",
                 "rounds.count=1", "rounds.steps_per_round=1", "rounds.start_steps=2", "trainer.batch_size=2",
                 "trainer.accelerator=cpu", "trainer.progress=false", "logger.wandb.mode=disabled",
                 "eval.num_samples=2", "optim.ema=0", "optim.warmup_steps=1", "optim.lr=1e-2", *extra]
    if src.tokenizer:
        overrides.append(f"teacher.tokenizer={src.tokenizer}")
    if src.mask_id is not None:
        overrides.append(f"teacher.mask_id={src.mask_id}")
    cfg = load_config(DistillRunConfig, None, overrides)
    keep = KeepStudent()
    return run_distill(cfg, callbacks=[keep]), keep.student


@pytest.mark.parametrize("family", list(STANDINS))
def test_one_distillation_step_saves_a_model_that_reloads(standins, corpus, tmp_path, family):
    result, student = distil(standins[family], family, corpus, tmp_path / "run")
    assert result.steps == 1
    model_dir = tmp_path / "run" / "model"
    module = STANDINS[family][1]
    assert (model_dir / f"{module}.py").is_file()  # the remote code travels with the model
    meta = json.loads((model_dir / "fewstep.json").read_text())
    assert meta["family"] == family and meta["remote_code"] is True and "trust_remote_code" not in meta
    with pytest.raises(ModelError, match="--trust-remote-code"):  # the directory never decides by itself
        load_model_dir(model_dir)
    reloaded = load_model_dir(model_dir, trust_remote_code=True)
    assert reloaded.denoiser.family == family and reloaded.tokenizer.mask_token_id == student.mask_id
    teacher = load_hf_teacher(source(standins[family], family)).denoiser
    ids = torch.randint(0, student.vocab_size, (2, 16), generator=torch.Generator().manual_seed(2))
    ids[:, ::3] = student.mask_id
    with torch.no_grad():
        torch.testing.assert_close(reloaded.denoiser(ids), student(ids))
        assert not torch.allclose(student(ids), teacher(ids))  # the step changed the student


def test_lora_distillation_saves_a_merged_model(standins, corpus, tmp_path):
    from safetensors import safe_open

    result, student = distil(standins["dream"], "dream", corpus, tmp_path / "run", "student.lora.rank=4",
                             "student.lora.alpha=8")
    assert result.steps == 1 and any("lora_" in k for k in student.state_dict())
    model_dir = tmp_path / "run" / "model"
    with safe_open(model_dir / "model.safetensors", "pt") as weights:
        assert weights.keys() and not any("lora" in k or "base_layer" in k for k in weights.keys())
    reloaded = load_model_dir(model_dir, trust_remote_code=True)
    assert reloaded.denoiser.family == "dream"
    ids = torch.randint(0, student.vocab_size, (2, 16), generator=torch.Generator().manual_seed(3))
    ids[:, 1::2] = student.mask_id
    with torch.no_grad():
        torch.testing.assert_close(reloaded.denoiser(ids), student(ids), rtol=1e-4, atol=1e-4)


def test_saving_a_lora_student_leaves_it_untouched(standins, tmp_path):
    loaded = load_hf_teacher(source(standins["mdlm"], "mdlm"))
    student = apply_lora(copy.deepcopy(loaded.denoiser), LoraConfig(rank=2, target_modules=["attn_qkv"]))
    keys = set(student.state_dict())
    save_model_dir(student, loaded.tokenizer, tmp_path / "m", {"noise_schedule": "loglinear"})
    assert set(student.state_dict()) == keys
    assert {n for n, p in student.named_parameters() if p.requires_grad} == {n for n in keys if "lora_" in n}
    assert load_model_dir(tmp_path / "m", trust_remote_code=True).denoiser.family == "mdlm"
    assert FAMILIES["mdlm"].timesteps and FAMILIES["dream"].shifted


@pytest.mark.parametrize("name, family, rank", [("distill/mdlm_owt", "mdlm", 0), ("distill/llada_8b", "llada", 16),
                                                ("distill/dream_7b", "dream", 16)])
def test_shipped_real_teacher_recipes_load(name, family, rank):
    cfg = load_config(DistillRunConfig, name)
    assert (cfg.teacher.family, cfg.student.lora.rank, cfg.trainer.precision) == (family, rank, "bf16-mixed")
    assert cfg.teacher.trust_remote_code and cfg.data.source == "hf"
    assert cfg.data.seq_len == (1024 if family == "mdlm" else 512)


class TeacherAtRoundTwo(L.Callback):
    def on_train_batch_start(self, trainer, module, *args):
        if trainer.global_step == 1:  # round 1's first step: round 0's LoRA student teaches
            self.keys = set(module.teacher.state_dict())
            self.teacher_logits = None
            ids = torch.full((1, 16), module.mask_id)
            with torch.no_grad():
                self.teacher_logits = module.teacher(ids.to(module.device)).cpu()
                self.student_logits = module.student(ids.to(module.device)).cpu()
            self.optimised = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
            self.lora = {id(p) for n, p in module.student.named_parameters() if "lora_" in n}


def test_a_lora_student_teaches_the_next_round_as_merged_weights(standins, corpus, tmp_path):
    watch = TeacherAtRoundTwo()
    src = source(standins["dream"], "dream")
    overrides = [f"teacher.path={standins['dream']}", "teacher.trust_remote_code=true", f"out_dir={tmp_path / 'r'}",
                 "data.source=text", f"data.path={corpus}", "data.seq_len=16", "data.val_fraction=0.2",
                 "rounds.count=2", "rounds.steps_per_round=1", "rounds.start_steps=4", "rounds.teacher_from=student",
                 "trainer.batch_size=2", "trainer.accelerator=cpu", "trainer.progress=false",
                 "logger.wandb.mode=disabled", "eval.enabled=false", "optim.ema=0", "optim.warmup_steps=1",
                 "optim.lr=1e-2", "student.lora.rank=4"]
    if src.mask_id is not None:
        overrides.append(f"teacher.mask_id={src.mask_id}")
    run_distill(load_config(DistillRunConfig, None, overrides), callbacks=[watch])
    assert watch.keys and not any("lora" in k for k in watch.keys)  # a plain merged copy, no adapters
    torch.testing.assert_close(watch.teacher_logits, watch.student_logits, rtol=1e-4, atol=1e-4)
    assert watch.optimised == watch.lora  # the optimiser holds the adapters only


class CrashAfter(L.Callback):
    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == 3:
            raise RuntimeError("crash")


def test_a_lora_run_resumes_to_the_same_merged_student(standins, corpus, tmp_path):
    src = source(standins["llada"], "llada")

    def overrides(out):
        extra = [f"teacher.mask_id={src.mask_id}"] if src.mask_id is not None else []
        return [f"teacher.path={standins['llada']}", "teacher.trust_remote_code=true", f"out_dir={out}",
                "data.source=text", f"data.path={corpus}", "data.seq_len=16", "data.val_fraction=0.2",
                "rounds.count=2", "rounds.steps_per_round=2", "rounds.start_steps=4", "rounds.teacher_from=student",
                "trainer.batch_size=2", "trainer.checkpoint_every=1", "trainer.accelerator=cpu",
                "trainer.progress=false", "logger.wandb.mode=disabled", "eval.enabled=false", "optim.ema=0",
                "optim.warmup_steps=1", "optim.lr=1e-2", "student.lora.rank=4", *extra]

    run_distill(load_config(DistillRunConfig, None, overrides(tmp_path / "reference")))
    out = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="crash"):
        run_distill(load_config(DistillRunConfig, None, overrides(out)), callbacks=[CrashAfter()])
    saved = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert saved and all("lora_" in k for k in saved), sorted(saved)[:5]  # no frozen base weights, no teacher
    result = run_distill(load_config(DistillRunConfig, None, overrides(out)), resume=True)
    assert result.steps == 4
    a, b = (load_model_dir(d / "model", trust_remote_code=True).denoiser.state_dict()
            for d in (out, tmp_path / "reference"))
    assert a.keys() == b.keys() and not any("lora" in k for k in a)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


class EmaKeys(L.Callback):
    def on_train_end(self, trainer, module):
        from fewstep.training.ema import SubmoduleEMA

        ema = next(c for c in trainer.callbacks if isinstance(c, SubmoduleEMA))
        self.keys = set(ema.shadow)
        self.full = set(ema.averaged_state())
        self.student = set(module.student.state_dict())


def test_the_ema_of_a_lora_student_holds_its_adapters_only(standins, corpus, tmp_path):
    src = source(standins["dream"], "dream")
    watch = EmaKeys()
    overrides = [f"teacher.path={standins['dream']}", "teacher.trust_remote_code=true", f"out_dir={tmp_path / 'r'}",
                 "data.source=text", f"data.path={corpus}", "data.seq_len=16", "data.val_fraction=0.2",
                 "rounds.count=2", "rounds.steps_per_round=1", "rounds.start_steps=4", "rounds.teacher_from=ema",
                 "trainer.batch_size=2", "trainer.accelerator=cpu", "trainer.progress=false",
                 "logger.wandb.mode=disabled", "eval.enabled=false", "optim.ema=0.5", "optim.warmup_steps=1",
                 "student.lora.rank=4", *([f"teacher.mask_id={src.mask_id}"] if src.mask_id is not None else [])]
    result = run_distill(load_config(DistillRunConfig, None, overrides), callbacks=[watch])
    assert result.steps == 2
    assert watch.keys and all("lora_" in k for k in watch.keys), sorted(watch.keys)[:5]
    assert watch.full == watch.student  # the averaged state is still a whole state dict
