"""The ``image`` task (sequential Fashion-MNIST): IDX parsing against files written here, the real data's counts
and ranges (skipped when the Debian package is absent), the clear error when it is absent, determinism."""

from __future__ import annotations

import gzip
import pathlib
import struct

import numpy as np
import pytest
import torch

from lightformer.tasks import create_task
from lightformer.tasks.image import DEFAULT_DIR, FASHION_LABELS, parse_idx

REAL = pathlib.Path(DEFAULT_DIR)
HAVE_REAL = all((REAL / f).is_file() for f in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                                                "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"))
needs_real = pytest.mark.skipif(not HAVE_REAL, reason=f"Fashion-MNIST absent from {DEFAULT_DIR} "
                                                      "(apt-get install dataset-fashion-mnist)")


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file written by hand from the format's definition: 0, 0, type 0x08, ndim, big-endian dims, data."""
    assert array.dtype == np.uint8
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.tobytes()


def write_set(folder: pathlib.Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)))
    (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))


@pytest.fixture
def tiny(tmp_path):
    """60 training and 7 test images with known pixels (image k: pixel (r, c) = (k + 3r + 5c) % 256)."""
    r, c = np.meshgrid(np.arange(28), np.arange(28), indexing="ij")
    train = np.stack([(k + 3 * r + 5 * c) % 256 for k in range(60)]).astype(np.uint8)
    test = np.stack([(200 + k + 3 * r + 5 * c) % 256 for k in range(7)]).astype(np.uint8)
    train_labels = (np.arange(60) * 7 % 10).astype(np.uint8)
    test_labels = np.array([9, 8, 7, 6, 5, 4, 3], dtype=np.uint8)
    write_set(tmp_path, "train", train, train_labels)
    write_set(tmp_path, "t10k", test, test_labels)
    return tmp_path, train, train_labels, test, test_labels


def test_idx_files_round_trip_through_data_dir(tiny):
    folder, train, train_labels, test, test_labels = tiny
    task = create_task("image", data_dir=str(folder), val_size=10)
    x, mask, y = task.sample("train", 50)
    assert x.shape == (50, 784) and x.dtype == torch.int64 and bool(mask.all())
    assert np.array_equal(x.numpy(), train[:50].reshape(50, 784)) and np.array_equal(y.numpy(), train_labels[:50])
    x, _, y = task.sample("val", 10)  # the last val_size training images
    assert np.array_equal(x.numpy(), train[50:].reshape(10, 784)) and np.array_equal(y.numpy(), train_labels[50:])
    x, _, y = task.sample("test", 7)
    assert np.array_equal(x.numpy(), test.reshape(7, 784)) and y.tolist() == [9, 8, 7, 6, 5, 4, 3]
    assert int(x[0, 0]) == 200 and int(x[0, 1]) == 205 and int(x[0, 28]) == 203  # (r, c) = (0,0), (0,1), (1,0)
    with pytest.raises(ValueError, match="larger than the val split"):
        task.sample("val", 11)


def test_seeded_draw_is_distinct_images_of_the_split(tiny):
    folder, train, train_labels, _, _ = tiny
    task = create_task("image", data_dir=str(folder), val_size=10)
    x, _, y = task.sample("train", 20, seed=3)
    rows = {tuple(img.reshape(-1).tolist()): k for k, img in enumerate(train[:50])}
    ks = [rows[tuple(v)] for v in x.tolist()]  # every drawn image is one of the 50 training images ...
    assert len(set(ks)) == 20 and y.tolist() == train_labels[ks].tolist()  # ... distinct, with its own label
    assert torch.equal(x, create_task("image", data_dir=str(folder), val_size=10).sample("train", 20, seed=3)[0])
    assert not torch.equal(x, task.sample("train", 20, seed=4)[0])


def test_downsample_averages_blocks(tiny):
    folder, train, _, _, _ = tiny
    task = create_task("image", data_dir=str(folder), val_size=10, downsample=2)
    assert task.seq_len == 196
    x, _, _ = task.sample("train", 2)
    expected = np.rint(train[1].reshape(14, 2, 14, 2).mean(axis=(1, 3))).reshape(196)
    assert np.array_equal(x[1].numpy(), expected)
    assert int(x[0, 0]) == round((0 + 5 + 3 + 8) / 4)


def test_malformed_idx_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="not an IDX file"):
        parse_idx(b"\x01\x00\x08\x01\x00\x00\x00\x01\x05")
    with pytest.raises(ValueError, match="type code"):
        parse_idx(b"\x00\x00\x07\x01\x00\x00\x00\x01\x05")
    with pytest.raises(ValueError, match=r"need 6 bytes"):
        parse_idx(bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3]))
    assert parse_idx(bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6])).tolist() == [[1, 2, 3], [4, 5, 6]]
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"garbage!"))
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(3, np.uint8))))
    with pytest.raises(ValueError, match="train-images"):
        create_task("image", data_dir=str(tmp_path), val_size=1).sample("train", 1)


def test_absent_data_says_how_to_install(tmp_path):
    task = create_task("image", data_dir=str(tmp_path))  # building is free; reading fails
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist") as err:
        task.sample("train", 1)
    assert "data_dir" in str(err.value)


def test_options_are_checked():
    with pytest.raises(ValueError, match="downsample"):
        create_task("image", downsample=3)
    with pytest.raises(ValueError, match="val_size"):
        create_task("image", val_size=0)
    with pytest.raises(ValueError, match="val_size"):
        create_task("image", val_size=60000)


@needs_real
def test_real_fashion_mnist_counts_balance_and_ranges():
    task = create_task("image")
    train_x, train_y = task.split_data("train")
    val_x, val_y = task.split_data("val")
    test_x, test_y = task.split_data("test")
    assert (len(train_x), len(val_x), len(test_x)) == (54000, 6000, 10000)
    assert train_x.shape[1:] == (28, 28) and train_x.dtype == np.uint8
    all_train = np.concatenate([train_y, val_y])
    assert np.bincount(all_train, minlength=10).tolist() == [6000] * 10
    assert np.bincount(test_y, minlength=10).tolist() == [1000] * 10
    assert np.bincount(val_y, minlength=10).min() >= 500  # the last 6000 are shuffled: every class well present
    assert int(train_x.min()) == 0 and int(train_x.max()) == 255
    assert 60 < float(test_x.mean()) < 90  # mostly dark background (measured: 73.1)
    x, mask, y = task.sample("test", 100)
    assert x.shape == (100, 784) and bool(mask.all()) and 0 <= int(x.min()) and int(x.max()) <= 255
    assert np.array_equal(x.numpy(), test_x[:100].reshape(100, 784)) and torch.equal(y, torch.from_numpy(
        test_y[:100].astype(np.int64)))
    assert task.num_classes == 10 and task.label_names[9] == "Ankle boot" and len(FASHION_LABELS) == 10
    text = task.format_example((x, mask, y), 0)
    assert FASHION_LABELS[int(y[0])] in text and len(text.splitlines()) == 2 + 28


@needs_real
def test_real_data_is_deterministic():
    a, b = create_task("image"), create_task("image")
    assert all(torch.equal(u, v) for u, v in zip(a.sample("train", 16, seed=7), b.sample("train", 16, seed=7)))
    assert all(torch.equal(u, v) for u, v in zip(a.sample("val", 16), b.sample("val", 16)))
    c = create_task("image", seed=1)
    assert not torch.equal(a.sample("train", 16, seed=7)[0], c.sample("train", 16, seed=7)[0])
    assert torch.equal(a.sample("val", 16)[0], c.sample("val", 16)[0])  # the canonical set ignores the task seed
