"""The MoP gate: persona weights pi(x), exemplar weights Omega_k(x) and per-persona temperatures tau_k.

A plain ``nn.Module`` (docs/method.md sections 1-2). Notation: h(.) are frozen, L2-normalised sentence
embeddings of dimension D; the gate projects them to d dimensions:

    x~ = W_x h(x),  g~_k = W_g h(g_k),  e~_j = W_e h(e_j)
    log pi(x)        = log_softmax_k(x~ . g~_k)
    log Omega_k(x)   = log_softmax_j((x~ + g~_k) . e~_j) = log_softmax_j(q_k . h(e_j)),
                       q_k = W_e^T (x~ + g~_k)

No 1/sqrt(d) scaling of the dot products: the projections are initialised with std 1/sqrt(D) so that the gate
starts close to uniform (the "untrained" gate), and the optimiser is free to sharpen it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from mop.errors import MopError


@dataclass
class Candidates:
    """The top-M (persona, exemplar) pairs of each record and their differentiable log weights."""

    persona: torch.Tensor  # (B, M) long persona index k
    exemplar: torch.Tensor  # (B, M) long pool position j (-1 where a record has fewer valid pairs)
    log_weight: torch.Tensor  # (B, M) log pi_k + log Omega_kj (-inf for padding)
    log_pi: torch.Tensor  # (B, K)
    approximate: bool  # True when Omega was normalised over retrieved top-k only
    # (B,) entropy of Omega of each record's top persona, over the exemplars it may use (the retrieved
    # ones when approximate), detached; exp of it is the effective number of exemplars
    omega_entropy: torch.Tensor


class Gate(nn.Module):
    """Learnable projections W_x, W_g, W_e and per-persona log-temperatures."""

    def __init__(self, embed_dim: int, num_personas: int, hidden_dim: int = 128, init_tau: float = 0.6,
                 init_std: float | None = None, seed: int | None = None):
        super().__init__()
        if embed_dim <= 0 or num_personas <= 0 or hidden_dim <= 0:
            raise MopError(f"gate sizes must be positive: embed_dim={embed_dim}, "
                           f"num_personas={num_personas}, hidden_dim={hidden_dim}")
        if init_tau <= 0:
            raise MopError(f"init_tau must be positive, got {init_tau}")
        self.embed_dim, self.num_personas, self.hidden_dim = embed_dim, num_personas, hidden_dim
        self.W_x = nn.Linear(embed_dim, hidden_dim, bias=False)
        self.W_g = nn.Linear(embed_dim, hidden_dim, bias=False)
        self.W_e = nn.Linear(embed_dim, hidden_dim, bias=False)
        self.log_tau = nn.Parameter(torch.full((num_personas,), math.log(init_tau)))
        std = init_std if init_std is not None else 1.0 / math.sqrt(embed_dim)
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        for lin in (self.W_x, self.W_g, self.W_e):
            with torch.no_grad():
                lin.weight.copy_(torch.randn(lin.weight.shape, generator=gen) * std)

    @torch.no_grad()
    def init_retrieval_prior(self, pool: torch.Tensor, scale: float) -> None:
        """Opt-in start (diagnosis of the gate collapse): W_x = W_e = sqrt(scale) P, P the top-d principal
        directions of the pool's embeddings, so W_e^T W_x = scale P^T P and Omega_k(x) starts as a retrieval
        softmax_j(scale h(x)^T P^T P h(e_j)) (plus the small random persona term); W_g stays random."""
        d, D = self.hidden_dim, self.embed_dim
        x = pool.float()
        _, _, vh = torch.linalg.svd(x - x.mean(0), full_matrices=False)
        rows = vh[:d]
        if rows.shape[0] < d:  # fewer principal directions than d: complete with random orthonormal rows
            extra = torch.randn(d - rows.shape[0], D, generator=torch.Generator().manual_seed(0))
            extra = extra - extra @ rows.T @ rows
            rows = torch.cat([rows, torch.linalg.qr(extra.T).Q.T], 0)
        self.W_x.weight.copy_(rows * math.sqrt(scale))
        self.W_e.weight.copy_(rows * math.sqrt(scale))

    @property
    def tau(self) -> torch.Tensor:
        return self.log_tau.exp()

    def log_pi(self, hx: torch.Tensor, hg: torch.Tensor) -> torch.Tensor:
        """(B, D), (K, D) -> (B, K) log persona weights."""
        return torch.log_softmax(self.W_x(hx) @ self.W_g(hg).T, dim=-1)

    def queries(self, hx: torch.Tensor, hg: torch.Tensor,
                personas: torch.Tensor | None = None) -> torch.Tensor:
        """Retrieval queries q_k = W_e^T (x~ + g~_k) in the frozen space: (B, D), (K, D) -> (B, K, D), or
        (B, P, D) for the persona indices ``personas`` (B, P) of each row."""
        g = self.W_g(hg)  # (K, d)
        g = g[None] if personas is None else g[personas]  # (1, K, d) or (B, P, d)
        return (self.W_x(hx)[:, None, :] + g) @ self.W_e.weight

    @staticmethod
    def omega(queries: torch.Tensor, pool: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """log Omega exactly over the pool from queries: (B, P, D), (N, D) -> (B, P, N); ``mask`` (B, N):
        True for the exemplars a row may not use (-inf)."""
        scores = queries @ pool.T
        if mask is not None:
            scores = scores.masked_fill(mask[:, None, :], float("-inf"))
        return torch.log_softmax(scores, dim=-1)

    def log_omega(self, hx: torch.Tensor, hg: torch.Tensor, pool: torch.Tensor,
                  mask: torch.Tensor | None = None, personas: torch.Tensor | None = None) -> torch.Tensor:
        """Exact exemplar weights over the whole pool: (B, K, N) (or (B, P, N) for ``personas``); masked
        exemplars get -inf."""
        return self.omega(self.queries(hx, hg, personas), pool, mask)

    def entropy(self, log_pi: torch.Tensor) -> torch.Tensor:
        return -(log_pi.exp() * log_pi).sum(-1).mean()


def select_candidates(gate: Gate, hx: torch.Tensor, hg: torch.Tensor, pool: torch.Tensor, index,
                      exclude: list[list[int]], num_candidates: int, exact_max_pool: int = 20_000,
                      approx_topk: int = 256, explore: bool = False,
                      generator: torch.Generator | None = None, explore_samples: int = 1) -> Candidates:
    """Top-M (persona, exemplar) pairs by log pi + log Omega, with target masking (docs/method.md section 2).

    The top min(K, M) personas by pi are taken; for each, the index retrieves its best exemplars with the
    query q_k (excluding ``exclude[b]``); the best M pairs are kept. Selection is non-differentiable; the
    returned log weights are. Omega is normalised exactly over the pool (dense) while the pool has at most
    ``exact_max_pool`` exemplars, else over the ``approx_topk`` retrieved exemplars
    (``Candidates.approximate``).

    ``explore`` appends one pair e = (k, j) drawn from the proposal q = ((pi + uniform) / 2,
    (Omega_k + uniform) / 2) (exemplars among the retrieved ones when approximate) with the importance
    weight pi_k Omega_kj / q(e), q detached. A draw that duplicates a selected pair is dropped
    (exemplar -1). Then

        sum_{s in S} pi Omega p_LM(s)  +  1[e not in S] pi_k Omega_kj p_LM(e) / q(e)

    is an unbiased estimate of the full mixture likelihood, not only of its top-M part. Without the second
    term the truncated sum rewards moving mass onto whatever is selected, whatever the LM says (d/d logits
    pi = posterior within S - pi, and S holds the gate's current favourites), and the gate collapses onto
    one persona and one exemplar (measured: 0.999 of Omega on one exemplar for every context after 20
    steps).
    With it, mass moves onto a pair only if the LM likes its text better than the pairs it is taken from.
    ``generator`` makes the draws reproducible (validation uses a fixed one).
    """
    B, K, N = hx.shape[0], hg.shape[0], pool.shape[0]
    log_pi = gate.log_pi(hx, hg)  # (B, K)
    P = min(K, num_candidates)
    top_p = log_pi.detach().topk(P, dim=-1).indices  # (B, P)
    q = gate.queries(hx, hg)  # (B, K, D)
    q_sel = torch.gather(q, 1, top_p[..., None].expand(-1, -1, q.shape[-1]))  # (B, P, D)
    exact = N <= exact_max_pool
    per_persona = min(num_candidates, N) if exact else min(max(approx_topk, num_candidates), N)
    flat_q = q_sel.detach().reshape(B * P, -1).float().cpu().numpy()
    flat_ex = [exclude[b] for b in range(B) for _ in range(P)]
    _, pos = index.search(flat_q, per_persona, exclude=flat_ex)
    pos = torch.as_tensor(np.asarray(pos), dtype=torch.long, device=hx.device).reshape(B, P, per_persona)
    valid = pos >= 0
    safe = pos.clamp(min=0)
    if exact:
        mask = torch.zeros(B, N, dtype=torch.bool, device=hx.device)
        for b, ex in enumerate(exclude):
            if ex:
                mask[b, torch.as_tensor(ex, dtype=torch.long, device=hx.device)] = True
        full = Gate.omega(q_sel, pool, mask)  # (B, P, N)
        log_om = full.gather(2, safe)  # (B, P, per)
    else:  # Omega normalised over the retrieved exemplars only (approximation, logged by the caller)
        retrieved = pool[safe]  # (B, P, per, D)
        scores = (retrieved @ q_sel[..., None]).squeeze(-1).masked_fill(~valid, float("-inf"))
        full = log_om = torch.log_softmax(scores, dim=-1)
    omega_entropy = torch.special.entr(full[:, 0].detach().exp()).sum(-1)  # (B,): the top persona's Omega
    pair = log_pi.gather(1, top_p)[..., None] + log_om  # (B, P, per)
    pair = pair.masked_fill(~valid, float("-inf"))
    M = min(num_candidates, P * per_persona)
    best = pair.detach().reshape(B, -1).topk(M, dim=-1).indices  # (B, M)
    log_weight = pair.reshape(B, -1).gather(1, best)
    persona = top_p.gather(1, best // per_persona)
    exemplar = pos.reshape(B, -1).gather(1, best)
    if explore:
        # explore_samples > 1: S independent draws outside S, each weighted 1/S (an importance-weighted bound
        # with S samples of the out-of-S mass, tighter than one; opt-in, diagnosis of the gate collapse)
        usable = ((~mask).sum(-1, keepdim=True).expand(-1, M) if exact
                  else valid.sum(-1).gather(1, best // per_persona)).float()
        extra = [_add_exploration_pair(log_pi, q, pool, index, exclude, mask if exact else None, per_persona,
                                       persona, exemplar, log_weight, usable=usable, generator=generator)
                 for _ in range(max(1, explore_samples))]
        scale = math.log(len(extra))
        persona = torch.cat([persona, *[e[0][:, M:] for e in extra]], 1)
        exemplar = torch.cat([exemplar, *[e[1][:, M:] for e in extra]], 1)
        log_weight = torch.cat([log_weight, *[e[2][:, M:] - scale for e in extra]], 1)
    return Candidates(persona=persona, exemplar=exemplar, log_weight=log_weight, log_pi=log_pi,
                      approximate=not exact, omega_entropy=omega_entropy)


def _add_exploration_pair(log_pi, q, pool, index, exclude, mask, per_persona, persona, exemplar, log_weight,
                          usable, generator, tries: int = 8):
    """Append one pair drawn from the proposal q restricted to the pairs outside S (rejection sampling over
    ``tries`` draws), weighted by pi_k Omega_kj (1 - q(S)) / q(e): the unbiased estimate of the mass and
    likelihood outside S (see :func:`select_candidates`). ``usable`` (B, M): exemplars Omega_k of each
    selected pair's persona is normalised over. Rows whose every draw fell in S get exemplar -1 (no pair)."""
    B, K = log_pi.shape
    N = pool.shape[0]
    prop_k = 0.5 * log_pi.detach().exp() + 0.5 / K  # (B, K): every persona keeps mass >= 1 / 2K
    k = torch.multinomial(prop_k, tries, replacement=True, generator=generator)  # (B, T)
    q_k = torch.gather(q, 1, k[..., None].expand(-1, -1, q.shape[-1]))  # (B, T, D)
    if mask is not None:
        log_om = Gate.omega(q_k, pool, mask)  # (B, T, N)
        ex_pos = torch.arange(N, device=q.device).expand(B, tries, -1)
    else:
        flat_ex = [exclude[b] for b in range(B) for _ in range(tries)]
        _, got = index.search(q_k.detach().reshape(B * tries, -1).float().cpu().numpy(), per_persona,
                              exclude=flat_ex)
        ex_pos = torch.as_tensor(np.asarray(got), dtype=torch.long, device=q.device).reshape(B, tries, -1)
        ex_scores = (pool[ex_pos.clamp(min=0)] @ q_k[..., None]).squeeze(-1).masked_fill(ex_pos < 0,
                                                                                          float("-inf"))
        log_om = torch.log_softmax(ex_scores, dim=-1)  # (B, T, per): over the retrieved exemplars
    ok = torch.isfinite(log_om).float()
    prop_j = 0.5 * log_om.detach().exp() + 0.5 * ok / ok.sum(-1, keepdim=True)
    pick = torch.multinomial(prop_j.reshape(B * tries, -1), 1, generator=generator).reshape(B, tries, 1)
    j = ex_pos.gather(2, pick).squeeze(-1)  # (B, T)
    in_s = ((persona[:, None, :] == k[..., None]) & (exemplar[:, None, :] == j[..., None])).any(-1)  # (B, T)
    first = (~in_s).float().argmax(-1, keepdim=True)  # (B, 1) the first draw outside S
    found = ~in_s.gather(1, first)
    k1, j1 = k.gather(1, first), j.gather(1, first)
    w = log_pi.gather(1, k1) + log_om.gather(
        1, first[..., None].expand(-1, -1, log_om.shape[-1])).squeeze(1) \
        .gather(1, pick.squeeze(-1).gather(1, first))  # (B, 1) log pi_k Omega_kj, differentiable
    log_q = (prop_k.gather(1, k1) * prop_j.gather(1, first[..., None].expand(-1, -1, prop_j.shape[-1]))
             .squeeze(1).gather(1, pick.squeeze(-1).gather(1, first))).log()  # (B, 1) q(e)
    # q(S): the proposal's mass on the selected pairs (their Omega from log_weight - log pi), detached
    sel = torch.isfinite(log_weight)
    om_s = (log_weight.detach() - log_pi.detach().gather(1, persona)).exp().masked_fill(~sel, 0.0)
    q_s = ((prop_k.gather(1, persona) * (0.5 * om_s + 0.5 / usable)).masked_fill(~sel, 0.0)
           .sum(-1, keepdim=True))
    w = w - log_q + torch.log1p(-q_s.clamp(max=1 - 1e-6))
    persona = torch.cat([persona, k1], 1)
    exemplar = torch.cat([exemplar, j1.masked_fill(~found, -1)], 1)
    log_weight = torch.cat([log_weight, w.masked_fill(~found, float("-inf"))], 1)
    return persona, exemplar, log_weight


def mixture_nll(log_weight: torch.Tensor, log_lik: torch.Tensor) -> torch.Tensor:
    """-log sum_{(k,j) in S_i} pi_k Omega_kj p_LM(y_i | prompt): (B, M), (B, M) -> (B,), in float32."""
    joint = log_weight.float() + log_lik.float()
    return -torch.logsumexp(joint, dim=-1)
