"""The selective scan in O(T·E·N) time and O(T·E + (T/L)·E·N) memory, forward and backward.

Same semantics as ``naive.selective_scan`` (the recurrence of Mamba-1, Gu & Dao 2023, Sec. 3.2): per channel e and
state index n, h_t = a_t ⊙ h_{t−1} + b_t with a_t = exp(Δ_t A) and b_t = (Δ_t u_t) ⊗ B_t, y_t = h_t C_t (+ D u_t).
Nothing of size ``[T, E, N]`` is ever stored: the sequence is cut into chunks of L tokens, and only one chunk's
``[L, B, N, E]`` decays and states live at a time (two reused buffers), plus the state entering each chunk
(``[T/L, B, N, E]``, 1/L of the full tensor) which the backward restarts from.

Per chunk (time-major, E innermost, so every token's ``[B, N, E]`` slice is contiguous and each contraction over
n or e is a batched matrix product with a long dimension):
  1. a = exp(Δ ⊗ A) and b = (Δu) ⊗ B for all L tokens at once (vectorised; Δ·A <= 0, so every a is in (0, 1]:
     each decay is one exp of a non-positive number, never a ratio of exps of cumulative sums);
  2. the recurrence itself, in place in the buffer of b: x_i += a_i ⊙ x_{i−1} (one fused ``addcmul_`` per token
     over ``[B, N, E]``, starting from the carried state), so the buffer ends holding h_t for the chunk;
  3. y = h C for all L tokens as one batched matrix-vector product.
Why a sequential loop rather than a parallel (Hillis–Steele / Blelloch) scan inside the chunk: the loop touches
each element once with the fewest flops, and at Mamba's sizes one token's slice (B·E·N = 16K floats at D = 512)
is large enough that the per-call overhead is amortised. Measured (one thread, [64, 1, 16, 1024] chunk): the loop
1.6 ms, a Hillis–Steele doubling scan with the operator (a1, b1)∘(a2, b2) = (a1·a2, a2·b1 + b2) 12.5 ms (2·log2 L
full-size passes and their temporaries). The elementwise exp (as exp2, ~1 Gelem/s on one AVX2 core) is the single
most expensive pass; the scan costs ~20 passes over [T, E, N] in all (5 forward, 15 backward), ~0.45 s fwd+bwd at
T = 4096, E = 1024, N = 16, B = 1 on one thread. Chunks of 16, 32 and 64 tokens measured the same within noise.

Sub-chunks. At a large batch one token's slice is itself large (B·N·E = 524K floats at the probes' B = 256,
E = 128, N = 16), and a chunk of 64 such tokens (134 MB per buffer) makes every elementwise pass a trip to memory.
The loops therefore run over sub-chunks of ``sub_chunk(L, B·N·E)`` tokens (at most ``WORKING_SET`` elements per
buffer), while the states kept for the backward stay one per chunk of L: the backward first recomputes the state
entering each sub-chunk of a chunk (one extra forward pass over the chunk, into a ``[L/l, B, N, E]`` temporary no
larger than one chunk-sized buffer), then runs the steps below per sub-chunk. Measured fwd+bwd, one thread, B = 256,
T = 64, E = 128, N = 16, with whole chunks of 64, 16, 8, 4, 2, 1 tokens: 978, 535, 427, 271, 221, 421 ms; at
B = 32, T = 256: 278 ms (64), 141 (16), 127 (8); at B = 1, T = 4096, E = 1024: 576 ms (64), 529 (16), 850 (4).

Backward (a hand-written ``torch.autograd.Function``; chunks in reverse order, each recomputed from its saved
entering state): with dh_t the gradient of the loss w.r.t. h_t through everything after it,

    dh_t = dy_t ⊗ C_t + a_{t+1} ⊙ dh_{t+1}        (the reverse recurrence, the same in-place loop, carried across
                                                  chunks as a_{first} ⊙ dh_{first}; it starts from dh_T)
    dC_t = h_tᵀ dy_t,   dB_t = dh_tᵀ (Δ_t u_t),   d(Δu)_t = dh_t B_t
    q_t  = dh_t ⊙ h_{t−1} ⊙ a_t                   (the gradient of the log-decay Δ_t A)
    dΔ_t = Σ_n q_t A + u_t d(Δu)_t,   du_t = Δ_t d(Δu)_t,   dA = Σ_t q_t ⊙ Δ_t,   dh_0 = a_1 ⊙ dh_1.

The contractions over e or n are batched matrix products; the rest is elementwise on one chunk.

Dtypes: the scan, its state and its gradients are float32 (float64 for float64 inputs) whatever the input dtype,
and autocast is off inside: under bf16 autocast the projections around it run in bf16, the recurrence does not.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..amp import no_autocast
from .naive import state_dtype

#: tokens per chunk (16, 32 and 64 measured the same at D = 512, B = 1, one thread: module docstring)
CHUNK_SIZE = 64
#: the most elements a sub-chunk buffer ``[l, B, N, E]`` holds (4 MiB of float32): the working set of a sub-chunk
#: (two buffers forward, three backward) then stays in cache at any batch (module docstring)
WORKING_SET = 1 << 20


def sub_chunk(chunk: int, slice_elems: int) -> int:
    """Tokens per sub-chunk: ``chunk`` unless ``chunk`` tokens of ``slice_elems = B·N·E`` elements each exceed
    ``WORKING_SET``; then as many as fit, but at least 2 (one token per call is overhead-bound)."""
    return max(1, min(chunk, max(2, WORKING_SET // slice_elems)))

_LOG2E = 1.4426950408889634  # exp(x) = exp2(x·log2 e): torch's exp2 is ~1.5x faster than its exp on AVX2


def _spans(lo: int, hi: int, sub: int) -> list[tuple[int, int]]:
    """The sub-chunks ``[(s0, s1), ...]`` of ``sub`` tokens (the last one shorter) covering tokens ``lo .. hi - 1``."""
    return [(s0, min(s0 + sub, hi)) for s0 in range(lo, hi, sub)]


def _time_major(x: Tensor, acc: torch.dtype) -> Tensor:
    """``[B, T, ...] -> [T, B, ...]`` contiguous in ``acc``."""
    return x.transpose(0, 1).to(acc).contiguous()


def _decays(a: Tensor, delta: Tensor, A2: Tensor) -> Tensor:
    """a = exp(Δ ⊗ A) = exp2(Δ ⊗ A·log2 e) into buffer ``a [l, B, N, E]``, from Δ ``[l, B, E]`` and
    ``A2 = Aᵀ·log2 e [N, E]``."""
    torch.mul(delta[:, :, None, :], A2, out=a)
    return a.exp2_()


def _states(x: Tensor, a: Tensor, du: Tensor, Bm: Tensor, h0: Tensor) -> Tensor:
    """The chunk's states h_t into buffer ``x [l, B, N, E]``, from decays ``a``, Δu ``[l, B, E]``, B ``[l, B, N]``
    and the entering state ``h0 [B, N, E]``."""
    torch.mul(du[:, :, None, :], Bm[..., None], out=x)
    xs, as_ = x.unbind(0), a.unbind(0)  # all per-token views in one call (indexing in the loop costs ~10 %)
    xs[0].addcmul_(as_[0], h0)
    for i in range(1, len(xs)):
        xs[i].addcmul_(as_[i], xs[i - 1])
    return x


class _SelectiveScan(torch.autograd.Function):
    """Inside, states are laid out ``[B, N, E]`` (E innermost): every contraction over n or e is then a batched
    matrix product with a long inner or outer dimension, and the broadcasts run along contiguous E."""

    @staticmethod
    def forward(ctx, u: Tensor, delta: Tensor, A: Tensor, Bm: Tensor, Cm: Tensor, h0: Tensor | None,
                chunk: int) -> tuple[Tensor, Tensor]:
        acc = state_dtype(u.dtype)
        b, t, e = u.shape
        n = A.shape[-1]
        dev = u.device
        uT, dT, BT, CT = (_time_major(x, acc) for x in (u, delta, Bm, Cm))  # [T, B, E], [T, B, N]
        A2 = A.to(acc).T.contiguous() * _LOG2E  # [N, E]
        du = dT * uT  # [T, B, E]
        y = torch.empty(t, b, e, dtype=acc, device=dev)
        starts = list(range(0, t, chunk))
        # entering state of every chunk (+ the final one), the only [·, B, N, E] tensor kept for the backward
        hs = torch.empty(len(starts) + 1, b, n, e, dtype=acc, device=dev)
        if h0 is None:
            hs[0].zero_()
        else:
            hs[0].copy_(h0.transpose(1, 2))
        sub = sub_chunk(chunk, b * n * e)
        a_buf = torch.empty(sub, b, n, e, dtype=acc, device=dev)
        x_buf = torch.empty_like(a_buf)
        for c, lo in enumerate(starts):
            h = hs[c]
            for s0, s1 in _spans(lo, min(lo + chunk, t), sub):
                l = s1 - s0
                a = _decays(a_buf[:l], dT[s0:s1], A2)
                x = _states(x_buf[:l], a, du[s0:s1], BT[s0:s1], h)
                torch.matmul(CT[s0:s1].view(l * b, 1, n), x.view(l * b, n, e), out=y[s0:s1].view(l * b, 1, e))
                h = hs[c + 1]  # the carry: the next sub-chunk's _states overwrites x_buf before reading it
                h.copy_(x[l - 1])
        ctx.save_for_backward(uT, dT, A2, BT, CT, hs)
        ctx.chunk, ctx.has_h0 = chunk, h0 is not None
        ctx.dtypes = (u.dtype, delta.dtype, A.dtype, Bm.dtype, Cm.dtype, None if h0 is None else h0.dtype)
        return y.transpose(0, 1), hs[-1].transpose(1, 2).clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy: Tensor | None, dh_final: Tensor | None):
        uT, dT, A2, BT, CT, hs = ctx.saved_tensors
        chunk = ctx.chunk
        acc = A2.dtype
        t, b, e = uT.shape
        n = A2.shape[0]
        dev = uT.device
        dyT = torch.zeros(t, b, e, dtype=acc, device=dev) if dy is None else _time_major(dy, acc)
        du = dT * uT
        g = (torch.zeros(b, n, e, dtype=acc, device=dev) if dh_final is None
             else dh_final.to(acc).transpose(1, 2).contiguous())
        d_du = torch.empty(t, b, e, dtype=acc, device=dev)  # d(Δu)
        d_delta = torch.empty(t, b, e, dtype=acc, device=dev)  # from the decays: Σ_n q A
        dB = torch.empty(t, b, n, dtype=acc, device=dev)
        dC = torch.empty(t, b, n, dtype=acc, device=dev)
        dA2 = torch.zeros(n, e, dtype=acc, device=dev)  # Σ_t q ⊙ Δ, i.e. dA (transposed)
        A_ = A2 / _LOG2E
        sub = sub_chunk(chunk, b * n * e)
        a_buf = torch.empty(sub, b, n, e, dtype=acc, device=dev)
        x_buf, g_buf = torch.empty_like(a_buf), torch.empty_like(a_buf)
        starts = list(range(0, t, chunk))
        for c in reversed(range(len(starts))):
            spans = _spans(starts[c], min(starts[c] + chunk, t), sub)
            # the state entering each sub-chunk, recomputed from the chunk's saved entering state
            h_in = torch.empty(len(spans), b, n, e, dtype=acc, device=dev)
            h_in[0].copy_(hs[c])
            for j, (s0, s1) in enumerate(spans[:-1]):
                l = s1 - s0
                x = _states(x_buf[:l], _decays(a_buf[:l], dT[s0:s1], A2), du[s0:s1], BT[s0:s1], h_in[j])
                h_in[j + 1].copy_(x[l - 1])
            for j in reversed(range(len(spans))):
                s0, s1 = spans[j]
                l = s1 - s0
                lb = l * b
                a = _decays(a_buf[:l], dT[s0:s1], A2)
                x = _states(x_buf[:l], a, du[s0:s1], BT[s0:s1], h_in[j])
                # a row vector times the transposed state: MKL's batched gemv with 16 rows is ~9x slower than this
                torch.matmul(dyT[s0:s1].view(lb, 1, e), x.view(lb, n, e).transpose(1, 2),
                             out=dC[s0:s1].view(lb, 1, n))
                # dh_t, in place: the reverse recurrence from the carry g = dL/dh at the sub-chunk's last token
                gh = g_buf[:l]
                torch.mul(dyT[s0:s1, :, None, :], CT[s0:s1, :, :, None], out=gh)
                gh[l - 1].add_(g)
                gs, as_ = gh.unbind(0), a.unbind(0)
                for i in range(l - 2, -1, -1):
                    gs[i].addcmul_(as_[i + 1], gs[i + 1])
                torch.mul(a[0], gh[0], out=g)  # dL/dh entering this sub-chunk
                torch.matmul(BT[s0:s1].view(lb, 1, n), gh.view(lb, n, e), out=d_du[s0:s1].view(lb, 1, e))
                torch.matmul(du[s0:s1].view(lb, 1, e), gh.view(lb, n, e).transpose(1, 2),
                             out=dB[s0:s1].view(lb, 1, n))
                # q_t = dh_t ⊙ a_t ⊙ h_{t−1}, in the decay buffer
                q = a.mul_(gh)
                q[1:].mul_(x[:l - 1])
                q[0].mul_(h_in[j])
                scratch = torch.mul(q, A_, out=x)
                torch.sum(scratch, dim=-2, out=d_delta[s0:s1])
                torch.mul(q, dT[s0:s1, :, None, :], out=scratch)
                dA2.add_(scratch.view(lb, n, e).sum(0))
        d_delta.addcmul_(d_du, uT)
        d_u = d_du.mul_(dT)
        grads = (d_u.transpose(0, 1), d_delta.transpose(0, 1), dA2.T, dB.transpose(0, 1), dC.transpose(0, 1))
        u_dt, d_dt, a_dt, b_dt, c_dt, h_dt = ctx.dtypes
        out = [gx.to(dt) for gx, dt in zip(grads, (u_dt, d_dt, a_dt, b_dt, c_dt))]
        dh0 = g.transpose(1, 2).to(h_dt) if ctx.has_h0 else None
        return (*out, dh0, None)


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None, *,
                   initial_state: Tensor | None = None, output_final_state: bool = False,
                   chunk_size: int = CHUNK_SIZE) -> tuple[Tensor, Tensor | None]:
    """The chunked selective scan, see the module docstring; same contract as ``naive.selective_scan``.

    Args:
        u: ``[B, T, E]``; delta: ``[B, T, E]`` (Δ >= 0); A: ``[E, N]``; B, C: ``[B, T, N]``; D: ``[E]`` or None.
        initial_state: ``[B, E, N]`` h_0 (None = zeros); gradients flow into it.
        output_final_state: also return h_T ``[B, E, N]`` (float32; float64 for float64), differentiable.
        chunk_size: tokens per chunk L (>= 1): sets how many states are kept for the backward (T/L) and bounds
            the working set (two ``[l, B, N, E]`` buffers in the forward, three in the backward, with
            ``l = sub_chunk(L, B·N·E) <= L``).

    Returns:
        ``(y [B, T, E] in the dtype of u, h_T or None)``.

    Raises:
        ValueError: ``chunk_size < 1`` or inconsistent shapes.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    b, t, e = u.shape
    n = A.shape[-1]
    if delta.shape != u.shape or A.shape != (e, n) or B.shape != (b, t, n) or C.shape != (b, t, n):
        raise ValueError(f"shapes must be u, delta [B, T, E], A [E, N], B, C [B, T, N]; got u {tuple(u.shape)}, "
                         f"delta {tuple(delta.shape)}, A {tuple(A.shape)}, B {tuple(B.shape)}, C {tuple(C.shape)}")
    if initial_state is not None and initial_state.shape != (b, e, n):
        raise ValueError(f"initial_state must be [B, E, N]={(b, e, n)}, got {tuple(initial_state.shape)}")
    with no_autocast(u.device):
        y, h = _SelectiveScan.apply(u, delta, A, B, C, initial_state, min(chunk_size, t))
        if D is not None:
            y = y + D.to(y.dtype) * u.to(y.dtype)
    return y.to(u.dtype), (h if output_final_state else None)
