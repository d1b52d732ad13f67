"""Where persistent_memory's attention goes at init on the MQAR recipe (2 layers × 64, 2 heads, T=64): the mass each
query puts on the N memory slots, and the norm of the attention output that comes from the slots and from the
tokens, for N = 256 (the default) and N = 16. 64 training sequences, model seed 0.

    .venv/bin/python docs/results/mqar_recipe/persistent_memory_init.py
"""
import math

import torch

from lightformer.bench.capacity import CapacityCell
from lightformer.bench.machine import machine_info
from lightformer.bench.recipes import model_for, recipe
from lightformer.mixers.persistent_memory import PersistentMemoryAttention
from lightformer.train.config import RunConfig, TaskSpec, TrainConfig

torch.set_num_threads(1)
print(machine_info())
r = recipe("mqar")
for n in (256, 16):
    cell = CapacityCell("mqar", {}, "persistent_memory", {"num_memory": n}, model_for(r, "persistent_memory", 64),
                        r.train, r.lrs)
    config = cell.model_config()
    task = RunConfig(config, TrainConfig(), TaskSpec("mqar", {})).build_task()
    torch.manual_seed(0)
    model = task.build_model(config)
    x, _ = task.sample("train", 64, seed=0)
    rows = []

    def probe(module, args, _out):
        h = args[0]
        t = h.shape[1]
        q, k, v = module.project(h, torch.arange(t))
        mk, mv = module.memory()
        scale = 1 / math.sqrt(q.shape[-1])
        s_mem = torch.einsum("bhtd,hnd->bhtn", q, mk) * scale
        s_seq = (q @ k.transpose(-1, -2) * scale).masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), -math.inf)
        p = torch.cat([s_mem, s_seq], -1).softmax(-1)
        o_mem = torch.einsum("bhtn,hnd->bhtd", p[..., :n], mv)
        o_seq = p[..., n:] @ v
        rows.append((p[..., :n].sum(-1).mean().item(), o_mem.norm(dim=-1).mean().item(),
                     o_seq.norm(dim=-1).mean().item()))

    for m in model.modules():
        if isinstance(m, PersistentMemoryAttention):
            m.register_forward_hook(probe)
    with torch.no_grad():
        model(x)
    for layer, (mass, from_mem, from_tok) in enumerate(rows):
        print(f"N={n:3d} layer {layer}: attention mass on the slots {mass:.3f} (uniform over N + mean causal "
              f"context: {n / (n + 32.5):.3f}); output norm from the slots {from_mem:.3f}, from the tokens "
              f"{from_tok:.3f}")
