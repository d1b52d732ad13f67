"""``bench --modes train``: the model of a preset, one training step per implementation (lightformer,
x-transformers, a nanoGPT-interface ``model.py`` from a path), the records, the report and the CLI."""

from __future__ import annotations

import json
import math
import statistics
import textwrap

import pytest

from lightformer.bench.train_cell import measure, model_for_bench, train_cells, train_tables
from lightformer.cli import build_parser

# A small GPT with nanoGPT's interface (GPTConfig fields; GPT(config); forward(idx, targets) -> (logits, loss);
# learned positions, tied head, pre-norm blocks, GELU MLP x4, biases only when ``bias``), written for this test.
NANOGPT_STANDIN = textwrap.dedent('''
    from dataclasses import dataclass

    import torch
    from torch import nn
    from torch.nn import functional as F


    @dataclass
    class GPTConfig:
        block_size: int = 64
        vocab_size: int = 65
        n_layer: int = 2
        n_head: int = 2
        n_embd: int = 32
        dropout: float = 0.0
        bias: bool = False


    class Layer(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.n1 = nn.LayerNorm(c.n_embd, bias=c.bias)
            self.n2 = nn.LayerNorm(c.n_embd, bias=c.bias)
            self.qkv = nn.Linear(c.n_embd, 3 * c.n_embd, bias=c.bias)
            self.proj = nn.Linear(c.n_embd, c.n_embd, bias=c.bias)
            self.up = nn.Linear(c.n_embd, 4 * c.n_embd, bias=c.bias)
            self.down = nn.Linear(4 * c.n_embd, c.n_embd, bias=c.bias)
            self.h = c.n_head

        def forward(self, x):
            b, t, d = x.shape
            q, k, v = self.qkv(self.n1(x)).view(b, t, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
            x = x + self.proj(a)
            return x + self.down(F.gelu(self.up(self.n2(x))))


    class GPT(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.tok = nn.Embedding(config.vocab_size, config.n_embd)
            self.pos = nn.Embedding(config.block_size, config.n_embd)
            self.layers = nn.ModuleList(Layer(config) for _ in range(config.n_layer))
            self.norm = nn.LayerNorm(config.n_embd, bias=config.bias)
            self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
            self.head.weight = self.tok.weight
            for p in self.parameters():
                if p.dim() >= 2:
                    nn.init.normal_(p, std=0.02)

        def forward(self, idx, targets=None):
            x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
            for layer in self.layers:
                x = layer(x)
            logits = self.head(self.norm(x))
            loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())
            return logits, loss
''')

V, D, L, H, T, B = 40, 32, 2, 2, 16, 2


@pytest.fixture
def nanogpt(tmp_path):
    path = tmp_path / "model.py"
    path.write_text(NANOGPT_STANDIN)
    return str(path)


def small_model():
    return model_for_bench("tiny", {"dim": D, "num_heads": H, "num_layers": L}, batch=B, seq_len=T, vocab=V)


def test_the_model_of_a_preset():
    model, train = model_for_bench("nanogpt-cpu", {}, vocab=65)
    assert (model.dim, model.num_layers, model.num_heads, model.max_len, model.vocab_size) == (128, 4, 4, 64, 65)
    assert (train.batch_size, train.block_size, model.dropout) == (12, 64, 0.0)
    model, train = model_for_bench("nanogpt-cpu", {"dim": 64, "mixer": "tiled_softmax"}, batch=4, seq_len=32,
                                   vocab=10)
    assert (model.dim, model.mixer, train.batch_size, train.block_size, model.vocab_size) == (64, "tiled_softmax", 4,
                                                                                              32, 10)
    with pytest.raises(ValueError, match="above max_len=64 .* set --model max_len=128"):
        model_for_bench("nanogpt-cpu", {}, seq_len=128, vocab=65)
    with pytest.raises(ValueError, match="--preset 'nope': unknown"):
        model_for_bench("nope", {})
    with pytest.raises(ValueError, match="unknown model option"):
        model_for_bench("tiny", {"depth": 3}, vocab=V)
    assert model_for_bench("stdlib-small", {})[0].vocab_size == 256  # byte tokenizer: no data needed


def test_the_vocabulary_comes_from_the_preset_data(shakespeare_path):
    model, train = model_for_bench("shakespeare-char", {})
    assert (model.vocab_size, model.dim, model.num_layers, train.batch_size, train.block_size) == (65, 256, 4, 16, 128)
    assert model.mixer == "tiled_softmax"


def test_train_cells_and_their_refusals(nanogpt):
    model, train = small_model()
    cells = train_cells(model, train, preset="tiny", peers=["x_transformers", "nanogpt"], nanogpt_path=nanogpt,
                        compile=[False, True], threads=1)
    assert [(c.impl, c.compile) for c in cells] == [("lightformer", False), ("x_transformers", False),
                                                    ("nanogpt", False), ("lightformer", True),
                                                    ("x_transformers", True), ("nanogpt", True)]
    assert {(c.mode, c.seq_len, c.batch, c.dim, c.heads, c.num_layers) for c in cells} == {("train", T, B, D, H, L)}
    assert len({c.key for c in cells}) == 6
    with pytest.raises(ValueError, match="nanogpt peer needs nanoGPT's model.py"):
        train_cells(model, train, preset="tiny", peers=["nanogpt"])
    with pytest.raises(ValueError, match="choose among x_transformers, nanogpt"):
        train_cells(model, train, preset="tiny", peers=["sdpa"])
    with pytest.raises(ValueError, match="fp32 or amp-bf16"):
        train_cells(model, train, preset="tiny", peers=[], dtype="bf16")


def test_a_training_step_of_each_implementation(nanogpt):
    pytest.importorskip("x_transformers")
    model, train = small_model()
    cells = train_cells(model, train, preset="tiny", peers=["x_transformers", "nanogpt"], nanogpt_path=nanogpt,
                        threads=1, warmup=1, repeats=3)
    recs = {c.impl: measure(c) for c in cells}
    for impl, r in recs.items():
        assert r["status"] == "ok", (impl, r["reason"])
        assert r["kind"] == "bench" and r["mode"] == "train" and r["vocab_size"] == V and r["preset"] == "tiny"
        assert abs(r["loss_first"] - math.log(V)) < 0.5, impl  # a random init predicts ~uniformly
        assert math.isfinite(r["loss_last"])
        assert len(r["times_ms"]) == 3 and r["time_ms"] == statistics.median(r["times_ms"])
        assert r["tokens_per_s"] == pytest.approx(B * T / (r["time_ms"] / 1e3))
    # parameters: embeddings V·D + positions max_len·D (tied head), per layer qkv 3D², out D², FFN 8D² + 5D
    # (biases), two LayerNorms 4D, the final LayerNorm 2D
    ours = V * D + 32 * D + L * (4 * D * D + 8 * D * D + 5 * D + 4 * D) + 2 * D
    assert recs["lightformer"]["params"] == ours
    assert recs["x_transformers"]["params"] == ours - D * (2 * L + 1)  # its LayerNorms have no bias
    assert recs["nanogpt"]["params"] == ours - D * (2 * L + 1) - 5 * D * L  # bias=False: no FFN biases either
    assert recs["x_transformers"]["peer_config"]["Decoder"]["attn_dim_head"] == D // H
    assert recs["nanogpt"]["peer_config"]["GPTConfig"] == {"block_size": 32, "vocab_size": V, "n_layer": L,
                                                           "n_head": H, "n_embd": D, "dropout": 0.0, "bias": False}
    assert any("no bias" in d for d in recs["x_transformers"]["differences"])

    (table,) = train_tables(list(recs.values()))
    assert [row[0] for row in table.rows] == ["lightformer", "nanogpt", "x_transformers"]
    assert table.rows[0][5] == "×1.00"
    xt = recs["x_transformers"]["time_ms"] / recs["lightformer"]["time_ms"]
    assert table.rows[2][5] == f"×{xt:.2f}"
    assert table.title.startswith("tiny: softmax · 2 layers · D=32 · H=2 · FFN mlp x4 · position learned · tied head")


def test_a_missing_nanogpt_file_is_named(tmp_path):
    model, train = small_model()
    (cell,) = train_cells(model, train, preset="tiny", peers=["nanogpt"], nanogpt_path=str(tmp_path / "nope.py"),
                          threads=1)[1:]
    rec = measure(cell)
    assert rec["status"] == "unsupported" and "--peer nanogpt:" in rec["reason"] and "no such file" in rec["reason"]


def run_cli(*args: str) -> int:
    parsed = build_parser().parse_args(["bench", *args])
    return parsed.func(parsed)


def test_cli_train_mode(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    code = run_cli("--modes", "train", "--preset", "tiny", "--vocab", str(V), "--model", f"dim={D}", "--heads",
                   str(H), "--batch", str(B), "--seq-lens", str(T), "--peers", "none", "--warmup", "1", "--repeats",
                   "2", "--threads", "1", "--out", str(out), "--no-progress")  # the cell runs in a subprocess
    printed = capsys.readouterr()
    assert code == 0, printed.err
    (rec,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert rec["status"] == "ok" and rec["impl"] == "lightformer" and rec["model"]["dim"] == D
    assert rec["seq_len"] == T and rec["batch"] == B and len(rec["times_ms"]) == 2 and rec["elapsed_s"] > 0
    assert "lightformer: " in printed.out and "tokens/s" in printed.out
    for bad, message in ((["--modes", "train,fwd"], "give it alone"),
                         (["--modes", "train", "--mixers", "softmax"], "--mixers cannot be used with --modes train"),
                         (["--preset", "tiny"], "add --modes train"),
                         (["--modes", "train", "--peer", "gpt2:x.py"], "expected nanogpt:PATH")):
        assert run_cli(*bad, "--out", str(tmp_path / "x.jsonl")) == 2, bad
        assert message in capsys.readouterr().err, bad
