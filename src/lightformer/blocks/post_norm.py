"""``post_norm``: the original Transformer block (Vaswani et al. 2017, Sec. 3.1; Xiong et al. 2020, Fig. 1a):
``x = norm1(x + mixer(x)); x = norm2(x + ffn(x))``. Its output is already normed, so the stack has no final norm.
Xiong et al. show its gradients near the output are large at init, which is why it needs warm-up and diverges at
depth without it (DeepNorm is the fix; ``deepnorm.py``)."""

from __future__ import annotations

from torch import Tensor

from .base import BLOCKS, Block, BlockConfig, Merge, Mix


@BLOCKS.register("post_norm")
class PostNorm(Block):
    config_class = BlockConfig
    final_norm = False
    merges_tokens = True  # ToMe merges between the mixer's and the FFN's sublayers

    def __init__(self, config: BlockConfig, *, mixer, make_ffn, make_norm, num_layers: int) -> None:
        super().__init__(config, mixer=mixer, make_ffn=make_ffn, make_norm=make_norm, num_layers=num_layers)
        self.mixer = mixer
        self.norm1 = make_norm()
        self.ffn = make_ffn()
        self.norm2 = make_norm()

    def compose(self, x: Tensor, mix: Mix, merge: Merge | None = None) -> Tensor:
        x = self.norm1(x + mix(x))
        if merge is not None:
            x = merge(x)
        return self.norm2(x + self.ffn(x))
