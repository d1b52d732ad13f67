"""Whole-model bench cells (modes ``model-fwd`` and ``model-fwd+bwd``): one architecture's backbone, measured.

A model cell's ``mixer`` is an architecture (``models.architecture``): a registered mixer, stacked in every layer,
or a schedule preset (``masformer``: exact softmax attention in the bottom quarter of the layers, sliding_window
in the others; ``mamba_hybrid``: mamba2 in three of every four layers, softmax in the fourth). The subprocess
builds ``lightformer.models.Transformer`` from a ``ModelConfig`` with

- ``num_layers`` = ``cell.num_layers`` (``--layers``), ``dim``, ``num_heads`` = ``heads``, ``causal``, no dropout,
  the default block (pre-norm), FFN (GELU MLP, 4·D hidden) and norm (LayerNorm);
- ``position = "rope"`` when every mixer of the architecture accepts RoPE, else ``"none"`` (the record's
  ``position_note`` names the mixers that do not), so that an all-softmax stack is not measured without the
  position scheme it would be trained with;
- each layer's mixer with the bench's options for that mixer (``defaults.BENCH_DEFAULTS`` under the user's
  ``--option``), written out as an explicit schedule (``softmax()@0; sliding_window(window=256)@1,2,3``) that the
  record keeps as ``schedule``, so ``ModelConfig(schedule=rec["schedule"], ...)`` rebuilds the measured stack.

One run is ``Transformer.forward_embeddings`` on random embeddings ``[B, T, D]`` (the vocabulary plays no part),
and for ``model-fwd+bwd`` the backward of a fixed random output gradient, timed and measured for memory exactly
like a mixer cell (``bench/cell.py``). Before timing, every distinct mixer of the architecture passes the mixer
cells' own oracle gate (``cell.oracle_gate``) at the model's width, heads, direction, position and options; one
failure fails the cell. FLOPs (family ``model``) = each layer's mixer counted as its mixer cell would be, plus each
layer's FFN (two ``D x hidden`` matmuls: 4·B·T·D·hidden forward); fwd+bwd counts 3x forward. Norms, residual
adds and the final norm are not counted.

The baseline of model tables is the all-softmax stack (``MODEL_BASELINE``) measured in the same run, as SDPA is for
mixer cells.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from .defaults import resolve_options
from .grid import Cell, run_mode

#: the architecture every model cell is compared with (time and memory ratios, crossover)
MODEL_BASELINE = "softmax"


def layer_mixers(architecture: str, num_layers: int) -> tuple[str, ...]:
    """The mixer of each of ``num_layers`` layers of ``architecture``.

    Raises:
        ValueError: ``architecture`` is neither a registered mixer nor a schedule preset.
    """
    from lightformer.mixers import MIXERS
    from lightformer.models.architecture import architecture_mixers
    from lightformer.models.schedule import resolve_schedule
    from lightformer.models.spec import LayerSpec

    if architecture in MIXERS:
        return (architecture,) * num_layers
    architecture_mixers(architecture, num_layers)  # the ValueError naming the presets
    return tuple(spec.mixer for spec in resolve_schedule(architecture, LayerSpec(), num_layers))


def distinct_mixers(architecture: str, num_layers: int) -> tuple[str, ...]:
    """The distinct mixers of ``architecture`` at ``num_layers`` layers, in order of first use."""
    return tuple(dict.fromkeys(layer_mixers(architecture, num_layers)))


def architecture_caps(architecture: str, num_layers: int) -> Any:
    """The capabilities of the stack (``models.architecture.meet`` over its layers' mixers)."""
    from lightformer.mixers import MIXERS
    from lightformer.models.architecture import meet

    return meet(MIXERS.get(m).capabilities for m in distinct_mixers(architecture, num_layers))


def model_position(architecture: str, num_layers: int) -> tuple[str, str | None]:
    """``("rope", None)`` when every mixer of the stack accepts RoPE, else ``("none", why)``."""
    from lightformer.mixers import MIXERS

    mixers = distinct_mixers(architecture, num_layers)
    refuse = [m for m in mixers if "rope" not in MIXERS.get(m).capabilities.positions]
    if not refuse:
        return "rope", None
    return "none", f"position none: {', '.join(refuse)} do{'es' if len(refuse) == 1 else ''} not accept rope"


def _literal(value: Any) -> str:
    """``value`` as a TOML literal for a schedule option (``models/schedule.py``).

    Raises:
        ValueError: a value TOML cannot write (``None``, a table)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    raise ValueError(f"option value {value!r} cannot be set in a model cell's schedule (not a TOML literal)")


def model_schedule(cell: Cell, seq_len: int | None = None) -> str:
    """The explicit schedule of ``cell``'s stack: every layer's mixer with its options ("T" resolved to
    ``seq_len``, default ``cell.seq_len``), layers with the same mixer in one clause."""
    seq_len = cell.seq_len if seq_len is None else seq_len
    layers: dict[str, list[int]] = {}
    for i, m in enumerate(layer_mixers(cell.mixer, cell.num_layers or 1)):
        layers.setdefault(m, []).append(i)
    clauses = []
    for m, idx in layers.items():
        opts = resolve_options(dict(cell.options.get(m, {})), seq_len)
        inner = ", ".join(f"{k}={_literal(v)}" for k, v in sorted(opts.items()))
        clauses.append(f"{m}({inner})@{','.join(str(i) for i in idx)}")
    return "; ".join(clauses)


def record_fields(cell: Cell) -> dict[str, Any]:
    """The model keys of a bench record: ``architecture``, ``num_layers``, ``layer_mixers`` (one per layer),
    ``position``, ``position_note`` and ``schedule`` (``None`` for a mixer cell, or where the architecture does not
    resolve)."""
    out: dict[str, Any] = {"architecture": None, "num_layers": cell.num_layers, "layer_mixers": None,
                           "position": None, "position_note": None, "schedule": None}
    if cell.num_layers is None:
        return out
    out["architecture"] = cell.mixer
    try:
        out["layer_mixers"] = list(layer_mixers(cell.mixer, cell.num_layers))
        out["position"], out["position_note"] = model_position(cell.mixer, cell.num_layers)
        out["schedule"] = model_schedule(cell)
    except ValueError:
        pass
    return out


def model_config(cell: Cell) -> Any:
    """The ``ModelConfig`` of ``cell`` (see the module docstring).

    Raises:
        ValueError / TypeError: the architecture or an option the model does not accept."""
    from lightformer.models import ModelConfig

    position, _ = model_position(cell.mixer, cell.num_layers)
    return ModelConfig(dim=cell.dim, num_layers=cell.num_layers, num_heads=cell.heads, schedule=model_schedule(cell),
                       position=position, max_len=cell.seq_len, causal=cell.causal, dropout=0.0)


def build_model(cell: Cell) -> Any:
    """The backbone of ``cell`` as a module ``x [B, T, D] -> [B, T, D]`` (``Transformer.forward_embeddings``)."""
    from torch import nn

    from lightformer.models import Transformer

    class Backbone(nn.Module):
        def __init__(self, model: Transformer) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: Any) -> Any:
            return self.model.forward_embeddings(x)

    return Backbone(Transformer(model_config(cell)))


def mixer_cells(cell: Cell) -> list[Cell]:
    """One mixer cell per distinct mixer of ``cell``'s architecture, at its shape, options and position: what the
    oracle gate and the FLOP count of a mixer cell are run on."""
    position, _ = model_position(cell.mixer, cell.num_layers)
    out = []
    for m in distinct_mixers(cell.mixer, cell.num_layers):
        options = dict(cell.options.get(m, {}))
        if position != "none":
            options["position"] = position
        out.append(dataclasses.replace(cell, mixer=m, options=options, mode=run_mode(cell.mode), num_layers=None))
    return out


def model_gate(cell: Cell) -> dict[str, Any]:
    """``cell.oracle_gate`` of every distinct mixer of the architecture, combined: ``passed`` is False when one
    failed, None when one could not run at any gate length (and none failed), else True; ``max_abs_err`` the
    largest; ``mixers`` the gate of each mixer; ``reason`` the first failure's, naming its mixer."""
    from .cell import oracle_gate

    gates = {}
    for mc in mixer_cells(cell):
        gates[mc.mixer] = oracle_gate(mc)
    failed = [m for m, g in gates.items() if g["passed"] is False]
    unknown = [m for m, g in gates.items() if g["passed"] is None]
    errors = [g["max_abs_err"] for g in gates.values() if g["max_abs_err"] is not None]
    first = (failed or unknown or [None])[0]
    return {"kind": "oracle", "seq_len": max(g["seq_len"] for g in gates.values()),
            "max_abs_err": max(errors) if errors else None, "tol": cell.gate_tol,
            "passed": False if failed else None if unknown else True,
            "mixers": {m: {k: v for k, v in g.items() if k != "reason"} for m, g in gates.items()},
            "reason": None if first is None else f"{first}: {gates[first]['reason']}"}


def model_flops(cell: Cell, ffn_hidden: int) -> tuple[float, str]:
    """FLOPs of one timed run of ``cell``'s stack (see the module docstring) and the family ``"model"``."""
    from lightformer.mixers import MIXERS

    from .cell import effective_options, own_flops
    from .flops import cell_flops

    per_mixer = {}
    for mc in mixer_cells(cell):
        per_mixer[mc.mixer], _ = cell_flops(effective_options(mc), mc.seq_len, mc.batch, mc.dim, mc.heads, mc.causal,
                                            mc.mode, MIXERS.get(mc.mixer).capabilities.time_exponent, own_flops(mc))
    ffn = 4.0 * cell.batch * cell.seq_len * cell.dim * ffn_hidden * (3.0 if run_mode(cell.mode) == "fwd+bwd" else 1.0)
    return sum(per_mixer[m] + ffn for m in layer_mixers(cell.mixer, cell.num_layers)), "model"
