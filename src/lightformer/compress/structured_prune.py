"""``structured_prune``: remove whole FFN hidden neurons and whole attention heads, so the layers physically
shrink (fewer rows and columns, fewer FLOPs), with importance by magnitude or by a diagonal empirical-Fisher
saliency (an "oBERT-lite"), and an optional short fine-tune.

What a unit is:

* FFN neuron j of ``mlp``, the GLU family (``swiglu``, ``geglu``, ``reglu``, ``bilinear``) and ``polyrelu``: row j
  of ``fc1`` (rows j and H + j for a GLU's gate and value halves) with its bias entries, and column j of ``fc2``.
  The activation is elementwise, so the neuron's output depends on nothing else and removing it removes exactly its
  term ``fc2[:, j] · act_j`` from the output.
* Attention head h of a multi-head ``AttentionMixer``: its d query, key and value rows of the fused ``qkv`` (with
  their biases), its d columns of ``out``, its column of T5's relative-bias table and its ALiBi slope. The pruned
  layer is ``num_heads = h'`` heads of the *same* ``head_dim`` (``QKVConfig.head_dim``), so the inner width h'·d is
  below D.

Importance (scores per unit; the lowest go):

* ``magnitude``: ``‖fc1 rows of j‖₂ · ‖fc2[:, j]‖₂`` for a neuron (the Frobenius norm over every GLU half),
  ``‖qkv rows of h‖_F · ‖out[:, cols of h]‖_F`` for a head: the scale of what flows into the unit times the scale
  of what it writes back. Weights only, biases left out.
* ``fisher``: the Optimal Brain Surgeon saliency of removing a group Q of weights, ``ρ_Q = ½ w_Qᵀ ([F⁻¹]_QQ)⁻¹ w_Q``
  (Hassibi & Stork 1993; Kurtic et al. 2022, "The Optimal BERT Surgeon: Scalable and Accurate Second-Order Pruning
  for Large Language Models", EMNLP 2022, arXiv 2203.07259, which approximates the Hessian by the empirical Fisher
  ``F = (1/N) Σ_n ∇L_n ∇L_nᵀ``; ``../shared/notes/compression_distributed.md`` A6), with F reduced to its diagonal
  ``F_ii = (1/N) Σ_n g_{n,i}²``: then ``[F⁻¹]_QQ`` is diagonal and ``ρ_Q = Σ_{i∈Q} F_ii · w_i² / 2``, summed over
  every parameter the unit removes (weights and its own bias entries; T5's table is left out: it is shared by the
  layers, so its gradient is not one layer's). ``g_n`` is the gradient of the task's mean loss on training batch n
  (``fisher_batches`` batches of the run's batch size, drawn from the stream of run seed + 2, which neither the run
  nor the fine-tune (seed + 1) draws; eval mode, float32), i.e. the mini-batch empirical Fisher. Without the damping
  λ of oBERT (λ = 0). With a diagonal F the OBS compensating update ``δw = −F⁻¹ e_Q ([F⁻¹]_QQ)⁻¹ w_Q`` changes only
  the removed weights (to zero), so the kept ones are left as they are.

Sparsity is **per layer**: each targeted layer loses ``floor(sparsity · n)`` of its n neurons (heads), so every
layer keeps the same width and the speed-up is known in advance; magnitude scores are not comparable across layers
(each has its own scale), and a global ranking could strip one layer down to a single unit. A sparsity of 1 (every
unit) is refused: a layer keeps at least one neuron and one head.

Refused, naming the layer and the reason (``exclude`` leaves a layer as it is): FFNs whose neurons are coupled
(``moe``, ``matformer``, ``polynorm``), mixers that are not multi-head attention on ``AttentionMixer``,
grouped/multi-query attention, mixers whose maths tie the heads together (``hilo``) or which hold per-head
parameters beside ``qkv``/``out``, and layers whose projections carry a width-dependent hook (Sub-LN's inner norm,
ResFormer's value residual for heads).

Torch-Pruning (DepGraph, Fang et al. 2023) was not used: our layers are built from configs and a compressed
checkpoint is rebuilt from a config on load (Torch-Pruning saves whole pickled modules), and the couplings it would
trace here are two fixed ones (the fused ``qkv`` rows and the GLU halves), read directly from the module structure.

Loading (``restore``) rebuilds each recorded module from its config with the recorded width (``hidden`` for an FFN,
``num_heads`` and ``head_dim`` for a mixer) and the kept head indices (for ALiBi's slopes, which are not saved).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from ..blocks.base import FFN
from ..blocks.ffns.glu import GatedFFN
from ..mixers.attention import AttentionMixer
from .base import COMPRESSORS, CompressConfig, Compressor, blocks_of, replace_module

if TYPE_CHECKING:
    from ..tasks.base import Task
    from ..train.config import RunConfig

#: FFNs whose hidden neurons are independent: fc1 rows (every GLU half) -> elementwise activation -> fc2 columns
FFN_PRUNABLE = ("mlp", "swiglu", "geglu", "reglu", "bilinear", "polyrelu")
FFN_REFUSED = {
    "moe": "its neurons live in E expert MLPs behind a router (a neuron of one expert is not a neuron of the "
           "layer); pruning inside experts is not implemented",
    "matformer": "its nested sub-FFNs are the first m_g neurons (set_granularity slices fc1[:m_g]), so removing "
                 "neurons by importance breaks the nesting; take a width with extract_submodel first, which gives "
                 "a plain mlp that can be pruned",
    "polynorm": "its activation RMS-normalises each power over the hidden features (Zhuo et al. 2024, Eq. 4), so "
                "removing one neuron changes every other neuron's output",
}
#: mixers on AttentionMixer whose heads are computed independently from their qkv rows and out columns alone
#: (shared random features, random blocks and samples are drawn for all heads at once, not per head)
HEAD_PRUNABLE = ("softmax", "tiled_softmax", "sliding_window", "dilated_window", "longformer", "bigbird",
                 "reversed", "probsparse", "linear", "performer")
HEAD_REFUSED = {
    "hilo": "it splits its heads into round(alpha·num_heads) Lo-Fi heads and the remaining Hi-Fi heads by their "
            "position (Pan et al. 2022), so removing heads moves kept heads from one branch to the other",
    "aft": "AFT has no attention heads: it mixes each channel on its own (Zhai et al. 2021), its heads are only a "
           "reshape",
}
HEAD_REFUSED["aft_local"] = HEAD_REFUSED["aft_simple"] = HEAD_REFUSED["aft"]
#: the parameters of a prunable mixer (anything else would need its own per-head slicing)
_HEAD_PARAMETERS = {"qkv.weight", "qkv.bias", "out.weight", "out.bias", "rel_bias"}
IMPORTANCES = ("magnitude", "fisher")


def _fraction(name: str, value: Any, unit: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        extra = (f"; {value} would remove every {unit} of a layer (a layer keeps at least one)"
                 if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 1 else "")
        raise ValueError(f"{name} must be a fraction in [0, 1), got {value!r}{extra}")


@dataclass(frozen=True)
class StructuredPruneConfig(CompressConfig):
    """Attributes:
        ffn_sparsity: fraction of each FFN's hidden neurons removed, per layer, in [0, 1) (0.5: half).
        head_sparsity: fraction of each attention layer's heads removed, per layer, in [0, 1).
        importance: ``"magnitude"`` or ``"fisher"`` (diagonal empirical Fisher saliency; see the module docstring).
        fisher_batches: training batches whose gradients estimate the Fisher (``importance="fisher"``), >= 1.
        finetune_steps: trainer steps on the checkpoint's task after pruning (0 = none).
        finetune_lr: the fine-tune's peak learning rate (None = the run's ``min_lr``).
    """

    ffn_sparsity: float = 0.5
    head_sparsity: float = 0.0
    importance: str = "magnitude"
    fisher_batches: int = 16
    finetune_steps: int = 0
    finetune_lr: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _fraction("ffn_sparsity", self.ffn_sparsity, "neuron")
        _fraction("head_sparsity", self.head_sparsity, "head")
        if self.importance not in IMPORTANCES:
            raise ValueError(f"importance must be one of {IMPORTANCES}, got {self.importance!r}")
        if isinstance(self.fisher_batches, bool) or not isinstance(self.fisher_batches, int) or self.fisher_batches < 1:
            raise ValueError(f"fisher_batches must be an int >= 1, got {self.fisher_batches!r}")
        if isinstance(self.finetune_steps, bool) or not isinstance(self.finetune_steps, int) or self.finetune_steps < 0:
            raise ValueError(f"finetune_steps must be an int >= 0, got {self.finetune_steps!r}")
        if self.finetune_lr is not None and (isinstance(self.finetune_lr, bool) or
                                             not isinstance(self.finetune_lr, (int, float)) or self.finetune_lr <= 0):
            raise ValueError(f"finetune_lr must be a positive number or None, got {self.finetune_lr!r}")


# -- importance -------------------------------------------------------------------------------------------------
def diagonal_fisher(model: nn.Module, batches: Iterable[Any], loss: Callable[[nn.Module, Any], Tensor],
                    parameters: dict[str, nn.Parameter]) -> dict[str, Tensor]:
    """The diagonal of the empirical Fisher, ``F_ii = (1/N) Σ_n (∂L_n/∂θ_i)²``, for each of ``parameters``.

    Args:
        model: the model ``loss`` runs (its mode is left to the caller).
        batches: the N batches; ``loss(model, batch)`` is the scalar mean loss L_n of one.
        parameters: name -> parameter; a parameter ``loss`` does not reach has F = 0.

    Returns:
        name -> F of the parameter's shape, float32 (float64 for a float64 parameter).

    Raises:
        ValueError: no batch.
    """
    names, params = list(parameters), list(parameters.values())
    sums = [torch.zeros_like(p, dtype=torch.promote_types(p.dtype, torch.float32)) for p in params]
    count = 0
    for batch in batches:
        grads = torch.autograd.grad(loss(model, batch), params, allow_unused=True)
        for total, g in zip(sums, grads):
            if g is not None:
                total.add_(g.detach().to(total.dtype).square())
        count += 1
    if count == 0:
        raise ValueError("diagonal_fisher needs at least one batch")
    return {n: s / count for n, s in zip(names, sums)}


def _glu_halves(ffn: FFN) -> int:
    return 2 if isinstance(ffn, GatedFFN) else 1


def neuron_scores(ffn: FFN, importance: str, fisher: dict[str, Tensor] | None = None) -> Tensor:
    """Importance of each hidden neuron of ``ffn`` (``[H]`` float64; see the module docstring).

    ``fisher``: for ``importance="fisher"``, F of ``fc1.weight``, ``fc1.bias`` (when present) and ``fc2.weight``
    under those names (relative to ``ffn``)."""
    g, hidden = _glu_halves(ffn), ffn.fc2.in_features
    w1 = ffn.fc1.weight.detach().double().reshape(g, hidden, -1)  # [G, H, D]: gate and value halves
    w2 = ffn.fc2.weight.detach().double()  # [D, H]
    if importance == "magnitude":
        return w1.square().sum(dim=(0, 2)).sqrt() * w2.square().sum(0).sqrt()
    if fisher is None:
        raise ValueError("importance='fisher' needs the Fisher diagonal (StructuredPrune.estimate_fisher first)")
    f1 = fisher["fc1.weight"].double().reshape(g, hidden, -1)
    score = (f1 * w1.square()).sum(dim=(0, 2)) + (fisher["fc2.weight"].double() * w2.square()).sum(0)
    if ffn.fc1.bias is not None:
        b1 = ffn.fc1.bias.detach().double().reshape(g, hidden)
        score = score + (fisher["fc1.bias"].double().reshape(g, hidden) * b1.square()).sum(0)
    return score / 2


def head_scores(mixer: AttentionMixer, importance: str, fisher: dict[str, Tensor] | None = None) -> Tensor:
    """Importance of each head of a multi-head ``mixer`` (``[H]`` float64; see the module docstring).

    ``fisher``: for ``importance="fisher"``, F of ``qkv.weight``, ``qkv.bias`` (when present) and ``out.weight``
    under those names (relative to ``mixer``)."""
    h, d = mixer.config.num_heads, mixer.config.head_dim
    wqkv = mixer.qkv.weight.detach().double().reshape(3, h, d, -1)  # [q/k/v, H, d, D]
    wo = mixer.out.weight.detach().double().reshape(-1, h, d)  # [D, H, d]
    if importance == "magnitude":
        return wqkv.square().sum(dim=(0, 2, 3)).sqrt() * wo.square().sum(dim=(0, 2)).sqrt()
    if fisher is None:
        raise ValueError("importance='fisher' needs the Fisher diagonal (StructuredPrune.estimate_fisher first)")
    score = (fisher["qkv.weight"].double().reshape(3, h, d, -1) * wqkv.square()).sum(dim=(0, 2, 3))
    score = score + (fisher["out.weight"].double().reshape(-1, h, d) * wo.square()).sum(dim=(0, 2))
    if mixer.qkv.bias is not None:
        b = mixer.qkv.bias.detach().double().reshape(3, h, d)
        score = score + (fisher["qkv.bias"].double().reshape(3, h, d) * b.square()).sum(dim=(0, 2))
    return score / 2


def kept_units(scores: Tensor, sparsity: float) -> list[int]:
    """Indices (ascending) of the units kept when ``floor(sparsity · n)`` of the n ``scores`` are removed, lowest
    first; ties go by index (the lower index is removed first)."""
    n = scores.numel()
    remove = math.floor(sparsity * n + 1e-9)  # 0.29·100 is 28.999...; a product a hair under an int is that int
    removed = set(torch.sort(scores, stable=True).indices[:remove].tolist())
    return [i for i in range(n) if i not in removed]


# -- shrinking --------------------------------------------------------------------------------------------------
def _rebuild(old: nn.Module, new: nn.Module, sliced: dict[str, Tensor]) -> nn.Module:
    """``new`` holding ``old``'s state, with the entries of ``sliced`` in place of the full ones (strict load, so
    a shape nobody sliced fails loudly), on ``old``'s device and dtype and in its mode."""
    p = next(old.parameters())
    new.to(device=p.device, dtype=p.dtype)
    state = dict(old.state_dict())
    state.update(sliced)
    new.load_state_dict(state)
    # a generator drawn at construction (Performer's random-feature redraws) continues where the old one was
    for attr, value in vars(old).items():
        if isinstance(value, torch.Generator):
            getattr(new, attr).set_state(value.get_state())
    return new.train(old.training)


@torch.no_grad()
def shrink_ffn(ffn: FFN, kept: Sequence[int]) -> FFN:
    """A copy of ``ffn`` holding only the hidden neurons ``kept`` (its config with ``hidden=len(kept)``)."""
    hidden = ffn.fc2.in_features
    idx = torch.as_tensor(list(kept), dtype=torch.long)
    rows = torch.cat([idx + g * hidden for g in range(_glu_halves(ffn))])
    sliced = {"fc1.weight": ffn.fc1.weight[rows], "fc2.weight": ffn.fc2.weight[:, idx]}
    if ffn.fc1.bias is not None:
        sliced["fc1.bias"] = ffn.fc1.bias[rows]
    new = type(ffn)(dataclasses.replace(ffn.config, hidden=len(idx)))
    return _rebuild(ffn, new, sliced)


@torch.no_grad()
def shrink_heads(mixer: AttentionMixer, kept: Sequence[int]) -> AttentionMixer:
    """A copy of multi-head ``mixer`` holding only the heads ``kept``: its config with ``num_heads=len(kept)`` and
    the same ``head_dim``; the heads' qkv rows, out columns, T5 bias columns and ALiBi slopes."""
    cfg = mixer.config
    h, d = cfg.num_heads, cfg.head_dim
    idx = torch.as_tensor(list(kept), dtype=torch.long)
    cols = (idx[:, None] * d + torch.arange(d)).flatten()  # the kept heads' columns of one of q, k, v
    rows = torch.cat([cols + part * h * d for part in range(3)])
    sliced = {"qkv.weight": mixer.qkv.weight[rows], "out.weight": mixer.out.weight[:, cols]}
    if mixer.qkv.bias is not None:
        sliced["qkv.bias"] = mixer.qkv.bias[rows]
    if mixer.rel_bias is not None:
        sliced["rel_bias"] = mixer.rel_bias[:, idx]
    new = _rebuild(mixer, type(mixer)(dataclasses.replace(cfg, num_heads=len(idx), head_dim=d)), sliced)
    if mixer.alibi_slopes is not None:  # not saved: a fresh layer of h' heads would draw h' other slopes
        new.alibi_slopes = mixer.alibi_slopes[idx].clone()
    return new


# -- which layers -----------------------------------------------------------------------------------------------
def _hook_reason(model: nn.Module, block: nn.Module, layers: Iterable[nn.Module]) -> str | None:
    """Why the projections ``layers`` of ``block`` cannot change width (a width-dependent hook), or None."""
    if not any(m._forward_hooks or m._forward_pre_hooks for m in layers):
        return None
    if getattr(type(block), "registry_name", "") == "sub_ln":
        return ("its block 'sub_ln' normalises the input of the output projection over its whole width (Wang et "
                "al. 2022, Sub-LN), so removing a unit changes the others' values")
    if getattr(getattr(getattr(model, "backbone", model), "config", None), "value_residual", False):
        return ("value_residual mixes each layer's values with layer 0's, head by head (ResFormer), so every "
                "layer's heads must stay aligned")
    return "its projections carry forward hooks that may depend on their width"


def _excluded(name: str, module: nn.Module, layers: dict[str, nn.Module], patterns: tuple[str, ...]) -> bool:
    """Whether ``exclude`` leaves the module ``name``: a pattern names it, or one of its linear layers is not a
    target."""
    if any(fnmatch.fnmatchcase(name, p) for p in patterns):
        return True
    return any(f"{name}.{sub}" not in layers for sub, m in module.named_modules() if isinstance(m, nn.Linear))


def _refusal(name: str, what: str, label: str, reason: str) -> ValueError:
    return ValueError(f"structured_prune cannot prune {what} of {name} ({label!r}): {reason}. Leave it as it is "
                      f"with --option exclude='{name}*'")


def _blocks_prefix(model: nn.Module) -> str:
    blocks = blocks_of(model)
    return next(n for n, m in model.named_modules() if m is blocks)


def plan(model: nn.Module, layers: dict[str, nn.Module], config: StructuredPruneConfig
         ) -> tuple[dict[str, FFN], dict[str, AttentionMixer], list[str]]:
    """The FFNs and mixers (by name in ``model``) ``config`` prunes, and the names left by ``exclude``.

    Raises:
        ValueError: a targeted FFN or mixer that cannot be pruned (the message names it, its kind and why).
    """
    prefix = _blocks_prefix(model)
    ffns: dict[str, FFN] = {}
    mixers: dict[str, AttentionMixer] = {}
    skipped: list[str] = []
    for i, block in enumerate(blocks_of(model)):
        if config.ffn_sparsity > 0:
            for attr, ffn in block.ffns():
                name = f"{prefix}.{i}.{attr}"
                if _excluded(name, ffn, layers, config.exclude):
                    skipped.append(name)
                    continue
                label = getattr(type(ffn), "registry_name", type(ffn).__name__)
                if label in FFN_REFUSED or label not in FFN_PRUNABLE:
                    reason = FFN_REFUSED.get(label, f"only the FFNs {', '.join(FFN_PRUNABLE)} have independent "
                                                    "neurons")
                    raise _refusal(name, "FFN neurons", label, reason)
                reason = _hook_reason(model, block, (ffn.fc1, ffn.fc2))
                if reason:
                    raise _refusal(name, "FFN neurons", label, reason)
                ffns[name] = ffn
        if config.head_sparsity > 0:
            mixer = block.mixer
            name = f"{prefix}.{i}.mixer"
            if _excluded(name, mixer, layers, config.exclude):
                skipped.append(name)
                continue
            label = getattr(type(mixer), "registry_name", type(mixer).__name__)
            if not isinstance(mixer, AttentionMixer):
                raise _refusal(name, "heads", label, "it is not multi-head attention on AttentionMixer (no fused "
                                                     "qkv/out heads to remove)")
            if label in HEAD_REFUSED:
                raise _refusal(name, "heads", label, HEAD_REFUSED[label])
            extra = sorted(n for n, _ in mixer.named_parameters() if n not in _HEAD_PARAMETERS)
            if extra:
                raise _refusal(name, "heads", label, f"it holds per-head parameters beside qkv and out "
                                                     f"({', '.join(extra)}) that structured_prune does not slice")
            if label not in HEAD_PRUNABLE:
                raise _refusal(name, "heads", label, "its heads are not known to be computed independently "
                                                     f"(heads are pruned in {', '.join(HEAD_PRUNABLE)})")
            cfg = mixer.config
            if cfg.kv_heads != cfg.num_heads:
                raise _refusal(name, "heads", label,
                               f"num_kv_heads={cfg.kv_heads} < num_heads={cfg.num_heads} (grouped/multi-query "
                               "attention): each key/value head serves a group of query heads, so a head is not a "
                               "unit of its own; only multi-head attention is pruned")
            reason = _hook_reason(model, block, (mixer.qkv, mixer.out))
            if reason:
                raise _refusal(name, "heads", label, reason)
            mixers[name] = mixer
    return ffns, mixers, skipped


# -- the method -------------------------------------------------------------------------------------------------
@COMPRESSORS.register("structured_prune")
class StructuredPrune(Compressor):
    """Structured pruning of FFN neurons and attention heads that shrinks the modules (module docstring)."""

    config_class = StructuredPruneConfig
    replaces_layers = False  # whole modules are rebuilt from their configs, not layers swapped under their owners
    trainable = True

    def __init__(self, config: StructuredPruneConfig) -> None:
        super().__init__(config)
        self.fisher: dict[str, Tensor] | None = None

    def estimate_fisher(self, model: nn.Module, batches: Iterable[Any],
                        loss: Callable[[nn.Module, Any], Tensor]) -> None:
        """Set ``self.fisher`` to the diagonal empirical Fisher of every parameter of ``model``'s blocks (names in
        ``model``) over ``batches``, in eval mode (no dropout noise; MoE dropless)."""
        prefix = _blocks_prefix(model)
        params = {f"{prefix}.{n}": p for n, p in blocks_of(model).named_parameters() if p.requires_grad}
        was_training = model.training
        model.eval()
        try:
            self.fisher = diagonal_fisher(model, batches, loss, params)
        finally:
            model.train(was_training)

    def prepare(self, model: nn.Module, task: "Task", run_config: "RunConfig") -> None:
        if self.config.importance != "fisher":
            return
        from ..tasks.base import batch_to
        from ..train.trainer import STREAM

        tc = run_config.train
        device = next(model.parameters()).device
        batches = (batch_to(task.sample("train", tc.batch_size, seed=(tc.seed + 2) * STREAM + n), device)
                   for n in range(self.config.fisher_batches))
        self.estimate_fisher(model, batches, lambda m, batch: task.loss(m, batch).loss)

    def _fisher_of(self, name: str) -> dict[str, Tensor] | None:
        if self.config.importance != "fisher":
            return None
        if self.fisher is None:
            raise ValueError("importance='fisher' needs gradients: run it through compress_checkpoint (which draws "
                             "the task's training batches) or call estimate_fisher first")
        return {k.removeprefix(name + "."): v for k, v in self.fisher.items() if k.startswith(name + ".")}

    def apply(self, model: nn.Module, layers: dict[str, nn.Module]) -> dict[str, Any]:
        cfg = self.config
        ffns, mixers, skipped = plan(model, layers, cfg)  # every refusal before anything changes
        record: dict[str, Any] = {"ffn": {}, "heads": {}, "excluded": skipped}
        for name, ffn in ffns.items():
            scores = neuron_scores(ffn, cfg.importance, self._fisher_of(name))
            kept = kept_units(scores, cfg.ffn_sparsity)
            record["ffn"][name] = {"of": scores.numel(), "kept": kept}
            if len(kept) < scores.numel():
                replace_module(model, name, shrink_ffn(ffn, kept))
        for name, mixer in mixers.items():
            scores = head_scores(mixer, cfg.importance, self._fisher_of(name))
            kept = kept_units(scores, cfg.head_sparsity)
            record["heads"][name] = {"of": scores.numel(), "kept": kept, "head_dim": mixer.config.head_dim}
            if len(kept) < scores.numel():
                replace_module(model, name, shrink_heads(mixer, kept))
        return record

    def restore(self, model: nn.Module, record: dict[str, Any]) -> None:
        """Rebuild the recorded FFNs and mixers at their pruned widths in a freshly built ``model``.

        Raises:
            ValueError: a recorded module whose full width is not the one the record was made from (the
                checkpoint belongs to another model config); checked for every module before any is rebuilt."""
        units = {"ffn": ("neurons", lambda m: m.fc2.in_features), "heads": ("heads", lambda m: m.config.num_heads)}
        for part, (unit, width) in units.items():
            for name, info in record[part].items():
                if width(model.get_submodule(name)) != info["of"]:
                    raise ValueError(f"structured_prune: {name} has {width(model.get_submodule(name))} {unit}, the "
                                     f"record {info['of']}; the checkpoint does not belong to this model config")
        shrink = {"ffn": shrink_ffn, "heads": shrink_heads}
        for part in units:
            for name, info in record[part].items():
                if len(info["kept"]) < info["of"]:
                    replace_module(model, name, shrink[part](model.get_submodule(name), info["kept"]))

    def describe(self, record: dict[str, Any]) -> list[str]:
        def line(kind: str, entries: dict[str, Any]) -> str:
            removed = sum(v["of"] - len(v["kept"]) for v in entries.values())
            total = sum(v["of"] for v in entries.values())
            widths = ", ".join(f"{n.rsplit('.', 2)[-2]}: {len(v['kept'])}/{v['of']}" for n, v in entries.items())
            return f"removed {removed} of {total} {kind} in {len(entries)} layers, per layer ({widths}); " \
                   f"importance {self.config.importance}"

        out = [line("FFN neurons", record["ffn"])] if record["ffn"] else []
        out += [line("attention heads", record["heads"])] if record["heads"] else []
        if record["excluded"]:
            out.append(f"left as they are (exclude): {', '.join(record['excluded'])}")
        return out or ["nothing pruned (ffn_sparsity = head_sparsity = 0)"]
