"""``sandwich``: CogView's Sandwich-LN (Ding et al. 2021, "CogView: Mastering Text-to-Image Generation via
Transformers", Sec. 3.1 and Fig. 4): pre-norm with a second norm on each sublayer's output before the residual add,
``x = x + norm_out(f(norm_in(x)))``, which bounds what each layer adds and removed CogView's fp16 divergence."""

from __future__ import annotations

from torch import Tensor

from .base import BLOCKS, Block, BlockConfig, Merge, Mix


@BLOCKS.register("sandwich")
class Sandwich(Block):
    config_class = BlockConfig
    merges_tokens = True  # ToMe merges between the mixer's and the FFN's sublayers

    def __init__(self, config: BlockConfig, *, mixer, make_ffn, make_norm, num_layers: int) -> None:
        super().__init__(config, mixer=mixer, make_ffn=make_ffn, make_norm=make_norm, num_layers=num_layers)
        self.norm1 = make_norm()
        self.mixer = mixer
        self.norm1_out = make_norm()
        self.norm2 = make_norm()
        self.ffn = make_ffn()
        self.norm2_out = make_norm()

    def compose(self, x: Tensor, mix: Mix, merge: Merge | None = None) -> Tensor:
        x = x + self.norm1_out(mix(self.norm1(x)))
        if merge is not None:
            x = merge(x)
        return x + self.norm2_out(self.ffn(self.norm2(x)))
