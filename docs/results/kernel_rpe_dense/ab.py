"""In-process A/B of the two forms of kernelized attention with RPE (ops/rpe/dense.py against ops/rpe/fft.py):
fwd+bwd wall time, causal, m = 64 features, H = 2 heads, B·T = 4096 tokens, one thread, best of 3.

    .venv/bin/python docs/results/kernel_rpe_dense/ab.py
"""
import time

import torch

from lightformer.bench.machine import machine_info
from lightformer.ops.rpe import dense, fft


def best_of(fn, *tensors, reps=3, **kw):
    best = float("inf")
    for _ in range(reps):
        leaves = [x.detach().requires_grad_(True) for x in tensors]
        t0 = time.perf_counter()
        fn(*leaves, **kw).sum().backward()
        best = min(best, time.perf_counter() - t0)
    return best


torch.set_num_threads(1)
print(machine_info())
g = torch.Generator().manual_seed(0)
for d in (32, 64):
    for t in (64, 256, 512, 1024, 2048, 4096):
        b, h, m = max(1, 4096 // t), 2, 64
        pq, pk = torch.rand(b, h, t, m, generator=g), torch.rand(b, h, t, m, generator=g)
        v, w = torch.randn(b, h, t, d, generator=g), torch.rand(h, 2 * t - 1, generator=g) + 0.5
        tf = best_of(fft.kernel_rpe_attention, pq, pk, v, w, causal=True)
        td = best_of(dense.kernel_rpe_attention, pq, pk, v, w, causal=True)
        print(f"d={d:3d} T={t:5d} B={b:3d}: fft {tf * 1e3:8.1f} ms  dense {td * 1e3:8.1f} ms  fft/dense {tf / td:6.1f}",
              flush=True)
