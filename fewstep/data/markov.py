"""The embedded `markov` task: a fixed sparse random Markov chain with exact answers.

Everything about it is computable: the exact NLL of any sequence, the entropy rate, which
transitions are invalid, and the exact conditional of every masked position given the revealed
ones (forward-backward). `MarkovOracle` wraps that conditional as a denoiser, so sampler error can
be measured with model error set to zero.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from fewstep.data.config import MarkovConfig

__all__ = ["MarkovChain", "MarkovOracle", "SMOOTHING"]

# Exact NLL charges an invalid transition as if the chain were mixed with this much uniform noise,
# so that one impossible transition gives a large finite penalty instead of an infinite mean.
SMOOTHING = 1e-3


class MarkovChain:
    """A stationary Markov chain over `S` states; state `s` is token id `s`, the mask id is `S`."""

    def __init__(self, transition: torch.Tensor) -> None:
        if transition.ndim != 2 or transition.shape[0] != transition.shape[1]:
            raise ValueError("transition must be a square [S, S] matrix")
        self.transition = transition.to(torch.float64)
        self.num_states = transition.shape[0]
        self.initial = self._stationary(self.transition)

    @classmethod
    def from_config(cls, cfg: MarkovConfig) -> MarkovChain:
        """Draw the chain: each state gets `branching` successors with Dirichlet weights.

        Successor `s+1 (mod S)` is always included, so the chain is irreducible and its stationary
        distribution is unique.
        """
        rng = np.random.default_rng(cfg.seed)
        size = cfg.num_states
        transition = np.zeros((size, size))
        for state in range(size):
            forced = (state + 1) % size
            others = rng.permutation([s for s in range(size) if s != forced])[: cfg.branching - 1]
            successors = np.concatenate([[forced], others]).astype(int)
            transition[state, successors] = rng.dirichlet(np.full(cfg.branching, cfg.concentration))
        return cls(torch.from_numpy(transition))

    @staticmethod
    def _stationary(transition: torch.Tensor) -> torch.Tensor:
        size = transition.shape[0]
        system = torch.cat([(transition - torch.eye(size, dtype=torch.float64)).T,
                            torch.ones(1, size, dtype=torch.float64)])
        rhs = torch.zeros(size + 1, dtype=torch.float64)
        rhs[-1] = 1.0
        solution = torch.linalg.lstsq(system, rhs.unsqueeze(1)).solution.squeeze(1)
        solution = solution.clamp_min(0)
        return solution / solution.sum()

    # ----------------------------------------------------------------- sampling and scoring
    def sample(self, num: int, seq_len: int, seed: int = 0) -> torch.Tensor:
        """`num` sequences of length `seq_len` from the stationary chain, as int64 [num, seq_len]."""
        generator = torch.Generator().manual_seed(seed)
        out = torch.empty(num, seq_len, dtype=torch.long)
        out[:, 0] = torch.multinomial(self.initial.expand(num, -1), 1, generator=generator).squeeze(1)
        for i in range(1, seq_len):
            out[:, i] = torch.multinomial(self.transition[out[:, i - 1]], 1, generator=generator).squeeze(1)
        return out

    def _checked(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens.to("cpu", torch.long)
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [batch, seq_len], got shape {tuple(tokens.shape)}")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.num_states):
            raise ValueError(
                f"tokens must be chain states in [0, {self.num_states}); a mask token (id {self.num_states}) "
                "or a foreign id cannot be scored"
            )
        return tokens

    def nll(self, tokens: torch.Tensor, smoothing: float = SMOOTHING) -> torch.Tensor:
        """Exact negative log-likelihood (nats) of each sequence, [batch].

        Invalid transitions are charged at probability `smoothing / S` (see `SMOOTHING`); valid
        sequences score within `-L·log(1 - smoothing)` of their exact NLL.
        """
        tokens = self._checked(tokens)
        mixed = (1 - smoothing) * self.transition + smoothing / self.num_states
        initial = (1 - smoothing) * self.initial + smoothing / self.num_states
        nll = -initial[tokens[:, 0]].log()
        if tokens.shape[1] > 1:
            nll = nll - mixed[tokens[:, :-1], tokens[:, 1:]].log().sum(dim=1)
        return nll

    def invalid_rate(self, tokens: torch.Tensor) -> float:
        """Fraction of transitions (over all sequences) that have probability zero under the chain."""
        tokens = self._checked(tokens)
        if tokens.shape[1] < 2:
            return 0.0
        invalid = self.transition[tokens[:, :-1], tokens[:, 1:]] == 0
        return invalid.double().mean().item()

    def entropy_rate(self) -> float:
        """The chain's entropy rate in nats per token: sum_s pi(s) H(T[s, :])."""
        p = self.transition
        row_entropy = -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(dim=1)
        return float((self.initial * row_entropy).sum())

    def expected_nll(self, seq_len: int) -> float:
        """Exact expected NLL (nats) of a length-`seq_len` sequence: H(pi) + (L - 1) * entropy rate."""
        pi = self.initial
        initial_entropy = -(pi * torch.where(pi > 0, pi.log(), torch.zeros_like(pi))).sum()
        return float(initial_entropy) + (seq_len - 1) * self.entropy_rate()

    # ----------------------------------------------------------------- exact conditionals
    def posterior(self, tokens: torch.Tensor, mask_id: int) -> torch.Tensor:
        """p(x_i = s | revealed tokens) for every position, float64 [batch, seq_len, S].

        Forward-backward with the revealed tokens as evidence. Transitions get a 1e-12 floor so that
        contexts the chain cannot produce (a few-step sampler makes them) still give a distribution,
        dominated by the explanations with the fewest invalid transitions.
        """
        tokens = tokens.to("cpu", torch.long)
        batch, length = tokens.shape
        size = self.num_states
        transition = self.transition + 1e-12
        revealed = tokens != mask_id
        evidence = torch.ones(batch, length, size, dtype=torch.float64)
        evidence[revealed] = 0.0
        rows = revealed.nonzero(as_tuple=True)
        evidence[rows[0], rows[1], tokens[revealed]] = 1.0

        forward = torch.empty(batch, length, size, dtype=torch.float64)
        current = (self.initial + 1e-12) * evidence[:, 0]
        forward[:, 0] = current / current.sum(dim=1, keepdim=True)
        for i in range(1, length):
            current = (forward[:, i - 1] @ transition) * evidence[:, i]
            forward[:, i] = current / current.sum(dim=1, keepdim=True)
        backward = torch.empty_like(forward)
        backward[:, -1] = 1.0 / size
        for i in range(length - 2, -1, -1):
            current = (evidence[:, i + 1] * backward[:, i + 1]) @ transition.T
            backward[:, i] = current / current.sum(dim=1, keepdim=True)
        joint = forward * backward
        return joint / joint.sum(dim=2, keepdim=True)


class MarkovOracle(nn.Module):
    """A denoiser that returns the exact conditional of each masked position (log-probabilities).

    Same interface as `Denoiser`: `forward(z, t=None)` -> logits [batch, seq_len, S + 1] with the
    mask logit at -inf; revealed positions carry their own token (SUBS carry-over).
    """

    def __init__(self, chain: MarkovChain) -> None:
        super().__init__()
        self.chain = chain
        self.mask_id = chain.num_states
        self.vocab_size = chain.num_states + 1
        self.time_conditioning = False

    def forward(self, z: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        probs = self.chain.posterior(z, self.mask_id)
        logits = torch.full((*z.shape, self.vocab_size), -math.inf, dtype=torch.float64)
        logits[..., : self.mask_id] = probs.log()
        return logits.to(z.device)
