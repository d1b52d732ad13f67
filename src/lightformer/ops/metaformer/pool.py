"""PoolFormer's pooling mixer, fast path (same signature and semantics as ``naive.avg_pool``): O(pool_size·T·D).

The window sum is pool_size shifted slices of one zero-padded copy of x added together (no cumulative sum, whose
differences would lose precision over long sequences), the count the same sum over the 0/1 real-token mask (or,
without a mask, a closed form per position). Works in x's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _window_sum(z: Tensor, pool_size: int, left: int, t: int) -> Tensor:
    """Σ_{j < pool_size} z[:, i − left + j] for i < t, where ``z`` is already padded by ``left`` rows in front and
    enough rows behind; ``[B, left + t + right, C] -> [B, t, C]``."""
    total = z[:, 0:t]
    for j in range(1, pool_size):
        total = total + z[:, j:j + t]
    return total


def avg_pool(x: Tensor, pool_size: int, *, causal: bool, key_padding_mask: Tensor | None = None,
             initial_state: Tensor | None = None, start: int = 0,
             output_final_state: bool = False) -> tuple[Tensor, Tensor | None]:
    """y_t = mean of the real tokens of window(t) − x_t, ``x [B, T, D] -> ([B, T, D], window or None)``.

    See ``naive.avg_pool`` for window(t), the state (``initial_state [B, pool_size − 1, D]``, ``start``) and the
    handling of padded positions.
    """
    b, t, d = x.shape
    k = pool_size
    if causal:
        left, right = k - 1, 0
    else:
        if k % 2 == 0:
            raise ValueError(f"pool_size must be odd when causal=False (a centred window), got {k}")
        left = right = k // 2
    has_state = causal and initial_state is not None
    if key_padding_mask is None and not has_state:
        total = _window_sum(F.pad(x, (0, 0, left, right)), k, left, t)
        i = torch.arange(t, device=x.device)
        count = (torch.clamp(i + right, max=t - 1) - torch.clamp(i - left, min=0) + 1).to(x.dtype)[:, None]
        final = None
        if causal and output_final_state:
            final = F.pad(x, (0, 0, k - 1, 0))[:, t:t + k - 1]  # the last k − 1 rows of (zeros, x)
        return total / count - x, final
    real = torch.ones(b, t, dtype=torch.bool, device=x.device) if key_padding_mask is None else key_padding_mask
    xr = torch.where(real[..., None], x, torch.zeros((), dtype=x.dtype, device=x.device))
    w = real[..., None].to(x.dtype)  # [B, T, 1]
    if has_state:
        window = initial_state.to(x.dtype)
        seen = (torch.arange(k - 1, device=x.device) >= k - 1 - start).to(x.dtype)
        full = torch.cat([window, x], dim=1)
        zx = torch.cat([window * seen[:, None], xr], dim=1)  # the window already holds zeros for unseen rows
        zw = torch.cat([seen[None, :, None].expand(b, k - 1, 1), w], dim=1)
        final = full[:, full.shape[1] - (k - 1):] if output_final_state else None
    else:
        zx, zw = F.pad(xr, (0, 0, left, right)), F.pad(w, (0, 0, left, right))
        final = F.pad(x, (0, 0, k - 1, 0))[:, t:t + k - 1] if (causal and output_final_state) else None
    total = _window_sum(zx, k, left, t)
    count = _window_sum(zw, k, left, t)
    return total / count.clamp(min=1.0) - x, final
