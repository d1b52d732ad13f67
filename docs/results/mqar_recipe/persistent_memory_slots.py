"""persistent_memory on the induction probe (its suite recipe, one learning rate 1e-3, seed 0, one thread) with N
slots, and with the slots as plain parameters instead of the paper's sqrt(d_h) / sqrt(N) reparametrisation.

    .venv/bin/python docs/results/mqar_recipe/persistent_memory_slots.py N STEPS [plain]
"""
import sys

import torch

from lightformer.bench import capacity
from lightformer.bench.machine import machine_info
from lightformer.bench.suite import build_cells
from lightformer.mixers import persistent_memory as pm

n, steps, plain = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:] == ["plain"]
if plain:  # unit-variance slots used as they are: AdamW moves them like any other weight
    def reset(self):
        with torch.no_grad():
            self.memory_keys.normal_(0.0, 1.0)
            self.memory_values.normal_(0.0, 1.0)
    pm.PersistentMemoryAttention.reset_memory = reset
    pm.PersistentMemoryAttention.memory = lambda self: (self.memory_keys, self.memory_values)
cell = build_cells(["induction"], ["persistent_memory"], [0], budget_s=None, max_steps=steps, lrs=[1e-3], threads=1,
                   mixer_options={"persistent_memory": {"num_memory": n}})[0]
torch.set_num_threads(1)
rec = capacity.run(cell)
curve = [(h["step"], round(h["val_accuracy"], 3)) for h in rec["lr_grid"][0]["history"]]
print(f"N={n} {'plain' if plain else 'paper'} {steps} steps: test {rec.get('value')}, validation {curve}",
      f"({machine_info()['cpu']}, git {rec.get('git_commit')})")
