"""rwkv6 specifics: the reference init (decay speeds, bonus, token-shift mixes) survives the model's generic init,
the no-weight-decay patterns, and the decoding state carries the previous token."""

from __future__ import annotations

import torch

import lightformer
from lightformer import LanguageModel, ModelConfig
from lightformer.train.config import TrainConfig
from lightformer.train.optim import build_optimizer


def test_reference_init_survives_the_model():
    torch.manual_seed(0)
    lm = LanguageModel(ModelConfig(vocab_size=32, dim=64, num_layers=2, num_heads=4, mixer="rwkv6", max_len=16,
                                   position="learned"))
    m = lm.backbone.blocks[0].mixer
    w0 = m.time_decay.detach()
    assert w0[0].item() == -6.0 and abs(w0[-1].item() + 1.0) < 1e-6 and (w0.diff() > 0).all()
    decay = torch.exp(-torch.exp(w0))  # per-channel decay at init: 0.998 .. 0.69
    assert 0.68 < decay.min() and decay.max() < 0.999
    assert m.time_faaaa.shape == (4, m.head_k_dim)
    torch.testing.assert_close(m.time_faaaa.flatten()[0], torch.tensor(0.5))  # 0.5·(1 − 0) + 0
    for name in ("x", "w", "k", "v", "r", "g"):
        mu = getattr(m, f"time_maa_{name}").detach()
        first = 1.0 - 0.3 * 0.5 if name == "v" else 1.0  # λ_v = 1 − (ddd^0.5 + 0.3·ratio_0_to_1)
        assert abs(mu[0].item() - first) < 1e-6 and (mu <= 1.0).all()
    assert m.time_maa_w1.abs().max() <= 1e-4 and m.time_decay_w2.abs().max() <= 1e-4


def test_no_weight_decay():
    torch.manual_seed(0)
    lm = LanguageModel(ModelConfig(vocab_size=32, dim=64, num_layers=1, num_heads=4, mixer="rwkv6", max_len=16,
                                   position="learned"))
    opt = build_optimizer(lm, TrainConfig(weight_decay=0.1))
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    m = lm.backbone.blocks[0].mixer
    assert id(m.time_faaaa) not in decayed and id(m.time_maa_x) not in decayed
    assert id(m.time_maa_w1) in decayed and id(m.receptance.weight) in decayed


def test_state_carries_the_previous_token():
    m = lightformer.create_mixer("rwkv6", dim=32, num_heads=4, causal=True, chunk_size=4).double()
    x = torch.randn(1, 6, 32, dtype=torch.float64)
    with torch.no_grad():
        _, state = m(x, return_state=True)
    torch.testing.assert_close(state.shift, x[:, -1])
    assert state.s.shape == (1, 4, m.head_k_dim, m.head_v_dim)
