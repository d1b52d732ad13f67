"""In-context linear regression: a prompt of (x, y) pairs of one random linear function, then predict y at new x.

Source: Garg, Tsipras, Liang & Valiant, "What Can Transformers Learn In-Context? A Case Study of Simple Function
Classes", NeurIPS 2022, Sec. 2-3. Related: von Oswald et al., "Transformers learn in-context by gradient descent",
ICML 2023; Mahankali, Hashimoto & Ma, "One Step of Gradient Descent is Provably the Optimal In-Context Learner with
One Layer of Linear Self-Attention", 2023 (ICLR 2024).

Generator (Garg et al.'s linear class): per prompt ``w ~ N(0, I_d)``; ``x_i ~ N(0, I_d)`` i.i.d. for
``i = 1..k`` (``k = num_points``); ``y_i = w·x_i + noise_std·ε_i`` with ``ε_i ~ N(0, 1)`` (``noise_std = 0`` is
their noiseless setting; with noise the query's target is noisy too). The paper's setting is ``d = 20`` with up to
``2d + 1 = 41`` points (its curriculum ends there); the defaults here are CPU-sized, ``dim = 8``,
``num_points = 17 = 2d + 1``; ``create_task("icl_regression", dim=20, num_points=41)`` is the paper's.

Encoding (Garg et al. Sec. 2, as we read it): the prompt is the token sequence ``x_1, y_1, x_2, y_2, ..., x_k``,
every token a real vector of dimension ``d`` read in by one linear map; a ``y`` token is ``(y_i, 0, ..., 0)`` (the
scalar padded with zeros to dimension ``d``). So ``T = 2k - 1`` and ``d_in = d``: the trailing ``y_k`` token of
their sequence is dropped, since under a causal model it only follows the last prediction. The model's output at
``x_i``'s token (position ``2(i - 1)``) predicts ``y_i`` from the ``i - 1`` pairs before it.

Scoring: ``score="all"`` scores every ``x`` position (Garg et al.'s training objective, the mean over prompt
prefixes, including the first query with no pair before it); ``score="last"`` only the final query (``k - 1``
pairs in context), the usual evaluation. The metric ``nmse`` is the squared error divided by ``d`` (Garg et al.'s
normalisation: ``E[y²] = d``, so predicting 0 scores 1 without noise).

Baselines on the same prompts (``baselines``), with their expected values (``expected_baselines``), both
averaged over the scored positions as the metric is; for a query with ``j`` pairs before it:

- ``zero``: predict 0; expected nmse ``1 + σ²/d``.
- ``least_squares``: the minimum-norm least-squares ``w`` of the ``j`` pairs (``torch.linalg.pinv``). Expected
  squared error without noise ``d - j`` for ``j < d`` (the part of ``w`` outside the span of the ``x``'s) and 0 for
  ``j >= d``; with noise, ``d - j + σ²(1 + j / (d - j - 1))`` for ``j <= d - 2``, ``σ²(1 + d / (j - d - 1))``
  for ``j >= d + 2`` and infinite in between (the interpolation peak).
- ``one_step_gd``: one step of gradient descent on ``½ Σ (y_i - w·x_i)²`` from ``w = 0``, ``ŵ = η Xᵀy``, with the
  step that minimises the expected error. Derived here for isotropic ``x`` and ``w``: with ``S = XᵀX``,
  ``E[S] = jI`` and ``E[S²] = j(j + d + 1)I``, the expected squared error is
  ``d + σ² - 2ηjd + η²jd(j + d + 1 + σ²)``, minimised by ``η* = 1 / (j + d + 1 + σ²)`` and then equal to
  ``d + σ² - jd / (j + d + 1 + σ²)``; without noise the nmse is ``(d + 1) / (j + d + 1)``. This is the scalar
  preconditioner of the one-step GD that Mahankali et al. prove optimal for one layer of linear self-attention
  with isotropic covariates (their optimum is a preconditioned step; for ``x ~ N(0, I)`` it is a multiple of the
  identity); von Oswald et al. construct the same update in a linear-attention layer.

Published numbers (Garg et al. Fig. 2, ``d = 20``, read from the plot, not tabulated): the trained Transformer's
normalised error at the query tracks least squares, near 0 from ``k = d`` in-context examples on, while 3-NN and
averaging stay well above.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .base import TASKS, RegressionTask, TaskConfig, check_int

SCORES = ("all", "last")


@dataclass(frozen=True)
class ICLRegressionConfig(TaskConfig):
    """Options of ``icl_regression``.

    Attributes:
        dim: ``d``, the dimension of ``x`` and ``w`` (Garg et al.: 20; default 8).
        num_points: ``k``, the ``(x, y)`` pairs of a prompt, the last one's ``y`` being the final target (Garg et
            al.: up to ``2d + 1 = 41``; default 17).
        noise_std: standard deviation of the label noise (Garg et al.: 0).
        score: ``"all"`` (every query, Garg et al.'s training objective) or ``"last"`` (the final query only).
    """

    dim: int = 8
    num_points: int = 17
    noise_std: float = 0.0
    score: str = "all"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self, "dim", "num_points")
        if isinstance(self.noise_std, bool) or not isinstance(self.noise_std, (int, float)) \
                or not math.isfinite(self.noise_std) or self.noise_std < 0:
            raise ValueError(f"noise_std must be a finite number >= 0, got {self.noise_std!r}")
        if self.score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {self.score!r}")


@TASKS.register("icl_regression")
class ICLRegression(RegressionTask):
    """In-context linear regression (Garg et al. 2022); see the module docstring for the encoding.

    ``sample(split, n, seed=None)`` returns ``inputs [n, 2k - 1, d] float32`` (``x_i`` at position ``2(i - 1)``,
    ``(y_i, 0, ..., 0)`` at ``2i - 1``), ``targets [n, 2k - 1] float32`` (``y_i`` at ``x_i``'s position, 0
    elsewhere) and ``scored [n, 2k - 1] bool`` (the ``x`` positions, or only the last one with ``score="last"``).
    Example ``i`` of a draw does not depend on ``n`` (the first ``m`` of a draw of ``n > m`` are the draw of ``m``).
    """

    config_class = ICLRegressionConfig
    example_options = {"dim": 4, "num_points": 9}

    @property
    def seq_len(self) -> int:
        return 2 * self.config.num_points - 1

    @property
    def input_dim(self) -> int:
        return self.config.dim

    def _sample(self, split: str, n: int, seed: int | None) -> tuple:
        d, k = self.config.dim, self.config.num_points
        # one row of normals per prompt (w, then the x's, then the noise), so a prompt does not depend on n
        z = self.rng(split, seed).standard_normal((n, d + k * d + k))  # float64
        w, x, eps = z[:, :d], z[:, d:d + k * d].reshape(n, k, d), z[:, d + k * d:]
        y = np.einsum("nkd,nd->nk", x, w) + self.config.noise_std * eps  # [n, k]
        inputs = np.zeros((n, 2 * k - 1, d), np.float32)
        inputs[:, 0::2] = x
        inputs[:, 1::2, 0] = y[:, :-1]
        targets = np.zeros((n, 2 * k - 1), np.float32)
        targets[:, 0::2] = y
        scored = np.zeros((n, 2 * k - 1), bool)
        if self.config.score == "all":
            scored[:, 0::2] = True
        else:
            scored[:, -1] = True
        return torch.from_numpy(inputs), torch.from_numpy(targets), torch.from_numpy(scored)

    # -- reference learners ------------------------------------------------------------------------------------
    def predictions(self, batch: tuple) -> dict[str, Tensor]:
        """Each baseline's prediction at every ``x`` position of ``batch`` (from ``sample``), from the pairs before
        it: ``{"zero", "least_squares", "one_step_gd"}`` -> ``[n, 2k - 1] float64`` (0 at the ``y`` positions).
        ``least_squares`` is the minimum-norm solution (``torch.linalg.pinv``), ``one_step_gd`` one gradient step
        from 0 with ``η = 1 / (j + d + 1 + noise_std²)`` for ``j`` pairs (see the module docstring)."""
        inputs, _, _ = batch
        inputs = inputs.double()
        n, t, d = inputs.shape
        k = (t + 1) // 2
        x, y = inputs[:, 0::2], inputs[:, 1::2, 0]  # [n, k, d], [n, k - 1]
        out = {name: torch.zeros(n, t, dtype=torch.float64) for name in ("zero", "least_squares", "one_step_gd")}
        for j in range(1, k):  # the query x_{j+1} after j pairs
            xs, ys, query = x[:, :j], y[:, :j], x[:, j]
            w_ls = torch.einsum("ndj,nj->nd", torch.linalg.pinv(xs), ys)
            w_gd = torch.einsum("njd,nj->nd", xs, ys) / (j + d + 1 + self.config.noise_std ** 2)
            out["least_squares"][:, 2 * j] = (w_ls * query).sum(-1)
            out["one_step_gd"][:, 2 * j] = (w_gd * query).sum(-1)
        return out

    def baselines(self, split: str, n: int, *, seed: int | None = None) -> dict[str, float]:
        """The ``nmse`` of each baseline (``zero``, ``least_squares``, ``one_step_gd``) on ``sample(split, n,
        seed=seed)``, averaged over the scored positions as ``loss`` averages the model's.

        Raises:
            ValueError: as ``sample``.
        """
        batch = self.sample(split, n, seed=seed)
        _, targets, scored = batch
        target = targets.double()[scored]
        return {name: float(((pred[scored] - target) ** 2).mean() / self.config.dim)
                for name, pred in self.predictions(batch).items()}

    def expected_baselines(self) -> dict[str, float]:
        """The expectation of ``baselines`` over prompts (formulas in the module docstring), averaged over the
        scored positions; ``least_squares`` is ``inf`` when a scored query has ``d - 1 <= j <= d + 1`` pairs before
        it and ``noise_std > 0``."""
        d, k, s2 = self.config.dim, self.config.num_points, self.config.noise_std ** 2
        js = range(k) if self.config.score == "all" else [k - 1]

        def least_squares(j: int) -> float:
            if s2 == 0:
                return max(d - j, 0)
            if j <= d - 2:
                return d - j + s2 * (1 + j / (d - j - 1))
            if j >= d + 2:
                return s2 * (1 + d / (j - d - 1))
            return math.inf

        per = {"zero": [d + s2 for j in js], "least_squares": [least_squares(j) for j in js],
               "one_step_gd": [d + s2 - j * d / (j + d + 1 + s2) for j in js]}
        return {name: sum(v) / len(v) / d for name, v in per.items()}

    def format_example(self, batch: tuple, i: int) -> str:
        inputs, targets, scored = batch
        d, k = inputs.shape[2], (inputs.shape[1] + 1) // 2

        def vec(v: Tensor) -> str:
            shown = ", ".join(f"{float(a):+.2f}" for a in v[:4])
            return f"[{shown}{', …' if v.numel() > 4 else ''}]"

        lines = [f"prompt : {k - 1} pairs (x in R^{d}, y = w·x{' + noise' if self.config.noise_std else ''}), "
                 f"then the query; {int(scored[i].sum())} scored position(s)"]
        shown = list(range(min(3, k - 1)))
        for j in shown:
            lines.append(f"  x_{j + 1} = {vec(inputs[i, 2 * j])}  y_{j + 1} = {float(inputs[i, 2 * j + 1, 0]):+.3f}")
        if k - 1 > len(shown):
            lines.append(f"  … {k - 1 - len(shown)} more pairs")
        lines.append(f"query  : x_{k} = {vec(inputs[i, -1])}  target y_{k} = {float(targets[i, -1]):+.3f}")
        return "\n".join(lines)
