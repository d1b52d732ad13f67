"""Multi-process training (torchrun + DistributedDataParallel on gloo) and gradient accumulation.

The equivalence pattern of PyTorch's own DDP tests: W ranks of b examples must train exactly as one process that
accumulates the same W micro-batches of b (same draws, same global-count normalisation), compared on parameters
and on AdamW's moments after three optimizer steps (the moments carry the gradient's scale, which AdamW's update
itself cancels: a gradient summed instead of averaged over the ranks shows there). Every launch has a timeout and
kills its whole process group when it expires, so a hung collective fails the test instead of stalling the suite.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from lightformer.train import Trainer
from lightformer.train.checkpoint import read_state
from lightformer.train.config import build_run_config
from lightformer.train.distributed import Distributed, launched_by_torchrun, resolve_device
from lightformer.train.optim import build_optimizer
from lightformer.train.trainer import STREAM, lr_at, resumed_grad_accum

#: seconds one torchrun launch may take (~15-25 s on the loaded 2-core host, most of it importing torch twice)
LAUNCH_TIMEOUT = 300
NO_CUDA = "no CUDA device"


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> pathlib.Path:
    """A deterministic text corpus written for these tests (char tokenizer), so nothing is skipped."""
    words = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "and", "runs", "far", "away"]
    lines = [" ".join(words[(i * 7 + j * j) % len(words)] for j in range(3 + i % 9)) + f" {i % 97}."
             for i in range(4000)]
    path = tmp_path_factory.mktemp("corpus") / "fox.txt"
    path.write_text("\n".join(lines))
    return path


def lm_flags(text_file: pathlib.Path) -> list[str]:
    return [f"--train.data={text_file}", "--train.tokenizer=char"]


#: a probe scoring only its recall positions: micro-batches score different numbers of tokens
FUZZY = ["--task.name=fuzzy_recall", "--task.options.train_targets=probe", "--task.options.seq_len=32",
         "--task.options.num_train_examples=64"]
#: fp32, no dropout, no clipping (clipping would renormalise a wrongly scaled gradient), 3 steps
EXACT = ["--preset", "tiny", "--max-steps", "3", "--train.grad_clip=0", "--train.warmup_steps=1",
         "--train.eval_interval=3", "--train.eval_iters=2", "--model.dropout=0.0", "--no-bf16"]


def launch(args: list[str], *, nproc: int = 2, timeout: float = LAUNCH_TIMEOUT) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=nproc -m lightformer.cli train ARGS`` (one thread per rank);
    fails the test on a non-zero exit or when ``timeout`` seconds pass (the process group is killed)."""
    proc = start(args, nproc=nproc)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill(proc)
        pytest.fail(f"torchrun did not finish within {timeout} s: {' '.join(args)}")
    assert proc.returncode == 0, f"torchrun exited {proc.returncode}:\n{err[-4000:]}"
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def start(args: list[str], *, nproc: int = 2) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m",
           "lightformer.cli", "train", "--no-progress", "--device", "cpu", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux ``/proc``), children first."""
    found = []
    for task in pathlib.Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = [int(c) for c in (task / "children").read_text().split()]
        except OSError:  # the task ended meanwhile
            continue
        for child in children:
            found += [child, *descendants(child)]
    return found


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL a torchrun launch: its ranks (torchrun starts each in a session of its own, so killing torchrun's
    process group does not reach them), then torchrun itself."""
    for pid in reversed(descendants(proc.pid)):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()


def in_process(args: list[str], device: str = "cpu", **train) -> Trainer:
    """The run ``args`` describes (preset + dotted overrides), in this process, with ``train`` overrides."""
    from lightformer.cli import parse_overrides

    preset = args[args.index("--preset") + 1]
    rest = [a for i, a in enumerate(args) if a.startswith("--") and "=" in a]
    overrides = parse_overrides(rest) + [("train.max_steps", int(args[args.index("--max-steps") + 1]))]
    overrides += [(f"train.{k}", v) for k, v in train.items()]
    return Trainer(build_run_config(preset, overrides=overrides), log=lambda s: None, device=device)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def assert_same_training_state(out_dir: pathlib.Path, trainer: Trainer, rel: float) -> None:
    """The checkpoint under ``out_dir`` holds ``trainer``'s parameters and AdamW moments to ``rel``."""
    folder = out_dir / "checkpoint"
    weights = load_file(str(folder / "model.safetensors"))
    params = trainer.model.state_dict()
    assert set(weights) <= set(params) and len(weights) > 0
    for key, value in weights.items():
        assert relative_error(value, params[key]) <= rel, key
    moments = load_file(str(folder / "optimizer.safetensors"))
    reference = trainer.optimizer.state_dict()["state"]
    # the same parameters have moments (a parameter without gradient has none, in both runs)
    assert {int(k.split(".")[0]) for k in moments} == set(reference)
    for key, value in moments.items():
        index, name = key.split(".", 1)
        assert relative_error(value, reference[int(index)][name]) <= rel, key


# -- 2 ranks x b == 1 process x 2 accumulation steps of b ---------------------------------------------------------

#: a real-valued task: its token table takes no part in the graph (DDP must leave its gradient None)
REGRESSION = ["--task.name=icl_regression", "--task.options.dim=4", "--task.options.num_points=9"]


@pytest.mark.parametrize("case", ["lm", "masked_probe", "muon", "unused_parameter"])
def test_two_gloo_ranks_equal_one_process_accumulating_two_micro_batches(case, text_file, tmp_path):
    args = EXACT + {"lm": lm_flags(text_file), "masked_probe": FUZZY, "unused_parameter": REGRESSION,
                    "muon": lm_flags(text_file) + ["--train.optimizer=muon"]}[case]
    run = launch(args + ["--out", str(tmp_path), "--json"])
    torch.set_num_threads(1)
    reference = in_process(args, grad_accum=2)
    if case == "masked_probe":  # the case this test exists for: a per-rank mean would weigh tokens unequally
        counts = [reference.task.count(reference.draw(step, a)) for step in range(3) for a in range(2)]
        assert len(set(counts)) > 1, counts
    result = reference.fit(progress_bar=False)
    if case == "unused_parameter":  # no gradient, so no AdamW state; the checkpoint's moments must agree (below)
        unused = [p for p in reference.model.parameters() if p.grad is None]  # the token table
        assert len(unused) == 1 and unused[0] not in reference.optimizer.state
    # the same draws, sums and scaling by powers of two: equal to 1e-6 relative (bitwise here, one thread each)
    assert_same_training_state(tmp_path, reference, rel=1e-6)
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["world_size"] == 2 and summary["grad_accum"] == 1 and summary["steps"] == 3
    assert summary["train_loss"] == pytest.approx(result.train_loss, rel=1e-6)
    for key, value in result.metrics.items():  # the validation set split between the ranks, evaluated once
        assert summary[key] == pytest.approx(value, rel=1e-9), key
    # tokens are counted over both ranks: 3 steps x 2 ranks x batch 8 x T
    assert summary["tokens"] == result.tokens == 3 * 2 * 8 * reference.task.seq_len
    assert run.stdout.count("validation:") == 1  # only rank 0 prints


def test_accumulation_normalises_by_the_global_count_not_per_micro_batch(text_file):
    """One process, two micro-batches of a masked probe: the step's loss is the sum over all scored tokens divided
    by their number, not the mean of the two micro-batch means."""
    torch.set_num_threads(1)
    trainer = in_process(EXACT + FUZZY, grad_accum=2, max_steps=1)
    batches = [trainer.draw(0, a) for a in range(2)]
    counts = [trainer.task.count(b) for b in batches]
    assert counts[0] != counts[1]
    with torch.no_grad():
        losses = [float(trainer.task.loss(trainer.model, b).loss) for b in batches]
    result = trainer.fit(progress_bar=False)
    expected = (losses[0] * counts[0] + losses[1] * counts[1]) / sum(counts)
    assert result.history[0]["train_loss"] == pytest.approx(expected, rel=1e-6)
    assert abs(expected - sum(losses) / 2) > 1e-3  # the two means differ: the test can tell them apart
    assert result.scored == sum(counts)


# -- one process without accumulation is the trainer it always was -------------------------------------------------

def test_one_process_without_accumulation_reproduces_the_single_step_loop_exactly(text_file):
    """The trainer's loop before accumulation and ranks existed, written out: draw ``seed·2³² + step``, loss,
    backward, clip, step. With dropout, so the RNG stream has to match as well."""
    torch.set_num_threads(1)
    args = ["--preset", "tiny", "--max-steps", "8", "--train.eval_interval=1", "--train.eval_iters=1",
            "--model.dropout=0.1", *lm_flags(text_file)]
    trainer = in_process(args)
    dropout_stream = torch.get_rng_state()  # where the trainer's training starts
    tc, task = trainer.config.train, trainer.task
    torch.manual_seed(tc.seed)
    model = task.build_model(trainer.config.model)
    optimizer = build_optimizer(model, tc)
    losses = []
    for step in range(tc.max_steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(tc, step, step / tc.max_steps)
        out = task.loss(model, task.sample("train", tc.batch_size, seed=tc.seed * STREAM + step))
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip, foreach=True)
        optimizer.step()
        losses.append(float(out.loss.detach()))
    torch.set_rng_state(dropout_stream)
    result = trainer.fit(progress_bar=False)
    assert [row["train_loss"] for row in result.history] == losses  # exactly, step by step
    for (name, p), q in zip(model.named_parameters(), trainer.model.parameters()):
        assert torch.equal(p, q), name
    assert result.world_size == 1 and result.grad_accum == 1


# -- checkpoints: SIGKILL mid-run, resume on 2 ranks and on 1 ------------------------------------------------------

KILL_RUN = ["--preset", "tiny", "--max-steps", "240", "--train.eval_interval=20", "--train.eval_iters=1",
            "--train.checkpoint_interval=20", "--train.warmup_steps=10", "--model.dropout=0.0", "--no-bf16"]


@pytest.fixture(scope="module")
def killed_run(text_file, tmp_path_factory):
    """An uninterrupted 2-rank run, and the same run killed with SIGKILL (every process of the launch) once it has
    written a checkpoint past step 40: ``(whole history, folder of the killed run, its checkpoint step)``."""
    base = tmp_path_factory.mktemp("kill")
    args = KILL_RUN + lm_flags(text_file)
    launch(args + ["--out", str(base / "whole")])
    whole = read_state(base / "whole")["history"]
    out = base / "killed"
    proc = start(args + ["--out", str(out)])
    deadline = time.monotonic() + LAUNCH_TIMEOUT
    step = 0
    try:
        while step < 40:
            if time.monotonic() > deadline or proc.poll() is not None:
                pytest.fail(f"no checkpoint past step 40 before the run ended or timed out (exit {proc.poll()})")
            try:
                step = read_state(out)["step"]
            except (FileNotFoundError, json.JSONDecodeError, KeyError):
                pass
            time.sleep(0.02)
    finally:
        kill(proc)
    assert proc.returncode == -signal.SIGKILL
    step = read_state(out)["step"]  # the last checkpoint written before the kill
    assert 40 <= step < 240, "killed mid-training"
    return whole, out, step


@pytest.mark.slow
def test_a_killed_two_rank_run_resumes_with_the_uninterrupted_loss_curve(killed_run, text_file, tmp_path):
    whole, killed, step = killed_run
    out = tmp_path / "resumed"
    shutil.copytree(killed, out)
    launch(KILL_RUN + lm_flags(text_file) + ["--out", str(out), "--resume", str(out)])
    resumed = read_state(out)["history"]
    assert [r["step"] for r in resumed] == [r["step"] for r in whole] == list(range(20, 241, 20))
    for got, want in zip(resumed, whole):  # the same ranks, the same reductions: the same numbers
        assert got["train_loss"] == want["train_loss"] and got["val_loss"] == want["val_loss"], got["step"]
    state = read_state(out)
    assert state["world_size"] == 2 and len(state["rng"]["ranks"]) == 2


@pytest.mark.slow
def test_a_two_rank_checkpoint_resumes_in_one_process_with_the_same_global_batch(killed_run, text_file, tmp_path):
    """1 process resumes with grad_accum = 2: each step draws the two micro-batches the two ranks drew, so the curve
    continues as the 2-rank run's, up to the order of float additions."""
    whole, killed, step = killed_run
    out = tmp_path / "one"
    shutil.copytree(killed, out)
    torch.set_num_threads(1)
    lines: list[str] = []
    trainer = in_process(KILL_RUN + lm_flags(text_file), out_dir=str(out))
    trainer.log = lines.append
    trainer.resume(str(out))
    assert trainer.step == step and trainer.config.train.grad_accum == 2
    assert any("grad_accum 1 -> 2" in line for line in lines), lines
    result = trainer.fit(progress_bar=False)
    assert result.steps == 240 and result.world_size == 1 and result.grad_accum == 2
    assert [r["step"] for r in result.history] == [r["step"] for r in whole]
    for got, want in zip(result.history, whole):
        assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-5), got["step"]
        assert got["val_loss"] == pytest.approx(want["val_loss"], rel=1e-5), got["step"]
    assert result.tokens == whole[-1]["tokens"]  # the same global batch: the same token count


def test_resuming_keeps_the_global_batch_or_refuses():
    assert resumed_grad_accum(1, 2, 1) == 2  # 2 ranks -> 1 process accumulating 2
    assert resumed_grad_accum(4, 1, 2) == 2  # 1 process x 4 -> 2 ranks x 2
    assert resumed_grad_accum(3, 2, 6) == 1
    with pytest.raises(ValueError, match=r"grad_accum=1 x 2 process\(es\)\); 3 processes cannot share"):
        resumed_grad_accum(1, 2, 3)


# -- devices ------------------------------------------------------------------------------------------------------

def test_devices_resolve_or_are_refused_by_name(capsys):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == (torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu"))
    with pytest.raises(ValueError, match="device must be one of cpu, cuda, auto, got 'tpu'"):
        resolve_device("tpu")
    with pytest.raises(ValueError, match="rank must be in"):
        Distributed(rank=2, world_size=2)
    assert not launched_by_torchrun({"RANK": "0", "WORLD_SIZE": "2"})
    assert launched_by_torchrun({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2"})
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device='cuda': no CUDA device"):
            resolve_device("cuda")
        from lightformer.cli import main

        assert main(["train", "--preset", "tiny", "--max-steps", "1", "--device", "cuda", "--no-progress"]) == 2
        assert "device='cuda': no CUDA device" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
def test_training_on_cuda_checkpoints_its_rng_and_resumes(text_file, tmp_path):
    args = ["--preset", "tiny", "--max-steps", "6", "--train.eval_interval=3", "--train.eval_iters=1",
            "--model.dropout=0.1", *lm_flags(text_file)]
    full = in_process(args, device="cuda").fit(progress_bar=False)
    first = in_process(args, device="cuda", out_dir=str(tmp_path))
    assert next(first.model.parameters()).device.type == "cuda"
    first.fit(progress_bar=False, until_step=3)
    assert "cuda" in read_state(tmp_path)["rng"]
    second = in_process(args, device="cuda", out_dir=str(tmp_path))
    second.resume(str(tmp_path))
    resumed = second.fit(progress_bar=False)
    assert [r["train_loss"] for r in resumed.history] == pytest.approx([r["train_loss"] for r in full.history],
                                                                         rel=1e-6)
