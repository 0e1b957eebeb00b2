"""The sampler's own cost per step, with the model's removed, at the sizes users run.

A denoiser that returns one fixed logits tensor (no compute, no copy) isolates what fewstep does per
step: the statistics over the vocabulary, the policy, the selection, the scatter. Each preset runs
`--steps` steps in a fresh process, so that the process's peak resident memory minus its memory just
before sampling is the sampler's extra peak memory. The floor is one read of the logits (a max over the
vocabulary). With `--model-dir` it also times `fewstep generate`'s sampler on a real model directory,
split into the model's forward passes and the rest.

    python benchmarks/bench_sampler_step.py --out runs/bench-sampler-step
    python benchmarks/bench_sampler_step.py --sizes 4x256x32768 --presets llada,ancestral --repeats 3
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

SIZES = ("4x256x32768", "1x1024x126464", "64x128x2048")
PRESETS = ("ancestral", "dilated", "dilated/geometric", "llada", "dream", "fast-dllm", "eb", "denoise_step")


class FixedLogits(nn.Module):
    """A denoiser whose forward pass costs nothing: it returns the same logits every time."""

    time_conditioning = False

    def __init__(self, logits: torch.Tensor, mask_id: int) -> None:
        super().__init__()
        self.logits, self.mask_id, self.vocab_size = logits, mask_id, logits.shape[-1]

    def forward(self, z: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        return self.logits


def _rss_mb() -> float:
    """Peak resident memory of this process so far, MB (Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20


def measure_one(size: str, preset: str, steps: int, repeats: int, seed: int) -> dict:
    """Time `steps` steps of `preset` on fixed logits of `size`; called in a fresh process."""
    from fewstep.kernels import denoise_step
    from fewstep.samplers.presets import sampler_from_spec

    batch, length, vocab = (int(x) for x in size.split("x"))
    torch.manual_seed(seed)
    # peaked rows, as a trained model's are; drawn in place, so that nothing but the logits is allocated
    logits = torch.empty(batch, length, vocab).normal_(0.0, 4.0)
    mask_id = vocab - 1
    model = FixedLogits(logits, mask_id)
    floor = []
    for _ in range(max(3, repeats)):
        began = time.perf_counter()
        logits.amax(dim=-1)
        floor.append(time.perf_counter() - began)
    before = _current_rss_mb()
    times = []
    for r in range(repeats):
        if preset == "denoise_step":  # the fused op alone, as a loop of `steps` calls
            tokens = torch.full((batch, length), mask_id)
            began = time.perf_counter()
            for i in range(steps):
                tokens = denoise_step(logits, tokens, mask_id, temperature=1.0, seed=r, offset=i,
                                      count=max(1, length // steps)).tokens
            times.append(time.perf_counter() - began)
        else:
            sampler = sampler_from_spec(preset, steps)
            out = sampler.generate(model, batch, length, steps, seed=r)
            times.append(out.wall_time)
    peak = _rss_mb()
    logits_mb = logits.numel() * logits.element_size() / 2**20
    return {
        "size": size, "preset": preset, "steps": steps,
        "ms_per_step": 1000 * statistics.median(times) / steps,
        "floor_ms": 1000 * statistics.median(floor),
        "extra_peak_mb": max(0.0, peak - before), "logits_mb": logits_mb,
    }


def measure_model(model_dir: str, steps: int, num_samples: int, repeats: int, spec: str) -> dict:
    """`fewstep generate`'s sampling on a real model: total time, the model's share, the sampler's."""
    from fewstep.model.model_dir import load_model_dir
    from fewstep.samplers.presets import sample_with_spec

    loaded = load_model_dir(model_dir)
    model = loaded.denoiser
    spent = []
    real_forward = model.forward

    def timed_forward(*args, **kwargs):
        began = time.perf_counter()
        out = real_forward(*args, **kwargs)
        spent.append(time.perf_counter() - began)
        return out

    model.forward = timed_forward
    seq_len = int(loaded.meta.get("seq_len", 64))
    totals, model_times = [], []
    for r in range(repeats + 1):  # the first is a warm-up
        spent.clear()
        out = sample_with_spec(spec, model, num_samples, seq_len, steps, seed=r,
                               noise_schedule=loaded.meta.get("noise_schedule", "loglinear"))
        if r:
            totals.append(out.wall_time)
            model_times.append(sum(spent))
    total, model_time = statistics.median(totals), statistics.median(model_times)
    return {"model_dir": model_dir, "spec": spec, "steps": steps, "num_samples": num_samples,
            "seq_len": seq_len, "vocab": model.vocab_size, "nfe": out.nfe_per_sequence,
            "total_ms": 1000 * total, "model_ms": 1000 * model_time, "sampler_ms": 1000 * (total - model_time),
            "sampler_share": (total - model_time) / total}


def table(rows: list[dict]) -> str:
    lines = ["| size (B x L x V) | preset | ms per step | x floor | extra peak MB | x logits |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for row in rows:
        lines.append(f"| {row['size']} | {row['preset']} | {row['ms_per_step']:.1f} | "
                     f"{row['ms_per_step'] / row['floor_ms']:.2f} | {row['extra_peak_mb']:.0f} | "
                     f"{row['extra_peak_mb'] / row['logits_mb']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default=",".join(SIZES), help="BxLxV,... (default: %(default)s)")
    parser.add_argument("--presets", default=",".join(PRESETS), help="sampler specs, and denoise_step")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per cell (median)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model-dir", default=None, help="also split `generate` on this model into model/sampler")
    parser.add_argument("--model-spec", default="dilated/geometric")
    parser.add_argument("--model-steps", type=int, default=8)
    parser.add_argument("--model-samples", type=int, default=64)
    parser.add_argument("--out", default=None, help="directory for results.json and results.md")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # size:preset, run in this process
    args = parser.parse_args()
    if args.one:
        size, preset = args.one.split(":", 1)
        print(json.dumps(measure_one(size, preset, args.steps, args.repeats, args.seed)))
        return
    rows = []
    for size in args.sizes.split(","):
        for preset in args.presets.split(","):
            cmd = [sys.executable, __file__, "--one", f"{size}:{preset}", "--steps", str(args.steps),
                   "--repeats", str(args.repeats), "--seed", str(args.seed)]
            result = subprocess.run(cmd, capture_output=True, text=True, check=True)
            rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
            row = rows[-1]
            print(f"{size:>14} {preset:>18}: {row['ms_per_step']:8.1f} ms/step "
                  f"({row['ms_per_step'] / row['floor_ms']:.2f}x floor), extra peak {row['extra_peak_mb']:.0f} MB "
                  f"({row['extra_peak_mb'] / row['logits_mb']:.2f}x logits)", flush=True)
    report = {"machine": {"torch": torch.__version__, "threads": torch.get_num_threads()}, "rows": rows}
    if args.model_dir:
        report["model"] = measure_model(args.model_dir, args.model_steps, args.model_samples, args.repeats,
                                        args.model_spec)
        m = report["model"]
        print(f"generate on {args.model_dir}: {m['total_ms']:.0f} ms for {m['num_samples']} x {m['seq_len']} "
              f"at {m['nfe']:.0f} NFE: model {m['model_ms']:.0f} ms, sampler {m['sampler_ms']:.0f} ms "
              f"({100 * m['sampler_share']:.0f}%)")
    print(table(rows))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(report, indent=2))
        (out / "results.md").write_text(table(rows) + "\n")


if __name__ == "__main__":
    main()
