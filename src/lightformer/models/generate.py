"""Autoregressive sampling with temperature and top-k, through the mixers' decode path or by full re-forward."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .heads import LanguageModel


def sample_next(logits: Tensor, *, temperature: float, top_k: int | None,
                generator: torch.Generator | None) -> Tensor:
    """Pick one token per row of ``logits [B, V]``: greedy when ``temperature == 0``, else sample from
    ``softmax(logits / temperature)`` restricted to the ``top_k`` largest logits."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)[:, 0]


@torch.no_grad()
def generate(model: "LanguageModel", idx: Tensor, max_new_tokens: int, *, temperature: float = 1.0,
             top_k: int | None = None, use_cache: bool = True, generator: torch.Generator | None = None) -> Tensor:
    """Extend ``idx [B, T0]`` (T0 >= 1) by ``max_new_tokens`` tokens -> ``[B, T0 + max_new_tokens]``.

    With ``use_cache`` the prompt is prefilled in one pass (``model.prefill``) and each new token goes through
    ``model.step`` (KV cache or recurrent state, O(1) per token in T for recurrent mixers); otherwise every token re-runs the whole sequence. Greedy decoding
    (``temperature=0``) gives the same tokens both ways.

    Raises:
        ValueError: bad ``max_new_tokens``/``temperature``/``top_k``, an empty prompt, or a prompt plus new tokens
            longer than ``max_len`` with absolute positions; NotImplementedError: ``use_cache`` with a mixer that has
            no decode path.
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k <= 0:
        raise ValueError(f"top_k must be positive, got {top_k}")
    if idx.dim() != 2 or idx.shape[1] == 0:
        raise ValueError(f"idx must be a non-empty prompt [B, T0], got shape {tuple(idx.shape)}")
    cfg = model.config
    if cfg.position in ("learned", "sinusoidal") and idx.shape[1] + max_new_tokens > cfg.max_len:
        raise ValueError(f"max_new_tokens={max_new_tokens}: prompt ({idx.shape[1]}) + new tokens exceed "
                         f"max_len={cfg.max_len} of the model's {cfg.position} positions")
    was_training = model.training
    model.eval()
    try:
        out = idx
        if use_cache:
            logits, state = model.prefill(idx)  # the whole prompt in one pass per layer
            logits = logits[:, -1]
            for _ in range(max_new_tokens):
                nxt = sample_next(logits, temperature=temperature, top_k=top_k, generator=generator)
                out = torch.cat([out, nxt[:, None]], dim=1)
                if out.shape[1] < idx.shape[1] + max_new_tokens:
                    logits, state = model.step(nxt, state)
        else:
            for _ in range(max_new_tokens):
                logits, _ = model(out)
                nxt = sample_next(logits[:, -1], temperature=temperature, top_k=top_k, generator=generator)
                out = torch.cat([out, nxt[:, None]], dim=1)
        return out
    finally:
        model.train(was_training)
