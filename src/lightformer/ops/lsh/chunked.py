"""Reformer LSH attention, fast path: sort, chunk, attend to own + previous chunk, recompute in backward.

Kitaev, Kaiser, Levskaya 2020, "Reformer: The Efficient Transformer", Sec. 2 (Fig. 2) and App. A. Same signature
and semantics as ``ops.lsh.naive.lsh_attention`` (masks, self penalty, log-sum-exp combination: see there).

All rounds of a group of (batch, head) rows at once (groups of ~2²¹ score elements, see ``_groups``):
    1. place the tokens in each round's sorted layout (``_Geometry``: sorted by (bucket, position); causal: every
       bucket starts on a chunk boundary) of L = nc·c slots (c = bucket_size) and gather q, k and v into it with
       one ``index_select`` each: ``[K, c, d]`` chunks, K = rows·rounds·nc, row-major;
    2. scores ``[2, K, c, c]``: each query chunk against its own key chunk and against the previous one. The
       previous chunk of chunk j is chunk j − 1 of the same tensor, so both are batched matmuls over zero-copy
       (shifted) views — no ``[K, 2c, d]`` key windows are gathered and no window gradients folded back. The mask
       is one comparison of per-slot integer codes (bucket for real keys, a unique negative code for padded/empty
       slots, so self always matches; −1 before a row's first chunk, which also masks the shift's pairing of a
       row's first chunk with the previous row's last) plus a constant ``[c, c]`` own-chunk pattern (−10⁵ on
       self, −inf after the query when causal);
    3. per-round outputs o^(r) and log-normalisers z^(r) are un-sorted to token order and combined with the round
       weights softmax_r(z^(r)).
Backward uses the *combined* weights P = exp(s − z) (a key's weight in the union over rounds) in the usual
softmax-attention backward, dS = P ⊙ (dO·vᵀ − rowsum(dO ⊙ O)) (as FlashAttention, Dao et al. 2022, Alg. 2); a key
chunk's gradient collects its own chunk's queries and the next chunk's, then everything is un-sorted (gathers
with the inverse permutation). Forward keeps P
when all rounds fit in 2²⁶ elements (T <= 16384 at 8 heads, 4 rounds; faster); above that it keeps only the row
maxima and round factors (O(n_hashes·T) per row) and backward recomputes the scores bit for bit.

Complexity: O(n_hashes·T·(bucket_size·d + log T)) time after hashing; memory kept for backward per row
O(n_hashes·T·bucket_size + T·d) (O(n_hashes·T + T·d) when P is recomputed), plus one group's scores at a time.
With bfloat16 inputs the matmuls run in bfloat16, scores / softmax statistics / combination in float32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .naive import SELF_PENALTY

_LOW = (torch.bfloat16, torch.float16)


class _Geometry:
    """Where every token sits in each round's sorted, chunked layout of L = nc·c slots.

    ``perm [N, R, L]`` slot -> token (empty slots point at token 0), ``inv [N, R, T]`` token -> slot, and per slot
    whether it holds a token (``filled``) and its match ``code`` (the bucket of a real key, a unique negative
    number for a padded token or an empty slot). Non-causal: the paper's layout, slot = rank in the (bucket,
    position) order. Causal: every bucket
    starts at a chunk boundary (slot = c·(chunks of the lower buckets) + rank inside the bucket), so the keys a
    query sees depend only on earlier tokens of its own bucket (see ``naive.round_mask``).
    """

    def __init__(self, buckets: Tensor, key_valid: Tensor | None, c: int, causal: bool) -> None:
        n, r, t = buckets.shape
        dev = buckets.device
        self.t, self.c = t, c
        pos = torch.arange(t, device=dev)
        order = torch.argsort(buckets * t + pos, dim=-1)  # [N, R, T] sorted rank -> token
        sb = buckets.gather(-1, order)
        if causal:
            nb = int(buckets.max()) + 1
            counts = torch.zeros(n, r, nb, dtype=torch.long, device=dev).scatter_add_(-1, buckets,
                                                                                   torch.ones_like(buckets))
            start = counts.cumsum(-1) - counts  # first sorted rank of each bucket
            chunks = -(-counts // c)
            aligned = (chunks.cumsum(-1) - chunks) * c  # first slot of each bucket
            slot = aligned.gather(-1, sb) + torch.arange(t, device=dev) - start.gather(-1, sb)  # [N, R, T]
            length = int(chunks.sum(-1).max()) * c
        else:
            slot = torch.arange(t, device=dev).expand(n, r, t)
            length = -(-t // c) * c
        self.nc = length // c
        valid = torch.ones_like(order, dtype=torch.bool) if key_valid is None else \
            key_valid[:, None, :].expand(n, r, t).gather(-1, order)
        self.perm = torch.zeros(n, r, length, dtype=torch.long, device=dev).scatter_(-1, slot, order)
        self.inv = torch.empty_like(order).scatter_(-1, order, slot)
        slot_bucket = torch.full((n, r, length), -1, dtype=torch.long, device=dev).scatter_(-1, slot, sb)
        slot_valid = torch.zeros(n, r, length, dtype=torch.bool, device=dev).scatter_(-1, slot, valid)
        self.filled = torch.zeros(n, r, length, dtype=torch.bool, device=dev).scatter_(
            -1, slot, torch.ones_like(valid))
        # match code: a query may attend to a window key iff their codes are equal. Real keys carry their bucket;
        # padded tokens and empty slots carry a unique negative code, so they match nothing but themselves
        self.code = torch.where(slot_valid, slot_bucket, -10 - torch.arange(length, device=dev))


#: forward saves the combined weights P (n_hashes·T·2·bucket_size elements per row) when they fit in this many
#: elements (256 MiB in float32); above, backward recomputes them (FlashAttention-style) to bound memory
_KEEP_PROBS = 1 << 26


def _pattern(c: int, causal: bool, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Score offsets ``[2, 1, c, c]`` shared by every chunk: index 0 the previous chunk (no offset: its keys are
    other tokens, earlier ones when causal), index 1 the own chunk: −10⁵ on self (column a for row a) and, when
    causal, −inf on columns after the query (slots follow positions inside a bucket-aligned chunk)."""
    rows = torch.arange(c, device=device)[:, None]
    cols = torch.arange(c, device=device)[None, :]
    own = torch.zeros(c, c, dtype=dtype, device=device).masked_fill_(cols == rows, -SELF_PENALTY)
    if causal:
        own.masked_fill_(cols > rows, float("-inf"))
    return torch.stack([torch.zeros_like(own), own])[:, None]


def _select(x: Tensor, index: Tensor, pool: "_Pool | None" = None, slot: str = "") -> Tensor:
    """Rows of ``x [n, T, d]`` for ``index [n, R, S]`` (into T) -> ``[n·R, S, d]``; one ``index_select`` on the flat
    rows (much faster than ``gather`` with an expanded index), written into ``pool``'s buffer ``slot`` when given."""
    n, t, d = x.shape
    flat = (index + torch.arange(n, device=index.device)[:, None, None] * t).reshape(-1)
    out = None if pool is None else pool.get(slot, flat.numel(), d, x.dtype, x.device)
    return torch.index_select(x.reshape(n * t, d), 0, flat, out=out).view(-1, index.shape[-1], d)


class _Pool:
    """Reused ``[rows, d]`` buffers, one per slot, for the per-group gathers of one call: a fresh gather output of
    tens of MiB is a fresh mmap that the kernel zero-fills page by page (index_select of 131072 x 64 fp32 rows: 18 ms
    into a new tensor, 5.5 ms into a reused one). Slots are shared by gathers whose lifetimes do not overlap."""

    def __init__(self) -> None:
        self._bufs: dict[str, Tensor] = {}

    def get(self, slot: str, rows: int, d: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        buf = self._bufs.get(slot)
        if buf is None or buf.shape[0] < rows or buf.shape[1] != d or buf.dtype != dtype:
            buf = self._bufs[slot] = torch.empty(rows, d, dtype=dtype, device=device)
        return buf[:rows]


def _tr(x: Tensor) -> Tensor:
    return x.transpose(-1, -2)


def _pair_mm(a: Tensor, b: Tensor, out: Tensor) -> Tensor:
    """Products of every chunk with its own chunk and with the previous one, without forming key windows.

    a ``[K, c, e]`` (K = M·nc chunks in sorted order, row-major over the M rows), b ``[K, e, f]``, out
    ``[2, K, c, f]``: ``out[1][j] = a[j] @ b[j]`` and ``out[0][j] = a[j] @ b[j − 1]`` (a shifted, zero-copy view
    of the same tensors). ``out[0][0]`` — and every ``out[0][j]`` whose chunk j is the first of its row, which
    pairs it with the last chunk of the previous row — is left for the caller's mask (code −1 never matches)."""
    torch.bmm(a, b, out=out[1])
    torch.bmm(a[1:], b[:-1], out=out[0, 1:])
    out[0, 0].zero_()
    return out


def _pair_mm_t(p: Tensor, x: Tensor, out: Tensor) -> Tensor:
    """Adjoint of ``_pair_mm`` on the key side: ``out[j] = p[1][j]ᵀ @ x[j] + p[0][j + 1]ᵀ @ x[j + 1]``, i.e. the
    gradient of every key chunk from the queries of its own chunk and of the next one. p ``[2, K, c, c]``,
    x ``[K, c, e]`` -> out ``[K, c, e]``."""
    torch.bmm(_tr(p[1]), x, out=out)
    out[:-1].baddbmm_(_tr(p[0, 1:]), x[1:])
    return out


def _scores(qs: Tensor, ks: Tensor, masked: Tensor, pattern: Tensor, cdt: torch.dtype, out: Tensor) -> Tensor:
    """Masked scores ``[2, K, c, c]`` (previous chunk, own chunk) of sorted, pre-scaled query chunks
    ``qs [K, c, d]`` against the sorted key chunks ``ks [K, c, d]``; ``masked [2, K, c, c]`` from ``_mask``."""
    if out.dtype == qs.dtype:
        s = _pair_mm(qs, _tr(ks), out)
    else:
        s = out.copy_(_pair_mm(qs, _tr(ks), torch.empty(out.shape, dtype=qs.dtype, device=qs.device)))
    s.add_(pattern)
    return s.masked_fill_(masked, float("-inf"))


#: floor of the shifted scores before ``exp``: torch's CPU ``exp`` leaves its vector path for any lane below about
#: −88 (−inf of a mask, the −10⁵ self penalty), measured 10-25x slower on a block with scattered masked entries.
#: e^−80 ≈ 1.8e−35 is below fp32 rounding of a row sum (>= 1); masked entries are then set to exactly 0.
_EXP_FLOOR = -80.0


def _probs_(s: Tensor, mx: Tensor, masked: Tensor) -> Tensor:
    """In place ``exp(s − mx)`` of masked scores from ``_scores``, with masked entries exactly 0 (see
    ``_EXP_FLOOR``); the self penalty's weight becomes e^−80 instead of e^−10⁵, the same 0 in fp32 row sums."""
    return s.sub_(mx).clamp_(min=_EXP_FLOOR).exp_().masked_fill_(masked, 0.0)


def _mask(geo: "_Geometry", g: slice) -> Tensor:
    """``[2, K, c, c]`` bool, True where a query may not see a key (previous chunk, own chunk) for the rows ``g``:
    the match codes differ (the previous chunk's codes are −1 before a row's first chunk)."""
    c = geo.c
    code = geo.code[g].flatten(0, 1)  # [M, L]
    prev = F.pad(code, (c, 0), value=-1)[:, :-c]  # the previous chunk's codes, -1 before the first chunk
    return code.reshape(-1, c, 1) != torch.stack([prev, code]).view(2, -1, 1, c)


#: score elements per group of rows (8 MiB of float32 scores, 4 MiB gathers at bucket 64). Buffers this small are
#: recycled by the C allocator; at 2²⁴ (one group of 8 heads at T = 4096) every 32-64 MiB score or gather buffer was a
#: fresh mmap, zero-filled page by page: fwd+bwd 4K fp32 ~741-796 ms at 2²⁴ against ~581-585 ms at 2²¹.
_GROUP_SCORES = 1 << 21


def _groups(n: int, rounds: int, L: int, c: int) -> list[slice]:
    """Slices of whole (batch, head) rows, all rounds at once, with ~``_GROUP_SCORES`` score elements per group (at
    least one row: 2²⁴·n_hashes/4 elements per row at T = 65536)."""
    per = max(1, _GROUP_SCORES // (rounds * L * 2 * c))
    return [slice(i, min(n, i + per)) for i in range(0, n, per)]


class _LSHAttention(torch.autograd.Function):
    """q, k, v ``[N, T, d]`` (k normalised), geometry -> O ``[N, T, d]``."""

    @staticmethod
    def forward(ctx, q, k, v, geo, causal, scale):
        n, t, d = q.shape
        c, nc, rounds = geo.c, geo.nc, geo.perm.shape[1]
        cdt = torch.float32 if q.dtype in _LOW else q.dtype
        pattern = _pattern(c, causal, cdt, q.device)
        out = torch.empty(n, t, d, dtype=q.dtype, device=q.device)
        keep = n * rounds * nc * c * 2 * c <= _KEEP_PROBS  # save P for backward instead of recomputing it
        saved = []  # per group: P, or (row max, factor) to recompute it
        pool = _Pool()
        for g in _groups(n, rounds, nc * c, c):
            perm = geo.perm[g]
            # (del: free each big intermediate as soon as it is used, the peak is what RSS sees)
            qs = _select(q[g], perm, pool, "a").mul_(scale).view(-1, c, d)  # [K, c, d], K = rows·rounds·nc chunks
            ks = _select(k[g], perm, pool, "b").view(-1, c, d)
            masked = _mask(geo, g)
            s = _scores(qs, ks, masked, pattern, cdt,
                        torch.empty(2, qs.shape[0], c, c, dtype=cdt, device=q.device))  # [2, K, c, c]
            del qs, ks
            mx = s.amax(dim=-1, keepdim=True).amax(dim=0)  # [K, c, 1], finite: self is always allowed
            p = _probs_(s, mx, masked)
            del masked
            del s
            norm = p.sum(dim=-1, keepdim=True).sum(dim=0)  # [K, c, 1]
            vs = _select(v[g], perm, pool, "a").view(-1, c, d)
            pl = p.to(q.dtype)
            o = torch.bmm(pl[1], vs)
            o[1:].baddbmm_(pl[0, 1:], vs[:-1])
            del vs, pl
            o = o.to(cdt).div_(norm).view(-1, nc * c, d)  # o^(r) in sorted order
            z = (mx + norm.log()).view(-1, nc * c, 1)  # z^(r)
            rows = o.shape[0] // rounds
            index = _offsets(geo.inv[g], nc * c)
            o = _select(o.view(rows, rounds * nc * c, d), index, pool, "a").view(rows, rounds, t, d)  # token order
            z = _select(z.view(rows, rounds * nc * c, 1), index).view(rows, rounds, t)
            w = torch.softmax(z, dim=1)  # e^{z^(r) − z}, z = log Σ_r e^{z^(r)}: [rows, R, T]
            out[g] = (w[..., None] * o).sum(dim=1).to(q.dtype)  # Σ_r e^{z^(r) − z} o^(r)
            del o, z
            # P = exp(s − z) = p · factor with factor = e^{z^(r) − z} / norm^(r), taken from the stable round
            # weights w (subtracting z from s directly would cancel catastrophically at the −10⁵ self scores)
            empty = ~geo.filled[g].reshape(-1, c, 1)
            w = _select(w.reshape(-1, t, 1), perm.reshape(-1, 1, nc * c)).view(-1, c, 1)
            factor = w.div_(norm).masked_fill_(empty, 0.0)  # [K, c, 1]
            if keep:
                saved.append(p.mul_(factor))
            else:
                saved.append((mx, factor))
            del p
        ctx.save_for_backward(q, k, v, out)
        ctx.geo, ctx.causal, ctx.scale, ctx.saved = geo, causal, scale, saved
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout):
        q, k, v, out = ctx.saved_tensors
        geo, causal, scale, saved = ctx.geo, ctx.causal, ctx.scale, ctx.saved
        n, t, d = q.shape
        c, nc, rounds = geo.c, geo.nc, geo.perm.shape[1]
        L = nc * c
        cdt = torch.float32 if q.dtype in _LOW else q.dtype
        pattern = _pattern(c, causal, cdt, q.device)
        dout = dout.to(q.dtype)
        delta = (dout.to(cdt) * out.to(cdt)).sum(-1)  # rowsum(dO ⊙ O) [N, T]
        dq = torch.zeros(n, t, d, dtype=cdt, device=q.device)
        dk, dv = torch.zeros_like(dq), torch.zeros_like(dq)
        pool = _Pool()
        for i, g in enumerate(_groups(n, rounds, L, c)):
            perm = geo.perm[g]
            empty = ~geo.filled[g].reshape(-1, L, 1)  # slots holding no token
            rows = perm.shape[0]
            index = _offsets(geo.inv[g], L)
            dl = _select(delta[g][..., None], perm).masked_fill_(empty, 0.0).view(-1, c, 1)
            qs = _select(q[g], perm, pool, "a").view(-1, c, d)  # [K, c, d]
            ks = _select(k[g], perm, pool, "b").view(-1, c, d)
            kk = qs.shape[0]
            if isinstance(saved[i], Tensor):
                p = saved[i]
            else:  # recompute the combined weights P = exp(s − max) · factor [2, K, c, c] (bitwise the same s)
                mx, factor = saved[i]
                masked = _mask(geo, g)
                p = _scores(qs * scale, ks, masked, pattern, cdt, torch.empty(2, kk, c, c, dtype=cdt, device=q.device))
                p = _probs_(p, mx, masked).mul_(factor)
                del masked
            dob = _select(dout[g], perm, pool, "c").masked_fill_(empty, 0.0).view(-1, c, d)
            vs = _select(v[g], perm, pool, "d").view(-1, c, d)
            dp = _pair_mm(dob, _tr(vs), torch.empty(2, kk, c, c, dtype=q.dtype, device=q.device))  # dO·vᵀ
            del vs
            ds = dp.to(cdt).sub_(dl).mul_(p).to(q.dtype)  # dS = P ⊙ (dP − delta) (0 where P is)
            del dp

            def add(acc: Tensor, grad: Tensor) -> None:  # un-sort (a permutation: gather) and sum the rounds
                acc[g] += _select(grad.view(rows, rounds * L, d), index, pool, "d").view(rows, rounds, t, d).sum(dim=1)

            buf = torch.empty(kk, c, d, dtype=q.dtype, device=q.device)
            add(dv, _pair_mm_t(p.to(q.dtype), dob, buf))
            del p, dob
            dq_s = torch.bmm(ds[1], ks, out=buf)
            dq_s[1:].baddbmm_(ds[0, 1:], ks[:-1])
            add(dq, dq_s)
            del ks
            add(dk, _pair_mm_t(ds, qs, buf))
            del ds, qs
        dq.mul_(scale)
        dk.mul_(scale)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None


def _offsets(inv: Tensor, length: int) -> Tensor:
    """``inv [rows, R, T]`` (token -> slot within its round) -> ``[rows, 1, R·T]`` index into the rounds'
    concatenated slots (round r's slots start at r·length)."""
    rows, rounds, t = inv.shape
    shift = torch.arange(rounds, device=inv.device)[None, :, None] * length
    return (inv + shift).view(rows, 1, rounds * t)


def lsh_attention(qk: Tensor, v: Tensor, buckets: Tensor, *, bucket_size: int, causal: bool = False,
                  key_padding_mask: Tensor | None = None, scale: float | None = None) -> Tensor:
    """LSH attention in O(n_hashes·T·bucket_size·d); see ``naive.lsh_attention`` for the arguments.

    Returns:
        ``[B, H, T, d]`` in the dtype of ``qk``.

    Raises:
        ValueError: mismatched shapes or a non-positive ``bucket_size``.
    """
    b, h, t, d = qk.shape
    if v.shape != qk.shape or buckets.shape[:2] != (b, h) or buckets.shape[-1] != t or buckets.dim() != 4:
        raise ValueError(f"qk, v [B, H, T, d] and buckets [B, H, R, T] expected, got qk {tuple(qk.shape)}, "
                         f"v {tuple(v.shape)}, buckets {tuple(buckets.shape)}")
    if bucket_size < 1:
        raise ValueError(f"bucket_size must be positive, got {bucket_size}")
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    cdt = torch.float32 if qk.dtype in _LOW else qk.dtype
    k = F.normalize(qk.to(cdt), dim=-1, eps=1e-12).to(qk.dtype)  # shared-QK keys
    flat = lambda x: x.reshape(b * h, t, d)  # noqa: E731
    key_valid = None if key_padding_mask is None else key_padding_mask.repeat_interleave(h, dim=0)  # [B·H, T]
    with torch.no_grad():
        geo = _Geometry(buckets.reshape(b * h, -1, t), key_valid, min(bucket_size, t), causal)
    out = _LSHAttention.apply(flat(qk), flat(k), flat(v), geo, causal, scale)
    return out.view(b, h, t, d)
