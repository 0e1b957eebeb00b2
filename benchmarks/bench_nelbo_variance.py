"""How noisy the teacher's training signal is under each NELBO estimator (`diffusion.masking`).

    python benchmarks/bench_nelbo_variance.py RUN_DIR [--draws 16] [--batches 4] [--fresh 32]

RUN_DIR is a `fewstep teacher` run (its config.yaml, tokenizer.json and model/). For its exported
weights and for the same architecture at initialisation, and for each masking, on training batches
of the run's batch size, through `TeacherModule.nelbo` (the loss training uses):

- estimator noise: several draws of masks on one fixed batch; the spread of the loss and of the
  gradient (E|g - mean g|^2 / |mean g|^2, averaged over `--batches` batches);
- what SGD sees: one draw on each of `--fresh` different batches (data noise plus estimator noise);
  the same relative gradient variance, measured against the mean gradient over those batches.

Both maskings estimate the same NELBO, so their mean losses agree to within the noise. Writes
`<run>/../nelbo_variance.json` only with `--out`; prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from fewstep.core.config import load_config
from fewstep.core.diffusion import MASKINGS, make_schedule
from fewstep.data.sources import build_data
from fewstep.model.denoiser import build_denoiser
from fewstep.model.model_dir import load_model_dir
from fewstep.summary import format_table
from fewstep.teacher.config import TeacherRunConfig
from fewstep.teacher.module import TeacherModule


def _loss_and_grad(module: TeacherModule, batch: torch.Tensor, seed: int) -> tuple[float, torch.Tensor]:
    module.zero_grad(set_to_none=True)
    loss = module.nelbo(batch, generator=torch.Generator().manual_seed(seed))
    loss.backward()
    grad = torch.cat([p.grad.reshape(-1) for p in module.parameters() if p.grad is not None])
    return loss.detach().item(), grad.double()


def _relative_variance(grads: list[torch.Tensor]) -> float:
    stacked = torch.stack(grads)
    mean = stacked.mean(0)
    return float(((stacked - mean) ** 2).sum(-1).mean() / (mean ** 2).sum())


def measure(module: TeacherModule, train: torch.Tensor, batch_size: int, draws: int, batches: int, fresh: int
            ) -> dict[str, float]:
    fixed_sd, fixed_var, means = [], [], []
    for b in range(batches):
        batch = train[b * batch_size:(b + 1) * batch_size]
        results = [_loss_and_grad(module, batch, seed=1000 * b + d) for d in range(draws)]
        losses = [loss for loss, _ in results]
        fixed_sd.append(statistics.stdev(losses))
        fixed_var.append(_relative_variance([grad for _, grad in results]))
        means.append(statistics.fmean(losses))
    start = batches * batch_size
    results = [_loss_and_grad(module, train[start + i * batch_size:start + (i + 1) * batch_size], seed=7 + i)
               for i in range(fresh)]
    fresh_losses = [loss for loss, _ in results]
    return {"loss": statistics.fmean(means), "loss_sd_fixed_batch": statistics.fmean(fixed_sd),
            "grad_rel_var_fixed_batch": statistics.fmean(fixed_var),
            "loss_sd_fresh_batches": statistics.stdev(fresh_losses),
            "grad_rel_var_fresh_batches": _relative_variance([grad for _, grad in results])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a fewstep teacher run (config.yaml, tokenizer.json, model/)")
    parser.add_argument("--draws", type=int, default=16, help="mask draws per fixed batch (default 16)")
    parser.add_argument("--batches", type=int, default=4, help="fixed batches (default 4)")
    parser.add_argument("--fresh", type=int, default=32, help="batches with one draw each (default 32)")
    parser.add_argument("--out", default=None, help="write the rows as JSON here (a new file)")
    args = parser.parse_args()
    run = Path(args.run_dir)
    cfg = load_config(TeacherRunConfig, str(run / "config.yaml"))
    loaded = load_model_dir(run / "model")
    data = build_data(cfg.data, tokenizer=loaded.tokenizer) if cfg.data.source not in ("markov", "anagram") \
        else build_data(cfg.data)
    batch_size = cfg.trainer.batch_size
    needed = (args.batches + args.fresh) * batch_size
    if len(data.train) < needed:
        print(f"error: {run} has {len(data.train)} training sequences; this needs {needed}", file=sys.stderr)
        return 1
    train = data.train[torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))[:needed]]
    schedule = make_schedule(cfg.diffusion.noise_schedule, cfg.diffusion.eps)
    torch.manual_seed(cfg.trainer.seed)
    models = {"trained (model/)": loaded.denoiser,
              "at initialisation": build_denoiser(cfg.model, loaded.tokenizer, loaded.denoiser.mask_id,
                                                  cfg.data.seq_len)}
    rows = []
    for state, denoiser in models.items():
        denoiser.train()
        for masking in MASKINGS:
            module = TeacherModule(denoiser, schedule, cfg.optim, max_steps=1, masking=masking)
            row = {"weights": state, "masking": masking,
                   **measure(module, train, batch_size, args.draws, args.batches, args.fresh)}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    print(f"{run}: batch {batch_size} x {cfg.data.seq_len} tokens, {args.draws} draws on {args.batches} fixed "
          f"batches, {args.fresh} fresh batches")
    print(format_table(rows, list(rows[0])))
    if args.out:
        with open(args.out, "x") as handle:
            json.dump(rows, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
