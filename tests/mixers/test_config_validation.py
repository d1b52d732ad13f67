"""The one declarative option check (``mixers.base.check_field_types``), registry-wide: for every mixer and every
option annotated int, float or bool, a value of the wrong type is a ``ValueError`` that names the option."""

from __future__ import annotations

import dataclasses
import typing

import pytest

import lightformer
from lightformer import MIXERS

WRONG = {int: [True, 2.5, "3"], float: [True, "0.1"], bool: [1, "yes"]}


def typed_options():
    for name in MIXERS.names():
        config = MIXERS.get(name).config_class
        hints = typing.get_type_hints(config)
        for f in dataclasses.fields(config):
            if f.name in ("dim", "causal"):
                continue
            base = {h for h in typing.get_args(hints[f.name]) or (hints[f.name],) if h in WRONG}
            for kind in base:
                for value in WRONG[kind]:
                    yield pytest.param(name, f.name, value, id=f"{name}-{f.name}={value!r}")


@pytest.mark.parametrize("name,option,value", list(typed_options()))
def test_wrong_type_names_the_option(name, option, value):
    options = {**MIXERS.get(name).example_options, option: value}
    options.setdefault("num_heads", 4)
    heads = options.pop("num_heads")
    with pytest.raises(ValueError, match=rf"^{option} must be"):
        lightformer.create_mixer(name, dim=32, num_heads=heads, **options)


def test_the_cases_the_review_found():
    with pytest.raises(ValueError, match="num_heads must be int, got True"):
        lightformer.create_mixer("softmax", dim=32, num_heads=True)
    with pytest.raises(ValueError, match="split_kv_size must be int, got 2.5"):
        lightformer.create_mixer("softmax", dim=32, num_heads=4, split_kv_size=2.5)
    with pytest.raises(ValueError, match="window must be int, got True"):
        lightformer.create_mixer("aft_local", dim=32, num_heads=4, window=True)
    # ints are floats, None is allowed where declared
    lightformer.create_mixer("linear", dim=32, num_heads=4, eps=1)
    lightformer.create_mixer("softmax", dim=32, num_heads=4, num_kv_heads=None)
