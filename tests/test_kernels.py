"""The fused denoising step: Triton kernel against the torch reference, sampling frequencies, rules, errors.

Without CUDA the Triton kernel runs in the interpreter (TRITON_INTERPRET=1, set before triton is
imported), so shapes stay small. With CUDA the same tests run the compiled kernel on the GPU.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from fewstep.kernels import StepResult, denoise_step, gumbel_from_uniform, triton_available  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
needs_triton = pytest.mark.skipif(not triton_available(), reason="triton is not installed")
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

if triton_available():
    import triton
    import triton.language as tl

    from fewstep.kernels.triton_step import _gumbel_from_bits

    @triton.jit
    def _gumbel_probe(hi_ptr, lo_ptr, out_ptr, N: tl.constexpr):
        i = tl.arange(0, N)
        hi = tl.load(hi_ptr + i).to(tl.uint32, bitcast=True)
        lo = tl.load(lo_ptr + i).to(tl.uint32, bitcast=True)
        tl.store(out_ptr + i, _gumbel_from_bits(hi, lo))


EXACT = ("tokens", "sampled", "revealed", "num_revealed")


def mask_pattern(batch: int, length: int, mask_id: int, vocab: int, gen: torch.Generator) -> torch.Tensor:
    """Row 0 all masked, row 1 none masked, the rest partly masked."""
    tokens = torch.randint(0, vocab, (batch, length), generator=gen)
    tokens[tokens == mask_id] = (mask_id + 1) % vocab
    partly = torch.rand(batch, length, generator=gen) < 0.5
    tokens[partly] = mask_id
    tokens[0] = mask_id
    if batch > 2:
        tokens[1] = (mask_id + 2) % vocab
    return tokens


def assert_same(ref: StepResult, out: StepResult, atol: float = 1e-6, rtol: float = 1e-5) -> None:
    for name in StepResult._fields:
        a, b = getattr(ref, name), getattr(out, name).to(getattr(ref, name).device)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        if name in EXACT:
            assert torch.equal(a, b), f"{name} differs:\n{a}\n{b}"
        else:
            torch.testing.assert_close(b, a, atol=atol, rtol=rtol, msg=name)


def both(logits, tokens, mask_id, **kw) -> tuple[StepResult, StepResult]:
    ref = denoise_step(logits, tokens, mask_id, backend="torch", **kw)
    out = denoise_step(logits.to(DEVICE), tokens.to(DEVICE), mask_id, backend="triton",
                       **{k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in kw.items()})
    return ref, out


CASES = [  # batch, length, vocab, dtype
    (3, 7, 111, torch.float32),
    (3, 5, 111, torch.bfloat16),
    (2, 13, 1000, torch.float16),
    (1, 3, 32003, torch.float32),
]
RULES = {
    "count": lambda b, length, g: {"count": torch.tensor([2, 1, 3][:b] + [0] * max(0, b - 3))},
    "threshold": lambda b, length, g: {"threshold": 0.2},
    "scores": lambda b, length, g: {"scores": torch.randn(b, length, generator=g)},
}


@needs_triton
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}x{c[1]}x{c[2]}-{str(c[3])[6:]}")
@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_kernel_equals_reference_with_injected_noise(case, temperature):
    batch, length, vocab, dtype = case
    gen = torch.Generator().manual_seed(vocab + length)
    mask_id = vocab - 1 if vocab != 1000 else 17
    logits = (3 * torch.randn(batch, length, vocab, generator=gen)).to(dtype)
    logits[..., 5] = -math.inf  # a zero-probability token
    tokens = mask_pattern(batch, length, mask_id, vocab, gen)
    noise = gumbel_from_uniform(torch.rand(batch, length, vocab, generator=gen, dtype=torch.float64))
    for rule, make in RULES.items():
        ref, out = both(logits, tokens, mask_id, temperature=temperature, noise=noise, **make(batch, length, gen))
        assert_same(ref, out)
        masked = tokens == mask_id
        assert torch.equal(ref.num_revealed > 0, masked.any(dim=1)), rule
        assert not (ref.sampled[masked] == mask_id).any() and not (ref.sampled[masked] == 5).any()


@needs_triton
def test_kernel_float32_noise_path_matches_reference():
    """Float32 noise runs the kernel's float32 arithmetic (the seed-mode path): same tokens, close stats."""
    gen = torch.Generator().manual_seed(3)
    logits = 2 * torch.randn(2, 9, 1000, generator=gen)
    tokens = torch.full((2, 9), 0)
    noise = gumbel_from_uniform(torch.rand(2, 9, 1000, generator=gen, dtype=torch.float64)).float()
    ref, out = both(logits, tokens, 0, temperature=1.3, noise=noise, count=torch.tensor([3, 9]))
    assert_same(ref, out, atol=2e-6, rtol=2e-5)


@needs_triton
@pytest.mark.parametrize("splits", [1, 2, 8])
def test_vocabulary_split_merges_exactly(splits):
    from fewstep.kernels.triton_step import triton_step

    gen = torch.Generator().manual_seed(splits)
    logits = torch.randn(2, 3, 1000, generator=gen)
    tokens = torch.full((2, 3), 4)
    noise = gumbel_from_uniform(torch.rand(2, 3, 1000, generator=gen, dtype=torch.float64))
    ref = denoise_step(logits, tokens, 4, temperature=0.9, noise=noise, count=2, backend="torch")
    out = triton_step(logits.to(DEVICE), tokens.to(DEVICE), 4, 0.9, 0, 0, noise.to(DEVICE),
                      torch.full((2,), 2, device=DEVICE), None, None, False, splits=splits, block=128)
    assert_same(ref, StepResult(*out[:7]))
    # the two extra outputs the samplers read: the top-1 probability and the argmax (mask excluded)
    x = logits.double() / 0.9
    x[..., 4] = -math.inf
    probs = torch.softmax(x, -1)
    assert torch.allclose(out[7].cpu().double(), probs.amax(-1), rtol=1e-5)
    assert torch.equal(out[8].cpu(), x.argmax(-1))


@needs_triton
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_tied_logits_break_ties_to_the_lowest_index(temperature):
    """Identical rows and flat rows: the lowest token wins an argmax tie, the lowest position a score tie."""
    vocab, mask_id = 2100, 0  # > one 1024-wide block: ties within a lane across blocks too
    logits = torch.zeros(2, 6, vocab)
    logits[0, :, [10, 12, 10 + 1024, 2000]] = 1.0  # row 0: every position identical, four tied maxima
    logits[1, :3, 3] = 2.0
    logits[1, 3:, 3] = 2.0  # row 1: positions identical too
    logits[:, :, mask_id] = 9.0  # the mask token would win if it were allowed
    tokens = torch.full((2, 6), mask_id)
    tokens[1, 1] = 8
    noise = torch.zeros(2, 6, vocab, dtype=torch.float64)  # ties survive the noise
    ref, out = both(logits, tokens, mask_id, temperature=temperature, noise=noise, count=torch.tensor([2, 3]))
    assert_same(ref, out)
    assert ref.sampled[0].tolist() == [10] * 6
    assert ref.revealed[0].tolist() == [True, True, False, False, False, False]
    assert ref.revealed[1].tolist() == [True, False, True, True, False, False]
    assert ref.tokens[1, 1] == 8


def test_zero_probability_token_never_drawn_even_with_huge_noise():
    logits = torch.zeros(1, 4, 8)
    logits[..., 6] = -math.inf
    noise = torch.zeros(1, 4, 8, dtype=torch.float64)
    noise[..., 6] = 1e30
    noise[..., 2] = 1e29  # the mask token
    for backend in ["torch", "triton"] if triton_available() else ["torch"]:
        dev = DEVICE if backend == "triton" else torch.device("cpu")
        out = denoise_step(logits.to(dev), torch.full((1, 4), 2, device=dev), 2, temperature=1.0,
                           noise=noise.to(dev), count=4, backend=backend)
        assert not torch.isin(out.sampled.cpu(), torch.tensor([2, 6])).any(), backend
        assert out.prob.gt(0).all() and out.num_revealed.item() == 4


def _frequencies(backend: str, device: torch.device, draws: int, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    vocab, mask_id, temperature = 12, 3, 0.8
    base = torch.linspace(-2.0, 1.5, vocab)
    base[7] = -math.inf
    logits = base.expand(1, rows, vocab).contiguous().to(device)
    tokens = torch.full((1, rows), mask_id, device=device)
    counts = torch.zeros(vocab, dtype=torch.float64)
    for d in range(draws):
        out = denoise_step(logits, tokens, mask_id, temperature=temperature, seed=1234, offset=d, count=1,
                           backend=backend)
        counts += torch.bincount(out.sampled.flatten().cpu(), minlength=vocab).double()
    scaled = base.double() / temperature
    scaled[mask_id] = -math.inf
    return counts, torch.softmax(scaled, dim=0)


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
def test_sampling_frequencies_match_softmax(backend):
    device = DEVICE if backend == "triton" else torch.device("cpu")
    rows, draws = (200, 3) if backend == "triton" else (4096, 4)
    counts, expected = _frequencies(backend, device, draws, rows)
    assert counts.sum() == rows * draws
    assert counts[7] == 0 and counts[3] == 0  # zero-probability token and mask token
    cosine = torch.nn.functional.cosine_similarity(counts / counts.sum(), expected, dim=0)
    assert cosine > 0.99
    # Tighter than cosine: a chi-square-like bound on every token with enough expected draws.
    n = counts.sum()
    big = expected * n > 20
    z = (counts[big] - expected[big] * n) / (expected[big] * n * (1 - expected[big])).sqrt()
    assert z.abs().max() < 5


@needs_triton
def test_seed_mode_is_deterministic_and_seed_tensor_matches_int():
    logits = torch.randn(2, 5, 300, generator=torch.Generator().manual_seed(0)).to(DEVICE)
    tokens = torch.full((2, 5), 1, device=DEVICE)
    a = denoise_step(logits, tokens, 1, temperature=1.0, seed=7, offset=3, count=2, backend="triton")
    b = denoise_step(logits, tokens, 1, temperature=1.0, seed=torch.tensor([7], device=DEVICE), offset=3,
                     count=2, backend="triton")
    c = denoise_step(logits, tokens, 1, temperature=1.0, seed=7, offset=4, count=2, backend="triton")
    assert torch.equal(a.sampled, b.sampled) and not torch.equal(a.sampled, c.sampled)


@needs_triton
def test_gumbel_from_64_bit_uniform_is_accurate_in_both_tails():
    """The kernel's Gumbel transform against float64 maths, from u = 2^-65 to 1 - 2^-65."""
    words = [0, 1, 12345, 2**31 - 1, 2**31, 2**31 + 7, 2**32 - 2, 2**32 - 1]
    pairs = [(h, lo) for h in words for lo in (0, 2**31, 2**32 - 1)]
    hi = torch.tensor([h for h, _ in pairs], dtype=torch.int64).to(torch.uint32).view(torch.int32)
    lo = torch.tensor([x for _, x in pairs], dtype=torch.int64).to(torch.uint32).view(torch.int32)
    padded = 1 << (len(pairs) - 1).bit_length()
    hi_p = torch.zeros(padded, dtype=torch.int32)
    lo_p = torch.zeros(padded, dtype=torch.int32)
    hi_p[: len(pairs)], lo_p[: len(pairs)] = hi, lo
    out = torch.empty(padded, dtype=torch.float32, device=DEVICE)
    _gumbel_probe[(1,)](hi_p.to(DEVICE), lo_p.to(DEVICE), out, N=padded)
    for (h, x), g in zip(pairs, out.cpu().tolist()):
        n = h * 2**32 + x
        if n < 2**63:
            e = -math.log((n + 0.5) / 2**64)
        else:
            e = -math.log1p(-((2**64 - 1 - n) + 0.5) / 2**64)
        assert g == pytest.approx(-math.log(e), rel=1e-5, abs=1e-5), (h, x)
    assert max(out.tolist()) > 44  # float64 uniforms stop near 36.7, float32 ones near 16.6


def test_at_least_one_revealed_per_row_with_a_mask():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 6, 50, generator=gen)
    tokens = torch.full((3, 6), 9)
    tokens[1] = 4  # no mask in row 1
    tokens[2, :5] = 4  # one mask in row 2
    backends = ["torch", "triton"] if triton_available() else ["torch"]
    for backend in backends:
        dev = DEVICE if backend == "triton" else torch.device("cpu")
        for rule in ({"count": 0}, {"threshold": 1.5}, {"scores": -torch.ones(3, 6, device=dev)}):
            out = denoise_step(logits.to(dev), tokens.to(dev), 9, temperature=0.0, backend=backend, **rule)
            assert out.num_revealed.tolist() == [1, 0, 1], (backend, rule)
            assert torch.equal(out.tokens[1].cpu(), tokens[1])
            assert out.revealed.sum().item() == 2


def test_count_rule_clamps_and_threshold_reveals_all_above():
    logits = torch.zeros(1, 4, 5)
    logits[0, 0, 1] = 10.0  # nearly certain
    logits[0, 2, 2] = 10.0
    tokens = torch.full((1, 4), 0)
    out = denoise_step(logits, tokens, 0, temperature=0.0, threshold=0.9, backend="torch")
    assert out.revealed.tolist() == [[True, False, True, False]]
    out = denoise_step(logits, tokens, 0, temperature=0.0, count=99, backend="torch")
    assert out.num_revealed.item() == 4
    assert out.entropy[0, 1] == pytest.approx(math.log(4), rel=1e-6)
    assert out.margin[0, 1] == pytest.approx(0.0, abs=1e-7)


def test_statistics_match_a_direct_computation():
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 3, 20, generator=gen, dtype=torch.float32)
    tokens = torch.full((2, 3), 19)
    noise = gumbel_from_uniform(torch.rand(2, 3, 20, generator=gen, dtype=torch.float64))
    out = denoise_step(logits, tokens, 19, temperature=2.0, noise=noise, count=1, backend="torch")
    scaled = logits.double()[..., :19] / 2.0
    p = torch.softmax(scaled, -1)
    sampled = (scaled + noise[..., :19]).argmax(-1)
    assert torch.equal(out.sampled, sampled)
    torch.testing.assert_close(out.prob, p.gather(-1, sampled[..., None])[..., 0].float())
    torch.testing.assert_close(out.entropy, (-(p * p.log()).sum(-1)).float())
    top = p.topk(2, -1).values
    torch.testing.assert_close(out.margin, (top[..., 0] - top[..., 1]).float())


@pytest.mark.parametrize("mask_logit", [None, 120.0, 3.0, -math.inf])
@pytest.mark.parametrize("temperature, stats_temperature", [(0.0, 1.0), (1.0, 1.0), (0.7, 0.7), (0.7, 1.0)])
def test_torch_statistics_exclude_the_mask_whatever_its_logit(mask_logit, temperature, stats_temperature):
    """The CPU path takes a softmax over the whole row, drops the mask token's entry and divides by what
    is left; a mask logit that dominates the row (120 here: the rest would underflow) takes the exact
    route. Against float64 over the row without the mask, at a vocabulary of whole and partial blocks,
    with impossible (-inf) tokens in the rows."""
    from fewstep.kernels.stats import torch_token_stats

    gen = torch.Generator().manual_seed(3)
    for vocab, mask_id in ((300, 299), (300, 130), (256, 0)):
        logits = torch.randn(3, 5, vocab, generator=gen) * 3
        logits[0, 0, :7] = -math.inf
        if mask_logit is not None:
            logits[..., mask_id] = mask_logit
        rows = torch.ones(3, 5, dtype=torch.bool)
        rows[1, 2] = False
        uniform = torch.rand(3, 5, generator=gen, dtype=torch.float64)
        out = torch_token_stats(logits, rows, uniform, mask_id, temperature, stats_temperature)
        keep = torch.ones(vocab, dtype=torch.bool)
        keep[mask_id] = False
        p = torch.softmax(logits.double()[..., keep] / stats_temperature, -1)
        ids = torch.arange(vocab)[keep]
        argmax = ids[p.argmax(-1)]
        assert torch.equal(out.argmax[rows], argmax[rows])
        assert (out.proposal[rows] != mask_id).all()
        index = torch.searchsorted(ids, out.proposal.clamp_min(0)).clamp_max(vocab - 2)  # ~rows: unused
        top = p.topk(2, -1).values
        entropy = -torch.where(p > 0, p * p.log(), torch.zeros_like(p)).sum(-1)
        for got, want in ((out.confidence, top[..., 0]), (out.margin, top[..., 0] - top[..., 1]),
                          (out.sampled_prob, p.gather(-1, index[..., None])[..., 0]), (out.entropy, entropy)):
            torch.testing.assert_close(got[rows].double(), want[rows], rtol=2e-5, atol=1e-6)
        assert (out.proposal[~rows] == mask_id).all()


@pytest.mark.parametrize("bad, error, match", [
    ({"logits": torch.zeros(2, 3, 10, dtype=torch.float64)}, TypeError, "float32, float16 or bfloat16"),
    ({"logits": torch.zeros(2, 3, 10, dtype=torch.int64)}, TypeError, "float32, float16 or bfloat16"),
    ({"logits": torch.zeros(6, 10)}, ValueError, r"\[batch, length, vocab\]"),
    ({"logits": torch.zeros(2, 10, 3).transpose(1, 2)}, ValueError, "contiguous"),
    ({"tokens": torch.zeros(2, 4, dtype=torch.int64)}, ValueError, "tokens must have shape"),
    ({"tokens": torch.zeros(2, 3)}, TypeError, "tokens must have dtype"),
    ({"tokens": torch.zeros(2, 3, dtype=torch.int64, device="meta")}, ValueError, "tokens is on meta"),
    ({"mask_id": 10}, ValueError, "outside the vocabulary"),
    ({"temperature": -1.0}, ValueError, "temperature"),
    ({"noise": torch.zeros(2, 3, 9, dtype=torch.float64)}, ValueError, "noise must have shape"),
    ({"count": None}, ValueError, "selection rule"),
    ({"threshold": 0.5}, ValueError, "either count or threshold"),
    ({"count": torch.zeros(3, dtype=torch.int64)}, ValueError, "count must have shape"),
    ({"backend": "cuda"}, ValueError, "backend must be one of"),
])
def test_bad_inputs_give_clear_errors(bad, error, match):
    args = {"logits": torch.zeros(2, 3, 10), "tokens": torch.zeros(2, 3, dtype=torch.int64), "mask_id": 0,
            "count": 1, **bad}
    logits, tokens, mask_id = args.pop("logits"), args.pop("tokens"), args.pop("mask_id")
    with pytest.raises(error, match=match):
        denoise_step(logits, tokens, mask_id, **args)


def test_torch_compile_traces_the_custom_op():
    def step(logits, tokens):
        out = denoise_step(logits, tokens, 0, temperature=0.0, count=2, backend="torch")
        return out.tokens, out.prob * 2

    logits = torch.randn(2, 5, 30, generator=torch.Generator().manual_seed(2))
    tokens = torch.zeros(2, 5, dtype=torch.int64)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    for a, b in zip(compiled(logits, tokens), step(logits, tokens)):
        assert torch.equal(a, b)


class TinyDenoiser(torch.nn.Module):
    """A random embedding + linear map: tokens [B, L] -> logits [B, L, V]."""

    def __init__(self, vocab: int, width: int = 16) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.embed = torch.nn.Parameter(torch.randn(vocab, width, generator=gen))
        self.mix = torch.nn.Parameter(torch.randn(width, width, generator=gen) / width**0.5)
        self.head = torch.nn.Parameter(torch.randn(width, vocab, generator=gen))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed[tokens]
        h = h + torch.tanh(h.mean(dim=1, keepdim=True) @ self.mix)
        return h @ self.head


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_large_bf16_matches_reference():
    """The sampling loop on the GPU (captured, no host sync) is tested in test_static_loop.py."""
    gen = torch.Generator().manual_seed(0)
    logits = (4 * torch.randn(4, 64, 32000, generator=gen)).to(torch.bfloat16)
    tokens = torch.full((4, 64), 0)
    tokens[:, ::3] = 5
    noise = gumbel_from_uniform(torch.rand(4, 64, 32000, generator=gen, dtype=torch.float64))
    ref, out = both(logits, tokens, 0, temperature=1.0, noise=noise, count=torch.tensor([1, 4, 16, 64]))
    assert_same(ref, out)



# --- the sampler's statistics (`token_stats`): both backends, one contract -------------------------------


def _stats_inputs(batch=3, length=6, vocab=700, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(batch, length, vocab, generator=gen) * 3).to(DEVICE)
    rows = (torch.rand(batch, length, generator=gen) < 0.7).to(DEVICE)
    return logits, rows


@needs_triton
def test_triton_stats_equal_the_torch_path_at_temperature_zero():
    from fewstep.kernels import sequence_keys, token_stats

    logits, rows = _stats_inputs()
    keys = sequence_keys(3, torch.arange(3, device=DEVICE))
    fast = token_stats(logits, rows, 5, temperature=0.0, keys=keys, step=2, backend="triton")
    ref = token_stats(logits.cpu(), rows.cpu(), 5, temperature=0.0, keys=keys.cpu(), step=2, backend="torch")
    for name in ("proposal", "argmax"):
        assert torch.equal(getattr(fast, name).cpu()[rows.cpu()], getattr(ref, name)[rows.cpu()]), name
    for name in ("confidence", "sampled_prob", "margin", "entropy"):
        assert torch.allclose(getattr(fast, name).cpu()[rows.cpu()], getattr(ref, name)[rows.cpu()], rtol=1e-4,
                              atol=1e-5), name
    assert (fast.proposal.cpu()[~rows.cpu()] == 5).all()


@needs_triton
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_token_stats_noise_does_not_depend_on_the_batch(backend):
    """A sequence's draw is keyed by its own key: alone or beside others, the same tokens."""
    from fewstep.kernels import sequence_keys, token_stats

    logits, rows = _stats_inputs(seed=1)
    rows[:] = True
    keys = sequence_keys(9, torch.arange(3, device=DEVICE))
    together = token_stats(logits, rows, 5, temperature=1.0, keys=keys, step=4, backend=backend).proposal
    alone = token_stats(logits[1:2], rows[1:2], 5, temperature=1.0, keys=keys[1:2], step=4, backend=backend).proposal
    assert torch.equal(together[1:2], alone)
    other_step = token_stats(logits, rows, 5, temperature=1.0, keys=keys, step=5, backend=backend).proposal
    assert not torch.equal(together, other_step)


@needs_triton
def test_triton_stats_draw_the_softmax_at_temperature_one():
    """Seed-mode draws of the Triton path follow softmax(logits) by frequency (its own Philox stream)."""
    from fewstep.kernels import sequence_keys, token_stats

    logits = torch.tensor([2.0, 0.5, -1.0, -float("inf"), 0.0, 1.0]).expand(1, 128, -1).contiguous().to(DEVICE)
    rows = torch.ones(1, 128, dtype=torch.bool, device=DEVICE)
    counts = torch.zeros(6, dtype=torch.float64)
    for step in range(4):
        drawn = token_stats(logits, rows, 5, temperature=1.0, keys=sequence_keys(0, torch.zeros(1, dtype=torch.long,
                            device=DEVICE)), step=step, backend="triton").proposal
        counts += torch.bincount(drawn.flatten().cpu(), minlength=6).double()
    expected = torch.softmax(torch.tensor([2.0, 0.5, -1.0, -float("inf"), 0.0, -float("inf")]).double(), -1)
    assert counts[3] == 0 and counts[5] == 0  # zero probability and the mask: never drawn
    assert torch.allclose(counts / counts.sum(), expected, atol=0.08)  # 512 draws: about 4 standard errors


@needs_triton
def test_the_sampler_runs_on_the_triton_path():
    """`Sampler(backend="triton")` reaches the Triton statistics and yields complete, seeded samples."""
    from fewstep.samplers import Sampler, make_policy, make_step_schedule

    class Model(torch.nn.Module):
        time_conditioning = False
        mask_id, vocab_size = 7, 8

        def forward(self, z, t=None):
            return torch.nn.functional.one_hot(z.clamp_max(6), 8).float() * 2 + torch.arange(8.0, device=z.device)

    sampler = Sampler(make_step_schedule("loglinear"), make_policy("confidence"), backend="triton")
    a = sampler.generate(Model(), 2, 8, 4, seed=1, device=DEVICE)
    b = sampler.generate(Model(), 2, 8, 4, seed=1, device=DEVICE)
    assert torch.equal(a.tokens, b.tokens) and not bool((a.tokens == 7).any())
