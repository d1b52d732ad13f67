"""Peers of the Mamba-1 mixer (pure-torch implementations a CPU user would otherwise run).

    mambapy    mambapy.mamba.MambaBlock (alxndrTL/mamba.py, pscan=True: a Blelloch parallel scan over
               [B, T', E, N] tensors, T' = T padded to a power of 2, with a hand-written backward)     -> mamba
    hf_mamba   transformers' MambaMixer on CPU: its torch "slow" path (the mamba_ssm kernels are CUDA-only):
               discrete A and B·u materialised at [B, E, T, N] and a Python loop over T under autograd -> mamba

Measured (D = 512, B = 1, fp32, fwd+bwd, one thread, CPU time on a loaded 2-core AVX2 host): mambapy 0.8 s at
T = 512 and 7.5 s at T = 4096 (2.5 GiB peak growth); hf_mamba 29 s at T = 512: the backward of each step's slice
``discrete_A[:, :, t]`` scatters into a fresh full [B, E, T, N] zero tensor, so its fwd+bwd grows as T² (T = 4096
did not finish in 7 CPU minutes). Expect the bench's time limit to stop hf_mamba beyond T ~ 1024.

Both are built with the ``mamba`` cell's options (d_state, expand, d_conv; defaults 16, 2, 4), no in/out projection
biases and a conv bias, dt_rank = ceil(D/16): the same parameters and work as ``lightformer``'s ``mamba``. The HF
mixer runs in training mode (the bench's fwd+bwd sets ``train()``); without the CUDA kernels its fused path returns
nothing and it falls back to the same slow path as in eval mode, so both modes time the same algorithm.

Install: ``pip install mambapy==1.2.0`` (pure python, needs only torch) and ``pip install transformers`` (5.x;
``MambaMixer(config, layer_idx=0)`` reads ``config.layer_types``, filled by ``MambaConfig`` since 5.0).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .base import Peer, opt


def _options(options: dict[str, Any]) -> tuple[int, int, int]:
    return (opt(options, "mamba", "d_state") or 16, opt(options, "mamba", "expand") or 2,
            opt(options, "mamba", "d_conv") or 4)


def _mambapy(options, seq_len, dim, heads, causal) -> nn.Module:
    from mambapy.mamba import MambaBlock, MambaConfig

    n, expand, k = _options(options)
    return MambaBlock(MambaConfig(d_model=dim, n_layers=1, d_state=n, expand_factor=expand, d_conv=k, pscan=True))


def _hf_mamba(options, seq_len, dim, heads, causal) -> nn.Module:
    from transformers import MambaConfig
    from transformers.models.mamba.modeling_mamba import MambaMixer

    n, expand, k = _options(options)
    mixer = MambaMixer(MambaConfig(hidden_size=dim, state_size=n, expand=expand, conv_kernel=k, use_bias=False,
                                   use_conv_bias=True), layer_idx=0)

    class HFMamba(nn.Module):
        """``[B, T, D] -> [B, T, D]``: the mixer without a cache or an attention mask."""

        def __init__(self) -> None:
            super().__init__()
            self.mixer = mixer

        def forward(self, x):
            return self.mixer(x)

    return HFMamba()


def _unsupported(options, seq_len, dim, heads, causal):
    return None if causal else "Mamba is causal only"


PEERS = (
    Peer("mambapy", "mambapy", "mambapy==1.2.0", "mamba", _mambapy, _unsupported),
    Peer("hf_mamba", "transformers", "transformers>=5.0", "mamba", _hf_mamba, _unsupported),
)
