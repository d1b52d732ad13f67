"""The ``moe`` FFN: the grouped fast path against a per-token oracle, routing and capacity, the Switch
load-balancing loss, option checks, and training through the trainer with its statistics logged."""

from __future__ import annotations

import copy
import math
import pathlib
import sysconfig

import pytest
import torch
import torch.nn.functional as F

from lightformer import LanguageModel, ModelConfig
from lightformer.blocks import FFNS, collect_aux_loss, collect_aux_stats
from lightformer.blocks.ffns.moe import MoE, load_balancing_loss
from lightformer.tasks.text import Corpus
from lightformer.train import Trainer
from lightformer.train.config import build_run_config


def make(dim=8, mult=2.0, **options) -> MoE:
    torch.manual_seed(0)
    moe = FFNS.create("moe", dim=dim, mult=mult, **options)
    with torch.no_grad():  # router logits of order 1, so the top-k choices are well separated and varied
        moe.router.weight.normal_(0.0, 1.0)
        for p in moe.experts.parameters():
            p.normal_(0.0, 0.3)
    return moe


def oracle(moe: MoE, x: torch.Tensor, capacity: int | None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per-token loop written from the paper's equations: ``y_n = Σ_kept gate · W2 gelu(W1 x_n + b1) + b2``, with
    each expert taking its first ``capacity`` assignments in priority order (every token's first choice before any
    second choice, tokens in order). Returns (y ``[N, D]``, load-balancing loss, assignments dropped)."""
    cfg = moe.config
    n_tok, num_experts, k = x.shape[0], cfg.num_experts, cfg.top_k
    w = moe.router.weight
    choices, gates, probs = [], [], []
    for n in range(n_tok):
        logits = [float(v) for v in (w @ x[n]).detach()]
        best = sorted(range(num_experts), key=lambda e: -logits[e])[:k]
        choices.append(best)
        z = w[best] @ x[n]
        gates.append(torch.exp(z - z.max()) / torch.exp(z - z.max()).sum())
        full = w @ x[n]
        probs.append(torch.exp(full - full.max()) / torch.exp(full - full.max()).sum())
    load = [0] * num_experts
    kept = [[False] * k for _ in range(n_tok)]
    for rank in range(k):
        for n in range(n_tok):
            e = choices[n][rank]
            if capacity is None or load[e] < capacity:
                kept[n][rank] = True
                load[e] += 1
    rows = []
    for n in range(n_tok):
        y = torch.zeros_like(x[n])
        for rank in range(k):
            if kept[n][rank]:
                ex = moe.experts[choices[n][rank]]
                y = y + gates[n][rank] * (ex.fc2.weight @ F.gelu(ex.fc1.weight @ x[n] + ex.fc1.bias) + ex.fc2.bias)
        rows.append(y)
    first = [c[0] for c in choices]
    f = torch.tensor([first.count(e) / n_tok for e in range(num_experts)], dtype=x.dtype)
    p_mean = torch.stack(probs).mean(0)
    aux = cfg.aux_loss_weight * num_experts * (f * p_mean).sum()
    dropped = sum(not kept[n][r] for n in range(n_tok) for r in range(k))
    return torch.stack(rows), aux, dropped


@pytest.mark.parametrize("capacity_factor,train", [(1.25, False), (100.0, True), (0.5, True), (1.0, True)])
def test_fast_path_equals_per_token_oracle(capacity_factor, train):
    moe = make(num_experts=4, top_k=2, capacity_factor=capacity_factor, aux_loss_weight=0.3).double()
    moe.train(train)
    x = torch.randn(3, 7, 8, dtype=torch.float64, requires_grad=True)
    tokens = x.shape[0] * x.shape[1]
    capacity = math.ceil(capacity_factor * 2 * tokens / 4) if train else None
    g = torch.randn(3, 7, 8, dtype=torch.float64)

    y = moe(x)
    aux = moe.aux_loss if train else torch.zeros((), dtype=torch.float64)
    dropped = moe.aux_stats["moe_dropped"]
    params = [x, *moe.parameters()]
    fast_grads = torch.autograd.grad((y * g).sum() + aux, params, allow_unused=True)

    y_ref, aux_ref, dropped_ref = oracle(moe, x.reshape(-1, 8), capacity)
    y_ref = y_ref.reshape(3, 7, 8)
    aux_ref = aux_ref if train else torch.zeros((), dtype=torch.float64)
    ref_grads = torch.autograd.grad((y_ref * g).sum() + aux_ref, params, allow_unused=True)

    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(aux, aux_ref, rtol=1e-12, atol=1e-12)
    assert dropped == dropped_ref
    assert (dropped > 0) == (capacity_factor < 1.25 and train), "the cases cover runs with and without drops"
    for (name, _), a, b in zip([("x", None), *moe.named_parameters()], fast_grads, ref_grads):
        if b is None:  # an expert the oracle never ran (all its assignments dropped or none routed)
            assert a is None or a.abs().max() == 0, name
        else:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)


def test_every_token_goes_to_exactly_k_experts_when_capacity_is_ample():
    moe = make(dim=8, num_experts=6, top_k=3, capacity_factor=2.0).train()  # capacity = N
    x = torch.randn(40, 8)
    seen: dict[int, list[torch.Tensor]] = {}
    for e, expert in enumerate(moe.experts):
        expert.register_forward_hook(lambda mod, args, out, e=e: seen.setdefault(e, []).append(args[0].detach()))
    moe(x)
    assert moe.aux_stats == {"moe_tokens": 40.0, "moe_dropped": 0.0}
    # which experts each token reached, read off the rows the experts received
    reached = [set() for _ in range(40)]
    for e, batches in seen.items():
        for rows in batches:
            for row in rows:
                matches = (x == row).all(-1).nonzero().flatten().tolist()
                assert len(matches) == 1
                assert e not in reached[matches[0]], "a token ran twice through one expert"
                reached[matches[0]].add(e)
    expected = (x @ moe.router.weight.T).topk(3, dim=-1).indices
    for n in range(40):
        assert reached[n] == set(expected[n].tolist())


def test_tight_capacity_drops_exactly_the_overflow():
    moe = make(num_experts=4, top_k=2, capacity_factor=0.5).train()
    x = torch.randn(4, 16, 8)
    moe(x)
    capacity = math.ceil(0.5 * 2 * 64 / 4)
    # independent count: whatever the order slots are filled in, each expert drops what exceeds its capacity
    choices = (x.reshape(-1, 8) @ moe.router.weight.T).topk(2, dim=-1).indices
    load = torch.bincount(choices.flatten(), minlength=4)
    overflow = int((load - capacity).clamp_min(0).sum())
    assert capacity == 16 and overflow >= 64  # 128 assignments, 64 slots
    assert moe.aux_stats == {"moe_tokens": 64.0, "moe_dropped": float(overflow)}
    # eval mode is dropless with the same options
    moe.eval()
    moe(x)
    assert moe.aux_stats["moe_dropped"] == 0.0 and moe.aux_loss is None


def test_eval_is_batch_independent_and_decodes_position_wise():
    moe = make(num_experts=4, top_k=2, capacity_factor=0.25).eval()
    x = torch.randn(3, 9, 8)
    with torch.no_grad():
        whole = moe(x)
        torch.testing.assert_close(moe(x[1:2]), whole[1:2], rtol=1e-6, atol=1e-6)
        for t in (0, 4, 8):
            torch.testing.assert_close(moe(x[:, t]), whole[:, t], rtol=1e-6, atol=1e-6)


def test_a_trained_moe_copies_without_its_last_loss():
    moe = make(num_experts=4).train()
    x = torch.randn(6, 8)
    y = moe(x)
    assert moe.aux_loss is not None and moe.aux_loss.grad_fn is not None
    twin = copy.deepcopy(moe)  # a non-leaf tensor would refuse deepcopy
    assert twin.aux_loss is None and moe.aux_loss is not None
    torch.testing.assert_close(twin(x), y, rtol=0, atol=0)


def test_load_balancing_loss_by_hand():
    # three experts, router = identity, four tokens: probabilities are the softmax of the tokens themselves
    moe = FFNS.create("moe", dim=3, mult=1.0, num_experts=3, top_k=1, aux_loss_weight=0.01).train()
    with torch.no_grad():
        moe.router.weight.copy_(torch.eye(3))
    tokens = [[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0], [1.0, 0.5, 0.0]]
    moe(torch.tensor(tokens))

    def softmax(v):
        s = sum(math.exp(a) for a in v)
        return [math.exp(a) / s for a in v]

    probs = [softmax(v) for v in tokens]
    p_mean = [sum(p[i] for p in probs) / 4 for i in range(3)]
    f = [2 / 4, 1 / 4, 1 / 4]  # first choices: experts 0, 1, 2, 0
    expected = 0.01 * 3 * sum(fi * pi for fi, pi in zip(f, p_mean))
    assert float(moe.aux_loss.detach()) == pytest.approx(expected, rel=1e-6)
    # with k = 2 the loss counts first choices only (GShard's convention), so it is unchanged
    moe2 = FFNS.create("moe", dim=3, mult=1.0, num_experts=3, top_k=2, aux_loss_weight=0.01).train()
    with torch.no_grad():
        moe2.router.weight.copy_(torch.eye(3))
    moe2(torch.tensor(tokens))
    assert float(moe2.aux_loss.detach()) == pytest.approx(expected, rel=1e-6)


def test_load_balancing_loss_is_alpha_under_uniform_routing():
    # token j prefers expert j with the same margin: f_i = 1/E and P_i = 1/E for every expert
    moe = FFNS.create("moe", dim=4, mult=1.0, num_experts=4, top_k=1, aux_loss_weight=0.02).train()
    with torch.no_grad():
        moe.router.weight.copy_(3.0 * torch.eye(4))
    moe(torch.eye(4).repeat(5, 1))
    assert float(moe.aux_loss.detach()) == pytest.approx(0.02, rel=1e-6)
    # all tokens on one expert with confident probabilities: the loss approaches its maximum α·E
    probs = torch.tensor([[0.97, 0.01, 0.01, 0.01]] * 8)
    assert float(load_balancing_loss(probs, torch.zeros(8, dtype=torch.long), 0.02)) == pytest.approx(0.02 * 4 * 0.97)


@pytest.mark.parametrize("options,name", [({"num_experts": 0}, "num_experts"), ({"num_experts": 4, "top_k": 5}, "top_k"),
                                          ({"top_k": 0}, "top_k"), ({"capacity_factor": 0.0}, "capacity_factor"),
                                          ({"capacity_factor": -1.0}, "capacity_factor"),
                                          ({"aux_loss_weight": -0.1}, "aux_loss_weight")])
def test_bad_options_are_named(options, name):
    with pytest.raises(ValueError, match=name):
        FFNS.create("moe", dim=8, **options)
    with pytest.raises(ValueError, match=name):
        ModelConfig(ffn="moe", ffn_options=options)


def test_language_model_scales_every_experts_output_projection():
    cfg = ModelConfig(vocab_size=50, dim=32, num_layers=4, num_heads=2, ffn="moe",
                      ffn_options={"num_experts": 4, "top_k": 2})
    torch.manual_seed(0)
    model = LanguageModel(cfg)
    block = model.backbone.blocks[0]
    assert {f"ffn.experts.{i}.fc2.weight" for i in range(4)} <= block.residual_parameters()
    stds = [float(block.ffn.experts[i].fc2.weight.detach().std()) for i in range(4)]
    assert all(s == pytest.approx(0.02 / math.sqrt(8), rel=0.1) for s in stds)
    assert float(block.ffn.experts[0].fc1.weight.detach().std()) == pytest.approx(0.02, rel=0.1)
    # decoding step by step equals the forward (eval mode is dropless)
    model.eval()
    idx = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        full = model(idx)[0]
        state = model.init_state(2)
        steps = []
        for t in range(9):
            logits, state = model.step(idx[:, t], state)
            steps.append(logits)
    torch.testing.assert_close(torch.stack(steps, 1), full, rtol=1e-5, atol=1e-5)
    assert collect_aux_loss(model) is None
    assert collect_aux_stats(model) == {"moe_tokens": 4 * 2.0, "moe_dropped": 0.0}


def test_trains_through_the_trainer_and_logs_its_statistics():
    source = pathlib.Path(sysconfig.get_paths()["stdlib"]) / "argparse.py"
    corpus = Corpus.from_bytes(source.read_bytes(), name="argparse.py")
    options = {"num_experts": 4, "top_k": 2, "capacity_factor": 0.5, "aux_loss_weight": 0.01}
    run = build_run_config("tiny", overrides=[("model.ffn", "moe"), ("model.ffn_options", options),
                                              ("train.max_steps", 4), ("train.eval_interval", 2),
                                              ("train.eval_iters", 1)])
    trainer = Trainer(run, corpus=corpus, log=lambda s: None)
    result = trainer.fit(progress_bar=False)
    assert result.steps == 4 and math.isfinite(result.train_loss) and len(result.history) == 2
    tokens = 8 * 32  # batch 8 x block 32, per layer and step
    for row in result.history:
        # two layers, two steps per row: counts are totals over the interval, the loss a mean per step
        assert row["train_moe_tokens"] == 2 * 2 * tokens
        # 2 choices per token, capacity ceil(0.5·2·N/4) per expert: half of the assignments at least are dropped
        assert row["train_moe_dropped"] >= 2 * 2 * tokens
        assert 0.0 < row["train_aux_loss"] <= 2 * 0.01 * 4
