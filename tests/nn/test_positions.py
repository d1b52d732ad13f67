"""T5's relative position buckets (``nn.positions.t5_bucket``): a table worked out by hand for small distances, the
T5 reference definition (written out below as scalar arithmetic) at large ones, and the scheme's registration."""

from __future__ import annotations

import math

import pytest
import torch

from lightformer.mixers.base import RELATIVE_POSITIONS
from lightformer.nn.positions import RELATIVE, SCHEMES, t5_bucket


def _runs(*runs: tuple[int, int]) -> list[int]:
    """Expand ``(bucket, count)`` runs into a list of buckets."""
    return [bucket for bucket, count in runs for _ in range(count)]


# By hand, T5 defaults (32 buckets, max distance 128). Bidirectional: 16 buckets per direction, distances 0-7 exact,
# then bucket 8 + floor(8·log(d/8)/log(16)) = 8 + floor(2·log2(d/8)): it steps at d = 8·2^(k/2) = 11.3, 16, 22.6,
# 32, 45.3, 64, 90.5, and from 128 on stays at 15; keys after the query add 16.
BIDIRECTIONAL_BY_DISTANCE = list(range(8)) + _runs((8, 4), (9, 4), (10, 7), (11, 9), (12, 14), (13, 18), (14, 27),
                                                    (15, 40))  # distances 0..130
# Causal: all 32 buckets for the past, distances 0-15 exact, then 16 + floor(16·log(d/16)/log(8))
# = 16 + floor(16/3·log2(d/16)): it steps at d = 16·2^(3k/16) = 18.2, 20.7, 23.6, 26.9, 30.6, 34.9 ...
CAUSAL_BY_DISTANCE = list(range(16)) + _runs((16, 3), (17, 2), (18, 3), (19, 3), (20, 4), (21, 4), (22, 2))  # 0..36


def test_bidirectional_by_hand():
    d = len(BIDIRECTIONAL_BY_DISTANCE)
    past = t5_bucket(-torch.arange(d), bidirectional=True)
    future = t5_bucket(torch.arange(1, d), bidirectional=True)
    assert past.tolist() == BIDIRECTIONAL_BY_DISTANCE
    assert future.tolist() == [16 + b for b in BIDIRECTIONAL_BY_DISTANCE[1:]]
    assert t5_bucket(torch.tensor([-127, -128, -10**6, 127, 128, 10**6]), bidirectional=True).tolist() == \
        [15, 15, 15, 31, 31, 31]


def test_causal_by_hand():
    d = len(CAUSAL_BY_DISTANCE)
    assert t5_bucket(-torch.arange(d), bidirectional=False).tolist() == CAUSAL_BY_DISTANCE
    # the last steps: 16·2^(3·15/16) = 112.4, so 113 is the first distance of the last bucket
    assert t5_bucket(torch.tensor([-112, -113, -128, -10**6]), bidirectional=False).tolist() == [30, 31, 31, 31]
    # keys after the query (masked in causal attention) collapse onto distance 0
    assert t5_bucket(torch.tensor([1, 5, 1000]), bidirectional=False).tolist() == [0, 0, 0]


def _reference_bucket(relative_position: int, bidirectional: bool, num_buckets: int, max_distance: int) -> int:
    """The T5 reference bucketing (Raffel et al. 2020; Mesh TensorFlow's ``_relative_position_bucket``), one scalar
    at a time: ``n = -relative_position``; bidirectional halves the buckets and offsets ``n < 0`` by the half."""
    ret = 0
    n = -relative_position
    if bidirectional:
        num_buckets //= 2
        if n < 0:
            ret += num_buckets
        n = abs(n)
    else:
        n = max(n, 0)
    max_exact = num_buckets // 2
    if n < max_exact:
        return ret + n
    val = max_exact + int(math.log(n / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact))
    return ret + min(val, num_buckets - 1)


@pytest.mark.parametrize("bidirectional,num_buckets,max_distance", [
    (True, 32, 128), (False, 32, 128), (True, 8, 20), (False, 16, 64)])
def test_equals_the_t5_definition_far_out(bidirectional, num_buckets, max_distance):
    rel = torch.arange(-3000, 3001)
    got = t5_bucket(rel, bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance)
    want = [_reference_bucket(r, bidirectional, num_buckets, max_distance) for r in rel.tolist()]
    assert got.dtype == torch.int64 and got.tolist() == want
    assert int(got.min()) >= 0 and int(got.max()) == num_buckets - 1


def test_shape_kept_and_bad_arguments():
    rel = torch.arange(-6, 6).view(3, 4)
    assert t5_bucket(rel, bidirectional=True).shape == (3, 4)
    with pytest.raises(ValueError, match="int64"):
        t5_bucket(rel.int(), bidirectional=True)
    with pytest.raises(ValueError, match="num_buckets=3"):
        t5_bucket(rel, bidirectional=True, num_buckets=3)
    with pytest.raises(ValueError, match="max_distance=4"):
        t5_bucket(rel, bidirectional=False, num_buckets=8, max_distance=4)


def test_t5_is_a_relative_scheme():
    assert "t5" in RELATIVE and "t5" in SCHEMES and "t5" in RELATIVE_POSITIONS
