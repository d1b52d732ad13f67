"""The ``pathfinder`` task: every label checked against a flood fill of its rendered image (written here), balance,
what the markers and paddles look like, determinism, the disk cache, option errors."""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import pytest
import torch

from lightformer.tasks import create_task
from lightformer.tasks import pathfinder as pf

N = 200  # images checked at LRA's 32×32 settings


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTFORMER_CACHE", str(tmp_path))
    return tmp_path / "tasks"


@pytest.fixture(scope="module")
def pool():
    """N training images at the default (LRA Pathfinder-32) options, straight from the generator."""
    task = create_task("pathfinder", num_train=N, num_val=2, num_test=2)
    return task.generator().generate(task.rng("train", None), N)


def component(image: np.ndarray, start: tuple[int, int]) -> set[tuple[int, int]]:
    """The 8-connected set of pixels > 0 that holds ``start`` (breadth-first flood fill)."""
    size = image.shape[0]
    seen, queue = {start}, deque([start])
    while queue:
        r, c = queue.popleft()
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                q = (r + dr, c + dc)
                if 0 <= q[0] < size and 0 <= q[1] < size and q not in seen and image[q] > 0:
                    seen.add(q)
                    queue.append(q)
    return seen


def cell(point) -> tuple[int, int]:
    return int(point[0]), int(point[1])


def test_every_label_is_the_connectivity_of_the_image(pool):
    images, labels, markers = pool
    agree = 0
    for image, label, (m1, m2) in zip(images, labels, markers):
        first = component(image, cell(m1))
        agree += (cell(m2) in first) == bool(label)
        if label == 0:  # two different snakes: the other marker's component is disjoint from the first
            assert not first & component(image, cell(m2))
    assert agree == N  # the generator guarantees it: every one of the N images


def test_markers_and_paddles_look_as_documented(pool):
    images, labels, markers = pool
    assert images.shape == (N, 32, 32) and images.dtype == np.uint8
    paddle_top = round(pf.PADDLE_CONTRAST * 255)  # 191: a paddle pixel is never brighter than its contrast
    for image, (m1, m2) in zip(images, markers):
        assert image[cell(m1)] == 255 and image[cell(m2)] == 255  # a disc of radius 1.5 covers its centre pixel
        assert math.dist(m1, m2) >= 7.0  # seed_distance
        rows, cols = np.nonzero(image > paddle_top)
        far = np.minimum(np.hypot(rows + 0.5 - m1[0], cols + 0.5 - m1[1]),
                         np.hypot(rows + 0.5 - m2[0], cols + 0.5 - m2[1]))
        assert far.max(initial=0.0) < 1.5 + 1.0  # brighter than a paddle only on the marker discs
        assert image[0].max() == image[-1].max() == image[:, 0].max() == image[:, -1].max() == 0  # padding 1
    lit = (images > 0).sum(axis=(1, 2))
    assert 150 < lit.mean() < 300  # two 14-paddle snakes and ~5 distractors (measured: ~224 of 1024 pixels)
    # the label only chooses the markers: the rest of the image looks the same in both classes
    pos, neg = labels == 1, labels == 0
    assert abs(lit[pos].mean() - lit[neg].mean()) < 10
    dist = np.linalg.norm(markers[:, 0] - markers[:, 1], axis=1)
    assert abs(dist[pos].mean() - dist[neg].mean()) < 2.0  # measured 13.8 vs 13.9 on 400 images


def test_balanced_alternating_labels(pool):
    _, labels, _ = pool
    assert labels.tolist() == [1 - i % 2 for i in range(N)] and labels.sum() == N // 2
    task = create_task("pathfinder", **{**create_task("pathfinder").example_options, "num_val": 8})
    _, _, y = task.sample("val", 8)
    assert y.tolist() == [1, 0, 1, 0, 1, 0, 1, 0]


def test_render_example_honours_the_label():
    task = create_task("pathfinder")
    gen = task.generator()
    rng = np.random.default_rng(3)
    for label in (0, 1, 1, 0):
        image, got, centres = gen.render_example(rng, label)
        assert got == label and image.shape == (32, 32) and centres.shape == (2, 2)
        assert (cell(centres[1]) in component(image, cell(centres[0]))) == bool(label)
    with pytest.raises(ValueError, match="label"):
        gen.render_example(rng, 2)


def test_turns_follow_the_continuity_law():
    gen = create_task("pathfinder", continuity=2.0).generator()
    steps = gen._turns(np.random.default_rng(0), 20000)
    degrees = np.abs(steps) * 360 / pf.DIRECTIONS
    assert degrees.max() <= 45.0  # continuity 2: turns up to 90° / 2
    # density ∝ cos²(2Δ) on |Δ| <= 45°: E|Δ| = 45° · (1/2 - 2/π²) = 13.38°
    assert abs(degrees.mean() - 45 * (0.5 - 2 / math.pi ** 2)) < 0.5


def test_sample_is_the_pool(cache):
    options = create_task("pathfinder").example_options
    task = create_task("pathfinder", **options)
    images, labels, _ = task.pool("train")
    x, mask, y = task.sample("train", 10)
    assert x.shape == (10, 256) and x.dtype == torch.int64 and bool(mask.all())
    assert np.array_equal(x.numpy(), images[:10].reshape(10, 256)) and y.tolist() == labels[:10].tolist()
    x, _, y = task.sample("train", 12, seed=4)
    rows = {img.reshape(-1).tobytes(): k for k, img in enumerate(images)}
    ks = [rows[np.asarray(v, dtype=np.uint8).tobytes()] for v in x.tolist()]
    assert len(set(ks)) == 12 and y.tolist() == labels[ks].tolist()  # distinct pool images, their own labels
    with pytest.raises(ValueError, match="larger than the train pool"):
        task.sample("train", 25)


def test_deterministic_per_seed_and_split(tmp_path, monkeypatch):
    options = create_task("pathfinder").example_options
    a = create_task("pathfinder", **options).pool("val")
    monkeypatch.setenv("LIGHTFORMER_CACHE", str(tmp_path / "elsewhere"))  # generated again, not read back
    b = create_task("pathfinder", **options).pool("val")
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    c = create_task("pathfinder", **{**options, "seed": 1}).pool("val")
    t = create_task("pathfinder", **options).pool("test")
    assert not np.array_equal(a[0], c[0]) and not np.array_equal(a[0], t[0])


def test_cache_round_trip(cache, monkeypatch):
    options = create_task("pathfinder").example_options
    task = create_task("pathfinder", **options)
    pool = task.pool("test")
    path = task.cache_path("test")
    assert path.parent == cache and path.is_file() and task.fingerprint() in path.name and "test" in path.name
    assert not list(cache.glob("*.tmp"))  # written through a temporary file, then renamed

    def refuse(*args, **kwargs):
        raise AssertionError("the pool should come from the cache")

    monkeypatch.setattr(pf.PathfinderGenerator, "generate", refuse)
    again = create_task("pathfinder", **options).pool("test")
    assert all(np.array_equal(u, v) for u, v in zip(pool, again))
    monkeypatch.undo()
    monkeypatch.setenv("LIGHTFORMER_CACHE", str(cache.parent))
    path.write_bytes(b"not a zip file")  # a damaged cache: regenerated and rewritten, with a warning
    with pytest.warns(UserWarning, match="unreadable Pathfinder cache"):
        fixed = create_task("pathfinder", **options).pool("test")
    assert all(np.array_equal(u, v) for u, v in zip(pool, fixed))
    with np.load(path) as data:
        assert np.array_equal(data["images"], pool[0])


@pytest.mark.parametrize("option, value", [("image_size", 4), ("contour_length", 0), ("paddle_length", -1.0),
                                           ("paddle_margin", -0.5), ("marker_radius", 0), ("continuity", 0.0),
                                           ("seed_distance", 40.0), ("num_train", 0), ("antialias_scale", 0),
                                           ("distractor_length", 0), ("num_distractors", -1)])
def test_option_errors_name_the_option(option, value):
    with pytest.raises(ValueError, match=option):
        create_task("pathfinder", **{option: value})


def test_impossible_options_are_a_clear_error():
    task = create_task("pathfinder", image_size=8, contour_length=30, seed_distance=3.0, num_train=2)
    with pytest.raises(RuntimeError, match="do not fit"):
        task.sample("train", 1)
