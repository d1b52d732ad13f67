"""Pathfinder: are the two dots joined by one path? An image read pixel by pixel, as LRA's *Pathfinder* task.

Source: Linsley, Kim, Veerabadran, Windolf & Serre, "Learning long-range spatial dependencies with horizontal gated
recurrent units", NeurIPS 2018 (the Pathfinder challenge; generator by Junkyung Kim, repository
drewlinsley/pathfinder, MIT), as used by Long Range Arena (Tay et al., ICLR 2021, task "Pathfinder (long-range
spatial dependency)") at 32×32: 1,024 tokens of 8-bit intensity, 2 classes, the ``curv_contour_length_14``
("hard") difficulty, 160k / 20k / 20k images.

The generator is written here from the paper's description and from what the original's parameters mean in its
generator (read, not copied: none of its code is used). An image holds *snakes*: chains of short line segments ("paddles") whose direction turns by a
bounded angle from one paddle to the next, separated by small gaps.

- Two *target* snakes of ``contour_length`` paddles start ``seed_distance`` apart near the centre of the image
  (their *origins*) and grow outwards, a paddle of each in turn (as the original does).
- ``num_distractors`` shorter snakes of ``distractor_length`` paddles start anywhere; a distractor that finds no
  room after a few tries is left out (as the original's ``allow_incomplete``).
- Two marker discs: one at the origin of a target snake, the other at the far end (*terminal*) of the same snake
  (label 1, *connected*) or of the other one (label 0, *disconnected*).

The label only picks which two of the four reserved ends get a marker: the rest of the image (and every rule below)
is the same in both classes, every end of a target snake keeps room for a marker, and every origin–terminal pair is
at least ``seed_distance`` apart, so neither the clutter, the marker distance nor an unmarked end gives the label
away.

Turning: the change of direction between consecutive paddles, ``Δ``, has density ∝ cos²(``continuity``·Δ) for
``|continuity·Δ| ≤ π/2`` (the original's weighting: ``continuity = 1`` allows turns up to 90°, larger values give
straighter snakes). A paddle is ``paddle_length`` long; the next one starts ``paddle_margin`` further on.

Rendering (antialiased): paddles are lines of width ``paddle_thickness`` at intensity ``PADDLE_CONTRAST``, markers
discs of radius ``marker_radius`` at ``MARKER_CONTRAST``, drawn with a one-fine-pixel soft edge on a canvas
``antialias_scale`` times finer (max-composited), averaged over ``antialias_scale²`` blocks and quantised to 0..255.
Fine-pixel intensities below ``FLOOR`` are dropped, so the pixels ``> 0`` of the image are exactly the union of the
objects' footprints. The generator keeps

- every paddle's footprint 8-adjacent to the previous paddle's (a snake is one 8-connected set of lit pixels),
- every snake's footprint (its marker discs and marker reservations included) at least one unlit pixel away from
  every other snake's, and ``PADDING`` pixels away from the border,
- every paddle clear of its own snake's paddles older than the previous two (no loops),

so **the label is the connectivity of the image**: the two markers lie in the same 8-connected component of the
lit pixels iff the label is 1 (checked by an independent flood fill in the tests). A candidate paddle that breaks a
rule is redrawn (``CANDIDATES`` directions at once, from the turning law); a target snake that is stuck takes back
its last paddle (at most ``BACKTRACKS × contour_length`` times per image); an image whose target snakes still cannot
be completed is drawn again from scratch (about 3 tries per image at the defaults).

Speed: positions live on a 1/``QUANT`` = 1/4-pixel grid and directions on ``DIRECTIONS`` = 120 steps (3°), so every
paddle and disc is a lookup in a table drawn once per geometry (~0.1 s); generation is then about 100 images/s on
one core at the defaults (a 20,000-image training pool: ~3 minutes, once, then read from the cache in
milliseconds).

Differences from the original, on purpose: the original leaves a gap of about two margins between paddles and keeps
snakes one margin apart, so at 32×32 its snakes are dotted lines that connectivity of pixels does not follow; here
the gap is one ``paddle_margin`` and footprints must touch, so that the label can be read off the pixels (and
tested). Its single-paddle distractors are off (the ``curv_*`` data sets have ``use_single_paddles=False``).

Parameters (LRA's Pathfinder32 overrides in ``lra_benchmarks/data/pathfinder.py``, with their meaning here; lengths
in pixels of the output image):

==================== ======= =========================================================================================
option               default meaning here
==================== ======= =========================================================================================
image_size           32      side S of the image; T = S² tokens
contour_length       14      paddles per target snake (LRA: 14 = "hard")
distractor_length    None    paddles per distractor; ``None`` = ``contour_length // 3`` (LRA)
num_distractors      None    distractor snakes; ``None`` = ``20 // distractor_length`` (LRA)
paddle_length        2.0     length of a paddle
paddle_margin        1.0     gap between consecutive paddles of a snake
paddle_thickness     0.5     line width
marker_radius        1.5     marker disc radius
seed_distance        7.0     distance between the target snakes' origins; least origin–terminal distance
continuity           1.0     straightness: turns up to 90°/continuity, weighted cos²
antialias_scale      2       oversampling factor of the canvas
==================== ======= =========================================================================================

Fixed: ``PADDING`` = 1 pixel; paddle intensity 0.75 (LRA's ``paddle_contrast``: paddle pixels are at most 191),
marker intensity 1.0 (255 at a marker's centre). In the original, LRA's ``snake_contrast_list=[2]`` multiplies the
paddle contrast, and its PNG export then rescales each image to its own range (as far as we can tell from reading
it); we do not reproduce that export and keep the markers the brightest objects.

Splits: each split is a pool of ``num_train`` / ``num_val`` / ``num_test`` images (defaults 20,000 / 2,000 / 2,000,
CPU-sized; LRA's are 160,000 / 20,000 / 20,000) generated from the split's own stream ``self.rng(split, None)``,
labels alternating 1, 0, 1, 0, ... (exactly balanced for an even pool). ``sample(split, n)`` returns the first
``n`` of the pool; ``sample(split, n, seed=k)`` draws ``n`` distinct images of the pool with ``self.rng(split, k)``.
Pools are cached as ``.npz`` under ``cache_dir()`` (``$LIGHTFORMER_CACHE/tasks`` or ``~/.cache/lightformer/tasks``),
one file per split named by ``GENERATOR_VERSION``, ``self.fingerprint()`` and the split, written atomically
(temporary file, then ``os.replace``).

LRA Table 1, Pathfinder column (test accuracy %, LRA's own images): Transformer 71.40, Local Attention 66.63,
Sparse Transformer 71.71, Longformer 69.71, Linformer 76.34, Reformer 68.50, Sinkhorn 67.45, Synthesizer 69.45,
BigBird 74.87, Linear Transformer 75.30, Performer 77.05. Our images follow the same recipe but are not LRA's,
so these numbers are a reference, not a target.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import pathlib
import warnings
import zipfile
from dataclasses import dataclass, field

import numpy as np
import torch

from ._cache import atomic_savez, cache_dir
from .base import TASKS, ClassificationTask, TaskConfig, check_int
from .image import ascii_image

#: bumped whenever the images generated for given options change (it names the cache files)
GENERATOR_VERSION = 1
PADDING = 1
PADDLE_CONTRAST = 0.75
MARKER_CONTRAST = 1.0
#: fine-canvas intensities below this are dropped (so that every footprint pixel is > 0 after quantisation)
FLOOR = 0.05
#: positions live on a grid of 1/QUANT pixel and directions on DIRECTIONS steps of the circle, so that every
#: paddle and disc is a lookup in a table drawn once (invisible at the image's resolution)
QUANT, DIRECTIONS = 4, 120
#: candidate directions tried at once for a new paddle, and rounds of them before a snake is stuck
CANDIDATES, ROUNDS = 8, 2
#: tries at starting a distractor (a random point each), and at placing it, before it is left out
START_TRIALS, SNAKE_TRIALS = 8, 4
#: paddles a target snake may take back, per paddle of ``contour_length``, before the image is drawn again
BACKTRACKS = 2
#: images drawn in a row without success before the options are declared impossible
MAX_ATTEMPTS = 1000


def _dilate(cells: np.ndarray) -> np.ndarray:
    """8-neighbourhood dilation of a bool array ``[..., h, w]`` (same shape; nothing enters from outside)."""
    out = cells.copy()
    out[..., 1:, :] |= cells[..., :-1, :]
    out[..., :-1, :] |= cells[..., 1:, :]
    rows = out.copy()
    out[..., :, 1:] |= rows[..., :, :-1]
    out[..., :, :-1] |= rows[..., :, 1:]
    return out


def _stroke(ys: np.ndarray, xs: np.ndarray, p0: np.ndarray, p1: np.ndarray, half_width: float, scale: int,
            contrast: float) -> np.ndarray:
    """Antialiased strokes ``p0[k] -> p1[k]`` (``[K, 2]`` as (row, col), pixels; a disc when ``p0 == p1``)
    sampled at fine-pixel centres ``ys [n]`` × ``xs [n]``: intensities ``[K, n, n]`` with a soft edge one fine
    pixel wide, values below ``FLOOR`` dropped."""
    vy, vx = (p1 - p0)[:, 0, None, None], (p1 - p0)[:, 1, None, None]  # [K, 1, 1]
    wy = ys[None, :, None] - p0[:, 0, None, None]  # [K, n, 1]
    wx = xs[None, None, :] - p0[:, 1, None, None]  # [K, 1, n]
    t = np.clip((wy * vy + wx * vx) / np.maximum(vy * vy + vx * vx, 1e-12), 0.0, 1.0)  # [K, n, n]
    raw = np.clip(scale * (half_width - np.hypot(wy - t * vy, wx - t * vx)) + 0.5, 0.0, 1.0)
    return np.where(raw >= FLOOR, raw * contrast, 0.0).astype(np.float32)


@dataclass(frozen=True)
class _Tables:
    """Every paddle and disc the generator can draw, on a box of ``B × B`` cells around the cell of its anchor
    (the tip it grows from, or the disc centre), by the anchor's sub-pixel offset ``(fr, fc)`` in ``0..QUANT-1``
    and the direction ``a`` in ``0..DIRECTIONS-1``.

    Attributes:
        R, B: box radius and side in cells (one empty ring left, so dilation inside the box is exact).
        paddle_fine: ``[Q, Q, D, B·A, B·A]`` float32 intensities; ``paddle_cells``/``paddle_dil``: ``[Q, Q, D, B,
            B]`` bool footprint and its dilation; ``step``: ``[D, 2]`` int, anchor -> far end in 1/Q pixels.
        disc_fine, disc_cells, disc_dil: the same for a marker disc centred on the anchor (no direction).
    """

    R: int
    B: int
    paddle_fine: np.ndarray
    paddle_cells: np.ndarray
    paddle_dil: np.ndarray
    step: np.ndarray
    disc_fine: np.ndarray
    disc_cells: np.ndarray
    disc_dil: np.ndarray


@functools.lru_cache(maxsize=8)
def _tables(scale: int, length: float, gap: float, width: float, radius: float) -> _Tables:
    Q, D, A = QUANT, DIRECTIONS, scale
    R = math.ceil(gap + length + max(width / 2, radius) + 1.0 / A) + 1
    B = 2 * R + 1
    n = B * A
    centres = (np.arange(n) + 0.5) / A  # fine-pixel centres in box coordinates, pixels
    angles = 2 * np.pi * np.arange(D) / D
    u = np.stack([np.sin(angles), np.cos(angles)], axis=1)  # [D, 2] (row, col)
    step = np.rint((gap + length) * Q * u).astype(np.int64)
    paddle_fine = np.zeros((Q, Q, D, n, n), dtype=np.float32)
    disc_fine = np.zeros((Q, Q, n, n), dtype=np.float32)
    for fr in range(Q):
        for fc in range(Q):
            anchor = np.array([R + fr / Q, R + fc / Q])
            p0 = anchor + gap * u
            p1 = anchor + step / Q
            paddle_fine[fr, fc] = _stroke(centres, centres, p0, p1, width / 2, A, PADDLE_CONTRAST)
            disc_fine[fr, fc] = _stroke(centres, centres, anchor[None], anchor[None], radius, A, MARKER_CONTRAST)[0]

    def cells_of(fine: np.ndarray) -> np.ndarray:
        return fine.reshape(fine.shape[:-2] + (B, A, B, A)).max(axis=(-3, -1)) > 0

    paddle_cells, disc_cells = cells_of(paddle_fine), cells_of(disc_fine)
    assert not (paddle_cells[..., 0, :].any() or paddle_cells[..., -1, :].any() or paddle_cells[..., 0].any()
                or paddle_cells[..., -1].any()), "a footprint reaches its box edge"
    return _Tables(R, B, paddle_fine, paddle_cells, _dilate(paddle_cells), step, disc_fine, disc_cells,
                   _dilate(disc_cells))


@dataclass
class _Patch:
    """One drawn object: the box origin ``(r0, c0)`` on the margin-extended cell grid and its table entries
    (``fine [B·A, B·A]`` float32, ``cells``/``dil [B, B]`` bool; views into ``_Tables``)."""

    r0: int
    c0: int
    fine: np.ndarray
    cells: np.ndarray
    dil: np.ndarray


@dataclass
class _Snake:
    """A snake being grown. ``dil``: its dilated footprint, marker discs and reservations included (what other
    snakes may not touch); ``avoid``: dilated footprint of its paddles older than the last two; ``near``: the last
    paddle's dilated footprint (what the next one must touch). Positions in 1/QUANT pixels."""

    dil: np.ndarray
    avoid: np.ndarray
    near: np.ndarray
    paddles: list[_Patch] = field(default_factory=list)
    discs: list[_Patch] = field(default_factory=list)  # origin, then terminal (target snakes)
    ends: list[np.ndarray] = field(default_factory=list)  # origin, then terminal
    tips: list[np.ndarray] = field(default_factory=list)  # start, then the far end of each paddle
    angles: list[int] = field(default_factory=list)  # direction index of each paddle


class PathfinderGenerator:
    """Draws Pathfinder images (see the module docstring for the rules and the parameters).

    Args:
        image_size, contour_length, distractor_length, num_distractors, paddle_length, paddle_margin,
        paddle_thickness, marker_radius, seed_distance, continuity, antialias_scale: as in ``PathfinderConfig``
        (``distractor_length`` and ``num_distractors`` resolved to ints).
    """

    def __init__(self, *, image_size: int, contour_length: int, distractor_length: int, num_distractors: int,
                 paddle_length: float, paddle_margin: float, paddle_thickness: float, marker_radius: float,
                 seed_distance: float, continuity: float, antialias_scale: int) -> None:
        self.S, self.A = image_size, antialias_scale
        self.contour_length, self.distractor_length = contour_length, distractor_length
        self.num_distractors = num_distractors
        self.seed_distance, self.continuity = seed_distance, continuity
        self.T = _tables(antialias_scale, paddle_length, paddle_margin, paddle_thickness, marker_radius)
        self.R, self.B = self.T.R, self.T.B
        self.M = self.R + 1  # always-blocked margin around the image: no box leaves the grid
        self.G = self.S + 2 * self.M
        self.border = np.ones((self.G, self.G), dtype=bool)
        inner = slice(self.M + PADDING, self.M + self.S - PADDING)
        self.border[inner, inner] = False
        # the turning law on the direction grid: steps Δ with weight cos²(continuity·Δ), |continuity·Δ| <= π/2
        half = int(DIRECTIONS / 4 / continuity)
        self.turn_steps = np.arange(-half, half + 1)
        weights = np.cos(np.clip(continuity * self.turn_steps * 2 * np.pi / DIRECTIONS, -np.pi / 2, np.pi / 2)) ** 2
        self.turn_cdf = np.cumsum(weights) / weights.sum()
        self.turn_cdf[-1] = 1.0
        self.attempts = 0  # target pairs started (for the rejection rate)
        self.distractors_drawn = 0  # distractors placed (some may be left out in a crowded image)

    # -- geometry ------------------------------------------------------------------------------------------------
    def _origin(self, q: np.ndarray) -> tuple[int, int, int, int]:
        """Box origin on the extended grid and sub-pixel offset of the anchor ``q`` (1/Q pixels)."""
        cr, fr = divmod(int(q[0]), QUANT)
        cc, fc = divmod(int(q[1]), QUANT)
        return cr + self.M - self.R, cc + self.M - self.R, fr, fc

    def _box(self, grid: np.ndarray, r0: int, c0: int) -> np.ndarray:
        return grid[r0:r0 + self.B, c0:c0 + self.B]

    def _disc(self, q: np.ndarray) -> _Patch:
        r0, c0, fr, fc = self._origin(q)
        T = self.T
        return _Patch(r0, c0, T.disc_fine[fr, fc], T.disc_cells[fr, fc], T.disc_dil[fr, fc])

    def _turns(self, rng: np.random.Generator, k: int) -> np.ndarray:
        """``k`` changes of direction, in direction steps, with probability ∝ cos²(continuity·Δ) for
        |continuity·Δ| ≤ π/2 (the steps' table is built once)."""
        return self.turn_steps[np.searchsorted(self.turn_cdf, rng.random(k), side="right")]

    # -- snakes --------------------------------------------------------------------------------------------------
    def _new_snake(self) -> _Snake:
        z = np.zeros((self.G, self.G), dtype=bool)
        return _Snake(dil=z, avoid=z.copy(), near=z.copy())

    def _add_disc(self, snake: _Snake, disc: _Patch, q: np.ndarray) -> None:
        self._box(snake.dil, disc.r0, disc.c0)[...] |= disc.dil
        snake.discs.append(disc)
        snake.ends.append(q)

    def _add_paddle(self, snake: _Snake, r0: int, c0: int, fr: int, fc: int, a: int) -> None:
        T = self.T
        patch = _Patch(r0, c0, T.paddle_fine[fr, fc, a], T.paddle_cells[fr, fc, a], T.paddle_dil[fr, fc, a])
        if len(snake.paddles) >= 2:  # what follows may touch the last two paddles only
            old = snake.paddles[-2]
            self._box(snake.avoid, old.r0, old.c0)[...] |= old.dil
        self._box(snake.dil, r0, c0)[...] |= patch.dil
        snake.near[...] = False
        self._box(snake.near, r0, c0)[...] = patch.dil
        snake.paddles.append(patch)
        snake.tips.append(snake.tips[-1] + T.step[a])
        snake.angles.append(a)

    def _pop(self, snake: _Snake) -> None:
        """Take back the last paddle of a snake (never its first)."""
        snake.paddles.pop()
        snake.tips.pop()
        snake.angles.pop()
        for grid in (snake.dil, snake.avoid, snake.near):
            grid[...] = False
        for patch in snake.discs + snake.paddles:
            self._box(snake.dil, patch.r0, patch.c0)[...] |= patch.dil
        for patch in snake.paddles[:-2]:
            self._box(snake.avoid, patch.r0, patch.c0)[...] |= patch.dil
        last = snake.paddles[-1]
        self._box(snake.near, last.r0, last.c0)[...] = last.dil

    def _seed(self, rng: np.random.Generator, snake: _Snake, q: np.ndarray, blocked: np.ndarray,
              marker: bool) -> bool:
        """The first paddle of ``snake`` from the point ``q`` (1/Q pixels) in a random direction, clear of
        ``blocked``; with ``marker``, a disc reserved at ``q`` too, which the paddle touches. False when none
        fits."""
        r0, c0, fr, fc = self._origin(q)
        box = self._box(blocked, r0, c0)
        disc = self._disc(q) if marker else None
        if disc is not None and (disc.cells & box).any():
            return False
        a = rng.integers(DIRECTIONS, size=CANDIDATES)
        cells = self.T.paddle_cells[fr, fc, a]  # [K, B, B]
        ok = ~(cells & box).any(axis=(1, 2))
        if disc is not None:
            ok &= (cells & disc.dil).any(axis=(1, 2))
        if not ok.any():
            return False
        snake.tips.append(q)
        if disc is not None:
            self._add_disc(snake, disc, q)
        else:
            snake.ends.append(q)
        self._add_paddle(snake, r0, c0, fr, fc, int(a[int(np.argmax(ok))]))
        return True

    def _extend(self, rng: np.random.Generator, snake: _Snake, blocked: np.ndarray, marker: bool) -> bool:
        """One more paddle at the tip of ``snake``, touching the previous paddle and clear of ``blocked`` and of
        the snake's older paddles; with ``marker``, a disc reserved at its far end too. False when none fits."""
        tip = snake.tips[-1]
        r0, c0, fr, fc = self._origin(tip)
        bad = self._box(blocked, r0, c0) | self._box(snake.avoid, r0, c0)
        near = self._box(snake.near, r0, c0)
        for _ in range(ROUNDS):
            a = (snake.angles[-1] + self._turns(rng, CANDIDATES)) % DIRECTIONS
            cells = self.T.paddle_cells[fr, fc, a]  # [K, B, B]
            ok = ~(cells & bad).any(axis=(1, 2)) & (cells & near).any(axis=(1, 2))
            for k in np.flatnonzero(ok):
                end = tip + self.T.step[a[k]]
                disc = self._disc(end) if marker else None
                if disc is not None and (disc.cells & self._box(blocked, disc.r0, disc.c0)).any():
                    continue
                self._add_paddle(snake, r0, c0, fr, fc, int(a[k]))
                if disc is not None:
                    self._add_disc(snake, disc, end)
                return True
        return False

    def _targets(self, rng: np.random.Generator) -> tuple[_Snake, _Snake] | None:
        S, sd, Q = self.S, self.seed_distance, QUANT
        lo = min(2.0 * sd, S / 2 - 1.0)  # the first origin near the centre, as the original
        o1 = np.floor(rng.uniform(lo, S - lo, size=2) * Q).astype(np.int64)
        phi = rng.uniform(0.0, 2.0 * math.pi)
        o2 = np.floor(o1 + sd * Q * np.array([math.sin(phi), math.cos(phi)])).astype(np.int64)
        if not (0 <= o2.min() and o2.max() < S * Q):
            return None
        a, b = self._new_snake(), self._new_snake()
        if not self._seed(rng, a, o1, self.border, True) or not self._seed(rng, b, o2, self.border | a.dil, True):
            return None
        # a paddle of each in turn; a snake that is stuck takes back its last paddle (a bounded number of times)
        backtracks = BACKTRACKS * self.contour_length
        while len(a.paddles) < self.contour_length or len(b.paddles) < self.contour_length:
            snake, other = (a, b) if len(a.paddles) <= len(b.paddles) else (b, a)
            if self._extend(rng, snake, self.border | other.dil, len(snake.paddles) == self.contour_length - 1):
                continue
            if backtracks == 0 or len(snake.paddles) == 1:
                return None
            backtracks -= 1
            self._pop(snake)
        if self.contour_length == 1:  # a single paddle: its far end carries the terminal disc
            for snake, other in ((a, b), (b, a)):
                disc = self._disc(snake.tips[-1])
                if (disc.cells & self._box(self.border | other.dil, disc.r0, disc.c0)).any():
                    return None
                self._add_disc(snake, disc, snake.tips[-1])
        if min(math.dist(s.ends[0], t.ends[1]) for s in (a, b) for t in (a, b)) < sd * Q:
            return None
        return a, b

    def _distractor(self, rng: np.random.Generator, blocked: np.ndarray) -> _Snake | None:
        top = (self.S - PADDING) * QUANT
        for _ in range(SNAKE_TRIALS):
            snake = self._new_snake()
            for _ in range(START_TRIALS):
                if self._seed(rng, snake, rng.integers(PADDING * QUANT, top, size=2), blocked, False):
                    break
            else:
                return None  # no room left to start one
            if all(self._extend(rng, snake, blocked, False) for _ in range(1, self.distractor_length)):
                return snake
        return None

    # -- images -------------------------------------------------------------------------------------------------
    def render_example(self, rng: np.random.Generator, label: int | None = None) -> tuple[np.ndarray, int, np.ndarray]:
        """One image: ``(image uint8 [S, S], label int (1 = connected), marker_centres float64 [2, 2])``; the marker
        centres as (row, column) in pixels (pixel ``(r, c)`` covers ``[r, r+1) × [c, c+1)``), the origin marker
        first. ``label=None`` draws it (fair coin). Deterministic given the state of ``rng``.

        Raises:
            ValueError: ``label`` not 0, 1 or None.
            RuntimeError: ``MAX_ATTEMPTS`` images in a row could not be completed (the options leave no room).
        """
        if label is None:
            label = int(rng.integers(2))
        if label not in (0, 1):
            raise ValueError(f"label must be 0, 1 or None, got {label!r}")
        for _ in range(MAX_ATTEMPTS):
            self.attempts += 1
            targets = self._targets(rng)
            if targets is not None:
                break
        else:
            raise RuntimeError(f"pathfinder: no image completed in {MAX_ATTEMPTS} attempts; the target snakes do not "
                               "fit with these options (lower contour_length or seed_distance, raise image_size)")
        blocked = self.border | targets[0].dil | targets[1].dil
        snakes = list(targets)
        for _ in range(self.num_distractors):
            snake = self._distractor(rng, blocked)
            if snake is not None:
                blocked |= snake.dil
                snakes.append(snake)
                self.distractors_drawn += 1
        # the label only chooses the markers: an origin, and the terminal of the same snake or of the other
        i = int(rng.integers(2))
        j = i if label == 1 else 1 - i
        marked = [targets[i].discs[0], targets[j].discs[1]]
        A, M, S = self.A, self.M, self.S
        fine = np.zeros((self.G * A, self.G * A), dtype=np.float32)
        n = self.B * A
        for p in [p for s in snakes for p in s.paddles] + marked:
            window = fine[p.r0 * A:p.r0 * A + n, p.c0 * A:p.c0 * A + n]
            np.maximum(window, p.fine, out=window)
        core = fine[M * A:(M + S) * A, M * A:(M + S) * A].astype(np.float64)
        image = np.clip(np.rint(core.reshape(S, A, S, A).mean(axis=(1, 3)) * 255.0), 0, 255).astype(np.uint8)
        centres = np.stack([targets[i].ends[0], targets[j].ends[1]]) / QUANT
        return image, label, centres

    def generate(self, rng: np.random.Generator, n: int, *, progress: bool = False) -> tuple[np.ndarray, ...]:
        """``n`` images with labels alternating 1, 0, 1, ...: ``(images uint8 [n, S, S], labels int64 [n],
        markers float32 [n, 2, 2])``."""
        images = np.zeros((n, self.S, self.S), dtype=np.uint8)
        labels = np.zeros(n, dtype=np.int64)
        markers = np.zeros((n, 2, 2), dtype=np.float32)
        steps = range(n)
        if progress:
            from tqdm import tqdm

            steps = tqdm(steps, desc="pathfinder images", unit="img", leave=False, mininterval=2.0)
        for i in steps:
            images[i], labels[i], markers[i] = self.render_example(rng, 1 - i % 2)
        return images, labels, markers


@dataclass(frozen=True)
class PathfinderConfig(TaskConfig):
    """Options of the ``pathfinder`` task (see the module docstring's table; lengths in pixels)."""

    image_size: int = 32
    contour_length: int = 14
    distractor_length: int | None = None
    num_distractors: int | None = None
    paddle_length: float = 2.0
    paddle_margin: float = 1.0
    paddle_thickness: float = 0.5
    marker_radius: float = 1.5
    seed_distance: float = 7.0
    continuity: float = 1.0
    antialias_scale: int = 2
    num_train: int = 20000
    num_val: int = 2000
    num_test: int = 2000

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int(self, "image_size", low=8)
        check_int(self, "contour_length", "antialias_scale", "num_train", "num_val", "num_test")
        if self.distractor_length is not None:
            check_int(self, "distractor_length")
        if self.num_distractors is not None:
            check_int(self, "num_distractors", low=0)
        for name in ("paddle_length", "paddle_thickness", "marker_radius", "continuity"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or not math.isfinite(v):
                raise ValueError(f"{name} must be a positive number, got {v!r}")
        for name in ("paddle_margin", "seed_distance"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 or not math.isfinite(v):
                raise ValueError(f"{name} must be a number >= 0, got {v!r}")
        if self.seed_distance >= self.image_size:
            raise ValueError(f"seed_distance must be smaller than image_size ({self.image_size}), "
                             f"got {self.seed_distance}")

    @property
    def resolved_distractor_length(self) -> int:
        return self.distractor_length if self.distractor_length is not None else max(1, self.contour_length // 3)

    @property
    def resolved_num_distractors(self) -> int:
        if self.num_distractors is not None:
            return self.num_distractors
        return 20 // self.resolved_distractor_length


@TASKS.register("pathfinder")
class Pathfinder(ClassificationTask):
    """Pathfinder (see the module docstring). ``sample`` returns ``(inputs [n, S²] int64 in 0..255 (row-major
    pixels), key_padding_mask [n, S²] bool (all True), labels [n] int64: 1 = connected, 0 = disconnected)``.

    Raises (from ``sample``):
        ValueError: ``n`` larger than the split's pool.
        RuntimeError: the options leave no room to place the snakes.
    """

    config_class = PathfinderConfig
    label_names = ("disconnected", "connected")
    example_options = {"image_size": 16, "contour_length": 5, "num_distractors": 2, "seed_distance": 5.0,
                       "marker_radius": 1.0, "num_train": 24, "num_val": 8, "num_test": 8}

    def __init__(self, config: PathfinderConfig) -> None:
        super().__init__(config)
        self._pools: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    @property
    def seq_len(self) -> int:
        return self.config.image_size ** 2

    @property
    def vocab(self) -> tuple[str, ...]:
        return tuple(str(i) for i in range(256))

    def generator(self) -> PathfinderGenerator:
        c = self.config
        return PathfinderGenerator(
            image_size=c.image_size, contour_length=c.contour_length, distractor_length=c.resolved_distractor_length,
            num_distractors=c.resolved_num_distractors, paddle_length=float(c.paddle_length),
            paddle_margin=float(c.paddle_margin), paddle_thickness=float(c.paddle_thickness),
            marker_radius=float(c.marker_radius), seed_distance=float(c.seed_distance),
            continuity=float(c.continuity), antialias_scale=c.antialias_scale)

    def pool_size(self, split: str) -> int:
        return getattr(self.config, "num_" + split)

    # -- pools ---------------------------------------------------------------------------------------------------
    def cache_path(self, split: str) -> pathlib.Path:
        return cache_dir() / f"pathfinder-v{GENERATOR_VERSION}-{self.fingerprint()}-{split}.npz"

    def _meta(self, split: str) -> str:
        return json.dumps({"version": GENERATOR_VERSION, "split": split, **dataclasses.asdict(self.config)},
                          sort_keys=True)

    def pool(self, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The split's pool ``(images uint8 [N, S, S], labels int64 [N], markers float32 [N, 2, 2])`` from
        memory, the disk cache or the generator (in that order; a generated pool is written to the cache)."""
        if split not in self._pools:
            path = self.cache_path(split)
            pool = self._load(path, split) if path.exists() else None
            if pool is None:
                n = self.pool_size(split)
                pool = self.generator().generate(self.rng(split, None), n, progress=n >= 2000)
                self._store(path, split, pool)
            self._pools[split] = pool
        return self._pools[split]

    def _load(self, path: pathlib.Path, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        try:
            with np.load(path) as data:
                if str(data["meta"]) != self._meta(split):
                    return None
                pool = data["images"], data["labels"], data["markers"]
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as e:  # damaged: regenerate it
            warnings.warn(f"ignoring unreadable Pathfinder cache {path}: {e}", stacklevel=3)
            return None
        S, n = self.config.image_size, self.pool_size(split)
        if pool[0].shape != (n, S, S) or pool[1].shape != (n,) or pool[2].shape != (n, 2, 2):
            return None
        return pool

    def _store(self, path: pathlib.Path, split: str, pool: tuple[np.ndarray, ...]) -> None:
        try:
            atomic_savez(path, meta=np.array(self._meta(split)), images=pool[0], labels=pool[1], markers=pool[2])
        except OSError as e:  # a read-only home: work from memory
            warnings.warn(f"could not write the Pathfinder cache {path}: {e}", stacklevel=3)

    # -- batches -------------------------------------------------------------------------------------------------
    def _sample(self, split: str, n: int, seed: int | None) -> tuple:
        images, labels, _ = self.pool(split)
        if n > len(images):
            raise ValueError(f"n={n} is larger than the {split} pool ({len(images)} images; raise num_{split})")
        idx = np.arange(n) if seed is None else self.rng(split, seed).choice(len(images), size=n, replace=False)
        inputs = torch.from_numpy(images[idx].reshape(n, self.seq_len).astype(np.int64))
        return inputs, torch.ones(n, self.seq_len, dtype=torch.bool), torch.from_numpy(labels[idx].astype(np.int64))

    def format_example(self, batch: tuple, i: int) -> str:
        inputs, _, labels = batch
        label = int(labels[i])
        S = self.config.image_size
        return f"label  : {label} = {self.label_names[label]}\nimage  : {S}x{S}\n" + \
            ascii_image(inputs[i].reshape(S, S).numpy())
