"""``pre_norm``: the pre-LN block (Xiong et al. 2020, "On Layer Normalization in the Transformer Architecture",
Fig. 1b; GPT-2): ``x = x + mixer(norm1(x)); x = x + ffn(norm2(x))``, with a final norm after the stack.
The model's default; its parameter names (``norm1``, ``mixer``, ``norm2``, ``ffn``) and init are those of every
checkpoint saved before blocks were registered, so those load and run bit for bit."""

from __future__ import annotations

from torch import Tensor

from .base import BLOCKS, Block, BlockConfig, Merge, Mix


@BLOCKS.register("pre_norm")
class PreNorm(Block):
    config_class = BlockConfig
    merges_tokens = True  # ToMe merges between the mixer's and the FFN's sublayers

    def __init__(self, config: BlockConfig, *, mixer, make_ffn, make_norm, num_layers: int) -> None:
        super().__init__(config, mixer=mixer, make_ffn=make_ffn, make_norm=make_norm, num_layers=num_layers)
        self.norm1 = make_norm()
        self.mixer = mixer
        self.norm2 = make_norm()
        self.ffn = make_ffn()

    def compose(self, x: Tensor, mix: Mix, merge: Merge | None = None) -> Tensor:
        x = x + mix(self.norm1(x))
        if merge is not None:
            x = merge(x)
        return x + self.ffn(self.norm2(x))
