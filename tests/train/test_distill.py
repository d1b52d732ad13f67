"""Knowledge distillation (Hinton, Vinyals & Dean 2015): the soft-target loss against a hand-computed example and a
naive oracle, and the trainer's ``train.teacher``: alpha = 0 is plain training, a student with another mixer learns
from a softmax teacher, the teacher stays frozen and outside the student's optimizer and checkpoint, and a teacher
that cannot teach is refused by name."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from lightformer.cli import main
from lightformer.models.config import ModelConfig
from lightformer.tasks.base import IGNORE, ClassificationTask, TaskConfig
from lightformer.train import Trainer
from lightformer.train.checkpoint import load_trained, read_state
from lightformer.train.config import build_run_config
from lightformer.train.distill import check_teacher, distillation_loss, soft_target_loss

TEXT = pathlib.Path(argparse.__file__).read_bytes()  # real text, ~100 KB: the standard library's argparse.py


def quiet(_: str) -> None:
    pass


def tiny(text_path: pathlib.Path, model: dict | None = None, **train) -> object:
    overrides = [("train.data", str(text_path)), *((f"train.{k}", v) for k, v in train.items()),
                 *((f"model.{k}", v) for k, v in (model or {}).items())]
    return build_run_config("tiny", overrides=overrides)


@pytest.fixture(scope="module")
def text_path(tmp_path_factory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("data") / "argparse.py"
    path.write_bytes(TEXT)
    return path


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, text_path) -> pathlib.Path:
    """A tiny softmax byte-LM trained for 60 steps: a teacher that is better than an untrained student."""
    out = tmp_path_factory.mktemp("teacher")
    Trainer(tiny(text_path, max_steps=60, eval_interval=60, out_dir=str(out)), log=quiet).fit(progress_bar=False)
    return out


# -- the loss ---------------------------------------------------------------------------------------------------------
def test_soft_target_loss_on_a_hand_computed_example():
    # position 0: teacher [2, 0, 0], student uniform; position 1: both [1, 2, 3]; position 2 ignored (-100)
    teacher = torch.tensor([[2.0, 0.0, 0.0], [1.0, 2.0, 3.0], [9.0, -9.0, 0.0]])
    student = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [-9.0, 9.0, 0.0]])
    targets = torch.tensor([0, 2, IGNORE])
    # at T = 2 the teacher's row 0 is softmax([1, 0, 0]) = [e, 1, 1] / (e + 2); the student's is [1/3, 1/3, 1/3]
    p = [math.e / (math.e + 2), 1 / (math.e + 2), 1 / (math.e + 2)]
    kl0 = sum(pi * math.log(pi / (1 / 3)) for pi in p)  # = 0.1232845 nats; row 1's KL is 0
    assert kl0 == pytest.approx(0.1232845, abs=1e-7)
    soft = soft_target_loss(student, teacher, targets, temperature=2.0)
    assert float(soft) == pytest.approx(2.0**2 * (kl0 + 0.0) / 2, rel=1e-6)  # 0.246569: T² x mean over 2 rows
    assert float(soft) == pytest.approx(0.246569, abs=1e-6)
    # hard term at T = 1: row 0 uniform -> ln 3; row 1: log(e + e² + e³) - 3 = 0.407606
    hard = (math.log(3) + math.log(math.e + math.e**2 + math.e**3) - 3) / 2
    out = distillation_loss(student, teacher, targets, temperature=2.0, alpha=0.25)
    assert float(out.hard) == pytest.approx(hard, rel=1e-6)
    assert float(out.hard) == pytest.approx(0.753109, abs=1e-6)  # (1.098612 + 0.407606) / 2
    assert float(out.loss) == pytest.approx(0.25 * 0.246569 + 0.75 * hard, rel=1e-5)


def naive_soft_loss(student: list[list[float]], teacher: list[list[float]], targets: list[int], t: float) -> float:
    """T² · mean over scored rows of Σ_c p_c log(p_c / q_c), p = softmax(teacher / T), q = softmax(student / T)."""
    def softmax(row: list[float]) -> list[float]:
        m = max(row)
        e = [math.exp((v - m) / t) for v in row]
        return [v / sum(e) for v in e]

    kls = []
    for zs, zt, y in zip(student, teacher, targets):
        if y == IGNORE:
            continue
        p, q = softmax(zt), softmax(zs)
        kls.append(sum(pc * math.log(pc / qc) for pc, qc in zip(p, q)))
    return t * t * sum(kls) / len(kls)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0, 5.0])
def test_soft_target_loss_equals_the_naive_oracle_and_has_hintons_gradient(temperature):
    g = torch.Generator().manual_seed(1)
    student = (torch.randn(2, 7, 11, generator=g) * 3).requires_grad_(True)  # [B, T, C]
    teacher = torch.randn(2, 7, 11, generator=g) * 3
    targets = torch.randint(0, 11, (2, 7), generator=g)
    targets[0, 2] = targets[1, 5] = targets[1, 6] = IGNORE
    soft = soft_target_loss(student, teacher, targets, temperature=temperature)
    expected = naive_soft_loss(student.detach().flatten(0, 1).tolist(), teacher.flatten(0, 1).tolist(),
                               targets.flatten().tolist(), temperature)
    assert float(soft.detach()) == pytest.approx(expected, rel=1e-5)
    # Hinton et al. Sec. 2.1: d KL / d z_s = (q - p) / T; times T² / N -> T (q - p) / N at scored rows, 0 elsewhere
    soft.backward()
    scored = (targets != IGNORE)[..., None]
    q = torch.softmax(student.detach().double() / temperature, -1)
    p = torch.softmax(teacher.double() / temperature, -1)
    want = temperature * (q - p) / int(scored.sum()) * scored
    torch.testing.assert_close(student.grad.double(), want, rtol=1e-4, atol=1e-7)


def test_distillation_loss_mixes_the_two_terms_and_ignores_unscored_positions():
    g = torch.Generator().manual_seed(2)
    student, teacher = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    targets = torch.tensor([1, IGNORE, 3, 0, IGNORE])
    out = distillation_loss(student, teacher, targets, temperature=3.0, alpha=0.7)
    hard = F.cross_entropy(student[targets != IGNORE], targets[targets != IGNORE])
    soft = naive_soft_loss(student.tolist(), teacher.tolist(), targets.tolist(), 3.0)
    assert float(out.hard) == pytest.approx(float(hard), rel=1e-6)
    assert float(out.soft) == pytest.approx(soft, rel=1e-5)
    assert float(out.loss) == pytest.approx(0.7 * soft + 0.3 * float(hard), rel=1e-5)
    # the unscored rows' logits do not matter
    student2, teacher2 = student.clone(), teacher.clone()
    student2[1], teacher2[4] = 100.0, -100.0
    assert float(distillation_loss(student2, teacher2, targets, temperature=3.0, alpha=0.7).loss) == float(out.loss)
    # alpha = 0 is the hard loss exactly, alpha = 1 the soft one
    assert torch.equal(distillation_loss(student, teacher, targets, temperature=3.0, alpha=0.0).loss, out.hard)
    assert torch.equal(distillation_loss(student, teacher, targets, temperature=3.0, alpha=1.0).loss, out.soft)
    assert float(soft_target_loss(student, student, targets, temperature=3.0)) == pytest.approx(0.0, abs=1e-7)


def test_loss_errors_name_the_argument():
    z = torch.zeros(3, 4)
    with pytest.raises(ValueError, match="temperature"):
        soft_target_loss(z, z, temperature=0.0)
    with pytest.raises(ValueError, match="temperature"):
        soft_target_loss(z, z, temperature=float("nan"))
    with pytest.raises(ValueError, match="alpha"):
        distillation_loss(z, z, torch.zeros(3, dtype=torch.long), temperature=2.0, alpha=1.5)
    with pytest.raises(ValueError, match="teacher_logits"):
        soft_target_loss(z, torch.zeros(3, 5), temperature=2.0)
    with pytest.raises(ValueError, match="targets"):
        soft_target_loss(z, z, torch.zeros(4, dtype=torch.long), temperature=2.0)
    with pytest.raises(ValueError, match="no scored position"):
        soft_target_loss(z, z, torch.full((3,), IGNORE), temperature=2.0)


def test_config_validates_the_distillation_options(text_path):
    with pytest.raises(ValueError, match="distill_temperature"):
        tiny(text_path, teacher="x", distill_temperature=0)
    with pytest.raises(ValueError, match="distill_temperature"):
        tiny(text_path, teacher="x", distill_temperature=True)
    with pytest.raises(ValueError, match="distill_alpha"):
        tiny(text_path, teacher="x", distill_alpha=1.5)
    with pytest.raises(ValueError, match="teacher is not"):
        tiny(text_path, distill_alpha=0.9)  # nothing to distil from: not silently ignored
    with pytest.raises(ValueError, match="teacher"):
        tiny(text_path, teacher="")
    assert tiny(text_path, teacher="x", distill_alpha=0.9, distill_temperature=4.0).train.distill_alpha == 0.9


# -- the trainer ------------------------------------------------------------------------------------------------------
def test_alpha_zero_trains_exactly_as_without_a_teacher(text_path, teacher_dir):
    kw = dict(max_steps=12, eval_interval=1)  # a record per step: the logged terms are that step's
    model = {"dropout": 0.1}  # dropout draws from torch's RNG: loading the teacher must not move it
    plain = Trainer(tiny(text_path, model, **kw), log=quiet)
    plain_result = plain.fit(progress_bar=False)
    taught = Trainer(tiny(text_path, model, teacher=str(teacher_dir), distill_alpha=0.0, **kw), log=quiet)
    taught_result = taught.fit(progress_bar=False)
    assert [r["train_loss"] for r in taught.history] == [r["train_loss"] for r in plain.history]
    assert all(r["train_hard_loss"] == r["train_loss"] and r["train_distill_loss"] > 0 for r in taught.history)
    assert taught_result.val_loss == plain_result.val_loss
    for (name, a), b in zip(plain.model.state_dict().items(), taught.model.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("mixer, options", [("sliding_window", {"window": 8}), ("gla", {})])
def test_a_student_with_another_mixer_learns_from_a_softmax_teacher(text_path, teacher_dir, tmp_path, mixer,
                                                                    options):
    teacher_before = load_trained(teacher_dir)[0].state_dict()
    model = {"mixer": mixer, **{f"mixer_options.{k}": v for k, v in options.items()}}
    if mixer == "gla":
        model["position"] = "learned"
    cfg = tiny(text_path, model, teacher=str(teacher_dir), distill_alpha=0.7, max_steps=40, eval_interval=10,
               out_dir=str(tmp_path))
    trainer = Trainer(cfg, log=quiet)
    assert trainer.config.model.mixer == mixer and trainer.teacher.record["config"]["model"]["mixer"] == "softmax"
    result = trainer.fit(progress_bar=False)
    soft = [r["train_distill_loss"] for r in trainer.history]
    hard = [r["train_hard_loss"] for r in trainer.history]
    assert len(soft) == 4 and all(math.isfinite(s) for s in soft)
    assert soft[-1] < 0.7 * soft[0], f"the student's KL to the teacher should fall: {soft}"
    assert hard[-1] < hard[0] - 0.3, f"and its loss on the labels: {hard}"
    # the teacher is frozen, outside the optimizer, unchanged, and not in the student's checkpoint
    teacher_params = list(trainer.teacher.model.parameters())
    assert all(not p.requires_grad and p.grad is None for p in teacher_params)
    in_optimizer = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not in_optimizer & {id(p) for p in teacher_params}
    assert in_optimizer == {id(p) for p in trainer.model.parameters()}
    assert not trainer.teacher.model.training
    for key, value in trainer.teacher.model.state_dict().items():
        assert torch.equal(value, teacher_before[key]), key
    saved = load_file(str(tmp_path / "checkpoint" / "model.safetensors"))
    state = read_state(tmp_path)
    assert set(saved) | set(state["aliases"]) == set(trainer.model.state_dict())
    # the record: the teacher's resolved path and config in trainer.json and in the result
    assert state["teacher"]["path"] == str((teacher_dir / "checkpoint").resolve())
    assert state["teacher"]["config"]["model"]["mixer"] == "softmax" and state["teacher"]["step"] == 60
    assert state["config"]["train"]["teacher"] == str(teacher_dir)
    assert result.teacher == state["teacher"]
    # the student loads and evaluates on its own
    _, _, config, _ = load_trained(tmp_path)
    assert config.model.mixer == mixer


def test_a_classifier_is_distilled_too(tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTFORMER_CACHE", str(tmp_path / "cache"))
    task = {"task.name": "listops", "task.options.min_length": 20, "task.options.max_length": 60,
            "task.options.num_train": 64, "task.options.num_val": 16, "task.options.num_test": 16}
    common = [*task.items(), ("model.max_len", 64), ("train.max_steps", 6), ("train.eval_interval", 3)]
    Trainer(build_run_config("tiny", overrides=[*common, ("train.out_dir", str(tmp_path / "t"))]),
            log=quiet).fit(progress_bar=False)
    student = Trainer(build_run_config("tiny", overrides=[*common, ("model.mixer", "linear"),
                                                          ("train.teacher", str(tmp_path / "t"))]), log=quiet)
    result = student.fit(progress_bar=False)
    assert student.task.kind == "classify" and student.teacher.record["config"]["task"]["name"] == "listops"
    assert all(math.isfinite(r["train_distill_loss"]) and r["train_distill_loss"] >= 0 for r in student.history)
    assert 0.0 <= result.metrics["val_accuracy"] <= 1.0


def test_train_teacher_from_the_command_line(capsys, text_path, teacher_dir):
    code = main(["train", "--preset", "tiny", "--data", str(text_path), "--max-steps", "3", "--json",
                 "--no-progress", "--model.mixer=sliding_window", "--model.mixer_options.window=8",
                 "--train.teacher", str(teacher_dir), "--train.distill_temperature=4"])
    out, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["steps"] == 3 and summary["teacher"]["config"]["model"]["mixer"] == "softmax"


# -- a teacher that cannot teach --------------------------------------------------------------------------------------
def test_bad_teachers_are_refused_by_name(text_path, teacher_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="teacher='.*nowhere'"):
        Trainer(tiny(text_path, teacher=str(tmp_path / "nowhere")), log=quiet)
    # a char-level teacher of another alphabet: another vocabulary size, or the same size naming other characters
    abc, xyz, digits = tmp_path / "abc.txt", tmp_path / "xyz.txt", tmp_path / "digits.txt"
    abc.write_text("abc ab ca bc " * 400)
    xyz.write_text("xyz xy zx yz " * 400)
    digits.write_text("0123456789 " * 400)
    char = dict(tokenizer="char", max_steps=2, eval_interval=2)
    Trainer(tiny(abc, **char, out_dir=str(tmp_path / "abc")), log=quiet).fit(progress_bar=False)
    with pytest.raises(ValueError, match="teacher=.*vocabulary of 4 tokens, the student 11"):
        Trainer(tiny(digits, **char, teacher=str(tmp_path / "abc")), log=quiet)
    with pytest.raises(ValueError, match="teacher=.*another tokenizer"):
        Trainer(tiny(xyz, **char, teacher=str(tmp_path / "abc")), log=quiet)
    with pytest.raises(ValueError, match="teacher=.*vocabulary of 256 tokens, the student 4"):
        Trainer(tiny(abc, **char, teacher=str(teacher_dir)), log=quiet)  # a byte teacher, a char student
    # another task: a language model cannot teach a probe
    probe = build_run_config("tiny", overrides=[("task.name", "induction"), ("task.options.seq_len", 16),
                                                ("task.options.num_train_examples", 64),
                                                ("train.teacher", str(teacher_dir))])
    with pytest.raises(ValueError, match="teacher=.*trained on task 'lm'.*the student on 'induction'"):
        Trainer(probe, log=quiet)
    # absolute positions shorter than the student's sequences
    with pytest.raises(ValueError, match="teacher=.*max_len=32.*sequence length 64"):
        Trainer(tiny(text_path, {"max_len": 64}, block_size=64, teacher=str(teacher_dir)), log=quiet)
    # resuming a distilled checkpoint without its teacher is another run
    student_dir = tmp_path / "student"
    Trainer(tiny(text_path, teacher=str(teacher_dir), max_steps=2, eval_interval=2, out_dir=str(student_dir)),
            log=quiet).fit(progress_bar=False)
    with pytest.raises(ValueError, match="resume=.*teacher="):
        Trainer(tiny(text_path, max_steps=4), log=quiet).resume(str(student_dir))


@dataclasses.dataclass(frozen=True)
class ToyConfig(TaskConfig):
    num_classes: int = 2


class ToyClassification(ClassificationTask):
    """Unregistered: a classification task whose number of classes is an option."""

    config_class = ToyConfig

    @property
    def label_names(self):
        return tuple(str(i) for i in range(self.config.num_classes))

    @property
    def seq_len(self) -> int:
        return 8

    @property
    def vocab(self):
        return ("a", "b", "c")


def test_a_classifier_teacher_with_other_classes_is_refused():
    student_task = ToyClassification(ToyConfig(num_classes=2))
    teacher_task = ToyClassification(ToyConfig(num_classes=3))
    config = ModelConfig(dim=16, num_layers=1, num_heads=2, max_len=8)
    student, teacher = student_task.build_model(config), teacher_task.build_model(config)
    with pytest.raises(ValueError, match="teacher='t' has 3 classes, the student's task 2"):
        check_teacher("t", student_task, student, teacher_task, teacher, {})
    same = ToyClassification(ToyConfig(num_classes=2, seed=5))  # other data of the same task: a fine teacher
    check_teacher("t", student_task, student, same, same.build_model(config), {})
