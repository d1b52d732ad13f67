"""Optimizers of the trainer: AdamW, or Muon for the blocks' weight matrices with AdamW for the rest.

* ``adamw``: AdamW (Loshchilov & Hutter 2019) on every parameter; weight decay on tensors with >= 2 dims only, and
  never on the parameters a mixer declares in ``no_weight_decay`` (state-space ``A_log``/``D``, dt biases, decays).
* ``muon``: Muon (Jordan et al. 2024, "Muon: An optimizer for hidden layers in neural networks"; momentum
  orthogonalised by a Newton–Schulz iteration) on the weight matrices of the ``nn.Linear`` layers inside the
  Transformer blocks, through ``torch.optim.Muon`` with ``adjust_lr_fn="match_rms_adamw"`` (Liu et al. 2025,
  "Muon is Scalable for LLM Training", Sec. 2.2: the update is scaled to AdamW's RMS, so the AdamW learning rate
  and weight decay carry over); AdamW on the embeddings, the output head, norms and biases, as both papers do.

Both are driven by one learning-rate schedule: the trainer writes ``lr`` into every param group of
``param_groups``.
"""

from __future__ import annotations

import fnmatch
import warnings
from typing import Any

import torch
from torch import nn

from .distributed import unwrap
from .precision import native_bf16

__all__ = ["OPTIMIZERS", "OptimizerChain", "build_optimizer"]

OPTIMIZERS = ("adamw", "muon")


class OptimizerChain:
    """Several ``torch.optim`` optimizers over disjoint parameters, used as one.

    ``param_groups`` lists the groups of all of them (the same dicts, so a schedule that sets ``group["lr"]``
    reaches every optimizer); ``state_dict()`` has the layout of a single optimizer's, with the parameter indices
    of the later optimizers shifted past those of the earlier ones, so checkpoints store it like any other.
    """

    def __init__(self, optimizers: list[torch.optim.Optimizer]) -> None:
        if not optimizers:
            raise ValueError("optimizers must not be empty")
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for opt in self.optimizers for g in opt.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def state_dict(self) -> dict[str, Any]:
        state: dict[int, Any] = {}
        groups: list[dict[str, Any]] = []
        offset = 0
        for opt in self.optimizers:
            sd = opt.state_dict()
            state.update({offset + i: s for i, s in sd["state"].items()})
            groups += [dict(g, params=[offset + i for i in g["params"]]) for g in sd["param_groups"]]
            offset += sum(len(g["params"]) for g in sd["param_groups"])
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        groups = list(state_dict["param_groups"])
        if len(groups) != sum(len(opt.param_groups) for opt in self.optimizers):
            raise ValueError(f"state_dict has {len(groups)} param groups, this optimizer "
                             f"{sum(len(opt.param_groups) for opt in self.optimizers)} (a different optimizer?)")
        offset = 0
        for opt in self.optimizers:
            mine, groups = groups[:len(opt.param_groups)], groups[len(opt.param_groups):]
            count = sum(len(g["params"]) for g in mine)
            opt.load_state_dict({
                "state": {int(i) - offset: s for i, s in state_dict["state"].items()
                          if offset <= int(i) < offset + count},
                "param_groups": [dict(g, params=[i - offset for i in g["params"]]) for g in mine]})
            offset += count


def declared_no_decay(model: nn.Module) -> set[int]:
    """``id``s of the parameters that a mixer of ``model`` declares exempt from weight decay
    (``Mixer.no_weight_decay``: shell-style patterns over the mixer's own parameter names, e.g. ``A_log``, ``D``,
    a dt bias, decay rates), whatever their rank."""
    from ..mixers import Mixer

    ids: set[int] = set()
    for module in model.modules():
        if isinstance(module, Mixer) and module.no_weight_decay:
            ids |= {id(p) for name, p in module.named_parameters()
                    if any(fnmatch.fnmatchcase(name, pat) for pat in module.no_weight_decay)}
    return ids


def _adamw(params: list[nn.Parameter], tc, exempt: set[int] = frozenset()) -> torch.optim.AdamW:
    decay = [p for p in params if p.dim() >= 2 and id(p) not in exempt]
    no_decay = [p for p in params if p.dim() < 2 or id(p) in exempt]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=tc.lr, betas=(tc.beta1, tc.beta2), fused=True)  # one fused kernel per step, not ~10 ops per tensor


def build_optimizer(model: nn.Module, tc) -> torch.optim.AdamW | OptimizerChain:
    """The optimizer ``tc.optimizer`` names (``TrainConfig``) over ``model``'s parameters.

    ``model`` may be wrapped in ``DistributedDataParallel``: Muon looks for the blocks inside the wrapper.

    Raises:
        ValueError: ``tc.optimizer`` is not one of ``OPTIMIZERS``, or ``muon`` finds no block weight matrix.
    """
    model = unwrap(model)
    params = list(model.parameters())
    exempt = declared_no_decay(model)
    if tc.optimizer == "adamw":
        return _adamw(params, tc, exempt)
    if tc.optimizer != "muon":
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {tc.optimizer!r}")
    blocks = getattr(getattr(model, "backbone", model), "blocks", None)
    # isinstance, not type: BitLinear (nn/bitlinear.py, model.linear="bitlinear") subclasses nn.Linear, and its
    # latent weight is one of these matrices (tests/compress/test_bitnet.py checks that none falls back to AdamW)
    hidden = [] if blocks is None else [m.weight for m in blocks.modules()
                                         if isinstance(m, nn.Linear) and id(m.weight) not in exempt]
    if not hidden:
        raise ValueError("optimizer='muon' needs a model with nn.Linear layers in `backbone.blocks`")
    if not native_bf16(hidden[0].device):
        # torch.optim.Muon orthogonalises in bf16 (its Newton-Schulz iteration casts the update to bfloat16); a CPU
        # without bf16 instructions emulates those matmuls: measured 54 s/step for the shakespeare-char preset on an
        # AVX2-only EPYC against ~0.3 s on an AMX host
        warnings.warn("optimizer='muon': torch.optim.Muon runs its Newton-Schulz iteration in bf16, which this "
                      f"device ({hidden[0].device}, no native bf16) emulates ~60x slower than fp32; expect it to "
                      "dominate the step time (--train.optimizer=adamw avoids it)", RuntimeWarning, stacklevel=2)
    ids = {id(p) for p in hidden}
    rest = [p for p in params if id(p) not in ids]
    muon = torch.optim.Muon(hidden, lr=tc.lr, weight_decay=tc.weight_decay, adjust_lr_fn="match_rms_adamw")
    return OptimizerChain([_adamw(rest, tc, exempt), muon])
