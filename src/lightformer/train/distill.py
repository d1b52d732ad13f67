"""Knowledge distillation: Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural Network"
(arXiv 1503.02531), Sec. 2.

The student is trained on a weighted average of two objectives on the same batch:

    loss = α · T² · KL(softmax(z_t / T) ‖ softmax(z_s / T)) + (1 − α) · CE(softmax(z_s), y)

with ``z_t`` the teacher's and ``z_s`` the student's logits at the scored positions (targets ``!= -100``), both
softened by the same temperature ``T``, and ``y`` the hard labels. The KL divergence differs from the paper's
soft-target cross-entropy by the teacher's entropy, a constant for the student, so the gradients are the same; KL
is 0 when the student matches the teacher, which makes the logged number readable. The gradient of the soft term
scales as 1/T² (Sec. 2.1), hence the T² factor, which keeps the two terms' relative weight when T changes.

The teacher is a trained checkpoint of the same task, vocabulary and head (``load_teacher``); its mixers may be
anything (distil ``softmax`` into ``sliding_window`` or a recurrent mixer). It runs in eval mode, without gradient,
under the student's autocast, and is no part of the student's parameters, optimizer or checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..tasks.base import IGNORE, Task
from . import checkpoint


def check_distill_options(temperature: Any, alpha: Any) -> None:
    """Raise ``ValueError`` naming ``temperature`` unless it is a finite number > 0, or ``alpha`` unless it is a
    number in [0, 1] (bools are refused for both)."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or \
            not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")


def soft_target_loss(student_logits: Tensor, teacher_logits: Tensor, targets: Tensor | None = None, *,
                     temperature: float) -> Tensor:
    """T² · mean over the scored positions of KL(softmax(z_t / T) ‖ softmax(z_s / T)) (Hinton et al. 2015, Sec. 2).

    Args:
        student_logits: ``[..., C]``, any float dtype (computed in float32); the gradient flows into it.
        teacher_logits: ``[..., C]``, the same shape; treated as constant targets (detached).
        targets: ``[...]`` int64 labels, ``-100`` where a position is not scored; ``None`` = every position scored.
        temperature: T > 0 (1 = the models' own distributions).

    Returns:
        A float32 scalar in nats per scored position (>= 0; 0 when the two distributions are equal).

    Raises:
        ValueError: logits of different shapes, ``targets`` not of the logits' leading shape, no scored position,
            or a bad ``temperature``.
    """
    check_distill_options(temperature, 0.0)
    if student_logits.shape != teacher_logits.shape or student_logits.dim() < 1:
        raise ValueError(f"student_logits {tuple(student_logits.shape)} and teacher_logits "
                         f"{tuple(teacher_logits.shape)} must have one shape [..., C]")
    z_s = student_logits.float().reshape(-1, student_logits.shape[-1])
    z_t = teacher_logits.detach().float().reshape(-1, teacher_logits.shape[-1])
    if targets is not None:
        if targets.shape != student_logits.shape[:-1]:
            raise ValueError(f"targets {tuple(targets.shape)} must have the logits' leading shape "
                             f"{tuple(student_logits.shape[:-1])}")
        scored = targets.reshape(-1) != IGNORE
        z_s, z_t = z_s[scored], z_t[scored]
    if z_s.shape[0] == 0:
        raise ValueError("targets: no scored position (every target is -100)")
    log_p_s = F.log_softmax(z_s / temperature, dim=-1)
    log_p_t = F.log_softmax(z_t / temperature, dim=-1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="none", log_target=True).sum(-1)  # [N]
    return kl.mean() * temperature**2


@dataclass
class DistillLoss:
    """The terms of one batch's distillation objective (float32 scalars).

    Attributes:
        loss: ``alpha · soft + (1 − alpha) · hard``, what the student minimises.
        soft: ``T² · KL`` per scored position (``soft_target_loss``); hard: the cross-entropy with the labels.
    """

    loss: Tensor
    soft: Tensor
    hard: Tensor


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, *, temperature: float,
                      alpha: float, hard: Tensor | None = None) -> DistillLoss:
    """Hinton et al.'s (2015, Sec. 2) weighted average of the soft-target and the hard-label objectives.

    Args:
        student_logits, teacher_logits: ``[..., C]`` of one batch; targets: ``[...]`` int64, ``-100`` = unscored.
        temperature: T > 0 of both softmaxes of the soft term; the hard term is at T = 1.
        alpha: weight of the soft term in [0, 1] (0 = plain training, 1 = the teacher's targets only).
        hard: the hard-label loss when the caller already has it (the task's own training loss, so that
            ``alpha = 0`` gives exactly the loss of a run without a teacher); default: the mean cross-entropy of
            ``student_logits`` at the scored positions.

    Raises:
        ValueError: as ``soft_target_loss``, or a bad ``alpha``.
    """
    check_distill_options(temperature, alpha)
    soft = soft_target_loss(student_logits, teacher_logits, targets, temperature=temperature)
    if hard is None:
        hard = F.cross_entropy(student_logits.float().reshape(-1, student_logits.shape[-1]), targets.reshape(-1),
                               ignore_index=IGNORE)
    return DistillLoss(alpha * soft + (1.0 - alpha) * hard, soft, hard)


@dataclass
class Teacher:
    """A loaded teacher: its model (eval mode, no parameter requires grad) and what the student records of it
    (``record``: checkpoint ``path``, run ``config``, ``step``, and ``compression`` when it was compressed)."""

    model: nn.Module
    record: dict[str, Any]


def check_teacher(path: str, task: Task, student: nn.Module, teacher_task: Task, teacher: nn.Module,
                  teacher_state: dict[str, Any]) -> None:
    """Refuse a teacher that cannot teach ``student`` on ``task``.

    Raises:
        ValueError naming ``teacher``: a task without class scores (``regression``); another task kind or task (the
            labels would mean other things; every ``lm`` corpus is the same task); another head (e.g. a language
            model teaching a classifier); another vocabulary size or, for ``lm``, another tokenizer (a char-level
            teacher's ids name other characters); another number of classes; absolute positions with ``max_len``
            below the student's sequence length.
    """
    where = f"teacher={path!r}"
    if task.kind == "regression":
        raise ValueError(f"{where}: task {task.name!r} ({task.kind}) has no class scores to distil")
    if teacher_task.kind != task.kind or teacher_task.name != task.name:
        raise ValueError(f"{where} was trained on task {teacher_task.name!r} ({teacher_task.kind}), the student "
                         f"on {task.name!r} ({task.kind}): a teacher teaches its own task")
    if type(teacher) is not type(student):
        raise ValueError(f"{where} is a {type(teacher).__name__}, the student a {type(student).__name__}")
    t_vocab, s_vocab = teacher.config.vocab_size, student.config.vocab_size
    if t_vocab != s_vocab:
        raise ValueError(f"{where} has a vocabulary of {t_vocab} tokens, the student {s_vocab}")
    if task.kind == "lm" and teacher_state.get("tokenizer") != task.tokenizer.to_json():
        raise ValueError(f"{where} was trained with another tokenizer ({teacher_state.get('tokenizer', {}).get('kind')}"
                         f", {t_vocab} tokens): its token ids name other characters than the student's")
    if teacher_task.num_classes != task.num_classes:
        raise ValueError(f"{where} has {teacher_task.num_classes} classes, the student's task {task.num_classes}")
    tc = teacher.config
    if tc.position in ("learned", "sinusoidal") and tc.max_len < task.seq_len:
        raise ValueError(f"{where} has max_len={tc.max_len} with position={tc.position!r}, below the student's "
                         f"sequence length {task.seq_len}")


def load_teacher(path: str, task: Task, student: nn.Module, *, device: torch.device | str = "cpu") -> Teacher:
    """Load the checkpoint at ``path`` (an out_dir or a checkpoint folder, compressed ones too) as the teacher of
    ``student`` on ``task``: eval mode, every parameter frozen, on ``device``. Loading does not advance torch's
    global RNG, so a run with a teacher initialises and drops out exactly as one without.

    Raises:
        FileNotFoundError naming ``teacher``: no checkpoint at ``path``.
        ValueError naming ``teacher``: see ``check_teacher``.
    """
    try:
        folder = checkpoint.locate(path)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"teacher={path!r}: {e}") from None
    with torch.random.fork_rng(devices=[]):  # building the model draws an init we then overwrite
        model, teacher_task, run_config, state = checkpoint.load_trained(folder)  # compressed ones too
    check_teacher(path, task, student, teacher_task, model, state)
    model.requires_grad_(False)
    record = {"path": str(folder.resolve()), "config": run_config.to_dict(), "step": state.get("step")}
    if "compression" in state:
        record["compression"] = {k: state["compression"][k] for k in ("method", "options")
                                 if k in state["compression"]}
    return Teacher(model.to(device).eval(), record)
