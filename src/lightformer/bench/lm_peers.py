"""Peers of a whole language model, for the training-step bench (``lightformer bench --modes train``).

Each builder takes lightformer's ``ModelConfig`` (vocabulary filled in) and returns the peer's model configured to
the same shape, how it was configured, and the differences that remain (``LMPeer``):

    x_transformers   x_transformers.TransformerWrapper + Decoder (pip ``x-transformers``, in the ``peers`` extra):
                     dim, depth, heads, head width D/H (its default is 64 whatever D), FFN multiple, tied
                     embeddings and the position scheme as lightformer's; SDPA attention (``attn_flash=True``), no
                     dropout. Pre-norm LayerNorm, GELU MLP with biases, bias-free attention projections, final norm:
                     its defaults, which are lightformer's too, except that its LayerNorm has no bias.
    nanogpt          nanoGPT's ``GPT`` / ``GPTConfig`` from a ``model.py`` the user points at
                     (``--peer nanogpt:PATH/model.py``; nanoGPT is a repository, not a package, so nothing is
                     vendored): ``GPTConfig(block_size=max_len, vocab_size, n_layer, n_head, n_embd, dropout=0,
                     bias=False)`` (``bias=False`` is nanoGPT's ``train.py`` default). Its fixed choices: learned
                     absolute positions, tied embeddings, GELU MLP of 4·D, LayerNorm, SDPA attention, and with
                     ``bias=False`` no bias anywhere.

The loss of every implementation is the mean next-token cross-entropy over all B·T positions.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn
from torch.nn import functional as F

#: the peer names ``--peers`` takes in train mode (``nanogpt`` also needs ``--peer nanogpt:PATH``)
LM_PEERS = ("x_transformers", "nanogpt")
#: lightformer's mixers that are plain softmax attention (the peers' attention): others are a listed difference
SOFTMAX_MIXERS = ("softmax", "tiled_softmax")


@dataclass
class LMPeer:
    """A peer LM ready to train: ``loss_module(idx, targets)`` -> mean cross-entropy (a scalar tensor).

    Attributes:
        loss_module: an ``nn.Module`` holding the peer's parameters whose forward returns the loss.
        config: the keyword arguments the peer was built with (JSON-able), for the record.
        differences: what still differs from lightformer's model, one phrase each.
    """

    loss_module: nn.Module
    config: dict[str, Any]
    differences: list[str] = field(default_factory=list)


class LogitsLoss(nn.Module):
    """``model(idx)`` -> logits ``[B, T, V]`` wrapped into ``(idx, targets) -> mean cross-entropy``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, idx: Tensor, targets: Tensor) -> Tensor:
        logits = self.model(idx)
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


class PairLoss(nn.Module):
    """``model(idx, targets)`` -> ``(logits, loss)`` (lightformer's ``LanguageModel``, nanoGPT's ``GPT``) wrapped
    into ``(idx, targets) -> loss``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, idx: Tensor, targets: Tensor) -> Tensor:
        return self.model(idx, targets)[1]


def _common_differences(model: Any) -> list[str]:
    out = []
    if model.mixer not in SOFTMAX_MIXERS or model.schedule:
        out.append(f"lightformer's mixer is {model.schedule or model.mixer!r}; the peer runs softmax attention")
    if model.block != "pre_norm":
        out.append(f"lightformer's block is {model.block!r}; the peer's is pre-norm")
    if model.norm != "layernorm":
        out.append(f"lightformer's norm is {model.norm!r}; the peer's is LayerNorm")
    return out


def x_transformers_lm(model: Any) -> LMPeer:
    """``TransformerWrapper`` + ``Decoder`` of ``model``'s shape (see the module docstring).

    Raises:
        ValueError: a position scheme or FFN x-transformers has no equivalent for (naming it).
    """
    from x_transformers import Decoder, TransformerWrapper

    positions = {"learned": {"use_abs_pos_emb": True}, "none": {"use_abs_pos_emb": False},
                 "rope": {"use_abs_pos_emb": False, "rotary_pos_emb": True},
                 "alibi": {"use_abs_pos_emb": False, "alibi_pos_bias": True, "alibi_num_heads": model.num_heads}}
    if model.position not in positions:
        raise ValueError(f"position {model.position!r}: no x-transformers equivalent configured here "
                         f"(learned, rope, alibi, none)")
    ffns = {"mlp": {}, "swiglu": {"ff_glu": True, "ff_swish": True}, "geglu": {"ff_glu": True}}
    if model.ffn not in ffns:
        raise ValueError(f"ffn {model.ffn!r}: no x-transformers equivalent configured here (mlp, swiglu, geglu)")
    pos = dict(positions[model.position])
    wrapper = {"num_tokens": model.vocab_size, "max_seq_len": model.max_len, "emb_dropout": 0.0,
               "tie_embedding": model.tie_weights, "use_abs_pos_emb": pos.pop("use_abs_pos_emb")}
    decoder = {"dim": model.dim, "depth": model.num_layers, "heads": model.num_heads,
               "attn_dim_head": model.dim // model.num_heads, "attn_flash": True, "attn_dropout": 0.0,
               "ff_dropout": 0.0, "ff_mult": model.ffn_mult, **ffns[model.ffn], **pos}
    lm = TransformerWrapper(attn_layers=Decoder(**decoder), **wrapper)
    differences = _common_differences(model) + ["x-transformers' LayerNorm has no bias (lightformer's has one)"]
    return LMPeer(LogitsLoss(lm), {"TransformerWrapper": wrapper, "Decoder": decoder}, differences)


def load_module(path: str | Path, name: str = "nanogpt_model") -> Any:
    """Import the Python file ``path`` as a module named ``name`` (kept in ``sys.modules``: torch.compile needs it).

    Raises:
        ValueError: ``path`` is not a file (the message names ``--peer``).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--peer nanogpt:{path}: no such file (point it at nanoGPT's model.py)")
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"--peer nanogpt:{path}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    # registered for good: dataclasses look the module up while the file executes, and TorchDynamo when it traces
    # the model's forward
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def nanogpt_lm(model: Any, path: str | Path) -> LMPeer:
    """nanoGPT's ``GPT(GPTConfig(...))`` of ``model``'s shape, from the ``model.py`` at ``path``.

    Raises:
        ValueError: ``path`` is missing or defines no ``GPT`` / ``GPTConfig``.
    """
    module = load_module(path)
    if not hasattr(module, "GPT") or not hasattr(module, "GPTConfig"):
        raise ValueError(f"--peer nanogpt:{path}: the module defines no GPT and GPTConfig (nanoGPT's model.py does)")
    config = {"block_size": model.max_len, "vocab_size": model.vocab_size, "n_layer": model.num_layers,
              "n_head": model.num_heads, "n_embd": model.dim, "dropout": 0.0, "bias": False}
    gpt = module.GPT(module.GPTConfig(**config))
    differences = _common_differences(model)
    if model.position != "learned":
        differences.append(f"lightformer's position is {model.position!r}; nanoGPT's is learned absolute")
    if model.ffn != "mlp" or model.ffn_mult != 4:
        differences.append(f"lightformer's FFN is {model.ffn} x{model.ffn_mult:g}; nanoGPT's is a GELU MLP x4")
    if not model.tie_weights:
        differences.append("lightformer's head is untied; nanoGPT ties it to the token embedding")
    differences.append("nanoGPT with bias=False has no biases; lightformer's FFN and LayerNorm have them")
    return LMPeer(PairLoss(gpt), {"GPTConfig": config, "path": str(Path(path).resolve())}, differences)
