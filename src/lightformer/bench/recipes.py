"""The capacity suite's recipes: per task, the CPU-sized task settings, the model every mixer is trained in, the
training options, the learning-rate grid and the evaluation size; per mixer, options sized for the task's length.

Every mixer of a sweep gets the same recipe for a task: only the mixer (and its length-sized options) differs. A
schedule preset (``masformer``, ``mamba_hybrid``) is an architecture beside the mixers: its options are sized for
its base mixer (the sliding window of ``masformer``'s sliding layers) and its position scheme is one every layer
accepts. Each mixer gets the best position scheme it accepts: RoPE where it can, learned absolute positions otherwise
(RoPE gains the exact baseline 0.79 bits/byte on the stdlib LM at compare's budget; learned positions are what the
others accept). The numbers below are the documented CPU settings of ``docs/capacity.md``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..mixers import MIXERS
from ..models.architecture import architecture_capabilities, base_mixer


@dataclass(frozen=True)
class Recipe:
    """How one task is trained in the suite.

    Attributes:
        task_options: options of the task (CPU-sized; the paper's settings are selectable through options).
        model: ``ModelConfig`` fields (without the mixer); ``position="auto"`` = ``best_position(mixer)``.
        train: ``TrainConfig`` fields (batch, warm-up, weight decay, bf16, ``max_steps``; the time budget comes
            from ``lightformer suite --budget``).
        lrs: the learning-rate grid (the best on validation is kept).
        eval_n: validation and test examples.
        steps: the recipe's step budget per learning rate, used by a sweep given neither a time budget nor a step
            cap (``lightformer suite`` without ``--budget``/``--max-steps``); ``None`` = the sweep must give one.
    """

    task_options: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    lrs: tuple[float, ...] = (1e-3, 3e-3)
    eval_n: int = 512
    steps: int | None = None


_PROBE_MODEL = {"dim": 64, "num_layers": 2, "num_heads": 2, "position": "auto", "ffn_mult": 2.0}
#: fp32 on every host: with ``bf16="auto"`` the grid's precision (so its numbers) would depend on the host a cell
#: ran on (the AVX2 host trains fp32, an AVX-512 BF16 or AMX host bf16); at width 64 bf16 saves little time
_PROBE_TRAIN = {"batch_size": 128, "warmup_steps": 100, "weight_decay": 0.1, "bf16": False, "max_steps": 20000}
#: MQAR needs large batches to leave the plateau at accuracy ~1/K (Zoology uses 512 at T <= 128); see
#: docs/capacity.md for the recipe's measurements
_MQAR_TRAIN = {**_PROBE_TRAIN, "batch_size": 256}
_LRA_MODEL = {"dim": 64, "num_layers": 2, "num_heads": 2, "position": "auto", "ffn_mult": 2.0, "dropout": 0.1}
_LRA_TRAIN = {"batch_size": 32, "warmup_steps": 100, "weight_decay": 0.01, "bf16": False, "max_steps": 20000}
#: CPU-sized Long Range Arena: a sixteenth to a third of LRA's lengths (T = 196 to 400) and a fixed step budget, so
#: a cell takes minutes on one core (36 mixers x 5 tasks x 2 seeds). LRA's own settings stay selectable through the task
#: options (``--task-option listops.min_length=500`` ...); measurements: docs/results/lra_cpu/README.md
_LRA_LRS = (1e-3, 3e-3)
_LRA_STEPS = 600
_LRA_LISTOPS_STEPS = 1000

#: The other probes: fresh training draws, scored where evaluation scores, validation every 100 steps and Zoology's
#: early stop at 0.99 (``TrainConfig.stop_at``); how each was chosen: docs/results/probe_recipe/README.md
_STOP = {"stop_at": 0.99, "eval_interval": 100}
_FRESH = {"num_train_examples": 0}

RECIPES: dict[str, Recipe] = {
    "mqar": Recipe({}, _PROBE_MODEL, {**_MQAR_TRAIN, "max_steps": 800}, (1e-3, 3e-3), 512, 800),
    #: softmax: 99.8 % at step 200, 100 % from 300 (train_targets "all" was at chance after 2,828 steps)
    "induction": Recipe({**_FRESH, "train_targets": "probe"}, _PROBE_MODEL,
                        {**_PROBE_TRAIN, **_STOP}, (1e-3, 3e-3), 512, 800),
    #: T = 64 (MAD: 128), batch 256; softmax 44.6 % at step 300, 47.4 % test after 981 steps at lr 1e-3
    "fuzzy_recall": Recipe({**_FRESH, "train_targets": "probe", "seq_len": 64}, _PROBE_MODEL,
                           {**_MQAR_TRAIN, **_STOP}, (1e-3, 3e-3), 512, 1600),
    #: T = 64 (MAD: 128), batch 256, no step budget yet: softmax sits on the most-frequent-value heuristic (33 %)
    #: and leaves it at one seed, not the other. Seed 0 jumps to 100 % (at step 1,750 of 4,000, 2,100 of 2,400);
    #: seed 1 is still at 33 % after 5,000 steps. A probe the exact baseline solves by chance ranks nothing
    "noisy_recall": Recipe({**_FRESH, "train_targets": "probe", "seq_len": 64}, _PROBE_MODEL,
                           {**_MQAR_TRAIN, **_STOP}, (1e-3, 3e-3), 512),
    #: T = 64 and 8 tokens to copy (MAD: 256 and 16); softmax 93.8 % at step 500, 99.0 % at 1,600
    "selective_copy": Recipe({**_FRESH, "seq_len": 64, "num_tokens_to_copy": 8}, _PROBE_MODEL,
                             {**_PROBE_TRAIN, **_STOP}, (1e-3, 3e-3), 512, 1600),
    #: MAD's baseline; softmax 46 % at step 1,600 and 60 % at 3,463, still rising (a capacity measure: no width-64
    #: model is expected to rebuild 31 tokens of 4 bits from one 64-float state)
    "compression": Recipe(_FRESH, _PROBE_MODEL, {**_PROBE_TRAIN, **_STOP}, (1e-3, 3e-3), 512, 1600),
    #: MAD's baseline; softmax 100 % from step 100
    "memorization": Recipe({}, _PROBE_MODEL, {**_PROBE_TRAIN, **_STOP}, (1e-3, 3e-3), 256, 800),
    #: d = 4, 9 points; softmax nmse 0.49 at step 1,000 (one GD step 0.63, least squares 0.30); at lr 3e-3 (d = 8)
    #: it stayed at the zero predictor
    "icl_regression": Recipe({"dim": 4, "num_points": 9}, _PROBE_MODEL,
                             {**_PROBE_TRAIN, "eval_interval": 100}, (3e-4, 1e-3), 512, 1600),
    #: lengths in (64, 256) (LRA: (500, 2000)); softmax leaves the majority class (18 %) between steps 500 and 750
    #: and is at 30.5 % at 1,000 (32.3 % at 3,000); batches of neighbouring lengths pad 0.2 % of their tokens, not 45 %
    "listops": Recipe({"group_by_length": True, "min_length": 64, "max_length": 256}, _LRA_MODEL, _LRA_TRAIN,
                      _LRA_LRS, 1000, _LRA_LISTOPS_STEPS),
    #: 14 x 14 = 196 pixels (LRA: 32 x 32); softmax 66.2 % after 600 steps at lr 1e-3, 0.12 s per step
    "image": Recipe({"downsample": 2}, _LRA_MODEL, _LRA_TRAIN, _LRA_LRS, 1000, _LRA_STEPS),
    #: 20 x 20 = 400 pixels at Pathfinder's easiest contour, 6 paddles (LRA: 32 x 32 at 14); at 16 x 16 the target
    #: snakes do not fit (contour 6), or not in every image of a 20,000-image pool (contour 5, origins 4 apart);
    #: softmax is still at chance after 3,000 steps (49.6 %), so this recipe measures nothing yet
    "pathfinder": Recipe({"image_size": 20, "contour_length": 6}, _LRA_MODEL, _LRA_TRAIN, _LRA_LRS, 1000,
                         _LRA_STEPS),
    #: 256 bytes (LRA: 4096); softmax 53.4 % after 600 steps (1024 bytes: 64.4 %, at 1.5 s per step, not 0.18)
    "text": Recipe({"window": 256}, _LRA_MODEL, _LRA_TRAIN, _LRA_LRS, 500, _LRA_STEPS),
    #: 2 x 256 bytes (LRA: 2 x 4096); softmax 66.0 % after 600 steps
    "retrieval": Recipe({"window": 256}, _LRA_MODEL, _LRA_TRAIN, _LRA_LRS, 500, _LRA_STEPS),
    "lm": Recipe({"block_size": 256}, {"dim": 128, "num_layers": 4, "num_heads": 4, "position": "auto"},
                 {"batch_size": 16, "warmup_steps": 50, "bf16": "auto", "max_steps": None}, (2e-3,), 640),
}
#: The probes (causal, ``LanguageModel``) and the Long Range Arena tasks (bidirectional classifiers).
PROBES = ("mqar", "induction", "fuzzy_recall", "noisy_recall", "selective_copy", "compression", "memorization",
          "icl_regression")
LRA = ("listops", "text", "retrieval", "image", "pathfinder")


def recipe(task: str) -> Recipe:
    """The recipe of ``task``; a task without one gets the probe recipe (causal) or the LRA one."""
    if task in RECIPES:
        return RECIPES[task]
    from ..tasks import TASKS

    if TASKS.get(task).kind in ("classify", "pair"):
        return Recipe({}, _LRA_MODEL, _LRA_TRAIN, _LRA_LRS, 1000)
    return Recipe({}, _PROBE_MODEL, _PROBE_TRAIN)


def best_position(mixer: str) -> str:
    """``"rope"`` when the mixer (every layer of a schedule preset) accepts it, else ``"learned"`` (added to the
    embeddings by the model)."""
    return "rope" if "rope" in architecture_capabilities(mixer).positions else "learned"


def sized_options(mixer: str, seq_len: int, dim: int) -> dict[str, Any]:
    """Options of ``mixer`` sized for sequences of ``seq_len`` tokens at width ``dim``: local windows of T/4 (at
    most 256, so a window never covers the whole sequence), a quarter-length low-rank projection (at most 256),
    feature maps of 64, LSH buckets of 32 below T=1024 (else 64), BigBird blocks of 16 below T=1024 (else 64),
    half of HiLo's heads local (``alpha = 0.5``), and ``max_len = T`` where the mixer's parameters are sized by
    it. Options the mixer lacks are left out. For a schedule preset: the options of its base mixer
    (``models.architecture.base_mixer``), which its base layers take through ``ModelConfig.mixer_options``."""
    mixer = base_mixer(mixer)
    window = max(8, min(256, seq_len // 4))
    options: dict[str, Any] = {
        "window": window, "proj_len": max(8, min(256, seq_len // 4)), "num_features": 64,
        "bucket_size": 32 if seq_len < 1024 else 64, "n_hashes": 2, "max_len": seq_len,
        "num_landmarks": max(8, min(64, seq_len // 8)),
    }
    if mixer == "bigbird":
        options.update(block_size=16 if seq_len < 1024 else 64, num_random=1 if seq_len < 1024 else 3)
    if mixer == "longformer":
        options["num_global"] = 4
    if mixer == "dilated_window":
        options["window"] = max(4, window // 2)
    if mixer == "hilo":
        # one Hi-Fi (local) and one Lo-Fi (pooled) head of the recipes' two: the paper's alpha = 0.9 rounds to two
        # Lo-Fi heads, and then no head sees the previous token (seed 0: memorization 23 %, induction 19 %)
        options["alpha"] = 0.5
    valid = MIXERS.options(mixer)
    return {k: v for k, v in sorted(options.items()) if k in valid}


#: The head dimension a mixer's paper trains it at, where the recipe's (dim / num_heads) does not suit it. H3 builds
#: a head_dim² outer-product state per head, so its cost grows as head_dim² (at the probes' head_dim 32 an MQAR cell
#: does not finish in an hour); Zoology's MQAR configurations (Arora et al. 2023, Figure 2) train H3 at head_dim 2.
HEAD_DIM: dict[str, int] = {"h3": 2}


def model_for(recipe_: Recipe, mixer: str, seq_len: int, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The recipe's model fields for ``mixer`` with ``overrides`` (``suite --model``) on top: ``position`` resolved,
    ``max_len`` = the task's length, and ``num_heads = dim // HEAD_DIM[mixer]`` for a mixer trained at its paper's
    head dimension (unless ``overrides`` sets ``num_heads``)."""
    overrides = overrides or {}
    model = dict(recipe_.model)
    if model.get("position", "auto") == "auto":
        model["position"] = best_position(mixer)
    model["max_len"] = seq_len
    model.update(overrides)
    if base_mixer(mixer) in HEAD_DIM and "dim" in model and "num_heads" not in overrides:
        model["num_heads"] = max(1, model["dim"] // HEAD_DIM[base_mixer(mixer)])
    return model


def replace(recipe_: Recipe, **changes: Any) -> Recipe:
    return dataclasses.replace(recipe_, **changes)
