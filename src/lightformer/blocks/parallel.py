"""``parallel``: the parallel block of GPT-J (Wang & Komatsuzaki 2021) and PaLM (Chowdhery et al. 2022, Sec. 2):
mixer and FFN read the same normed input and both add to the residual, ``x = x + mixer(norm(x)) + ffn(norm(x))``,
so their input projections can run as one matmul (PaLM reports ~15% faster training at large scale)."""

from __future__ import annotations

from torch import Tensor

from .base import BLOCKS, Block, BlockConfig, Mix


@BLOCKS.register("parallel")
class Parallel(Block):
    config_class = BlockConfig

    def __init__(self, config: BlockConfig, *, mixer, make_ffn, make_norm, num_layers: int) -> None:
        super().__init__(config, mixer=mixer, make_ffn=make_ffn, make_norm=make_norm, num_layers=num_layers)
        self.norm = make_norm()
        self.mixer = mixer
        self.ffn = make_ffn()

    def compose(self, x: Tensor, mix: Mix) -> Tensor:
        h = self.norm(x)
        return x + mix(h) + self.ffn(h)
