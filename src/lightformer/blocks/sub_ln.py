"""``sub_ln``: Sub-LayerNorm (Wang et al. 2022, "Foundation Transformers" / Magneto, Sec. 2.1 and Eq. 2): pre-norm
plus a second norm inside each sublayer, on the input of its output projection,
``x = x + W_out(norm_in(f(norm(x))))``: for attention ``out(LN(attn(LN(x))))``, for the FFN
``W2(LN(act(W1 LN(x))))``. Init (Sec. 2.2): the FFN's matrices, the value rows and the output projections are
scaled by ``γ = sqrt(log(2N))`` for an N-layer encoder-only or decoder-only model.

The inner norm is applied by a forward pre-hook on each sublayer's residual projection (the mixer's
``residual_projections``, the FFN's ``fc2``), so the mixer's code, parameter names and decoding path are unchanged.
A mixer with no residual projection (``fnet``, ``gfnet``, ``poolformer``) has nowhere to put the norm and is
refused."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .base import BLOCKS, Block, BlockConfig, Merge, Mix, value_rows


def sub_ln_gain(num_layers: int) -> float:
    """Magneto's init scale γ = sqrt(log(2N))."""
    return math.sqrt(math.log(2 * num_layers))


def _projection(owner: nn.Module, names: tuple[str, ...], what: str) -> nn.Linear:
    modules = dict(owner.named_modules())
    found = [modules.get(n.removesuffix(".weight")) for n in names]
    linear = [m for m in found if isinstance(m, nn.Linear)]
    if len(linear) != 1:
        raise ValueError(f"block='sub_ln' needs exactly one linear output projection in the {what}; "
                         f"{type(owner).__name__} declares residual_projections={names!r}")
    return linear[0]


@dataclass(frozen=True)
class SubLNConfig(BlockConfig):
    """``gain``: override γ (None = sqrt(log(2N)) from the model's depth)."""

    gain: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.gain is not None and not self.gain > 0:
            raise ValueError(f"gain must be > 0 or None, got {self.gain!r}")


@BLOCKS.register("sub_ln")
class SubLN(Block):
    config_class = SubLNConfig
    merges_tokens = True  # ToMe merges between the mixer's and the FFN's sublayers

    def __init__(self, config: SubLNConfig, *, mixer, make_ffn, make_norm, num_layers: int) -> None:
        super().__init__(config, mixer=mixer, make_ffn=make_ffn, make_norm=make_norm, num_layers=num_layers)
        self.gain = sub_ln_gain(num_layers) if config.gain is None else config.gain
        self.norm1 = make_norm()
        self.mixer = mixer
        self.norm2 = make_norm()
        self.ffn = make_ffn()
        mixer_out = _projection(mixer, tuple(mixer.residual_projections), "mixer")
        ffn_out = _projection(self.ffn, tuple(self.ffn.residual_projections), "FFN")
        self.mixer_inner_norm = make_norm(mixer_out.in_features)
        self.ffn_inner_norm = make_norm(ffn_out.in_features)
        # bound methods, so that copy.deepcopy of the model re-binds them to the copy's norms
        mixer_out.register_forward_pre_hook(self._norm_mixer_projection_input)
        ffn_out.register_forward_pre_hook(self._norm_ffn_projection_input)

    def _norm_mixer_projection_input(self, module: nn.Module, args: tuple) -> tuple:
        return (self.mixer_inner_norm(args[0]),) + tuple(args[1:])

    def _norm_ffn_projection_input(self, module: nn.Module, args: tuple) -> tuple:
        return (self.ffn_inner_norm(args[0]),) + tuple(args[1:])

    def compose(self, x: Tensor, mix: Mix, merge: Merge | None = None) -> Tensor:
        x = x + mix(self.norm1(x))
        if merge is not None:
            x = merge(x)
        return x + self.ffn(self.norm2(x))

    def init_weights(self, num_layers: int) -> None:
        rows = value_rows(self.mixer)
        with torch.no_grad():
            for name in self.mixer.residual_projections:
                self.mixer.get_parameter(name).mul_(self.gain)
            if rows is not None:
                self.mixer.qkv.weight[rows].mul_(self.gain)
            for module in self.ffn.modules():
                if isinstance(module, nn.Linear):
                    module.weight.mul_(self.gain)

