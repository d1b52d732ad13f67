"""``deepnorm``: DeepNet's block (Wang et al. 2022, "DeepNet: Scaling Transformers to 1,000 Layers", Fig. 2 and
Table 1): post-norm with the residual up-weighted, ``x = norm(α·x + f(x))``, and the FFN, value and output
projections initialised Xavier-normal with gain β (the query and key projections with gain 1). For an N-layer
encoder-only or decoder-only model (Table 1): ``α = (2N)^(1/4)``, ``β = (8N)^(-1/4)``.

Here "value" means the value rows of a fused ``qkv`` projection (``AttentionMixer``), whose other matrices get gain 1.
A mixer without one (state-space, recurrent) keeps its own init and gets gain β on its ``residual_projections``
only: the paper's rule is written for attention, and re-drawing, e.g., Mamba's dt projection would undo its own
init. Like post-norm, the stack has no final norm."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from .base import BLOCKS, Block, BlockConfig, Merge, Mix, value_rows, xavier_normal_gain_


def deepnorm_constants(num_layers: int) -> tuple[float, float]:
    """(α, β) of DeepNet's Table 1 for an encoder-only or decoder-only model of ``num_layers`` layers."""
    return (2 * num_layers) ** 0.25, (8 * num_layers) ** -0.25


@dataclass(frozen=True)
class DeepNormConfig(BlockConfig):
    """``alpha``, ``beta``: override Table 1's values (None = the table's, from the model's depth)."""

    alpha: float | None = None
    beta: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("alpha", "beta"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0 or None, got {value!r}")


@BLOCKS.register("deepnorm")
class DeepNorm(Block):
    config_class = DeepNormConfig
    final_norm = False
    merges_tokens = True  # ToMe merges between the mixer's and the FFN's sublayers

    def __init__(self, config: DeepNormConfig, *, mixer, make_ffn, make_norm, num_layers: int) -> None:
        super().__init__(config, mixer=mixer, make_ffn=make_ffn, make_norm=make_norm, num_layers=num_layers)
        alpha, beta = deepnorm_constants(num_layers)
        self.alpha = alpha if config.alpha is None else config.alpha
        self.beta = beta if config.beta is None else config.beta
        self.mixer = mixer
        self.norm1 = make_norm()
        self.ffn = make_ffn()
        self.norm2 = make_norm()

    def compose(self, x: Tensor, mix: Mix, merge: Merge | None = None) -> Tensor:
        x = self.norm1(self.alpha * x + mix(x))
        if merge is not None:
            x = merge(x)
        return self.norm2(self.alpha * x + self.ffn(x))

    def init_weights(self, num_layers: int) -> None:
        rows = value_rows(self.mixer)
        residual = {p for p in self.mixer.residual_projections}
        for name, module in self.mixer.named_modules():
            if not isinstance(module, nn.Linear):
                continue
            if name == "qkv" and rows is not None:
                # the fused [q; k; v] is initialised as the paper's three separate projections, each with its fans
                kv = rows.stop - rows.start
                q = rows.start - kv
                xavier_normal_gain_(module.weight, 1.0, slice(0, q))
                xavier_normal_gain_(module.weight, 1.0, slice(q, rows.start))
                xavier_normal_gain_(module.weight, self.beta, rows)
            elif f"{name}.weight" in residual:
                xavier_normal_gain_(module.weight, self.beta)
            elif rows is not None:
                xavier_normal_gain_(module.weight, 1.0)
        for module in self.ffn.modules():
            if isinstance(module, nn.Linear):
                xavier_normal_gain_(module.weight, self.beta)
