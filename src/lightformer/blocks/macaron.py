"""``macaron``: the Macaron block (Lu et al. 2019, "Understanding and Improving Transformer From a Multi-Particle
Dynamic System Point of View", Sec. 4, Eq. 12; later Conformer's FFN pair): two half-step FFNs around the mixer,
read as a Strang splitting of the convection-diffusion ODE,
``x = x + ½·ffn1(norm1(x)); x = x + mixer(norm2(x)); x = x + ½·ffn2(norm3(x))``, each sublayer pre-normed.
Each FFN has the model's FFN width, so the block holds two FFNs' parameters (the paper's choice)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .base import BLOCKS, Block, BlockConfig, Mix


@dataclass(frozen=True)
class MacaronConfig(BlockConfig):
    """``ffn_scale``: weight of each half-step FFN (the paper's ½), > 0."""

    ffn_scale: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.ffn_scale > 0:
            raise ValueError(f"ffn_scale must be > 0, got {self.ffn_scale!r}")


@BLOCKS.register("macaron")
class Macaron(Block):
    config_class = MacaronConfig

    def __init__(self, config: MacaronConfig, *, mixer, make_ffn, make_norm, num_layers: int) -> None:
        super().__init__(config, mixer=mixer, make_ffn=make_ffn, make_norm=make_norm, num_layers=num_layers)
        self.norm1 = make_norm()
        self.ffn1 = make_ffn()
        self.norm2 = make_norm()
        self.mixer = mixer
        self.norm3 = make_norm()
        self.ffn2 = make_ffn()

    def compose(self, x: Tensor, mix: Mix) -> Tensor:
        s = self.config.ffn_scale
        x = x + s * self.ffn1(self.norm1(x))
        x = x + mix(self.norm2(x))
        return x + s * self.ffn2(self.norm3(x))
