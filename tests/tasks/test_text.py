"""Corpora, tokenizers, the positional split and batches."""

from __future__ import annotations

import pytest
import torch

from lightformer.tasks.text import ByteTokenizer, CharTokenizer, Corpus, stdlib_files


@pytest.fixture(scope="module")
def stdlib():
    return Corpus.stdlib()


def test_stdlib_corpus_is_real_sorted_and_without_tests(stdlib):
    files = stdlib_files()
    assert files == sorted(files)
    assert not any(part in ("test", "tests", "idle_test", "site-packages") for f in files for part in f.parts[-3:-1])
    assert any(f.name == "argparse.py" for f in files)
    total = len(stdlib.train) + len(stdlib.val)
    assert total > 1_000_000
    assert len(stdlib.train) == int(total * 0.9)
    text = ByteTokenizer().decode(stdlib.train[:2000].tolist())
    assert "import" in text or "def " in text


def test_batches_are_shifted_windows(stdlib):
    g = torch.Generator().manual_seed(0)
    x, y = stdlib.batch("train", 4, 16, g)
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(stdlib.batch("val", 3, 8, g1)[0], stdlib.batch("val", 3, 8, g2)[0])


def test_char_tokenizer_round_trip_and_errors():
    tok = CharTokenizer.fit("hello world")
    assert tok.vocab_size == 8
    assert tok.decode(tok.encode("low")) == "low"
    with pytest.raises(ValueError, match="'z'"):
        tok.encode("z")


def test_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Corpus.from_file(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="tokenizer"):
        Corpus.from_bytes(b"abc" * 10, name="x", tokenizer="word")
    small = Corpus.from_bytes(b"abcdefghij" * 3, name="x", tokenizer="byte")
    with pytest.raises(ValueError, match="block_size"):
        small.batch("val", 1, 10)
    with pytest.raises(ValueError, match="split"):
        small.batch("test", 1, 2)


def test_tinyshakespeare_split_matches_nanogpt(shakespeare_path):
    corpus = Corpus.from_file(shakespeare_path, tokenizer="char")
    assert corpus.tokenizer.vocab_size == 65
    assert len(corpus.train) + len(corpus.val) == 1_115_394
    assert len(corpus.train) == 1_003_854  # nanoGPT's prepare.py: int(n * 0.9)
