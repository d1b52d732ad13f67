"""``mlstm``: xLSTM's matrix-memory LSTM layer (Beck, Pöppel, Spanring, Auer, Prudnikova, Kopp, Klambauer,
Brandstetter, Hochreiter 2024, "xLSTM: Extended Long Short-Term Memory", NeurIPS 2024, arXiv 2405.04517).

The cell (Sec. 2.3, Eq. 19-27; stabilised as in App. A; ``ops.mlstm.naive`` gives the equations):

    C_t = f_t C_{t−1} + i_t v_t k_tᵀ,   n_t = f_t n_{t−1} + i_t k_t,   h̃_t = C_t q_t / max(|n_tᵀq_t|, 1)
    i_t = exp(ĩ_t),  f_t = σ(f̃_t)

The layer is the reference's pre-up-projection block (``mLSTMLayer`` of NX-AI/xlstm with its
``mLSTMLayerConfig`` defaults; Fig. 10/Sec. B of the paper), x ``[B, T, D]`` -> ``[B, T, D]``:

    (x_m, z)  = proj_up(x)                         D -> 2·E, E = proj_factor·D rounded up to a multiple of 64
    x_c       = SiLU(ShortConv_K(x_m))              causal depthwise convolution, K = conv1d_kernel_size = 4
    q, k      = BlockDiag(x_c),  v = BlockDiag(x_m)  block-diagonal maps with blocks of qkv_proj_blocksize = 4
                                                   (a grouped weight [E/4, 4, 4]: 4·E weights, not E²)
    ĩ, f̃      = W_i [q, k, v] + b_i,  W_f [q, k, v] + b_f     one scalar per head each, from the concatenation
    h̃         = mLSTM(q, k/sqrt(d), v, ĩ, f̃)         H = num_heads = 4 heads of d = E/H (keys scaled as xlstm)
    y         = proj_down((MultiHeadLayerNorm(h̃) + learnable_skip ⊙ x_c) ⊙ SiLU(z))

MultiHeadLayerNorm is a LayerNorm over each head's d features (xlstm's group norm with H groups), weight only, eps
1e-5. Init (``init_weights``, xlstm's ``reset_parameters``): gate weights 0, forget-gate bias linspace(3, 6) over
the heads (f ≈ 0.95-0.998 at start: long memory), input-gate bias N(0, 0.1), learnable_skip and the norm weight 1,
the block-diagonal q/k/v weights N(0, 2/(5·D)) ("small init", with D the model width as xlstm does); proj_up and
proj_down keep the model's init (xlstm's small/Wang init is its own model's choice). xlstm stores the norm weight as
1 + w with w = 0; here it is stored as the weight itself (same function).

Fast path: ``ops.mlstm.chunked`` (chunks of ``chunk_size`` = 64, xLSTMLarge's default), O(T·(C·d + d²)) time and
O(T·E) memory; the reference's own parallel form is O(T²) in memory. The mLSTM cell is causal only. Decoding state
(``MLSTMState``): the matrix memory C ``[B, H, d, d]``, the normaliser n ``[B, H, d]``, the stabiliser m ``[B, H]``
(float32; float64 for float64 inputs) and the convolution window ``[B, K−1, E]``. Padded tokens (key_padding_mask
False) skip the memory (i = 0, f = 1) and enter the convolution as zeros.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..nn.short_conv import ShortConv
from ..nn.state import State
from ..ops.mlstm import chunked, naive, recurrent
from .base import MIXERS, Capabilities, Mixer, MixerConfig
from ..ops.amp import no_autocast


@dataclass(frozen=True)
class MLSTMConfig(MixerConfig):
    """Options of ``mlstm`` (xlstm's ``mLSTMLayerConfig`` defaults; causal only, so ``causal`` defaults to True).

    Attributes:
        proj_factor: inner width E over D before rounding (> 0).
        round_proj_up_to_multiple_of: E is rounded up to a multiple of this (>= 1; xlstm: 64).
        conv1d_kernel_size: taps K of the causal depthwise convolution (>= 1).
        qkv_proj_blocksize: block size of the block-diagonal q/k/v maps (>= 1); E must be a multiple of it.
        chunk_size: tokens per chunk of the chunkwise form (>= 1).
        bias: biases on proj_up, the q/k/v maps and proj_down (xlstm: False).
        norm_eps: eps of the per-head LayerNorm (> 0).
    E must also be a multiple of ``num_heads``.
    """

    causal: bool = True
    proj_factor: float = 2.0
    round_proj_up_to_multiple_of: int = 64
    conv1d_kernel_size: int = 4
    qkv_proj_blocksize: int = 4
    chunk_size: int = 64
    bias: bool = False
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.proj_factor > 0:
            raise ValueError(f"proj_factor must be > 0, got {self.proj_factor!r}")
        for name in ("round_proj_up_to_multiple_of", "conv1d_kernel_size", "qkv_proj_blocksize", "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        if not self.norm_eps > 0:
            raise ValueError(f"norm_eps must be a positive float, got {self.norm_eps!r}")
        e = self.inner_dim
        if e % self.qkv_proj_blocksize:
            raise ValueError(f"qkv_proj_blocksize={self.qkv_proj_blocksize} must divide the inner width {e} "
                             "(proj_factor·dim rounded up to round_proj_up_to_multiple_of)")
        if e % self.num_heads:
            raise ValueError(f"num_heads={self.num_heads} must divide the inner width {e} "
                             "(proj_factor·dim rounded up to round_proj_up_to_multiple_of)")

    @property
    def inner_dim(self) -> int:
        """E = proj_factor·dim rounded up to a multiple of ``round_proj_up_to_multiple_of`` (xlstm's rule)."""
        r = self.round_proj_up_to_multiple_of
        return r * math.ceil(self.proj_factor * self.dim / r)


@dataclass(frozen=True)
class MLSTMState(State):
    """Decoding state of ``mlstm`` after ``length`` tokens: ``c [B, H, d, d]`` (C' = C e^{−m}, stored [d_k, d_v]),
    ``n [B, H, d]`` (n' = n e^{−m}), ``m [B, H]`` (the max-stabiliser), float32 (float64 for float64); ``conv
    [B, K−1, E]`` the convolution's last K−1 inputs."""

    c: Tensor
    n: Tensor
    m: Tensor
    conv: Tensor


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


class _OutputGate(torch.autograd.Function):
    """y = (LN_head(h) ⊙ w + skip ⊙ x_c) ⊙ SiLU(z), computed in float32 in blocks of ``BLOCK`` tokens, saving only
    its inputs (which the layer keeps anyway) and the per-head statistics. Composed from autograd ops under bf16
    autocast, the per-head LayerNorm (an fp32 op there) and the three products kept five [B, T, E] float32
    tensors: 1.2 GiB at T = 65536, E = 1024."""

    BLOCK = 4096

    @staticmethod
    def forward(ctx, h: Tensor, x_c: Tensor, z: Tensor, weight: Tensor, skip: Tensor, eps: float) -> Tensor:
        b, t, e = x_c.shape
        heads = h.shape[2]
        acc = torch.float64 if x_c.dtype == torch.float64 else torch.float32
        y = torch.empty_like(x_c)
        stats = torch.empty(2, b, t, heads, 1, dtype=acc, device=h.device)
        w, sk = weight.to(acc), skip.to(acc)
        for lo in range(0, t, _OutputGate.BLOCK):
            hi = min(t, lo + _OutputGate.BLOCK)
            hf = h[:, lo:hi].to(acc, copy=True)  # [B, L, H, d], normalised in place below
            var, mean = torch.var_mean(hf, dim=-1, keepdim=True, correction=0)
            rstd = (var + eps).rsqrt_()
            stats[0, :, lo:hi], stats[1, :, lo:hi] = mean, rstd
            hn = hf.sub_(mean).mul_(rstd).view(b, hi - lo, e)
            a = hn.mul_(w).add_(x_c[:, lo:hi].to(acc) * sk)
            y[:, lo:hi] = a.mul_(F.silu(z[:, lo:hi].to(acc)))
        ctx.save_for_backward(h, x_c, z, weight, skip, stats)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy: Tensor):
        h, x_c, z, weight, skip, stats = ctx.saved_tensors
        b, t, e = x_c.shape
        heads, d = h.shape[2], h.shape[3]
        acc = stats.dtype
        w, sk = weight.to(acc), skip.to(acc)
        dh, dx, dz = torch.empty_like(h), torch.empty_like(x_c), torch.empty_like(z)
        dw = torch.zeros(e, dtype=acc, device=h.device)
        dsk = torch.zeros_like(dw)
        for lo in range(0, t, _OutputGate.BLOCK):
            hi = min(t, lo + _OutputGate.BLOCK)
            mean, rstd = stats[0, :, lo:hi], stats[1, :, lo:hi]
            hn = (h[:, lo:hi].to(acc) - mean).mul_(rstd).view(b, hi - lo, e)
            xc = x_c[:, lo:hi].to(acc)
            zz, g = z[:, lo:hi].to(acc, copy=True), dy[:, lo:hi].to(acc, copy=True)  # changed in place
            sig = torch.sigmoid(zz)
            a = hn * w + xc * sk
            dz[:, lo:hi] = g * a * sig * (1 + zz * (1 - sig))  # SiLU'(z) = σ(z)(1 + z(1 − σ(z)))
            da = g.mul_(zz.mul_(sig))  # dy ⊙ SiLU(z)
            dw += (da * hn).sum((0, 1))
            dsk += (da * xc).sum((0, 1))
            dx[:, lo:hi] = da * sk
            dhn = (da * w).view(b, hi - lo, heads, d)
            hn4 = hn.view(b, hi - lo, heads, d)
            # LayerNorm backward over each head's d features
            dhn -= dhn.mean(-1, keepdim=True) + hn4 * (dhn * hn4).mean(-1, keepdim=True)
            dh[:, lo:hi] = dhn.mul_(rstd)
        return dh, dx, dz, dw.to(weight.dtype), dsk.to(skip.dtype), None


class _BlockDiagonalFn(torch.autograd.Function):
    """y[..., n, o] = Σ_i W[n, o, i] x[..., n, i] as ``block`` fused multiply-adds over ``[..., E/block, block]``
    (as a batched matmul over E/block tiny blocks, with its layout copies, it took 10x longer), and the same
    transposed in the backward; dW is one product-and-sum over the tokens per output row."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor) -> Tensor:
        nb, block, _ = weight.shape
        xb = x.reshape(*x.shape[:-1], nb, block)
        w = weight.to(x.dtype)
        y = xb[..., 0:1] * w[:, :, 0]  # [..., n, o]
        for i in range(1, block):
            y.addcmul_(xb[..., i:i + 1], w[:, :, i])
        ctx.save_for_backward(x, weight)
        return y.reshape(x.shape)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy: Tensor):
        x, weight = ctx.saved_tensors
        nb, block, _ = weight.shape
        dyb = dy.reshape(*dy.shape[:-1], nb, block)
        xb = x.reshape(*x.shape[:-1], nb, block)
        w = weight.to(dy.dtype)
        dx = dyb[..., 0:1] * w[:, 0, :]  # dx[..., n, i] = Σ_o dy[..., n, o] W[n, o, i]
        for o in range(1, block):
            dx.addcmul_(dyb[..., o:o + 1], w[:, o, :])
        lead = tuple(range(x.dim() - 1))
        acc = torch.float64 if weight.dtype == torch.float64 else torch.float32
        dw = torch.stack([(dyb[..., o:o + 1] * xb).sum(lead, dtype=acc) for o in range(block)], dim=1)
        return dx.reshape(x.shape), dw.to(weight.dtype)


class BlockDiagonal(nn.Module):
    """A block-diagonal linear map ``[..., E] -> [..., E]`` with blocks of ``block`` (xlstm's
    ``LinearHeadwiseExpand`` with expand 1): ``weight [E/block, block_out, block_in]``, out[n, o] = Σ_i W[n, o, i]
    x[n, i], 2·E·block FLOPs per token instead of a dense map's 2·E²."""

    def __init__(self, width: int, block: int, *, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(width // block, block, block))
        self.bias = nn.Parameter(torch.zeros(width)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        y = _BlockDiagonalFn.apply(x, self.weight)
        return y if self.bias is None else y + self.bias.to(x.dtype)


@MIXERS.register("mlstm")
class MLSTM(Mixer):
    """The mLSTM layer of xLSTM (Beck et al. 2024). x ``[B, T, D]`` -> ``[B, T, D]``; see the module docstring."""

    config_class = MLSTMConfig
    config: MLSTMConfig
    capabilities = Capabilities(exact=False, causal=True, non_causal=False, padding_mask=True, decode=True,
                                prefill=True, complexity="T·(C·d + d²)", time_exponent=1,
                                compile="torch 2.13's AOTAutograd fails to trace the hand-written chunked backward "
                                        "(ops/mlstm/chunked.py `_mm_add`: the reshape of a chunk-major operand is "
                                        "lowered as a view, 'Cannot view a tensor with shape [G, B, H, C, d]')")
    example_options = {"chunk_size": 4}
    residual_projections = ("proj_down.weight",)
    no_weight_decay = ("conv.weight", "conv.bias", "igate.bias", "fgate.bias", "learnable_skip", "outnorm_weight")

    def __init__(self, config: MLSTMConfig) -> None:
        super().__init__(config)
        e, h = config.inner_dim, config.num_heads
        self.inner_dim, self.head_dim = e, e // h
        self.proj_up = nn.Linear(config.dim, 2 * e, bias=config.bias)
        self.conv = ShortConv(e, config.conv1d_kernel_size)
        self.q_proj = BlockDiagonal(e, config.qkv_proj_blocksize, bias=config.bias)
        self.k_proj = BlockDiagonal(e, config.qkv_proj_blocksize, bias=config.bias)
        self.v_proj = BlockDiagonal(e, config.qkv_proj_blocksize, bias=config.bias)
        self.igate = nn.Linear(3 * e, h)
        self.fgate = nn.Linear(3 * e, h)
        self.outnorm_weight = nn.Parameter(torch.ones(e))
        self.learnable_skip = nn.Parameter(torch.ones(e))
        self.proj_down = nn.Linear(e, config.dim, bias=config.bias)
        self.init_weights(1)

    def init_weights(self, num_layers: int) -> None:
        """xlstm's ``mLSTMLayer.reset_parameters`` for the mLSTM-specific parameters (module docstring)."""
        with torch.no_grad():
            std = math.sqrt(2.0 / (5.0 * self.config.dim))
            for proj in (self.q_proj, self.k_proj, self.v_proj):
                proj.weight.normal_(0.0, std)
                if proj.bias is not None:
                    proj.bias.zero_()
            self.igate.weight.zero_()
            self.igate.bias.normal_(0.0, 0.1)
            self.fgate.weight.zero_()
            self.fgate.bias.copy_(torch.linspace(3.0, 6.0, self.config.num_heads))
            self.outnorm_weight.fill_(1.0)
            self.learnable_skip.fill_(1.0)

    def flops(self, seq_len: int, batch: int = 1) -> float:
        """Forward FLOPs (multiply-add = 2) with E inner width, H heads of d, K taps, block b, C = min(chunk, T):
        2·T·(D·2E + E·K + 3·E·b + 3E·2H + E·D) for proj_up, the convolution, the q/k/v blocks, the gates and
        proj_down, plus the chunkwise mLSTM 2·T·H·(2·C·d + 2·d²) (scores and their values inside a chunk; the
        read-out of the state before the chunk and the chunk's state update), times ``batch``."""
        cfg = self.config
        t, e, h, d = seq_len, self.inner_dim, cfg.num_heads, self.head_dim
        c = min(cfg.chunk_size, seq_len)
        proj = 2.0 * t * (cfg.dim * 2 * e + e * cfg.conv1d_kernel_size + 3 * e * cfg.qkv_proj_blocksize
                          + 3 * e * 2 * h + e * cfg.dim)
        mix = 2.0 * t * h * (2 * c * d + 2 * d * d)
        return batch * (proj + mix)

    # -- pieces ------------------------------------------------------------------------------------------------
    def _gates(self, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """ĩ, f̃ ``[..., H]`` from [q, k, v] without materialising the concatenation (three thin matmuls)."""
        e = self.inner_dim
        w = torch.cat([self.igate.weight, self.fgate.weight], dim=0).to(q.dtype)  # [2H, 3E]
        b = torch.cat([self.igate.bias, self.fgate.bias], dim=0).to(q.dtype)
        wq, wk, wv = (w[:, j * e:(j + 1) * e].contiguous() for j in range(3))
        g = torch.addmm(b, q.reshape(-1, e), wq.T).addmm_(k.reshape(-1, e), wk.T).addmm_(v.reshape(-1, e), wv.T)
        return g.view(*q.shape[:-1], -1).chunk(2, dim=-1)

    def _branch(self, x: Tensor, mask: Tensor | None, conv_fn) -> tuple[Tensor, ...]:
        """x ``[B, T, D]`` -> q, k (unscaled: the ops take ``scale``), v ``[B, H, T, d]``, ĩ, f̃ ``[B, H, T]``, x_c
        and z ``[B, T, E]``, the conv's result (window state or None)."""
        h = self.config.num_heads
        x_m, z = self.proj_up(x).chunk(2, dim=-1)
        if mask is not None:
            x_m = x_m * mask[..., None].to(x_m.dtype)
        x_c, window = conv_fn(x_m)
        x_c = F.silu(x_c)
        q, k, v = self.q_proj(x_c), self.k_proj(x_c), self.v_proj(x_m)
        i_pre, f_pre = self._gates(q, k, v)
        if mask is not None:  # padded tokens skip the memory: i = 0, f = 1
            i_pre = i_pre.masked_fill(~mask[..., None], float("-inf"))
            f_pre = f_pre.masked_fill(~mask[..., None], float("inf"))
        q, k, v = (rearrange(t, "b t (h d) -> b h t d", h=h) for t in (q, k, v))
        i_pre, f_pre = (rearrange(t, "b t h -> b h t") for t in (i_pre, f_pre))
        return q, k, v, i_pre, f_pre, x_c, z, window

    def _output(self, h_tilde: Tensor, x_c: Tensor, z: Tensor) -> Tensor:
        """h̃ ``[B, H, T, d]`` -> proj_down((LN_head(h̃) ⊙ w + skip ⊙ x_c) ⊙ SiLU(z)) ``[B, T, D]`` (fused)."""
        h = rearrange(h_tilde, "b h t d -> b t h d")
        with no_autocast(x_c.device):
            out = _OutputGate.apply(h, x_c, z.to(x_c.dtype), self.outnorm_weight, self.learnable_skip,
                                    self.config.norm_eps)
        return self.proj_down(out)

    def _output_reference(self, h_tilde: Tensor, x_c: Tensor, z: Tensor) -> Tensor:
        """``_output`` composed from autograd ops (the oracle's, so the contract checks the fused backward)."""
        hn = F.layer_norm(rearrange(h_tilde, "b h t d -> b t h d").to(x_c.dtype), (self.head_dim,),
                          eps=self.config.norm_eps)
        hn = rearrange(hn, "b t h d -> b t (h d)") * self.outnorm_weight.to(x_c.dtype)
        out = (hn + self.learnable_skip.to(x_c.dtype) * x_c) * F.silu(z)
        return self.proj_down(out)

    # -- mixer contract ----------------------------------------------------------------------------------------
    def _forward(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        q, k, v, i_pre, f_pre, x_c, z, _ = self._branch(x, key_padding_mask, lambda u: (self.conv(u), None))
        h_tilde, _ = chunked.mlstm_chunked(q, k, v, i_pre, f_pre, chunk_size=self.config.chunk_size,
                                             scale=self.head_dim ** -0.5)
        return self._output(h_tilde, x_c, z)

    def _oracle(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        q, k, v, i_pre, f_pre, x_c, z, _ = self._branch(x, key_padding_mask, lambda u: (self.conv.oracle(u), None))
        h_tilde, _ = naive.mlstm_recurrent(q, k, v, i_pre, f_pre, scale=self.head_dim ** -0.5)
        return self._output_reference(h_tilde, x_c, z)

    def _init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> MLSTMState:
        acc = _acc(dtype)
        c, n, m = naive.empty_state(batch_size, self.config.num_heads, self.head_dim, dtype=acc, device=device)
        return MLSTMState(length=0, c=c, n=n, m=m,
                          conv=self.conv.init_state(batch_size, device=device, dtype=acc))

    def _check_state(self, state: State) -> MLSTMState:
        if not isinstance(state, MLSTMState):
            raise TypeError(f"state must be the MLSTMState from init_state, got {type(state).__name__}")
        return state

    def _forward_state(self, x: Tensor, state: State) -> tuple[Tensor, MLSTMState]:
        """Prefill in one chunked pass continuing from (C', n', m) and the conv window."""
        state = self._check_state(state)
        q, k, v, i_pre, f_pre, x_c, z, window = self._branch(
            x, None, lambda u: self.conv.forward_state(u, state.conv))
        h_tilde, (c, n, m) = chunked.mlstm_chunked(q, k, v, i_pre, f_pre, chunk_size=self.config.chunk_size,
                                                   scale=self.head_dim ** -0.5,
                                                   initial_state=(state.c, state.n, state.m),
                                                   output_final_state=True)
        new = MLSTMState(length=state.length + x.shape[1], c=c.to(state.c.dtype), n=n.to(state.n.dtype),
                         m=m.to(state.m.dtype), conv=window)
        return self._output(h_tilde, x_c, z), new

    def _step(self, x_t: Tensor, state: State) -> tuple[Tensor, MLSTMState]:
        state = self._check_state(state)

        def conv_step(u: Tensor) -> tuple[Tensor, Tensor]:
            y, window = self.conv.step(u[:, 0], state.conv)
            return y[:, None], window

        q, k, v, i_pre, f_pre, x_c, z, window = self._branch(x_t[:, None], None, conv_step)
        o, (c, n, m) = recurrent.mlstm_step(q[:, :, 0], k[:, :, 0] * self.head_dim ** -0.5, v[:, :, 0],
                                            i_pre[..., 0], f_pre[..., 0],
                                            state.c, state.n, state.m)
        new = MLSTMState(length=state.length + 1, c=c, n=n, m=m, conv=window)
        return self._output(o[:, :, None].to(x_t.dtype), x_c, z)[:, 0], new
