"""``moe``: a sparsely-gated mixture-of-experts FFN (Shazeer et al. 2017, "Outrageously Large Neural Networks: The
Sparsely-Gated Mixture-of-Experts Layer") with top-k token routing, a capacity limit per expert and the Switch
Transformer's load-balancing loss (Fedus et al. 2022, "Switch Transformers: Scaling to Trillion Parameter Models
with Simple and Efficient Sparsity", Eqs. 4-6).

- Router: a bias-free linear map ``D -> E`` computed in fp32 (or wider) with autocast off, the Switch paper's
  "selective precision" (Sec. 2.4); no jitter or noise.
- Experts: ``E`` GELU MLPs (the ``mlp`` FFN: ``fc1 -> gelu -> fc2``), each of the hidden width the model's
  ``ffn_mult`` gives one dense FFN (``int(mult · D)``, or ``hidden``), as each Switch expert is a whole FFN; the
  layer holds E times the dense FFN's parameters and spends k times its FLOPs per token.
- Combine weights: a softmax over the token's top-k logits, i.e. renormalised over the chosen experts, as Shazeer
  et al. 2017 (Eqs. 3-5, KeepTopK then Softmax, here without noise) and Mixtral (Jiang et al. 2024, "Mixtral of
  Experts", Sec. 2.1: ``Softmax(TopK(x · W_g))``) do, not the Switch paper's raw probability ``p_i(x)``. With
  ``top_k = 1`` the gate is then the constant 1 and the router learns through the balancing loss alone.
- Capacity (training mode only): each expert takes at most ``ceil(capacity_factor · k · N / E)`` of the N tokens
  of one forward (Switch, Eq. 3, times k for k choices per token). Slots are filled rank by rank, then in token
  order: every token's first choice before any second choice, as GShard's top-2 gating does (Lepikhin et al. 2021,
  Algorithm 1). A (token, expert) assignment past an expert's capacity is dropped: the token's output is the
  weighted sum of its remaining experts (zero when all were dropped; the residual connection carries the token).
- Eval mode is dropless: every token gets all its k experts, so a token's output does not depend on which other
  tokens share the batch (batch independence, and one decoding step ``[B, D]`` equals the sequence forward).
- Load balancing: ``aux = α · E · Σ_i f_i · P_i`` (Switch Eq. 4) with ``P_i`` the mean router probability of expert
  i (Eq. 6) and ``f_i`` the fraction of tokens whose *first* choice is expert i (Eq. 5's argmax, before capacity);
  for ``k > 1`` this is GShard's convention (Algorithm 1 counts each token's top-1 expert), so the loss is ``α``
  under perfectly uniform routing whatever k. Set as ``aux_loss`` by every training-mode forward (None in eval
  mode, where nothing trains on it), summed over layers by ``collect_aux_loss``.
- Statistics (``aux_stats``, every forward): ``moe_tokens`` (N, tokens routed) and ``moe_dropped`` ((token, expert)
  assignments dropped for capacity, out of ``k · N``; always 0 in eval mode).

The fast path sorts the kept assignments by expert and runs each expert once on its gathered tokens
(``index_select``), scattering the gated outputs back with one ``index_add``; nothing of size ``[N, E, hidden]``
is formed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...ops.amp import no_autocast
from ..base import FFN, FFNS, FFNConfig
from .mlp import MLP


@dataclass(frozen=True)
class MoEConfig(FFNConfig):
    """Options of ``moe``.

    Attributes:
        num_experts: E, >= 1.
        top_k: experts per token, in [1, E].
        capacity_factor: slack of each expert's capacity over an even share of the ``k · N`` assignments, > 0
            (Switch's 1.0-1.25; below 1 drops tokens even under perfect balance).
        aux_loss_weight: α of the load-balancing loss, >= 0 (Switch's 0.01).

    Raises:
        ValueError: an option out of range (the message names it).
    """

    num_experts: int = 8
    top_k: int = 2
    capacity_factor: float = 1.25
    aux_loss_weight: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {self.num_experts!r}")
        if not 1 <= self.top_k <= self.num_experts:
            raise ValueError(f"top_k must be in [1, num_experts={self.num_experts}], got {self.top_k!r}")
        if not (self.capacity_factor > 0 and math.isfinite(self.capacity_factor)):
            raise ValueError(f"capacity_factor must be a finite number > 0, got {self.capacity_factor!r}")
        if not (self.aux_loss_weight >= 0 and math.isfinite(self.aux_loss_weight)):
            raise ValueError(f"aux_loss_weight must be a finite number >= 0, got {self.aux_loss_weight!r}")


class Routing(NamedTuple):
    """One forward's routing of N tokens.

    Attributes:
        probs: ``[N, E]`` router softmax over all experts (fp32, or the input's dtype when wider).
        experts: ``[N, k]`` int64 chosen experts, best first.
        gates: ``[N, k]`` combine weights, a softmax over the chosen experts' logits (same dtype as ``probs``).
        keep: ``[N, k]`` bool, False where the assignment was dropped for capacity.
        capacity: tokens each expert may take, or None (eval mode: dropless).
    """

    probs: Tensor
    experts: Tensor
    gates: Tensor
    keep: Tensor
    capacity: int | None


def expert_capacity(num_tokens: int, num_experts: int, top_k: int, capacity_factor: float) -> int:
    """``ceil(capacity_factor · top_k · num_tokens / num_experts)`` (Switch Eq. 3 with k assignments a token)."""
    return math.ceil(capacity_factor * top_k * num_tokens / num_experts)


def within_capacity(experts: Tensor, num_experts: int, capacity: int) -> Tensor:
    """Which assignments of ``experts [N, k]`` fit: each expert keeps its first ``capacity`` assignments in the
    order rank 0 of tokens 0..N-1, then rank 1 of tokens 0..N-1, ... (GShard, Algorithm 1). Returns ``[N, k]``
    bool."""
    n, k = experts.shape
    flat = experts.t().reshape(-1)  # [k·N], rank-major: the priority order
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=num_experts)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.empty_like(flat)
    slot[order] = torch.arange(flat.numel(), device=flat.device) - starts[flat[order]]
    return (slot < capacity).view(k, n).t()


def load_balancing_loss(probs: Tensor, first_choice: Tensor, weight: float) -> Tensor:
    """Switch Transformer load-balancing loss (Fedus et al. 2022, Eq. 4): ``weight · E · Σ_i f_i · P_i``.

    Args:
        probs: ``[N, E]`` router probabilities; ``P_i`` is their mean over tokens (Eq. 6) and carries the gradient.
        first_choice: ``[N]`` int64 expert each token ranks first; ``f_i`` is the fraction of tokens choosing i
            (Eq. 5), not differentiable.
        weight: α.

    Returns:
        A scalar of ``probs``' dtype; 0 for N = 0.
    """
    n, num_experts = probs.shape
    if n == 0:
        return probs.sum() * 0.0
    f = torch.bincount(first_choice, minlength=num_experts).to(probs.dtype) / n
    return weight * num_experts * (f * probs.mean(0)).sum()


@FFNS.register("moe")
class MoE(FFN):
    """x ``[..., D]`` (a sequence ``[B, T, D]`` or one decoding step ``[B, D]``) -> ``[..., D]``, the dtype of the
    experts' output (the input's, or bf16 under autocast).

    Parameters: ``router`` (``[E, D]``, no bias) and ``experts.<i>.fc1`` / ``experts.<i>.fc2``; every expert's
    ``fc2.weight`` is a residual projection (scaled by the model's GPT-2 init).

    Training mode drops assignments over capacity; eval mode is dropless, so eval outputs are batch-independent
    and decoding equals the sequence forward. Sets ``aux_loss`` (training mode; None in eval) and ``aux_stats``
    (``moe_tokens``, ``moe_dropped``) on every forward; see the module docstring for the rules and sources.
    """

    config_class = MoEConfig
    residual_projections = ()  # per instance: one fc2 per expert, set in __init__

    def __init__(self, config: MoEConfig) -> None:
        super().__init__(config)
        hidden = self.hidden(config)
        expert_config = FFNConfig(dim=config.dim, mult=config.mult, bias=config.bias, hidden=hidden)
        self.router = nn.Linear(config.dim, config.num_experts, bias=False)
        self.experts = nn.ModuleList(MLP(expert_config) for _ in range(config.num_experts))
        self.drop = nn.Dropout(config.dropout)
        self.residual_projections = tuple(f"experts.{i}.fc2.weight" for i in range(config.num_experts))
        self.aux_loss: Tensor | None = None
        self.aux_stats: dict[str, float] = {}

    def __getstate__(self) -> dict:
        # the last forward's loss belongs to that forward's graph, not to the module: a copy (copy.deepcopy, which
        # refuses non-leaf tensors) or a pickle starts without it
        state = dict(self.__dict__)
        state["aux_loss"] = None
        return state

    def capacity(self, num_tokens: int) -> int:
        """Tokens each expert may take out of ``num_tokens`` in a training forward."""
        cfg = self.config
        return expert_capacity(num_tokens, cfg.num_experts, cfg.top_k, cfg.capacity_factor)

    def route(self, x: Tensor) -> Routing:
        """Route tokens ``x [N, D]``: top-k experts, their combine weights and (training mode) the capacity cut."""
        cfg = self.config
        dtype = torch.promote_types(x.dtype, torch.float32)
        with no_autocast(x.device):
            logits = F.linear(x.to(dtype), self.router.weight.to(dtype))  # [N, E]
        probs = logits.softmax(-1)
        top_logits, experts = logits.topk(cfg.top_k, dim=-1)  # [N, k], best first
        gates = top_logits.softmax(-1)
        if self.training:
            capacity = self.capacity(x.shape[0])
            keep = within_capacity(experts, cfg.num_experts, capacity)
        else:
            capacity = None
            keep = torch.ones_like(experts, dtype=torch.bool)
        return Routing(probs, experts, gates, keep, capacity)

    def combine(self, x: Tensor, routing: Routing) -> Tensor:
        """``Σ_kept gate · expert(x)`` per token of ``x [N, D]`` -> ``[N, D]``: each expert runs once, on the
        tokens assigned to it."""
        n, k = routing.experts.shape
        expert_ids = routing.experts.reshape(-1)  # [N·k], token-major
        token_ids = torch.arange(n, device=x.device).repeat_interleave(k)
        gates = routing.gates.reshape(-1)
        keep = routing.keep.reshape(-1)
        if not bool(keep.all()):
            expert_ids, token_ids, gates = expert_ids[keep], token_ids[keep], gates[keep]
        order = torch.argsort(expert_ids, stable=True)
        token_ids, gates = token_ids[order], gates[order]
        counts = torch.bincount(expert_ids, minlength=self.config.num_experts).tolist()
        pieces = [expert(x.index_select(0, rows))
                  for expert, rows in zip(self.experts, token_ids.split(counts)) if rows.numel()]
        if not pieces:  # no tokens
            return x.new_zeros(x.shape)
        out = torch.cat(pieces)  # [kept, D], grouped by expert
        out = out * gates.to(out.dtype)[:, None]
        return out.new_zeros(n, out.shape[-1]).index_add(0, token_ids, out)

    def forward(self, x: Tensor) -> Tensor:
        tokens = x.reshape(-1, x.shape[-1])  # [N, D]
        routing = self.route(tokens)
        y = self.combine(tokens, routing)
        cfg = self.config
        self.aux_loss = load_balancing_loss(routing.probs, routing.experts[:, 0], cfg.aux_loss_weight) \
            if self.training else None
        self.aux_stats = {"moe_tokens": float(tokens.shape[0]), "moe_dropped": float((~routing.keep).sum())}
        return self.drop(y.reshape(*x.shape[:-1], y.shape[-1]))
