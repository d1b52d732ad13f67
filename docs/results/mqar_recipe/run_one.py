import sys, json, time, torch
from lightformer.train.config import RunConfig, TrainConfig, TaskSpec
from lightformer.models.config import ModelConfig
from lightformer.train import Trainer
mixer, dim, lr, steps = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
task = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}
pos = sys.argv[6] if len(sys.argv) > 6 else "rope"
bs = int(sys.argv[7]) if len(sys.argv) > 7 else 64
torch.set_num_threads(1)
cfg = RunConfig(ModelConfig(dim=dim, num_layers=2, num_heads=1 if mixer=="softmax" else 4, mixer=mixer, position=pos, max_len=1024),
                TrainConfig(batch_size=bs, max_steps=steps, lr=lr, min_lr=lr/10, warmup_steps=100, weight_decay=0.1,
                            bf16=True, eval_interval=250, eval_iters=8, seed=0),
                TaskSpec("mqar", task))
t0=time.time()
r = Trainer(cfg, log=lambda s: print(s, flush=True)).fit(progress_bar=False)
print("RESULT", mixer, dim, lr, steps, task, pos, r.metrics, round(time.time()-t0,1), flush=True)
