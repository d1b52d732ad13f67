"""Sequential Fashion-MNIST: an image classified from its pixels read one by one, as LRA's *Image* task.

Source: Long Range Arena (Tay et al., "Long Range Arena: A Benchmark for Efficient Transformers", ICLR 2021,
task "Image classification on sequences of pixels"). LRA flattens **grayscale CIFAR-10** (32×32) into 1,024
tokens of 8-bit intensity (vocabulary 256, no convolutional stem allowed), 10 classes, splits ``train[:90%]`` /
``train[90%:]`` / ``test`` (45k / 5k / 10k). CIFAR-10 cannot be had offline here, so this task uses
**Fashion-MNIST** instead (Xiao, Rasul & Vollgraf 2017, "Fashion-MNIST: a Novel Image Dataset for Benchmarking
Machine Learning Algorithms"; Zalando, MIT/Expat licence), which Debian ships as the package
``dataset-fashion-mnist``: 28×28 grayscale images, **784 tokens** of intensity 0..255, 10 balanced classes. The
numbers are therefore *not* comparable with LRA's; they answer the same question (long-range mixing of raw pixel
tokens) on a different image set.

Data: the four standard gzipped IDX files (``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz``) under ``data_dir``, by default where the Debian
package installs them, ``/usr/share/datasets/fashion-mnist/``. They are parsed here (gzip + numpy): header = two
zero bytes, a type code (0x08 = uint8, ...), the number of dimensions, then each dimension as a big-endian int32.

Splits (LRA's 90/10 split of the training set, by position; the task seed does not move it):

- ``train``: the first 54,000 of the 60,000 training images (``60000 - val_size``),
- ``val``: the last ``val_size`` = 6,000 training images,
- ``test``: the 10,000 ``t10k`` images.

``sample(split, n)`` (``seed=None``) is the first ``n`` images of the split in file order (the evaluation set);
``sample(split, n, seed=k)`` draws ``n`` distinct images of the split with ``self.rng(split, k)``.
``downsample=f`` (default 1) averages ``f×f`` pixel blocks first (``f=2``: 14×14 = 196 tokens), for a cheaper
variant on a CPU.

LRA Table 1, Image column (test accuracy %, grayscale CIFAR-10, for reference only): Transformer 42.44, Local
Attention 41.46, Sparse Transformer 44.24, Longformer 42.22, Linformer 38.56, Reformer 38.07, Sinkhorn 41.23,
Synthesizer 41.61, BigBird 40.83, Linear Transformer 42.34, Performer 42.77.
"""

from __future__ import annotations

import functools
import gzip
import os
import pathlib
from dataclasses import dataclass

import numpy as np
import torch

from .base import TASKS, ClassificationTask, TaskConfig, check_int

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
#: Fashion-MNIST's class names, index = label (from the data set's README).
FASHION_LABELS = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                  "Ankle boot")
SIDE = 28
#: IDX type codes -> numpy dtypes (big-endian where it matters).
IDX_TYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
             0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
#: intensity ramp for ASCII art, dark to bright
RAMP = " .:-=+*#%@"


def parse_idx(raw: bytes, *, name: str = "IDX data") -> np.ndarray:
    """Decode the bytes of one (uncompressed) IDX file into an array of its shape and dtype.

    Raises:
        ValueError: a malformed header (bad magic, unknown type code) or a payload whose size does not match the
            dimensions; the message names ``name``.
    """
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{name}: not an IDX file (the first two bytes must be zero, got {raw[:4]!r})")
    code, ndim = raw[2], raw[3]
    if code not in IDX_TYPES:
        raise ValueError(f"{name}: unknown IDX type code 0x{code:02x}")
    if ndim == 0 or len(raw) < 4 + 4 * ndim:
        raise ValueError(f"{name}: IDX header truncated ({ndim} dimensions, {len(raw)} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_TYPES[code]
    expected = int(np.prod(dims)) * dtype.itemsize
    payload = len(raw) - 4 - 4 * ndim
    if payload != expected:
        raise ValueError(f"{name}: IDX dimensions {dims} need {expected} bytes of data, the file has {payload}")
    data = np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim).reshape(dims)
    return data.astype(dtype.newbyteorder("="), copy=False)


def read_idx(path: pathlib.Path) -> np.ndarray:
    """``parse_idx`` of a file, gunzipped when its name ends in ``.gz``."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    return parse_idx(raw, name=str(path))


def _missing(path: pathlib.Path) -> FileNotFoundError:
    return FileNotFoundError(
        f"Fashion-MNIST file {str(path)!r} not found. Install Debian's package "
        f"(`apt-get install dataset-fashion-mnist`, files under {DEFAULT_DIR}) or pass data_dir=DIR holding "
        f"{', '.join(FILES['train'] + FILES['test'])}")


@functools.lru_cache(maxsize=4)
def _load_cached(data_dir: str, part: str, stamp: tuple) -> tuple[np.ndarray, np.ndarray]:
    root = pathlib.Path(data_dir)
    image_file, label_file = (root / f for f in FILES[part])
    images, labels = read_idx(image_file), read_idx(label_file)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"{image_file}: expected uint8 images [N, H, W], got {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise ValueError(f"{label_file}: expected uint8 labels [N], got {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise ValueError(f"{image_file} has {len(images)} images but {label_file} has {len(labels)} labels")
    if len(labels) and int(labels.max()) >= len(FASHION_LABELS):
        raise ValueError(f"{label_file}: label {int(labels.max())} outside 0..{len(FASHION_LABELS) - 1}")
    return images, labels


def load_fashion_mnist(data_dir: str | os.PathLike, part: str) -> tuple[np.ndarray, np.ndarray]:
    """The ``"train"`` (60k) or ``"test"`` (10k) part: ``(images uint8 [N, H, W], labels uint8 [N])``.

    Cached per process (keyed by the files' size and modification time).

    Raises:
        FileNotFoundError: a file is absent (the message says how to install it).
        ValueError: a malformed file, or images and labels that do not match.
    """
    if part not in FILES:
        raise ValueError(f"part must be one of {tuple(FILES)}, got {part!r}")
    root = pathlib.Path(data_dir)
    stamp = []
    for f in FILES[part]:
        path = root / f
        if not path.is_file():
            raise _missing(path)
        st = path.stat()
        stamp.append((st.st_size, st.st_mtime_ns))
    return _load_cached(str(root.resolve()), part, tuple(stamp))


def ascii_image(pixels: np.ndarray, *, high: int = 255) -> str:
    """An image ``[H, W]`` of intensities ``0..high`` as ASCII art (each pixel two characters wide)."""
    pixels = np.asarray(pixels, dtype=np.float64)
    idx = np.clip(np.rint(pixels / high * (len(RAMP) - 1)), 0, len(RAMP) - 1).astype(int)
    return "\n".join("".join(RAMP[i] * 2 for i in row) for row in idx)


@dataclass(frozen=True)
class ImageConfig(TaskConfig):
    """Options of the ``image`` task.

    Attributes:
        data_dir: folder of the four gzipped IDX files (default: Debian's ``dataset-fashion-mnist``).
        val_size: how many of the last training images form the validation split (LRA: 10%).
        downsample: average ``downsample × downsample`` pixel blocks (a divisor of 28: 1, 2, 4, 7, 14).
    """

    data_dir: str = DEFAULT_DIR
    val_size: int = 6000
    downsample: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.data_dir, (str, os.PathLike)) or not str(self.data_dir):
            raise ValueError(f"data_dir must be a non-empty path, got {self.data_dir!r}")
        check_int(self, "val_size", "downsample")
        if self.val_size >= 60000:
            raise ValueError(f"val_size must be < 60000 (the training images), got {self.val_size}")
        if SIDE % self.downsample:
            raise ValueError(f"downsample must divide {SIDE} (1, 2, 4, 7, 14, 28), got {self.downsample}")


@TASKS.register("image")
class SequentialImage(ClassificationTask):
    """Sequential Fashion-MNIST (see the module docstring). ``sample`` returns ``(inputs [n, T] int64 in 0..255,
    key_padding_mask [n, T] bool (all True), labels [n] int64 in 0..9)`` with ``T = (28 / downsample)²``, pixels in
    row-major order.

    Raises (from ``sample``):
        FileNotFoundError: the data files are absent.
        ValueError: ``n`` larger than the split.
    """

    config_class = ImageConfig
    label_names = FASHION_LABELS
    example_options = {"downsample": 2}

    @property
    def side(self) -> int:
        return SIDE // self.config.downsample

    @property
    def seq_len(self) -> int:
        return self.side * self.side

    @property
    def vocab(self) -> tuple[str, ...]:
        return tuple(str(i) for i in range(256))

    def split_data(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """``(images uint8 [N, 28, 28], labels uint8 [N])`` of one split (views, not copies)."""
        if split == "test":
            return load_fashion_mnist(self.config.data_dir, "test")
        images, labels = load_fashion_mnist(self.config.data_dir, "train")
        cut = len(images) - self.config.val_size
        if cut <= 0:
            raise ValueError(f"val_size={self.config.val_size} leaves no training images (of {len(images)})")
        return (images[:cut], labels[:cut]) if split == "train" else (images[cut:], labels[cut:])

    def _sample(self, split: str, n: int, seed: int | None) -> tuple:
        images, labels = self.split_data(split)
        if n > len(images):
            raise ValueError(f"n={n} is larger than the {split} split ({len(images)} images)")
        if seed is None:
            idx = np.arange(n)
        else:
            idx = self.rng(split, seed).choice(len(images), size=n, replace=False)
        x = images[idx]  # [n, 28, 28]
        f = self.config.downsample
        if f > 1:
            x = np.rint(x.reshape(n, self.side, f, self.side, f).mean(axis=(2, 4)))
        inputs = torch.from_numpy(x.reshape(n, self.seq_len).astype(np.int64))
        mask = torch.ones(n, self.seq_len, dtype=torch.bool)
        return inputs, mask, torch.from_numpy(labels[idx].astype(np.int64))

    def format_example(self, batch: tuple, i: int) -> str:
        inputs, _, labels = batch
        label = int(labels[i])
        pixels = inputs[i].reshape(self.side, self.side).numpy()
        return f"label  : {label} = {self.label_names[label]}\nimage  : {self.side}x{self.side}\n" + \
            ascii_image(pixels)
