"""s4d's decode step from a prefilled context of 512 and of 8192 tokens, in one process: the final state's shape,
layout and smallest magnitude (no denormals), and three loops of 50 steps each (ms per step), D=512, one thread.

    .venv/bin/python docs/results/decode_recheck/step_loop.py
"""
import torch, time
torch.set_num_threads(1)
from lightformer.mixers import MIXERS
m = MIXERS.create("s4d", dim=512, causal=True).eval()
for T in (512, 8192):
    x = torch.randn(1, T, 512)
    with torch.no_grad():
        y, st = m(x, return_state=True)
        xs = st.x
        print(T, xs.shape, xs.dtype, xs.stride(), xs.is_contiguous(), xs.untyped_storage().nbytes() / 2**20, "MiB storage")
        print("  min |state|", xs.abs().min().item(), "denormal count", ((xs.real.abs() < 1.2e-38) & (xs.real != 0)).sum().item())
        x_t = torch.randn(1, 512)
        for rep in range(3):
            s = st
            t0 = time.perf_counter()
            for _ in range(50):
                out, s = m.step(x_t, s)
            print("  50 steps", round((time.perf_counter() - t0) * 1e3 / 50, 3), "ms/step")
