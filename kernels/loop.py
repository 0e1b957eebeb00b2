"""A fixed-step sampling loop (denoiser forward -> `denoise_step`) with static shapes and no host sync.

Because nothing in a step waits on the host, the whole N-step loop can be captured once in a CUDA graph
and replayed: `generate_static(..., cuda_graph=True)`, or keep a `StaticLoop` to replay it many times.
On the CPU it simply runs eagerly.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from fewstep.kernels.step import denoise_step, triton_available

__all__ = ["RULES", "StaticLoop", "count_host_syncs", "even_counts", "generate_static"]

RULES = ("confidence", "random", "threshold")


def even_counts(num_masked: torch.Tensor, steps: int) -> torch.Tensor:
    """Reveal counts [steps, B] that spread each row's masked positions evenly over `steps` (on device)."""
    i = torch.arange(steps + 1, device=num_masked.device).unsqueeze(1)
    edges = torch.div(num_masked.unsqueeze(0) * i, steps, rounding_mode="floor")
    return edges[1:] - edges[:-1]


class StaticLoop:
    """N denoising steps over a fixed [B, L] shape; with `cuda_graph` captured once, then replayed.

    rule: "confidence" (top-k by the sampled token's probability, k from `even_counts`), "random" (k
    positions in a random order drawn once per call: MDLM's ancestral rule), or "threshold" (every
    position whose probability >= `threshold`, at least one). The denoiser maps tokens [B, L] to
    logits [B, L, V] (or an output with `.logits`).
    """

    def __init__(self, model: Callable, batch: int, length: int, mask_id: int, steps: int, *,
                 device: torch.device | str, temperature: float = 1.0, rule: str = "confidence",
                 threshold: float = 0.9, cuda_graph: bool = False, backend: str = "auto") -> None:
        if rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.device = torch.device(device)
        if cuda_graph and (self.device.type != "cuda" or not triton_available() or backend == "torch"):
            raise ValueError("cuda_graph=True needs a CUDA device and the Triton backend")
        self.model, self.mask_id, self.steps = model, mask_id, steps
        self.temperature, self.rule, self.threshold, self.backend = temperature, rule, threshold, backend
        self.tokens = torch.full((batch, length), mask_id, dtype=torch.int64, device=self.device)
        self.seed = torch.zeros(1, dtype=torch.int64, device=self.device)
        self.order = torch.zeros(batch, length, dtype=torch.float32, device=self.device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.output: torch.Tensor | None = None
        self.cuda_graph = cuda_graph

    def step(self, x: torch.Tensor, i: int, counts: torch.Tensor | None) -> torch.Tensor:
        """One denoising step i: forward, then the fused step."""
        out = self.model(x)
        logits = getattr(out, "logits", out)
        kwargs: dict = {"threshold": self.threshold} if self.rule == "threshold" else {"count": counts[i]}
        if self.rule == "random":
            kwargs["scores"] = self.order
        return denoise_step(logits, x, self.mask_id, temperature=self.temperature, seed=self.seed, offset=i,
                            backend=self.backend, **kwargs).tokens

    def run(self) -> torch.Tensor:
        """The loop over the static input buffer, eagerly."""
        x = self.tokens
        counts = even_counts((x == self.mask_id).sum(dim=1), self.steps) if self.rule != "threshold" else None
        for i in range(self.steps):
            x = self.step(x, i, counts)
        return x

    def _capture(self) -> None:
        side = torch.cuda.Stream(device=self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            self.run()  # warm-up: compiles the kernels and initialises the libraries outside the capture
        torch.cuda.current_stream(self.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.output = self.run()

    @torch.no_grad()
    def __call__(self, tokens: torch.Tensor, seed: int = 0) -> torch.Tensor:
        """Denoise `tokens` [B, L] (mask_id where unknown) in `steps` steps; returns new tokens."""
        if tokens.shape != self.tokens.shape:
            raise ValueError(f"tokens must have shape {list(self.tokens.shape)}, got {list(tokens.shape)}")
        self.tokens.copy_(tokens)
        self.seed.fill_(seed)
        if self.rule == "random":
            gen = torch.Generator(device=self.device).manual_seed(seed)
            self.order.copy_(torch.rand(self.order.shape, generator=gen, device=self.device))
        if not self.cuda_graph:
            return self.run()
        if self.graph is None:
            self._capture()
        self.graph.replay()
        return self.output.clone()


def generate_static(model: Callable, tokens: torch.Tensor, mask_id: int, steps: int, *, temperature: float = 1.0,
                    rule: str = "confidence", threshold: float = 0.9, seed: int = 0, cuda_graph: bool = False,
                    backend: str = "auto") -> torch.Tensor:
    """Denoise `tokens` in exactly `steps` fused steps (captured in a CUDA graph when `cuda_graph`)."""
    loop = StaticLoop(model, tokens.shape[0], tokens.shape[1], mask_id, steps, device=tokens.device,
                      temperature=temperature, rule=rule, threshold=threshold, cuda_graph=cuda_graph,
                      backend=backend)
    return loop(tokens, seed)


def count_host_syncs(fn: Callable[[], object]) -> int:
    """How many host synchronisations torch reports while `fn` runs (CUDA only; 0 on the CPU)."""
    if not torch.cuda.is_available():
        return 0
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fn()
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    torch.cuda.synchronize()
    return sum("synchroniz" in str(w.message) for w in caught)
