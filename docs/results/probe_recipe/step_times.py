"""Seconds per training step (fwd + bwd + AdamW) of every causal mixer on every probe, at the capacity recipe's
model, batch and mixer options (``bench/recipes.py``), one thread, median of 2 steps after one warm-up step. An
estimate of what the probe grid costs, not a bench result (the bench times mixers with ``lightformer bench``).

    .venv/bin/python docs/results/probe_recipe/step_times.py TASK[,TASK...] MIXER[,MIXER...] [STEPS]
"""
import sys
import time

import torch

from lightformer.bench.capacity import CapacityCell
from lightformer.bench.machine import machine_info
from lightformer.bench.recipes import model_for, recipe, sized_options
from lightformer.train.config import RunConfig, TaskSpec, TrainConfig

torch.set_num_threads(1)
tasks, mixers = sys.argv[1].split(","), sys.argv[2].split(",")
steps = int(sys.argv[3]) if len(sys.argv) > 3 else 2
print(machine_info(), flush=True)
for name in tasks:
    r = recipe(name)
    spec = TaskSpec(name, dict(r.task_options))
    for mixer in mixers:
        probe = CapacityCell(name, r.task_options, "softmax", {}, model_for(r, "softmax", 10**6), r.train, r.lrs)
        t = RunConfig(probe.model_config(), TrainConfig(), spec).build_task().seq_len
        cell = CapacityCell(name, r.task_options, mixer, sized_options(mixer, t, r.model["dim"]),
                            model_for(r, mixer, t), r.train, r.lrs)
        config = cell.model_config()
        task = RunConfig(config, TrainConfig(), spec).build_task()
        model = task.build_model(config)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        batch = task.sample("train", r.train["batch_size"], seed=0)
        times = []
        for _ in range(steps + 1):
            t0 = time.perf_counter()
            task.loss(model, batch).loss.backward()
            opt.step()
            opt.zero_grad()
            times.append(time.perf_counter() - t0)
        times = sorted(times[1:])
        print(f"{name:15s} T={t:5d} B={r.train['batch_size']} {mixer:18s} {times[len(times) // 2] * 1e3:8.1f} ms/step",
              flush=True)
