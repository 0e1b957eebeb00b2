"""Benchmark the fused denoising step: effective bandwidth, speed-up over torch, loop latency, host syncs.

    python benchmarks/bench_kernels.py [--device cuda|cpu] [--quick] [--out FILE.json]

Per (vocab, rows, temperature): median time of the torch reference eagerly, the same maths under
torch.compile, and the Triton kernel (CUDA only); effective GB/s = bytes of logits read / median time,
against the device's copy bandwidth (read + write bytes of a large copy / time). Then the latency of
one step inside the sampling loop (tiny denoiser forward + step) with and without a CUDA graph, and
the host synchronisations per step. Prints a markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time
from collections.abc import Callable

import torch

from fewstep.kernels import denoise_step, triton_available
from fewstep.kernels.reference import gumbel_from_uniform, reference_step
from fewstep.samplers.presets import sampler_from_spec
from fewstep.samplers.static_loop import count_host_syncs

MASK_ID = 0


def median_seconds(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median wall time of fn() over `repeats` runs after `warmup` runs (synchronised on CUDA)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def copy_bandwidth(device: torch.device, nbytes: int) -> float:
    """Bytes read + written per second by a large device copy."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    seconds = median_seconds(lambda: dst.copy_(src), device, repeats=10)
    return 2 * nbytes / seconds


def torch_step(logits: torch.Tensor, tokens: torch.Tensor, temperature: float, count: torch.Tensor):
    """The plain-torch step with its own float64 noise: what the kernel replaces."""
    noise = None
    if temperature > 0:
        noise = gumbel_from_uniform(torch.rand(logits.shape, dtype=torch.float64, device=logits.device))
    return reference_step(logits, tokens, MASK_ID, temperature, noise, count, None, None, False)


def bench_step(device: torch.device, vocab: int, rows: int, temperature: float, repeats: int,
               compiled_step: Callable | None) -> dict:
    length = min(rows, 1024)
    batch = rows // length
    logits = torch.randn(batch, length, vocab, device=device).mul_(3).to(torch.bfloat16)
    tokens = torch.full((batch, length), MASK_ID, device=device)
    count = torch.full((batch,), max(1, length // 8), dtype=torch.int64, device=device)
    row = {"vocab": vocab, "rows": rows, "temperature": temperature, "bytes": logits.numel() * logits.element_size()}
    row["torch_eager_s"] = median_seconds(lambda: torch_step(logits, tokens, temperature, count), device, repeats)
    if compiled_step is not None:
        row["torch_compile_s"] = median_seconds(lambda: compiled_step(logits, tokens, temperature, count), device,
                                                repeats)
    if device.type == "cuda" and triton_available():
        row["triton_s"] = median_seconds(
            lambda: denoise_step(logits, tokens, MASK_ID, temperature=temperature, seed=1, count=count,
                                 backend="triton"), device, repeats)
    for key in ("torch_eager_s", "torch_compile_s", "triton_s"):
        if key in row:
            row[key.replace("_s", "_gbps")] = row["bytes"] / row[key] / 1e9
    if "triton_s" in row:
        row["speedup_vs_eager"] = row["torch_eager_s"] / row["triton_s"]
        if "torch_compile_s" in row:
            row["speedup_vs_compile"] = row["torch_compile_s"] / row["triton_s"]
    return row


class LoopModel(torch.nn.Module):
    """A stand-in denoiser: embedding, one mixing layer, LM head (tokens [B, L] -> logits [B, L, V])."""

    def __init__(self, vocab: int, width: int) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, width)
        self.mix = torch.nn.Linear(width, width)
        self.head = torch.nn.Linear(width, vocab, bias=False)

    time_conditioning = False

    def forward(self, tokens: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        h = self.embed(tokens)
        return self.head(torch.tanh(self.mix(h)))


def bench_loop(device: torch.device, vocab: int, batch: int, length: int, steps: int, repeats: int,
               spec: str = "llada") -> dict:
    """The product's sampling loop (`Sampler`, preset `spec`): eager static loop against the CUDA graph."""
    model = LoopModel(vocab, 256).to(device).eval()
    model.mask_id, model.vocab_size = MASK_ID, vocab
    if device.type == "cuda":
        model = model.to(torch.bfloat16)
    sampler = sampler_from_spec(spec, steps)
    out = {"vocab": vocab, "batch": batch, "length": length, "steps": steps, "sampler": spec}

    def run(graph: bool, seed: int = 1):
        return sampler.generate(model, batch, length, steps, seed=seed, device=device, static=True, cuda_graph=graph)

    out["eager_step_s"] = median_seconds(lambda: run(False), device, repeats) / steps
    if device.type == "cuda" and triton_available():
        out["graph_step_s"] = median_seconds(lambda: run(True), device, repeats) / steps
        out["host_syncs_per_step"] = count_host_syncs(lambda: run(False, seed=2)) / steps
    return out


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads), no GPU"


def fmt(value: float | None, scale: float = 1.0, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value * scale:.{digits}f}"


def markdown(result: dict) -> str:
    lines = [f"Device: {result['device']}; copy bandwidth {result['copy_gbps']:.1f} GB/s; logits bf16, all rows "
             "masked, count rule.", "",
             "| V | rows | T | torch eager ms | torch.compile ms | Triton ms | Triton GB/s | % of copy | x eager "
             "| x compile |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["step"]:
        pct = r["triton_gbps"] / result["copy_gbps"] * 100 if "triton_gbps" in r else None
        lines.append(f"| {r['vocab']} | {r['rows']} | {r['temperature']:g} | {fmt(r['torch_eager_s'], 1e3, 3)} | "
                     f"{fmt(r.get('torch_compile_s'), 1e3, 3)} | {fmt(r.get('triton_s'), 1e3, 3)} | "
                     f"{fmt(r.get('triton_gbps'), 1, 1)} | {fmt(pct, 1, 0)} | {fmt(r.get('speedup_vs_eager'))} | "
                     f"{fmt(r.get('speedup_vs_compile'))} |")
    loop = result["loop"]
    lines += ["", "| loop (V, B x L, steps) | eager ms/step | CUDA graph ms/step | host syncs/step |",
              "|---|---|---|---|",
              f"| {loop['vocab']}, {loop['batch']} x {loop['length']}, {loop['steps']} | "
              f"{fmt(loop['eager_step_s'], 1e3, 3)} | {fmt(loop.get('graph_step_s'), 1e3, 3)} | "
              f"{fmt(loop.get('host_syncs_per_step'), 1, 0)} |"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    parser.add_argument("--quick", action="store_true", help="fewer shapes and repeats")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cpu = device.type == "cpu"
    vocabs = [32000, 128256]
    # The float64 reference at [16k, 128k] needs tens of GB and minutes per call: the CPU run stops at 256 rows.
    rows_list = [32, 256] if cpu else [32, 1024] if args.quick else [32, 1024, 16384]
    repeats = 3 if cpu or args.quick else 20
    compiled = None if args.no_compile else torch.compile(torch_step, dynamic=False)
    result = {"device": device_name(device), "date": datetime.date.today().isoformat(),
              "torch": torch.__version__, "copy_gbps": copy_bandwidth(device, 1 << (28 if cpu else 30)) / 1e9,
              "step": [], "loop": {}}
    for vocab in vocabs:
        for rows in rows_list:
            for temperature in (0.0, 1.0):
                row = bench_step(device, vocab, rows, temperature, repeats, compiled)
                result["step"].append(row)
                print(json.dumps(row), flush=True)
    result["loop"] = bench_loop(device, 32000 if not cpu else 8192, 8, 256 if not cpu else 64, 16,
                                3 if cpu or args.quick else 20)
    table = markdown(result)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({**result, "table": table}, f, indent=2)
    return result


if __name__ == "__main__":
    main()
