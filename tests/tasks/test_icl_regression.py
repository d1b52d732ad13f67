"""In-context linear regression (Garg et al. 2022): the prompts decoded independently (w recovered by least squares
from each prompt, every y checked against w·x), the encoding, the baselines against their closed forms with
tolerances from the sample size, determinism, option errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lightformer.tasks import create_task


def decode(inputs: torch.Tensor, targets: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """One prompt -> (x [k, d], y [k]) from the tokens (the last y from the targets)."""
    x = inputs[0::2].double().numpy()
    y = np.concatenate([inputs[1::2, 0].double().numpy(), targets[-1:].double().numpy()])
    return x, y


def test_every_label_is_a_linear_function_of_its_x():
    task = create_task("icl_regression", dim=5, num_points=11)
    inputs, targets, scored = task.sample("val", 64)
    assert inputs.shape == (64, 21, 5) and targets.shape == scored.shape == (64, 21)
    assert bool((inputs[:, 1::2, 1:] == 0).all()), "a y token is (y, 0, ..., 0)"
    assert torch.equal(targets[:, 0:-1:2], inputs[:, 1::2, 0]), "the target at x_i is the y_i that follows"
    assert bool((targets[:, 1::2] == 0).all())
    assert torch.equal(scored[0], torch.arange(21) % 2 == 0)
    for i in range(64):
        x, y = decode(inputs[i], targets[i])
        w, *_ = np.linalg.lstsq(x, y, rcond=None)
        np.testing.assert_allclose(x @ w, y, atol=1e-5 * max(1.0, np.abs(y).max()))
    # and the w's look like draws of N(0, I): y_i / |x_i| has variance ~ 1 over many prompts
    ys = targets[:, 0::2].double()
    ratio = ys / inputs[:, 0::2].double().norm(dim=-1)
    assert abs(float(ratio.var()) - 1.0) < 0.15


def test_noise_breaks_the_fit_by_the_right_amount():
    task = create_task("icl_regression", dim=4, num_points=40, noise_std=0.5)
    inputs, targets, _ = task.sample("train", 200, seed=3)
    residual = []
    for i in range(200):
        x, y = decode(inputs[i], targets[i])
        w, res, *_ = np.linalg.lstsq(x, y, rcond=None)
        residual.append(float(res[0]) / (40 - 4))  # unbiased estimate of noise_std²
    assert abs(np.mean(residual) - 0.25) < 4 * 0.25 * math.sqrt(2 / (36 * 200))


@pytest.mark.parametrize("score", ["all", "last"])
def test_baselines_against_closed_forms(score):
    n, d = 3000, 6
    task = create_task("icl_regression", dim=d, num_points=13, score=score)
    got, want = task.baselines("test", n), task.expected_baselines()
    assert set(got) == {"zero", "least_squares", "one_step_gd"}
    if score == "last":  # 12 pairs >= d: least squares is exact; one step of GD leaves (d + 1) / (k + d + 1)
        assert got["least_squares"] < 1e-9 and want["least_squares"] == 0.0
        assert want["one_step_gd"] == pytest.approx(7 / 19)
    else:
        assert want["zero"] == 1.0 and want["least_squares"] == pytest.approx(sum(d - j for j in range(d)) / d / 13)
    # tolerance: 4 standard errors of the mean over prompts (each prompt's error averaged over its scored queries)
    batch = task.sample("test", n)
    _, targets, scored = batch
    for name, pred in task.predictions(batch).items():
        per_prompt = (((pred - targets.double()) ** 2 / d) * scored).sum(1) / scored.sum(1)
        assert float(per_prompt.mean()) == pytest.approx(got[name], rel=1e-9, abs=1e-12)
        tol = 4 * float(per_prompt.std()) / math.sqrt(n) + 1e-9
        assert abs(got[name] - want[name]) <= tol, (name, got[name], want[name], tol)
    assert got["least_squares"] < got["one_step_gd"] < got["zero"]


def test_least_squares_exact_from_d_points_on():
    task = create_task("icl_regression", dim=4, num_points=9)
    batch = task.sample("val", 200)
    pred = task.predictions(batch)
    _, targets, _ = batch
    err = (pred["least_squares"] - targets.double()) ** 2 / 4  # [n, T]
    per_query = err[:, 0::2].mean(0)  # query j+1 after j pairs
    assert bool((per_query[4:] < 1e-10).all()), per_query
    # below d pairs, min-norm least squares leaves (d - j) / d of the error, with sampling slack
    spread = err[:, 0::2].std(0) / math.sqrt(200)  # standard error of each query's mean
    for j in range(4):
        assert abs(float(per_query[j]) - (4 - j) / 4) < 4 * float(spread[j]), (j, per_query[j], spread[j])
    assert bool((pred["zero"] == 0).all())


def test_one_step_gd_step_is_optimal():
    # the chosen step beats half and double of it on the same prompts
    task = create_task("icl_regression", dim=5, num_points=11, score="last")
    inputs, targets, _ = task.sample("val", 4000)
    x, y = inputs[:, 0::2].double(), inputs[:, 1::2, 0].double()
    query, target = x[:, -1], targets[:, -1].double()
    direction = (torch.einsum("njd,nj->nd", x[:, :-1], y) * query).sum(-1)  # x_qᵀ Xᵀ y
    eta = 1 / (10 + 5 + 1)
    errors = {s: float(((s * eta * direction - target) ** 2).mean() / 5) for s in (0.5, 1.0, 2.0)}
    assert errors[1.0] < errors[0.5] and errors[1.0] < errors[2.0]
    assert errors[1.0] == pytest.approx(task.baselines("val", 4000)["one_step_gd"], rel=1e-9)


def test_noisy_expectations():
    task = create_task("icl_regression", dim=4, num_points=12, noise_std=0.5, score="last")
    want = task.expected_baselines()  # 11 pairs, d = 4: least squares sigma²(1 + d/(j - d - 1)) / d
    assert want["least_squares"] == pytest.approx(0.25 * (1 + 4 / 6) / 4)
    assert want["zero"] == pytest.approx(1 + 0.25 / 4)
    batch = task.sample("val", 4000)
    target = batch[1][:, -1].double()
    for name, pred in task.predictions(batch).items():
        err = (pred[:, -1] - target) ** 2 / 4
        assert abs(float(err.mean()) - want[name]) < 4 * float(err.std()) / math.sqrt(4000), (name, want)
    assert math.isinf(create_task("icl_regression", dim=4, num_points=6, noise_std=0.1).expected_baselines()[
        "least_squares"])


def test_determinism_and_prefix():
    a, b = create_task("icl_regression"), create_task("icl_regression")
    for x, y in zip(a.sample("train", 8, seed=4), b.sample("train", 8, seed=4)):
        assert torch.equal(x, y)
    small, big = a.sample("val", 3), a.sample("val", 10)
    assert all(torch.equal(s, t[:3]) for s, t in zip(small, big))
    assert not torch.equal(a.sample("val", 3)[0], a.sample("test", 3)[0])
    assert not torch.equal(create_task("icl_regression", seed=1).sample("val", 3)[0], small[0])
    # the noise level does not move the x's or w's
    noisy = create_task("icl_regression", noise_std=0.1).sample("val", 3)
    assert torch.equal(noisy[0][:, 0::2], small[0][:, 0::2])


def test_shapes_defaults_and_example():
    task = create_task("icl_regression")
    assert (task.config.dim, task.config.num_points, task.seq_len, task.input_dim) == (8, 17, 33, 8)
    paper = create_task("icl_regression", dim=20, num_points=41)
    x, y, s = paper.sample("train", 2)
    assert x.shape == (2, 81, 20) and x.dtype == torch.float32 and y.dtype == torch.float32
    last = create_task("icl_regression", score="last").sample("val", 2)[2]
    assert last.sum() == 2 and bool(last[:, -1].all())
    text = task.format_example(task.sample("val", 2), 1)
    assert "query" in text and "x_17" in text


@pytest.mark.parametrize("option, value", [
    ("dim", 0), ("num_points", 0), ("num_points", 2.0), ("noise_std", -0.1), ("noise_std", float("nan")),
    ("noise_std", "0"), ("score", "first"), ("seed", -1)])
def test_option_errors(option, value):
    with pytest.raises(ValueError, match=option):
        create_task("icl_regression", **{option: value})
